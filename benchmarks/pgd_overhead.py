"""Where ssl_robust's pgd spends time outside the model, next to torchattacks.PGD.

With a near-free model (global average pool + linear) the attack loops time their own tensor
bookkeeping (random start, indexing, clamps, projection, best-iterate records); with the ViT-S/14
they time one attack step and one no-grad forward, the unit that pgd's final evaluation costs.

    .venv/bin/python benchmarks/pgd_overhead.py              # bookkeeping + ViT step/forward
    .venv/bin/python benchmarks/pgd_overhead.py --no-vit     # bookkeeping only (seconds)
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torch.nn.functional as F
import torchattacks
from torch import nn
from torch.profiler import ProfilerActivity, profile

from ssl_robust.config import EncoderCfg
from ssl_robust.encoders import create_encoder
from ssl_robust.heads import LinearClassifier, TaskModel
from ssl_robust.objectives import cross_entropy
from ssl_robust.pgd import pgd, project

EPS, ALPHA = 8 / 255, 2 / 255


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Minimum wall time: the least-disturbed run on a shared machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def attacks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict[str, Callable[[], object]]:
    def misclassified(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return out.argmax(1) != target

    def ssl(stop: bool) -> Callable[[], object]:
        return lambda: pgd(model, cross_entropy, x, y, eps=EPS, step_size=ALPHA, steps=steps,
                           success_fn=misclassified, stop_when_fooled=stop)

    ta = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=steps, random_start=True)
    return {"ssl_robust pgd (all steps)": ssl(False), "torchattacks.PGD": lambda: ta(x, y)}


def statements(x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Best-of times of the per-step statements of pgd.py that torchattacks' loop does not have."""
    n = x.shape[0]
    active, delta = torch.arange(n), (torch.rand_like(x) * 2 - 1) * EPS
    grad, best_x = torch.randn_like(x), x.clone()
    better = torch.rand(n) < 0.5
    stmts: dict[str, Callable[[], object]] = {
        "x[active] (index copy of the batch)": lambda: x[active],
        "x_now = (x[active] + delta).clamp(0, 1)": lambda: (x[active] + delta).clamp(0, 1),
        "bool(torch.isfinite(grad).all())": lambda: bool(torch.isfinite(grad).all()),
        "bool(torch.isfinite(grad.sum()))  [alternative]": lambda: bool(torch.isfinite(grad.sum())),
        "record: best_x[sel] = x_now[better]": lambda: best_x.__setitem__(active[better], x[better]),
        "project(delta + a*sign(grad), x[active])":
            lambda: project(delta + ALPHA * grad.sign(), x[active], EPS, "linf"),
        "torchattacks update (sign, 2 clamps)": lambda: torch.clamp(
            x + torch.clamp(x + ALPHA * grad.sign() - x, min=-EPS, max=EPS), min=0, max=1),
    }
    return {name: best_of(fn, repeats) for name, fn in stmts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-vit", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    cheap = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10)).eval().requires_grad_(False)
    print(f"near-free model, batch {args.batch} @{args.size}, {args.steps} steps, best of {args.repeats}:")
    for name, fn in attacks(cheap, x, y, args.steps).items():
        fn()
        t = best_of(fn, args.repeats)
        print(f"  {name:<28} {1e3 * t:8.1f} ms  ({1e3 * t / args.steps:.1f} ms/step)")
    print(f"\nper-statement cost on a [{args.batch}, 3, {args.size}, {args.size}] batch (best of {args.repeats}):")
    for name, t in statements(x, args.repeats).items():
        print(f"  {name:<48} {1e3 * t:7.2f} ms")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        attacks(cheap, x, y, args.steps)["ssl_robust pgd (all steps)"]()
    print("\nssl_robust pgd on the near-free model, top ops by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    if args.no_vit:
        return
    encoder = create_encoder(EncoderCfg(name="dinov2_vits14", pretrained=False, image_size=args.size,
                                        model_kwargs={"init_values": 1.0}))
    model = TaskModel(encoder, LinearClassifier(encoder.embed_dim, 10)).eval().requires_grad_(False)

    def step() -> None:
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xg), y), xg)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    step(), forward()
    t_step, t_fwd = best_of(step, 3), best_of(forward, 3)
    print(f"ViT-S/14 batch {args.batch}: fwd + input-grad step {t_step:.2f} s, no-grad forward {t_fwd:.2f} s "
          f"(best of 3); pgd's final evaluation adds {t_fwd / (args.steps * t_step):.1%} to {args.steps} steps")


if __name__ == "__main__":
    main()
