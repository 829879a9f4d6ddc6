"""Peak resident memory of head fitting against the number of training images, for the float16
feature cache on disk (``head.features: disk``, the default) and in RAM (``memory``).

Each row runs in a fresh process: a ViT-S/14-wide encoder (random init, 1 block, 224 px: 257
tokens x 384 per image) extracts the patch-token grid of n synthetic segmentation images, and a
linear segmentation head is fitted on them for 2 epochs. Peak RSS is the process's maximum resident
set (``getrusage``); "before" is the resident set once the model is built, before any feature.

    .venv/bin/python benchmarks/head_memory.py                      # n = 256, 1024, 2048; ~5 min
    .venv/bin/python benchmarks/head_memory.py --n 128 512 --quick
"""
from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ssl_robust.config import EncoderCfg, HeadCfg
from ssl_robust.data.catalog import TaskInfo
from ssl_robust.data.synthetic import SyntheticDataset
from ssl_robust.encoders import create_encoder
from ssl_robust.heads import LinearSegmenter, extract_features, fit_head
from ssl_robust.tasks import TASKS


def _rss_mb() -> float:
    """Current resident set of this process in MB (from /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(n: int, storage: str, size: int, depth: int) -> dict:
    """Extract n training images' features and fit a head; memory and time figures."""
    torch.manual_seed(0)
    encoder = create_encoder(EncoderCfg(name="dinov2_vits14", pretrained=False, image_size=size,
                                        model_kwargs={"depth": depth, "init_values": 1.0}))
    train_set, val_set = SyntheticDataset("train", "segmentation", size), SyntheticDataset("val", "segmentation", size)
    train_set.length, val_set.length = n, 64
    info, task = TaskInfo("segmentation", num_classes=5), TASKS.get("segmentation")
    before = _rss_mb()
    start = time.perf_counter()
    extract = functools.partial(extract_features, encoder, device=torch.device("cpu"), storage=storage)
    with extract(DataLoader(train_set, batch_size=32), desc="train") as train, \
            extract(DataLoader(val_set, batch_size=32), desc="val") as val:
        _, stats = fit_head(LinearSegmenter(encoder.embed_dim, info.num_classes), train, val,
                            loss_fn=task.loss(info, HeadCfg()), val_score=functools.partial(task.validation_score, info),
                            epochs=2, lr=1e-3, weight_decay=0.0, batch_size=64, seed=0, device=torch.device("cpu"))
        feature_mb = (train.nbytes() + val.nbytes()) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n_train": n, "storage": storage, "feature_mb": feature_mb, "rss_before_mb": before, "peak_rss_mb": peak,
            "seconds": time.perf_counter() - start, "val_miou": stats["head/val_score"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[256, 1024, 2048], help="training images per row")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--depth", type=int, default=1, help="encoder blocks (the width is ViT-S/14's)")
    parser.add_argument("--quick", action="store_true", help="56 px: a smoke test")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", nargs=2, metavar=("N", "STORAGE"), help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.quick:
        args.size = 56
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1], args.size, args.depth)))
        return
    rows = []
    for n in args.n:
        for storage in ("disk", "memory"):
            out = subprocess.run([sys.executable, __file__, "--one", str(n), storage, "--size", str(args.size),
                                  "--depth", str(args.depth)], capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f"  n={n} {storage}: peak {rows[-1]['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
    print(f"\nhead fitting, segmentation features of a ViT-S/14-wide encoder ({args.depth} block) at {args.size} px, "
          f"float16 cache, 2 epochs; torch {torch.__version__}\n")
    header = f"{'n_train':>7} {'storage':>7} {'features MB':>11} {'RSS before MB':>13} {'peak RSS MB':>11} " \
             f"{'growth MB':>9} {'seconds':>7}"
    print(f"{header}\n{'-' * len(header)}")
    for r in rows:
        print(f"{r['n_train']:7d} {r['storage']:>7} {r['feature_mb']:11.0f} {r['rss_before_mb']:13.0f} "
              f"{r['peak_rss_mb']:11.0f} {r['peak_rss_mb'] - r['rss_before_mb']:9.0f} {r['seconds']:7.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
