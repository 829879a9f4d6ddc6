"""Behaviours a published number rests on, each pinned by its effect: the head kept is the best on
validation, the configured steps and restarts reach the engine, task attacks beat noise and more steps
beat one, EmbedAttack pushes what the head reads, depth heads read CLS, every batch draws its own
random start, the oldest FINISHED run wins, and per-sample files agree with an independent recount."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_robust import engine as engine_module
from ssl_robust.cell import run_cell
from ssl_robust.features import Features
from ssl_robust.heads import DINOv2DepthHead, LinearClassifier, LinearDepthHead, fit_head
from ssl_robust.pgd import pgd
from tests.helpers import EngineSpy

TASKS = ["classification", "segmentation", "depth"]
PRIMARY = {"classification": ("acc", True), "segmentation": ("miou", True), "depth": ("rmse", False)}
N_SAMPLES, BATCH = 16, 8  # conftest's tiny cell


def worse(task: str, a: float, b: float) -> bool:
    """Whether score ``a`` is strictly worse than ``b`` for the task's primary metric."""
    return a < b if PRIMARY[task][1] else a > b


def adv_score(metrics: dict[str, float], task: str) -> float:
    return metrics[f"adv/{PRIMARY[task][0]}"]


@pytest.fixture()
def engine(monkeypatch: pytest.MonkeyPatch) -> EngineSpy:
    spy = EngineSpy()
    monkeypatch.setattr(engine_module, "pgd", spy)
    return spy


def head_cfg(make_cell_cfg, fitted_head, task: str, **updates: Any):
    return make_cell_cfg(task, head={"checkpoint": str(fitted_head(task))}, **updates)


# ----------------------------------------------------------------------------- fit_head


def _overconfident_fit():
    """A separable train set and a validation set with a fifth of its labels flipped, scored by
    minus the validation cross-entropy: it improves while the margin grows to ln 4, then gets worse
    as the head grows overconfident, so the validation curve peaks early."""
    gen = torch.Generator().manual_seed(0)
    dim = 4

    def split(n: int, flip: float) -> tuple[Features, torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 2
        cls = torch.randn(n, dim, generator=gen) * 0.3
        cls[:, 0] += (2 * y - 1).float()
        labels = torch.where(torch.rand(n, generator=gen) < flip, 1 - y, y)
        features = Features(n, "memory")
        features.append(cls, torch.zeros(n, dim), labels)
        return features, cls.half().float(), labels  # the head sees float16-cached features

    (train, _, _), (val, val_cls, val_labels) = split(64, 0.0), split(200, 0.2)
    curve: list[float] = []

    def val_score(batches) -> float:
        outs, targets = zip(*batches)
        score = -float(F.cross_entropy(torch.cat(outs), torch.cat(targets)))
        curve.append(score)
        return score

    torch.manual_seed(0)
    head = LinearClassifier(dim, 2)
    head, metrics = fit_head(head, train, val, loss_fn=F.cross_entropy, val_score=val_score, epochs=30, lr=0.1,
                             weight_decay=0.0, batch_size=256, seed=0, device=torch.device("cpu"))
    return head, metrics, curve, (val_cls, val_labels)


def test_fit_head_keeps_the_epoch_best_on_validation_not_the_last() -> None:
    """The validation curve peaks mid-training; the returned head is that epoch's."""
    head, metrics, curve, val = _overconfident_fit()
    best = int(np.argmax(curve))
    assert 0 < best < len(curve) - 1 and curve[-1] < max(curve) - 1e-3, curve  # the peak is neither end
    assert metrics["head/best_epoch"] == best + 1
    assert metrics["head/val_score"] == pytest.approx(max(curve))
    with torch.no_grad():
        rescored = -float(F.cross_entropy(head(val[0], torch.zeros_like(val[0]), (1, 1)), val[1]))
    assert rescored == pytest.approx(max(curve), abs=1e-6)  # the weights are the best epoch's


# ----------------------------------------------------------------------------- steps and restarts


def test_engine_takes_one_gradient_forward_per_sample_step_and_restart() -> None:
    """Counted from outside the engine: n samples x steps x restarts forwards carry a gradient."""
    weight = torch.randn(3, 12, generator=torch.Generator().manual_seed(0))
    seen = {"grad": 0}

    def forward(z: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and z.requires_grad:
            seen["grad"] += z.shape[0]
        return z.flatten(1) @ weight.T

    x = torch.rand(5, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    pgd(forward, lambda out, y, step, steps: F.cross_entropy(out, y, reduction="none"), x, torch.zeros(5).long(),
        eps=8 / 255, step_size=2 / 255, steps=4, restarts=3)
    assert seen["grad"] == 5 * 4 * 3


@pytest.mark.parametrize("task", TASKS)
def test_cell_spends_the_configured_steps_and_restarts_on_every_sample(make_cell_cfg, fitted_head, engine,
                                                                       task: str) -> None:
    """Counted at the engine's forward: n_samples x steps x restarts at the cell's budget, and the
    cell's ``attack/grad_steps`` is that plus the eps = 0 check's steps."""
    cfg = head_cfg(make_cell_cfg, fitted_head, task, attack={"steps": 3, "restarts": 2, "stop_when_fooled": False})
    metrics = run_cell(cfg)
    assert sum(c["grad_forwards"] for c in engine.attacks()) == N_SAMPLES * 3 * 2
    assert metrics["attack/grad_steps"] == sum(c["grad_forwards"] for c in engine.calls)


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


# ----------------------------------------------------------------------------- what is attacked


@pytest.mark.parametrize("task, part", [("classification", 0), ("segmentation", 1), ("depth", 1)])
def test_embed_attack_pushes_the_representation_the_task_head_reads(make_cell_cfg, tiny_encoder, task: str,
                                                                    part: int) -> None:
    """CLS [B, D] for classification, the patch-token grid [B, D, h, w] for dense tasks."""
    from ssl_robust.cell import attack_setup, views
    from ssl_robust.data.load import task_info
    from ssl_robust.heads import TaskModel
    from ssl_robust.tasks import TASKS as REGISTRY

    cfg = make_cell_cfg(task, attack={"name": "embed"}, data={"eval": "resize"} if part else {})
    spec = REGISTRY.get(task)
    model = TaskModel(tiny_encoder, spec.build_head(task_info(cfg.data), tiny_encoder.embed_dim, cfg.head))
    setup = attack_setup(cfg, views(cfg, model, spec, (28, 28)), spec, task_info(cfg.data))
    x = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target, read = setup.target(x, torch.zeros(2)), tiny_encoder.features(x)[part]
    assert target.shape == read.shape
    torch.testing.assert_close(target, read)


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_embed_attack_under_sliding_windows_pushes_token_grids(make_cell_cfg, tiny_encoder, task: str) -> None:
    from ssl_robust.cell import attack_setup, views
    from ssl_robust.data.load import task_info
    from ssl_robust.heads import TaskModel
    from ssl_robust.tasks import TASKS as REGISTRY

    cfg = make_cell_cfg(task, attack={"name": "embed"})
    spec = REGISTRY.get(task)
    model = TaskModel(tiny_encoder, spec.build_head(task_info(cfg.data), tiny_encoder.embed_dim, cfg.head))
    setup = attack_setup(cfg, views(cfg, model, spec, (28, 42)), spec, task_info(cfg.data))
    with torch.no_grad():
        target = setup.target(torch.rand(2, 3, 28, 42), torch.zeros(2))
    assert target.dim() == 4 and target.shape[1] == tiny_encoder.embed_dim


@pytest.mark.parametrize("head_class", [LinearDepthHead, DINOv2DepthHead])
def test_depth_heads_read_the_cls_embedding(head_class) -> None:
    """The same patch tokens with another CLS give another depth map."""
    torch.manual_seed(0)
    head = head_class(8, n_bins=16, min_depth=0.5, max_depth=10.0).eval()
    tokens = torch.randn(1, 8, 2, 2)
    with torch.no_grad():
        one, other = head(torch.randn(1, 8), tokens, (8, 8)), head(5 * torch.randn(1, 8), tokens, (8, 8))
    assert float((one - other).abs().max()) > 1e-3


# ----------------------------------------------------------------------------- random starts


def test_every_batch_draws_its_own_random_start(make_cell_cfg, fitted_head, engine) -> None:
    """Uniform noise on two batches: their perturbations differ (one seed for all would repeat
    the same noise pattern)."""
    run_cell(head_cfg(make_cell_cfg, fitted_head, "classification", attack={"name": "noise"}))
    first, second = [c["x_adv"] - c["x"] for c in engine.attacks()]
    assert first.shape == second.shape
    same = (first - second).abs() < 1e-6
    assert float(same.float().mean()) < 0.1


def test_unfooled_sample_returns_the_final_iterate_of_its_best_restart_not_its_highest_loss_step() -> None:
    """With a success function, an unfooled sample gets the final iterate of the restart whose
    final loss is highest. Losses of earlier steps are never compared with it: here the loss
    (weighted by step, as SegPGD's) is highest at the first step, yet the final iterate is returned."""
    x = torch.full((1, 1, 1, 1), 0.2)

    def forward(z: torch.Tensor) -> torch.Tensor:
        return z.flatten(1)

    def objective(out: torch.Tensor, target: torch.Tensor, step: int, steps: int) -> torch.Tensor:
        return out[:, 0] * (steps - step + 1)  # ascends x, weighs the early steps most

    never = lambda out, target: torch.zeros(out.shape[0], dtype=torch.bool)  # noqa: E731
    result = pgd(forward, objective, x, torch.zeros(1), eps=0.1, step_size=0.01, steps=5, random_start=False,
                 success_fn=never)
    torch.testing.assert_close(result.x_adv, torch.full_like(x, 0.25))  # five steps of 0.01
    torch.testing.assert_close(result.loss, torch.tensor([0.25]))  # its loss at the final step
    assert not bool(result.success[0])


def test_unfooled_sample_keeps_the_final_iterate_even_past_the_loss_peak() -> None:
    """A loss that rises then falls along the ascent (overshooting its peak at 0.245): the
    highest-loss iterate (0.24) is seen mid-way, the engine returns the final one (0.26)."""
    x = torch.full((1, 1, 1, 1), 0.2)

    def objective(out: torch.Tensor, target: torch.Tensor, step: int, steps: int) -> torch.Tensor:
        return -(out[:, 0] - 0.245) ** 2

    never = lambda out, target: torch.zeros(out.shape[0], dtype=torch.bool)  # noqa: E731
    result = pgd(lambda z: z.flatten(1), objective, x, torch.zeros(1), eps=0.1, step_size=0.02, steps=9,
                 random_start=False, success_fn=never)
    torch.testing.assert_close(result.x_adv, torch.full_like(x, 0.26))
    torch.testing.assert_close(result.loss, torch.tensor([-(0.26 - 0.245) ** 2]))


def test_across_restarts_the_highest_final_loss_wins() -> None:
    """Random starts give restarts different final iterates; the one with the highest final loss is kept."""
    x = torch.full((1, 1, 1, 1), 0.5)
    finals: list[float] = []

    def objective(out: torch.Tensor, target: torch.Tensor, step: int, steps: int) -> torch.Tensor:
        if step == steps and not torch.is_grad_enabled():
            finals.append(float(out[0, 0]))
        return -(out[:, 0] - 0.52) ** 2  # peak inside the ball

    never = lambda out, target: torch.zeros(out.shape[0], dtype=torch.bool)  # noqa: E731
    result = pgd(lambda z: z.flatten(1), objective, x, torch.zeros(1), eps=0.05, step_size=0.015, steps=2,
                 restarts=4, seed=3, success_fn=never)
    assert len(set(round(f, 6) for f in finals)) > 1, finals
    best = min(finals, key=lambda f: abs(f - 0.52))
    assert float(result.x_adv.flatten()[0]) == pytest.approx(best, abs=1e-6)


# ----------------------------------------------------------------------------- duplicates


def test_the_oldest_finished_run_of_a_cell_wins_over_a_newer_one(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from ssl_robust import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = tracking.ensure_experiment("duplicates", uri)
    client = MlflowClient(uri)
    tags = {"phase": "attack", "cell_id": "cell-1"}
    newer = client.create_run(exp_id, start_time=2_000_000, tags=tags).info.run_id  # created first, started later
    older = client.create_run(exp_id, start_time=1_000_000, tags=tags).info.run_id
    for run_id in (newer, older):
        client.set_terminated(run_id, "FINISHED")
    assert tracking.finished_cells("duplicates", uri) == {"cell-1": older}


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
def test_per_sample_csv_matches_an_independent_recount(make_cell_cfg, fitted_head, engine, tmp_path: Path,
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
    x_adv = torch.cat([c["x_adv"] for c in engine.attacks()])  # batches in item order
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
