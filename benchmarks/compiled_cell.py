"""PGD-L-inf throughput of a cell's scored model, eager and under ``compile: true``.

Each model is a random-init encoder (``pretrained=False``) with a linear head fitted on its CLS
features of synthetic images, frozen and in eval mode, attacked on one batch by ssl_robust's PGD.
The models are a 4-block width-96 ViT at 56 px, where per-step overhead shows, and a ViT-S/14 at
224 px, where the model's FLOPs dominate. The compiled model is the one a cell builds
(``ssl_robust.compiled.compiled``). There are two attack modes. ``all steps`` keeps the batch's
shape, so its work is batch x steps. ``cascade`` is a cell's default (``stop_when_fooled``):
fooled samples leave the batch, so shapes vary.

The first call of each (model, mode, path) is timed apart. For the compiled path it includes
compiling the graphs the attack needs, with inductor's on-disk cache in a fresh temporary folder
unless ``--cache-dir`` names one. Then ``--repeats`` rounds run every (mode, path), in an order
that is reversed every other round, and the table gives medians. ``speedup`` is the median over
rounds of eager's time / compiled's time, paired per round, in wall time and in this process's
CPU time (which other jobs on a shared machine disturb less). ``same robust`` says whether the
compiled attack leaves the same samples unfooled as eager in every round.

    .venv/bin/python benchmarks/compiled_cell.py [--device cpu|cuda[:N]] [--models tiny,vits14]
        [--threads N] [--quick] [--json PATH]

``--quick`` runs the tiny model alone (batch 4, 3 steps, one round): a smoke test.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from ssl_robust.compiled import compiled
from ssl_robust.config import EncoderCfg, HeadCfg
from ssl_robust.data.catalog import TaskInfo
from ssl_robust.data.synthetic import SyntheticDataset
from ssl_robust.encoders import create_encoder
from ssl_robust.heads import LinearClassifier, TaskModel, extract_features, fit_head
from ssl_robust.objectives import cross_entropy
from ssl_robust.pgd import pgd
from ssl_robust.tasks import TASKS

EPS, ALPHA, NUM_CLASSES = 8 / 255, 2 / 255, 10
MODELS = {  # name -> (dinov2_vits14 model_kwargs, image size)
    "tiny": ({"init_values": 1.0, "depth": 4, "embed_dim": 96, "num_heads": 2}, 56),
    "vits14": ({"init_values": 1.0}, 224),
}
MODES = {"all steps": False, "cascade": True}  # name -> stop_when_fooled
PATHS = ("eager", "compiled")
Forward = Callable[[torch.Tensor], torch.Tensor]


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(name: str, args: argparse.Namespace) -> tuple[TaskModel, torch.Tensor, torch.Tensor]:
    """The frozen model (encoder + fitted 10-way head) and the attacked batch, on ``args.device``."""
    model_kwargs, size = MODELS[name]
    torch.manual_seed(0)
    device = torch.device(args.device)
    encoder = create_encoder(EncoderCfg(name="dinov2_vits14", pretrained=False, image_size=size,
                                        model_kwargs=model_kwargs)).to(device)

    def features(split: str, n: int):
        data = Subset(SyntheticDataset(split, "classification", size), range(n))
        return extract_features(encoder, DataLoader(data, batch_size=16), device, desc=split)

    task, info = TASKS.get("classification"), TaskInfo("classification", num_classes=NUM_CLASSES)
    head, _ = fit_head(LinearClassifier(encoder.embed_dim, NUM_CLASSES), features("train", args.n_train),
                       features("val", args.n_val), loss_fn=task.loss(info, HeadCfg()),
                       val_score=functools.partial(task.validation_score, info), epochs=args.head_epochs,
                       lr=1e-2, weight_decay=0.0, batch_size=32, seed=0, device=device)
    model = TaskModel(encoder, head).eval().requires_grad_(False)
    test = SyntheticDataset("test", "classification", size)
    images, labels = zip(*(test[i] for i in range(args.batch)))
    return model, torch.stack(images).to(device), torch.tensor(labels).to(device)


def attack(forward: Forward, x: torch.Tensor, y: torch.Tensor, steps: int, cascade: bool,
           seed: int) -> tuple[float, float, int, list[bool]]:
    """(wall seconds, CPU seconds, sample-gradient-steps, robust flags) of one PGD run."""
    sync(x.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = pgd(forward, cross_entropy, x, y, eps=EPS, step_size=ALPHA, steps=steps, norm="linf",
                 random_start=True, seed=seed, success_fn=lambda out, t: out.argmax(1) != t,
                 stop_when_fooled=cascade)
    sync(x.device)
    return (time.perf_counter() - start, time.process_time() - cpu_start, result.grad_steps,
            (~result.success).tolist())


def benchmark(name: str, args: argparse.Namespace) -> dict:
    """First calls, then interleaved rounds of every (mode, path) on one model; its table rows."""
    model, x, y = build(name, args)
    forwards = {"eager": model, "compiled": compiled(model, "scored", model, x.device)}
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    keys = [(mode, path) for mode in MODES for path in PATHS]
    runs: dict[tuple[str, str], dict] = {key: {"first_s": 0.0, "times": [], "cpu": [], "work": [], "robust": []}
                                       for key in keys}
    for mode, path in keys:
        runs[mode, path]["first_s"] = attack(forwards[path], x, y, args.steps, MODES[mode], 0)[0]
        print(f"  first call  {mode:<9} {path:<8} {runs[mode, path]['first_s']:8.2f} s", flush=True)
    for rep in range(args.repeats):
        for mode, path in keys[::1 if rep % 2 == 0 else -1]:
            seconds, cpu, work, robust = attack(forwards[path], x, y, args.steps, MODES[mode], rep + 1)
            for field, value in (("times", seconds), ("cpu", cpu), ("work", work), ("robust", robust)):
                runs[mode, path][field].append(value)
            print(f"  repeat {rep + 1}/{args.repeats} {mode:<9} {path:<8} {seconds:8.2f} s", flush=True)
    rows = []
    for mode, path in keys:
        r, eager = runs[mode, path], runs[mode, "eager"]
        median = statistics.median(r["times"])
        rows.append({"mode": mode, "path": path, "first_s": r["first_s"], "median_s": median,
                     "min_s": min(r["times"]), "max_s": max(r["times"]),
                     "img_steps_per_s": statistics.median(w / t for w, t in zip(r["work"], r["times"])),
                     "speedup": statistics.median(e / t for e, t in zip(eager["times"], r["times"])),
                     "median_cpu_s": statistics.median(r["cpu"]),
                     "cpu_speedup": statistics.median(e / t for e, t in zip(eager["cpu"], r["cpu"])),
                     "same_robust": r["robust"] == eager["robust"],
                     "robust_acc": statistics.mean(sum(f) / len(f) for f in r["robust"])})
    _, size = MODELS[name]
    return {"size": size, "batch": args.batch, "steps": args.steps, "clean_acc": clean, "rows": rows}


def table(models: dict[str, dict]) -> list[str]:
    """The Markdown table of every model's rows (also what gpu_check.md shows)."""
    header = "model | px | mode | path | first call s | median s | img·steps/s | speedup | CPU s | CPU speedup | same robust"
    lines = [f"| {header} |", "|---" * (header.count("|") + 1) + "|"]
    for name, m in models.items():
        lines += [f"| {name} | {m['size']} | {r['mode']} | {r['path']} | {r['first_s']:.2f} | {r['median_s']:.3f} | "
                  f"{r['img_steps_per_s']:.1f} | {r['speedup']:.2f} | {r['median_cpu_s']:.3f} | "
                  f"{r['cpu_speedup']:.2f} | {'yes' if r['same_robust'] else 'NO'} |"
                  for r in m["rows"]]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,vits14", help=f"comma-separated, of {sorted(MODELS)}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch's intra-op threads (default: torch's); 1 on a CPU other jobs share")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-train", type=int, default=96, help="head-fitting images (synthetic train split)")
    parser.add_argument("--n-val", type=int, default=32)
    parser.add_argument("--head-epochs", type=int, default=20)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="inductor's on-disk cache (default: a fresh temporary folder, so first calls compile)")
    parser.add_argument("--quick", action="store_true", help="the tiny model alone, batch 4, 3 steps, one round")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    names = ["tiny"] if args.quick else args.models.split(",")
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.batch, args.steps, args.repeats, args.n_train, args.n_val, args.head_epochs = 4, 3, 1, 32, 16, 5
    with tempfile.TemporaryDirectory(prefix="inductor-") as fresh:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(args.cache_dir or fresh)
        gpu = f", GPU {torch.cuda.get_device_name(args.device)}" if args.device.startswith("cuda") else ""
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}{gpu}; PGD-Linf eps 8/255, "
              f"step 2/255, {args.steps} steps, batch {args.batch}, {args.repeats} rounds")
        models = {}
        for name in names:
            print(f"\n== {name} @{MODELS[name][1]}px", flush=True)
            models[name] = benchmark(name, args)
    lines = table(models)
    print("\n" + "\n".join(lines))
    print("\nfirst call: the attack's first run (compiled: with compiling); img·steps/s: sample-gradient-steps "
          "run / wall time; speedup: eager time / this time, median over paired rounds (CPU: the same in CPU time)")
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "device": args.device, "config": {k: str(v) for k, v in vars(args).items()},
                                         "models": models, "table": lines}, indent=2))


if __name__ == "__main__":
    main()
