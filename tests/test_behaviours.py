"""Behaviours a published number rests on across modules, each pinned by its effect on a whole cell:
task attacks beat noise of the same eps and more steps beat one (the objective, the engine and the
cell's settings together), and per-sample files agree with an independent recount of the scores.
Effects that one module decides sit with that module's tests: the head epoch kept (test_heads), the
steps, restarts and random starts that reach the engine and what EmbedAttack pushes (test_cell), the
iterate the engine returns (test_pgd), the oldest FINISHED run (tracking/test_cells)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_robust.cell import run_cell
from tests.helpers import TINY_N_SAMPLES, head_cfg

TASKS = ["classification", "segmentation", "depth"]
PRIMARY = {"classification": ("acc", True), "segmentation": ("miou", True), "depth": ("rmse", False)}
N_SAMPLES = TINY_N_SAMPLES  # conftest's tiny cell


def worse(task: str, a: float, b: float) -> bool:
    """Whether score ``a`` is strictly worse than ``b`` for the task's primary metric."""
    return a < b if PRIMARY[task][1] else a > b


def adv_score(metrics: dict[str, float], task: str) -> float:
    return metrics[f"adv/{PRIMARY[task][0]}"]


# ----------------------------------------------------------------------------- attack strength


@pytest.mark.parametrize("task", TASKS)
def test_task_attack_scores_strictly_worse_than_uniform_noise_of_the_same_eps(make_cell_cfg, fitted_head,
                                                                             task: str) -> None:
    """Same head, same images, same eps: gradient steps must beat the random start alone."""
    attacked = run_cell(head_cfg(make_cell_cfg, fitted_head, task))
    noise = run_cell(head_cfg(make_cell_cfg, fitted_head, task, attack={"name": "noise"}))
    assert worse(task, adv_score(attacked, task), adv_score(noise, task)), (attacked, noise)


@pytest.mark.parametrize("task", TASKS)
def test_more_steps_score_strictly_worse_than_one_step(make_cell_cfg, fitted_head, task: str) -> None:
    """With a step of eps/4, ten steps travel further than one: a cell that ignores attack.steps
    (one step, or the random start only) scores the same for both."""
    eps = 8 / 255

    def attacked(steps: int) -> float:
        attack = {"eps": eps, "steps": steps, "step_size": eps / 4, "stop_when_fooled": False}
        return adv_score(run_cell(head_cfg(make_cell_cfg, fitted_head, task, attack=attack)), task)

    many, one = attacked(10), attacked(1)
    assert worse(task, many, one), (many, one)


# ----------------------------------------------------------------------------- per-sample files


def _independent_model(cfg, head_path: Path):
    from ssl_robust.head_fit import load_head
    from ssl_robust.encoders import create_encoder
    from ssl_robust.heads import TaskModel

    torch.manual_seed(cfg.seed)  # run_cell's encoder weights
    encoder = create_encoder(cfg.encoder)
    return TaskModel(encoder, load_head(cfg, encoder, str(head_path))).eval()


def _per_sample(task: str, output: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Correct / pixel accuracy / RMSE per item, in plain numpy."""
    if task == "classification":
        return (output.argmax(1) == target).astype(float)
    if task == "segmentation":
        labelled = target != 255
        return ((output.argmax(1) == target) & labelled).sum((1, 2)) / np.maximum(labelled.sum((1, 2)), 1)
    lo, hi = _depth_range()
    return np.array([math.sqrt(float(np.mean((o[(t > lo) & (t <= hi)] - t[(t > lo) & (t <= hi)]) ** 2)))
                     for o, t in zip(output, target)])


def _depth_range() -> tuple[float, float]:
    from ssl_robust.data import DATASETS

    info = DATASETS.get("synthetic").infos["depth"]
    return info.min_depth, info.max_depth


@pytest.mark.parametrize("task", TASKS)
def test_per_sample_csv_matches_an_independent_recount(make_cell_cfg, fitted_head, engine_spy, tmp_path: Path,
                                                       task: str) -> None:
    """Clean and attacked per-item scores, recomputed from the test images and the attacked inputs
    with a separately built model and numpy, equal the CSV's, item by item."""
    from ssl_robust.data.load import load_split

    cfg = head_cfg(make_cell_cfg, fitted_head, task, data={"eval": "resize"} if task != "classification" else {})
    run_cell(cfg, tmp_path)
    model = _independent_model(cfg, fitted_head(task))
    dataset, _ = load_split(cfg.data, "test", 28, seed=cfg.seed)
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    target = np.stack([np.asarray(dataset[i][1]) for i in range(len(dataset))])
    x_adv = torch.cat([c["x_adv"] for c in engine_spy.attacks()])  # batches in item order
    with torch.no_grad():
        clean, adv = (_per_sample(task, model(z).numpy(), target) for z in (x, x_adv))
    with open(tmp_path / "per_sample.csv", newline="") as f:
        rows = {int(r["index"]): r for r in csv.DictReader(f)}
    column = {"classification": "correct", "segmentation": "pixel_acc", "depth": "rmse"}[task]
    assert sorted(rows) == list(range(N_SAMPLES))
    np.testing.assert_allclose([float(rows[i][f"clean_{column}"]) for i in range(N_SAMPLES)], clean, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose([float(rows[i][f"adv_{column}"]) for i in range(N_SAMPLES)], adv, rtol=1e-4,
                               atol=1e-6)
    assert not np.allclose(clean, adv)  # the attack changed something the recount sees
