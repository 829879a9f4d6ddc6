"""Where ssl_robust's pgd spends time outside the model, next to torchattacks.PGD.

With a near-free model (global average pool + linear) the attack loops time their own tensor
bookkeeping (random start, finiteness sum, projection, best-iterate records). With the
ViT-S/14 both attacks run in alternating rounds; per-step intervals (forward start to forward start)
and pgd's final no-grad evaluation are read off time stamps taken in the model's forward.

    .venv/bin/python benchmarks/pgd_overhead.py                  # bookkeeping + ViT (about 4 min)
    .venv/bin/python benchmarks/pgd_overhead.py --vit-rounds 0   # bookkeeping only (seconds)
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torchattacks
from torch import nn
from torch.profiler import ProfilerActivity, profile

from ssl_robust.config import EncoderCfg
from ssl_robust.encoders import create_encoder
from ssl_robust.heads import LinearClassifier, TaskModel
from ssl_robust.objectives import cross_entropy
from ssl_robust.pgd import pgd, project

EPS, ALPHA = 8 / 255, 2 / 255


class Stamped(nn.Module):
    """Records the start time of every forward, so that per-step intervals can be read off."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.stamps = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.stamps.append(time.perf_counter())
        return self.model(x)


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
    """Best-of times of pgd.py's per-step statements next to torchattacks' update."""
    n = x.shape[0]
    delta = (torch.rand_like(x) * 2 - 1) * EPS
    grad, best_x, grad_sum = torch.randn_like(x), x.clone(), torch.zeros(())
    better = (torch.rand(n) < 0.5).view(-1, 1, 1, 1)
    stmts: dict[str, Callable[[], object]] = {
        "x + delta (the attacked input)": lambda: x + delta,
        "grad_sum += grad.sum() (finiteness, no sync)": lambda: grad_sum.add_(grad.sum()),
        "record: where(better, x_now, best_x, out=best_x)": lambda: torch.where(better, x, best_x, out=best_x),
        "project(delta + a*sign(grad), x)": lambda: project(delta + ALPHA * grad.sign(), x, EPS, "linf"),
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
    parser.add_argument("--vit-rounds", type=int, default=2, help="0 skips the ViT part")
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
    if args.vit_rounds == 0:
        return
    encoder = create_encoder(EncoderCfg(name="dinov2_vits14", pretrained=False, image_size=args.size,
                                        model_kwargs={"init_values": 1.0}))
    model = Stamped(TaskModel(encoder, LinearClassifier(encoder.embed_dim, 10)).eval().requires_grad_(False))
    intervals: dict[str, list[float]] = {}
    final_eval = []
    for rnd in range(args.vit_rounds):  # alternate the order: drifts in background load hit both alike
        for name, fn in list(attacks(model, x, y, args.steps).items())[::1 if rnd % 2 == 0 else -1]:
            model.stamps = []
            fn()
            end = time.perf_counter()
            starts = model.stamps[:args.steps]  # the forwards of the gradient steps
            intervals.setdefault(name, []).extend(b - a for a, b in zip(starts, starts[1:]))
            if len(model.stamps) > args.steps:  # pgd: one more forward, the final evaluation
                final_eval.append(end - model.stamps[args.steps])
    print(f"\nViT-S/14 batch {args.batch}, {args.vit_rounds} alternating rounds of {args.steps} steps:")
    for name, gaps in intervals.items():
        print(f"  {name:<28} per step: median {statistics.median(gaps):.2f} s, min {min(gaps):.2f} s")
    step = statistics.median(intervals["torchattacks.PGD"])
    print(f"  pgd's final no-grad evaluation: median {statistics.median(final_eval):.2f} s "
          f"= {statistics.median(final_eval) / (args.steps * step):.1%} of {args.steps} torchattacks steps")


if __name__ == "__main__":
    main()
