"""Hand-made cell runs with the engine's artifacts (``results/per_sample.csv``, ``per_image_iou.npz``,
``loss_curve.csv``) whose logged metrics are exactly the aggregates of their per-sample data; and bare
result rows without artifacts (``result_row``, ``cell_row``) for the report's frame and tables."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ssl_robust.report.artifacts import miou

CLASSES = 4
TASK_ATTACK = {"classification": "pgd", "segmentation": "segpgd", "depth": "depthpgd"}
METRIC = {"classification": "acc", "segmentation": "miou", "depth": "rmse"}
COLUMN = {"classification": "correct", "segmentation": "pixel_acc", "depth": "rmse"}


def params(encoder: str, dataset: str, task: str, attack: str, eps: float, run_id: str, n: int,
           checkpoint: str = "", **extra: Any) -> dict[str, Any]:
    """Params as ``tracking.run_results`` gives them: flattened config, short names, ids."""
    row = {"encoder": encoder, "encoder.name": encoder, "encoder.checkpoint": checkpoint, "encoder.image_size": "224",
           "dataset": dataset, "task": task, "data.name": dataset, "data.task": task, "data.n_samples": str(n),
           "data.root": "/data", "head.epochs": "10", "head.checkpoint": "", "attack.name": attack,
           "attack.eps": f"{eps:.6g}", "attack.steps": "10", "attack.restarts": "1", "seed": "0",
           "batch_size": "16", "device": "cpu", "attack": attack, "eps": f"{eps:.6g}", "eps_255": f"{eps * 255:.4g}",
           "steps": "10", "run_id": run_id, "cell_id": f"cell-{run_id}", "start_time": 0}
    row.update({k: str(v) for k, v in extra.items()})
    return row


class Cells:
    """Builds cells of one sweep; ``rows`` and ``artifacts`` (``{run_id: results folder}``) are the inputs
    of ``write_report``."""

    def __init__(self, root: Path, seed: int = 0) -> None:
        self.root, self.rng = Path(root), np.random.default_rng(seed)
        self.rows: list[dict[str, Any]] = []
        self.artifacts: dict[str, Path] = {}
        self._clean: dict[tuple, dict[str, np.ndarray]] = {}

    def _clean_side(self, key: tuple, task: str, n: int, quality: float) -> dict[str, np.ndarray]:
        """The clean per-item results of a configuration: shared by all its attack cells."""
        if key not in self._clean:
            self._clean[key] = self._side(task, n, quality)
        return self._clean[key]

    def _side(self, task: str, n: int, quality: float) -> dict[str, np.ndarray]:
        if task == "classification":
            return {"score": (self.rng.random(n) < quality).astype(float)}
        if task == "depth":
            return {"score": self.rng.gamma(4.0, quality / 4.0, n)}
        union = self.rng.integers(0, 60, (n, CLASSES))
        union[:, 0] = self.rng.integers(20, 60, n)  # every image has a labelled class
        inter = (union * np.clip(self.rng.normal(quality, 0.15, (n, CLASSES)), 0, 1)).astype(np.int64)
        return {"score": inter.sum(1) / np.maximum(union.sum(1), 1), "inter": inter, "union": union}

    def add(self, encoder: str, dataset: str, task: str, attack: str, eps: float, clean_q: float, adv_q: float,
            n: int = 60, loss: list[float] | None = None, checkpoint: str = "", run_id: str | None = None,
            **extra: Any) -> dict[str, Any]:
        run_id = run_id or f"r{len(self.rows):03d}"
        key = (encoder, dataset, task, checkpoint, n, tuple(sorted(extra.items())))
        clean = self._clean_side(key, task, n, clean_q)
        adv = clean if eps == 0 else self._side(task, n, adv_q)
        index = np.arange(n) * 3 + 7  # the items' indices in the data set, not 0..n-1
        order = self.rng.permutation(n)  # written in batch order, not sorted
        folder = self.root / run_id / "results"
        folder.mkdir(parents=True)
        pd.DataFrame({"index": index[order], f"clean_{COLUMN[task]}": clean["score"][order],
                      f"adv_{COLUMN[task]}": adv["score"][order], "attack_loss": self.rng.random(n)}) \
            .to_csv(folder / "per_sample.csv", index=False)
        if task == "segmentation":
            np.savez(folder / "per_image_iou.npz", index=index[order], clean_inter=clean["inter"][order],
                     clean_union=clean["union"][order], adv_inter=adv["inter"][order], adv_union=adv["union"][order])
        if attack != "noise":
            curve = loss if loss is not None else list(1 - np.exp(-np.arange(1, 11) / 2.0))
            pd.DataFrame({"step": range(1, len(curve) + 1), "mean_loss": curve}).to_csv(folder / "loss_curve.csv",
                                                                                         index=False)
        metric = METRIC[task]
        value = lambda side: miou(side["inter"], side["union"]) if task == "segmentation" \
            else float(np.mean(side["score"]))  # noqa: E731
        row = params(encoder, dataset, task, attack, eps, run_id, n, checkpoint, **extra)
        row.update({f"clean/{metric}": value(clean), f"adv/{metric}": value(adv), "n_samples": float(n),
                    "check/delta_in_ball": 1.0, "check/all_passed": 1.0})
        self.rows.append(row)
        self.artifacts[run_id] = folder
        return row


def sweep(root: Path, n: int = 60, special: dict[tuple, dict[str, Any]] | None = None) -> Cells:
    """Two encoders x three tasks x (EmbedAttack, noise, the task's attack) x three eps; ``special``
    replaces ``add``'s arguments of the cells keyed (encoder, task, attack, eps * 255)."""
    cells, special = Cells(root), special or {}
    quality = {"classification": (0.9, 0.8), "segmentation": (0.7, 0.6), "depth": (0.5, 0.6)}
    datasets = {"classification": "cifar10", "segmentation": "voc2012", "depth": "nyuv2"}
    for encoder, k in (("dinov2_vits14", 0), ("dino_vitb16", 1)):
        for task, dataset in datasets.items():
            clean = quality[task][k]
            for attack, strength in (("embed", 0.5), (TASK_ATTACK[task], 0.8), ("noise", 0.1)):
                for eps in (0.0, 4 / 255, 8 / 255):
                    hit = strength * eps * 255 / 8
                    adv = clean * (1 - hit) if task != "depth" else clean * (1 + 3 * hit)
                    args = {"adv_q": adv, "n": n, **special.get((encoder, task, attack, round(eps * 255)), {})}
                    cells.add(encoder, dataset, task, attack, eps, clean, **args)
    return cells


def result_row(encoder, dataset, task, attack, eps, clean, adv, checkpoint="", passed=1.0):
    """A finished cell's row with only what the tables read: names, clean and attacked scores, checks."""
    key = {"classification": "acc", "segmentation": "miou", "depth": "rmse"}[task]
    return {"encoder": encoder, "encoder.checkpoint": checkpoint, "dataset": dataset, "task": task,
            "attack": attack, "eps": str(eps), f"clean/{key}": clean, f"adv/{key}": adv,
            "check/delta_in_ball": passed, "check/all_passed": passed}


def cell_row(attack, eps, clean, adv, run_id, steps=10, image_size=224, **params):
    """A row as ``tracking.run_results`` gives it: flattened cell config, short names, metrics, ids."""
    row = result_row("dinov2_vits14", "cifar10", "classification", attack, eps, clean, adv)
    row.update({"encoder.name": "dinov2_vits14", "encoder.image_size": str(image_size), "encoder.layer": "",
                "data.name": "cifar10", "data.n_samples": "64", "data.root": "/data/cifar10",
                "head.epochs": "10", "head.checkpoint": f"runs:/head-{run_id}/head/head.safetensors",
                "attack.name": attack, "attack.eps": f"{eps:.6g}", "attack.steps": str(steps),
                "attack.step_size": "", "attack.restarts": "1", "attack.stop_when_fooled": "True",
                "seed": "0", "batch_size": "16", "device": "cuda", "steps": str(steps), "eps_255": f"{eps * 255:.4g}",
                "run_id": run_id, "cell_id": f"cell-{run_id}"})
    row.update({k: str(v) for k, v in params.items()})
    return row


RUN_A, RUN_B = "3f9c2a71d0b44e5e9d1c", "a81be04c9d2f4f11b7e0"


def deacl_cells(root: Path):
    """The sweep plus students of dino_vitb16 at epochs 1 and 2 of two DeACL runs (teacher: the sweep's)."""
    cells = sweep(root, n=30)
    for run, gain in ((RUN_A, 0.15), (RUN_B, 0.03)):
        for epoch in (1, 2):
            checkpoint = f"runs:/{run}/checkpoints/epoch_{epoch:03d}.safetensors"
            for attack, strength in (("embed", 0.5), ("pgd", 0.8)):
                cells.add("dino_vitb16", "cifar10", "classification", attack, 8 / 255, 0.8 - 0.03 * epoch,
                          0.8 * (1 - strength) + gain * epoch, n=30, checkpoint=checkpoint)
    return cells


def deacl_runs() -> list[dict[str, str]]:
    """The params of ``deacl_cells``' two DeACL runs: gamma 2, and gamma 0 with a dense term."""
    return [{"run_id": RUN_A, "gamma": "2.0", "dense_weight": "0.0"}, {"run_id": RUN_B, "gamma": "0.0",
                                                                        "dense_weight": "0.5"}]
