"""PGD-L-inf throughput: ssl_robust's engine (fp32, bf16, cascade) vs torchattacks vs the floor.

Two models, each an encoder + fitted linear head (eval, frozen) attacked on one batch: a ViT-S/14
at 224 px, where the model's FLOPs dominate, and a 4-block width-96 ViT at 56 px, where per-step
overhead shows. Methods are timed in interleaved repeats, next to the machine's sgemm rate and the
model's FLOPs per step (achieved GFLOP/s against the matmul peak).

    .venv/bin/python benchmarks/attack_throughput.py [--quick] [--models vits14,tiny] [--json PATH]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import torchattacks
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, Subset
from torch.utils.flop_counter import FlopCounterMode

from ssl_robust.config import EncoderCfg, HeadCfg
from ssl_robust.data.catalog import TaskInfo
from ssl_robust.data.synthetic import SyntheticDataset
from ssl_robust.encoders import create_encoder
from ssl_robust.features import Features
from ssl_robust.heads import LinearClassifier, TaskModel, extract_features, fit_head
from ssl_robust.objectives import cross_entropy
from ssl_robust.pgd import pgd
from ssl_robust.precision import in_precision
from ssl_robust.tasks import TASKS

EPS, ALPHA, NUM_CLASSES = 8 / 255, 2 / 255, 10


class Counted(nn.Module):
    """The attacked model, counting sample-forwards with and without autograd (for the FLOP tally)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.samples = {True: 0, False: 0}  # grad enabled -> sample-forwards

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.samples[torch.is_grad_enabled()] += x.shape[0]
        return self.model(x)


def cpu_model() -> str:
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")]
    return names[0] if names else platform.processor() or "unknown"


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_gflops(m: int, k: int, n: int, repeats: int, device: torch.device) -> float:
    """Median fp32 GFLOP/s of an (m,k) @ (k,n) matmul, after three warm-up products."""
    a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * m * k * n / statistics.median(times) / 1e9


def count_flops(model: nn.Module, size: int, device: torch.device) -> tuple[float, float]:
    """(forward + input-gradient, forward only) FLOPs for one image. The math SDPA backend is used
    while counting: FlopCounterMode has no formula for CPU flash attention and would skip it."""
    x = torch.rand(1, 3, size, size, device=device, requires_grad=True)
    y = torch.zeros(1, dtype=torch.long, device=device)
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as step:
            F.cross_entropy(model(x), y).backward()
        with torch.no_grad(), FlopCounterMode(display=False) as fwd:
            model(x)
    return float(step.get_total_flops()), float(fwd.get_total_flops())


VITB = {"init_values": 1.0, "embed_dim": 768, "depth": 12, "num_heads": 12}
MODELS = {  # name -> (encoder model_kwargs, image size); random-init dinov2_vits14 / vitb14 shapes
    "vits14": ({"init_values": 1.0}, 224),
    "tiny": ({"init_values": 1.0, "depth": 4, "embed_dim": 96, "num_heads": 2}, 56),
    "vits14_518": ({"init_values": 1.0}, 518),  # the poster's DINOv2 input: 1,369 tokens
    "vitb14": (VITB, 224),
    "vitb14_518": (VITB, 518),
}


def build(args: argparse.Namespace, model_kwargs: dict) -> tuple[TaskModel, torch.Tensor, torch.Tensor, dict]:
    """Random-init encoder + a 10-way linear head fitted on cached CLS features of synthetic images
    (4 object classes, so logits 4-9 only learn to stay low); the attacked batch is the test split's head."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    encoder = create_encoder(EncoderCfg(name=args.encoder, pretrained=False, image_size=args.size,
                                        model_kwargs=model_kwargs)).to(device)

    def features(split: str, n: int) -> Features:
        data = Subset(SyntheticDataset(split, "classification", args.size), range(n))
        return extract_features(encoder, DataLoader(data, batch_size=16), device, desc=split)

    task, info = TASKS.get("classification"), TaskInfo("classification", num_classes=NUM_CLASSES)
    head, stats = fit_head(LinearClassifier(encoder.embed_dim, NUM_CLASSES), features("train", args.n_train),
                           features("val", args.n_val), loss_fn=task.loss(info, HeadCfg()),
                           val_score=functools.partial(task.validation_score, info),
                           epochs=args.head_epochs, lr=1e-2, weight_decay=0.0, batch_size=32, seed=0,
                           device=device)
    model = TaskModel(encoder, head).eval().requires_grad_(False)
    test = SyntheticDataset("test", "classification", args.size)
    images, labels = zip(*(test[i] for i in range(args.batch)))
    return model, torch.stack(images).to(device), torch.tensor(labels).to(device), stats


def misclassified(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return output.argmax(1) != target


Method = Callable[[nn.Module, torch.Tensor, torch.Tensor, int, int], torch.Tensor | None]


def ssl_pgd(stop: bool, precision: str = "fp32") -> Method:
    def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
        result = pgd(in_precision(model, precision, x.device), cross_entropy, x, y, eps=EPS, step_size=ALPHA,
                     steps=steps, norm="linf", random_start=True, seed=seed, success_fn=misclassified,
                     stop_when_fooled=stop)
        return ~result.success
    return run


def torchattacks_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=steps, random_start=True)(x, y)


def floor(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> None:
    """Forward + input gradient + sign step, nothing else: the cost of the model alone."""
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = (x_adv + ALPHA * grad.sign()).detach()


BF16 = "ssl_robust pgd (all steps, bf16)"
METHODS: dict[str, Method] = {
    "ssl_robust pgd (all steps)": ssl_pgd(stop=False),
    BF16: ssl_pgd(stop=False, precision="bf16"),
    "ssl_robust pgd (stop when fooled)": ssl_pgd(stop=True),
    "torchattacks.PGD": torchattacks_pgd,
    "floor: fwd + input-grad": floor,
}


def methods_for(model_name: str, args: argparse.Namespace) -> dict[str, Method]:
    """Every method; bf16 per ``--bf16`` (auto: every model on a GPU, only the tiny model on a CPU,
    where a ViT-S/14 step under bf16 autocast was measured 17x slower than fp32)."""
    on_gpu = args.device.startswith("cuda")
    with_bf16 = args.bf16 == "all" or (args.bf16 == "auto" and (on_gpu or model_name == "tiny"))
    return {name: method for name, method in METHODS.items() if name != BF16 or with_bf16}


def run_methods(counted: Counted, x: torch.Tensor, y: torch.Tensor, methods: dict[str, Method],
                args: argparse.Namespace) -> tuple[dict, list[float]]:
    """One 1-step warm-up per method, then `repeats` rounds through all methods, the order reversed
    every other round, so that slow drifts in background load hit every method alike; each round
    starts with an sgemm measurement, so that the matmul peak tracks the same drifts."""
    for method in methods.values():
        method(counted, x, y, 1, 0)
    keys = ("times", "cpu", "grad", "nograd", "robust", "flags", "score_times")
    results: dict[str, dict] = {name: {key: [] for key in keys} for name in methods}
    gemm_rounds = []
    for rep in range(args.repeats):
        gemm_rounds.append(gemm_gflops(args.gemm, args.gemm, args.gemm, 10, x.device))
        for name, method in list(methods.items())[::1 if rep % 2 == 0 else -1]:
            r = results[name]
            counted.samples = {True: 0, False: 0}
            sync(x.device)
            start, cpu_start = time.perf_counter(), time.process_time()
            out = method(counted, x, y, args.steps, rep)
            sync(x.device)
            measured = (time.perf_counter() - start, time.process_time() - cpu_start,
                        counted.samples[True], counted.samples[False])
            for key, value in zip(("times", "cpu", "grad", "nograd"), measured):
                r[key].append(value)
            if out is not None and out.dtype != torch.bool:  # adversarial images: score them (timed apart)
                start = time.perf_counter()
                with torch.no_grad():
                    out = ~misclassified(counted.model(out), y)
                sync(x.device)
                r["score_times"].append(time.perf_counter() - start)
            r["robust"].append(None if out is None else float(out.float().mean()))
            r["flags"].append(None if out is None else out.tolist())
            print(f"  repeat {rep + 1}/{args.repeats}  {name:<34} {r['times'][-1]:7.2f} s", flush=True)
    return results, gemm_rounds


def benchmark(args: argparse.Namespace, name: str) -> dict:
    """Build one model, time every method on it, print its table; the numbers as a dict."""
    model_kwargs, args.size = MODELS[name]
    if args.quick and name == "vits14":
        model_kwargs, args.size = {**model_kwargs, "depth": 2}, 56
    load_before = f"{os.getloadavg()[0]:.2f}"
    model, x, y, head_stats = build(args, model_kwargs)
    counted = Counted(model)
    with torch.no_grad():
        clean_acc = float((~misclassified(model(x), y)).float().mean())
    device = x.device
    step_flops, fwd_flops = count_flops(model, args.size, device)
    vit = model.encoder.model
    tokens = vit.patch_embed.num_patches + vit.num_prefix_tokens
    gemm_before = gemm_gflops(args.gemm, args.gemm, args.gemm, 20, device)
    mlp_gemm = gemm_gflops(args.batch * tokens, vit.embed_dim, 4 * vit.embed_dim, 20, device)
    print(f"\n== {name}: {args.encoder} shape {model_kwargs} @{args.size}\nhead: val acc "
          f"{head_stats['head/val_score']:.3f}; clean acc on the {args.batch} attacked images {clean_acc:.3f}\n"
          f"FLOPs/image: fwd+input-grad {step_flops / 1e9:.3f} G, fwd {fwd_flops / 1e9:.3f} G "
          f"(batch step {args.batch * step_flops / 1e9:.1f} G)")
    results, gemm_rounds = run_methods(counted, x, y, methods_for(name, args), args)
    square = [gemm_before, *gemm_rounds, gemm_gflops(args.gemm, args.gemm, args.gemm, 20, device)]
    peak = statistics.median(square)
    nominal = args.batch * args.steps
    ta = results["torchattacks.PGD"]
    ta_answer = [t + s for t, s in zip(ta["times"], ta["score_times"])]  # attack + the forward that scores it
    print(f"\nPGD-Linf eps 8/255, step 2/255, {args.steps} steps, random start; {name} @{args.size}, "
          f"batch {args.batch}; load average {load_before} -> {os.getloadavg()[0]:.2f}\n"
          f"sgemm {args.gemm}^3 GFLOP/s before, per round, after: {' '.join(f'{g:.0f}' for g in square)}; "
          f"median {peak:.0f} = the peak used; MLP-shaped {args.batch * tokens}x{vit.embed_dim}x"
          f"{4 * vit.embed_dim}: {mlp_gemm:.0f}\n")
    header = (f"{'method':<34} {'median s':>8} {'min s':>7} {'max s':>7} {'CPU s':>7} {'img*steps/s':>11} "
              f"{'TA/time':>7} {'TA+sc/t':>7} {'rob.acc':>7} {'work':>5} {'GFLOP/s':>7} {'% peak':>6}")
    print(f"{header}\n{'-' * len(header)}")
    for method, r in results.items():
        t = statistics.median(r["times"])
        gflops = statistics.median((g * step_flops + n * fwd_flops) / s / 1e9
                                   for g, n, s in zip(r["grad"], r["nograd"], r["times"]))
        rob = "-" if r["robust"][0] is None else f"{statistics.mean(r['robust']):.3f}"
        work = statistics.median(r["grad"]) / nominal
        ratio = statistics.median(a / b for a, b in zip(ta["times"], r["times"]))  # paired per round
        answer = statistics.median(a / b for a, b in zip(ta_answer, r["times"]))
        r.update(median_s=t, median_cpu_s=statistics.median(r["cpu"]), img_steps_per_s=nominal / t,
                 speed_vs_torchattacks=ratio, speed_vs_torchattacks_scored=answer, work=work,
                 achieved_gflops=gflops, fraction_of_peak=gflops / peak)
        print(f"{method:<34} {t:8.2f} {min(r['times']):7.2f} {max(r['times']):7.2f} {r['median_cpu_s']:7.2f} "
              f"{nominal / t:11.2f} {ratio:7.2f} {answer:7.2f} {rob:>7} {work:5.2f} {gflops:7.1f} "
              f"{100 * gflops / peak:5.1f}%")
    flags = {method: r["flags"] for method, r in results.items()}
    same = flags["ssl_robust pgd (all steps)"] == flags["ssl_robust pgd (stop when fooled)"]
    bf16_gap = max((sum(a != b for a, b in zip(f32, b16)) for f32, b16 in
                    zip(flags["ssl_robust pgd (all steps)"], flags.get(BF16, []))), default=None)
    print(f"\nclean acc {clean_acc:.3f}; stop-when-fooled gives the same robust samples as all-steps: {same}; "
          f"bf16 robust samples differing from fp32 (worst round): {bf16_gap}\n"
          "img*steps/s: nominal batch x steps; TA/time: median over rounds of torchattacks' time / this time "
          "(> 1 = faster); TA+sc/t: the same with torchattacks' scoring forward added (pgd's time includes "
          "its score); work: fwd+grad sample-steps run / nominal; GFLOP/s: FLOPs actually run / wall time")
    return {"model": {"kwargs": model_kwargs, "size": args.size, "batch": args.batch}, "load_before": load_before,
            "clean_acc": clean_acc, "head": head_stats, "flops_per_image": {"step": step_flops, "forward": fwd_flops},
            "sgemm_gflops": {"square": square, "mlp_shape": mlp_gemm, "peak": peak}, "methods": results,
            "same_robust_samples": same, "bf16_sample_gap": bf16_gap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="dinov2_vits14")
    parser.add_argument("--models", default="vits14,tiny", help=f"comma-separated, of {sorted(MODELS)}")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=96, help="head-fitting images (synthetic train split)")
    parser.add_argument("--n-val", type=int, default=32)
    parser.add_argument("--head-epochs", type=int, default=30)
    parser.add_argument("--gemm", type=int, default=2048, help="square sgemm size for the peak")
    parser.add_argument("--quick", action="store_true", help="the ViT-S/14 cut to 2 blocks at 56 px: a smoke test")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--bf16", choices=("auto", "all", "none"), default="auto",
                        help="which models also run bf16 (auto: all on a GPU, the tiny one on a CPU)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    names = args.models.split(",")
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    if args.quick:
        args.batch, args.steps, args.repeats = 8, 3, 1
        args.n_train, args.n_val, args.head_epochs, args.gemm = 32, 16, 5, 512
    gpu = f", GPU {torch.cuda.get_device_name(args.device)}" if args.device.startswith("cuda") else ""
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU {cpu_model()}{gpu}")
    models = {name: benchmark(args, name) for name in names}
    if args.json:
        args.json.write_text(json.dumps({
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model(), "device": args.device,
            "gpu": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None,
            "config": {k: str(v) for k, v in vars(args).items()}, "models": models}, indent=2))


if __name__ == "__main__":
    main()
