"""Images/s of one DeACL training step against a bare loop doing the same forwards and backwards.

DeACL step: ``ssl_robust.deacl._train_batch`` + ``_optimizer_step`` (augmentation, teacher forward,
pgd EmbedAttack on the student, student forward on clean+adv, DeACL loss, backward, SGD step, schedule).
Bare loop: the same model work inline (teacher forward, plain autograd.grad sign steps on the student
in eval mode, one student forward on clean+adv, the loss formula, backward, SGD step). Both train the
same student in interleaved rounds after a warm-up; the sgemm rate is measured in the same run, and
FLOPs per image come from ``FlopCounterMode`` on a 1-image step of each method.

    .venv/bin/python benchmarks/deacl_throughput.py [--quick] [--device cuda]
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ssl_robust.config import EncoderCfg
from ssl_robust.deacl_config import DeaclCfg
from ssl_robust.deacl import _optimization, _optimizer_step, _Run, _train_batch
from ssl_robust.encoders import create_encoder

Step = Callable[[torch.Tensor, int], None]


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")]
    return names[0] if names else platform.processor() or "unknown"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_gflops(n: int, repeats: int, device: torch.device) -> float:
    """Median fp32 GFLOP/s of an (n,n) @ (n,n) matmul, after three warm-up products."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def build(args: argparse.Namespace) -> _Run:
    """Teacher (frozen, random init), its trainable copy, DeACL's optimizer/schedule; no data sets."""
    encoder = EncoderCfg(name=args.encoder, pretrained=False, image_size=args.size)
    cfg = DeaclCfg(encoder=encoder, attack={"steps": args.steps}, batch_size=args.batch, device=args.device,
                   seed=args.seed)
    device = torch.device(args.device)
    teacher = create_encoder(cfg.encoder).to(device)
    student = copy.deepcopy(teacher)
    student.model.requires_grad_(True)
    optimizer, scheduler, scaler = _optimization(cfg, student, device, steps_per_epoch=1)
    return _Run(cfg, device, teacher, student, optimizer, scheduler, scaler, None, (None, None), 0)


def deacl_step(run: _Run) -> Step:
    """One DeACL batch exactly as ``_train_epoch`` runs it (grad_accum 1)."""
    def step(x: torch.Tensor, index: int) -> None:
        _train_batch(run, x, 1, index)
        _optimizer_step(run)
    return step


def bare_step(run: _Run) -> Step:
    """The same forwards and backwards with nothing around them (CLS-only loss, dense_weight 0)."""
    cfg, a = run.cfg, run.cfg.attack
    optimizer = torch.optim.SGD(run.student.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)

    def step(x: torch.Tensor, index: int) -> None:
        b = x.shape[0]
        with torch.no_grad():
            target = run.teacher.features(x)[0]
        run.student.eval()
        x_adv = (x + a.eps * (2 * torch.rand_like(x) - 1)).clamp(0, 1)
        for _ in range(a.steps):
            x_adv.requires_grad_(True)
            loss = (1 - F.cosine_similarity(run.student.features(x_adv)[0], target, dim=1)).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = torch.min(torch.max(x_adv.detach() + a.step_size * grad.sign(), x - a.eps), x + a.eps)
            x_adv = x_adv.clamp(0, 1)
        run.student.train()
        cls = run.student.features(torch.cat([x, x_adv]))[0]
        clean = -F.cosine_similarity(cls[:b], target, dim=1).mean()
        adv = -F.cosine_similarity(cls[b:], cls[:b], dim=1).mean()
        (clean + cfg.gamma * adv).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def count_flops(step: Step, x: torch.Tensor) -> float:
    """FLOPs of one step on one image (math SDPA: FlopCounterMode has no CPU flash-attention formula)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step(x[:1], 0)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="dinov2_vits14", help="alias or timm name (random init)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="inner attack steps (DeACL: 5)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per method, interleaved")
    parser.add_argument("--warmup", type=int, default=1, help="untimed full-batch steps per method")
    parser.add_argument("--gemm", type=int, default=2048, help="square sgemm size for the peak")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny_dinov2 at 28 px, 3 rounds: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.encoder, args.size, args.batch, args.rounds, args.gemm = "tiny_dinov2", 28, 8, 3, 256
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load_before = f"{os.getloadavg()[0]:.2f}"
    run = build(args)
    device = run.device
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {device.type}: {machine(device)}")
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    methods = {"DeACL step": deacl_step(run), "bare loop": bare_step(run)}
    flops = {name: count_flops(step, x) for name, step in methods.items()}
    for _ in range(args.warmup):
        for step in methods.values():
            step(x, 0)
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in methods}
    gemm_rounds = [gemm_gflops(args.gemm, 20, device)]
    for rnd in range(args.rounds):
        for name, step in list(methods.items())[::1 if rnd % 2 == 0 else -1]:
            sync(device)
            start = time.perf_counter()
            step(x, rnd + 1)
            sync(device)
            times[name].append(time.perf_counter() - start)
            print(f"  round {rnd + 1}/{args.rounds}  {name:<10} {times[name][-1]:7.3f} s", flush=True)
        gemm_rounds.append(gemm_gflops(args.gemm, 10, device))
    gemm_rounds.append(gemm_gflops(args.gemm, 20, device))
    peak = statistics.median(gemm_rounds)
    finite = all(bool(torch.isfinite(p).all()) for p in run.student.model.parameters())
    a = run.cfg.attack
    print(f"\nDeACL: {args.encoder} (random init) @{args.size}, batch {args.batch}, {a.steps} attack steps "
          f"(linf eps {a.eps:.4f}, step {a.step_size:.4f}), fp32, {args.rounds} rounds after {args.warmup} "
          f"warm-up; load average {load_before} -> {os.getloadavg()[0]:.2f}\n"
          f"sgemm {args.gemm}^3 GFLOP/s before, per round, after: {' '.join(f'{g:.0f}' for g in gemm_rounds)}; "
          f"median {peak:.0f} = the peak used; student weights finite: {finite}\n")
    header = (f"{'method':<10} {'median s':>8} {'min s':>7} {'max s':>7} {'img/s':>7} {'GFLOP/img':>9} "
              f"{'GFLOP/s':>8} {'% peak':>6}")
    print(f"{header}\n{'-' * len(header)}")
    rates = {}
    for name, t in times.items():
        med = statistics.median(t)
        rates[name] = args.batch / med
        gflops = args.batch * flops[name] / med / 1e9
        print(f"{name:<10} {med:8.3f} {min(t):7.3f} {max(t):7.3f} {rates[name]:7.2f} {flops[name] / 1e9:9.3f} "
              f"{gflops:8.1f} {100 * gflops / peak:5.1f}%")
    paired = statistics.median(b / d for d, b in zip(times["DeACL step"], times["bare loop"]))
    print(f"\nratio (DeACL step img/s / bare loop img/s, medians): {rates['DeACL step'] / rates['bare loop']:.3f}\n"
          f"paired per round (bare time / DeACL time, median): {paired:.3f}\n"
          "GFLOP/img: matmul/attention FLOPs of one step per image (FlopCounterMode, 1-image step); "
          "GFLOP/s: batch x GFLOP/img / median time")


if __name__ == "__main__":
    main()
