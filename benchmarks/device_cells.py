"""One cell per task on a device and on the CPU: the same config, scored on both, so a GPU run shows
that every tensor lands where it should and that the numbers agree (robust score, check flags, time).

    .venv/bin/python benchmarks/device_cells.py --device cuda --json cells.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ssl_robust.cell import run_cell
from ssl_robust.config import CellCfg
from ssl_robust.tasks import TASKS

ATTACK = {"classification": "pgd", "segmentation": "segpgd", "depth": "depthpgd"}


def cell(task: str, device: str, attack: str) -> CellCfg:
    return CellCfg.model_validate({
        "encoder": {"name": "tiny_dinov2"},
        "data": {"name": "synthetic", "task": task, "n_train": 128, "n_val": 32, "n_samples": 32},
        "head": {"epochs": 10, "lr": 0.05}, "attack": {"name": attack, "eps": "8/255", "steps": 10},
        "batch_size": 16, "device": device, "seed": 0})


def measure(cfg: CellCfg) -> dict:
    start = time.perf_counter()
    metrics = run_cell(cfg)
    metric = TASKS.get(cfg.data.resolved_task).metric
    return {"clean": metrics[f"clean/{metric}"], "adv": metrics[f"adv/{metric}"],
            "checks_passed": metrics["check/all_passed"] == 1.0, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    print(f"{'task':<15} {'attack':<9} {'device':<8} {'clean':>7} {'adv':>7} {'checks':>6} {'s':>6}")
    for task in ("classification", "segmentation", "depth"):
        for attack in (ATTACK[task], "standard"):
            for device in dict.fromkeys((args.device, "cpu")):
                r = {"task": task, "attack": attack, "device": device, **measure(cell(task, device, attack))}
                rows.append(r)
                print(f"{task:<15} {attack:<9} {device:<8} {r['clean']:7.4f} {r['adv']:7.4f} "
                      f"{'ok' if r['checks_passed'] else 'FAIL':>6} {r['seconds']:6.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "device": args.device, "cells": rows}, indent=2))


if __name__ == "__main__":
    main()
