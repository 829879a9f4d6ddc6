"""Clean and attacked scores of the same heads under each evaluation protocol, side by side:
``data.eval`` resize | slide (native label resolution) x ``attack.select`` final | worst.

    python benchmarks/eval_protocols.py                       # the tiny encoders on synthetic data, ~2 min
    python benchmarks/eval_protocols.py --encoders dinov2_vits14 --data-root ~/data --datasets ade20k

Each (encoder, data set) fits one head, then runs the task attack (SegPGD / DepthPGD, L-inf,
8/255, 10 steps) in the four protocol combinations on the same test images.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from ssl_robust.cell import run_cell
from ssl_robust.head_fit import prepare_head
from ssl_robust.config import CellCfg
from ssl_robust.tasks import TASKS


def cell(encoder: str, dataset: str, task: str, root: Path | None, n: int) -> dict:
    data = {"name": dataset, "task": task, "n_train": 256, "n_val": 64, "n_samples": n}
    if root is not None:
        data["root"] = str(root / dataset)
    return {"encoder": {"name": encoder}, "data": data, "head": {"epochs": 20, "lr": 0.05},
            "attack": {"name": TASKS.get(task).own_attack, "eps": "8/255", "steps": 10}, "batch_size": 16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=["tiny_dinov2", "tiny_dino"])
    parser.add_argument("--datasets", nargs="+", default=["synthetic:segmentation", "synthetic:depth"],
                        help="NAME or NAME:TASK")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--n-samples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'encoder':<14} {'data set':<24} {'eval':<7} {'select':<7} {'metric':<6} {'clean':>8} {'attacked':>9} "
          f"{'pixels':>9}  checks")
    with tempfile.TemporaryDirectory() as tmp:
        for encoder in args.encoders:
            for entry in args.datasets:
                name, _, task = entry.partition(":")
                base = cell(encoder, name, task or None, args.data_root, args.n_samples)
                head = Path(tmp) / f"{encoder}-{name}-{task}.safetensors"
                prepare_head(CellCfg.model_validate(base), head)
                metric = TASKS.get(CellCfg.model_validate(base).data.resolved_task).metric
                for mode in ("resize", "slide"):
                    for select in ("final", "worst"):
                        cfg = CellCfg.model_validate({**base, "data": {**base["data"], "eval": mode},
                                                      "attack": {**base["attack"], "select": select},
                                                      "head": {**base["head"], "checkpoint": str(head)}})
                        m = run_cell(cfg)
                        print(f"{encoder:<14} {entry:<24} {mode:<7} {select:<7} {metric:<6} {m[f'clean/{metric}']:>8.4f} "
                              f"{m[f'adv/{metric}']:>9.4f} {m['eval/pixels']:>9.0f}  {m['check/all_passed']:.0f}",
                              flush=True)


if __name__ == "__main__":
    main()
