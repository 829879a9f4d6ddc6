"""How a cell assembles its number from batches: every attack setting reaches the engine, results
and checks sum over all batches, the example image and the result folders, the times it logs."""
from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_robust import cell as cell_module
from ssl_robust import engine as engine_module
from ssl_robust.cell import Tally, run_cell, write_results
from ssl_robust.head_fit import prepare_head
from ssl_robust.data.catalog import TaskInfo
from ssl_robust.examples import Example
from ssl_robust.tasks import TASKS
from tests.helpers import EngineSpy

BATCH = 8  # conftest's tiny cell: 16 test images in batches of 8


def spy_engine(monkeypatch: pytest.MonkeyPatch, edit=None) -> EngineSpy:
    spy = EngineSpy(edit)
    monkeypatch.setattr(engine_module, "pgd", spy)
    return spy


def head_cfg(make_cell_cfg, fitted_head, task: str, **updates: Any):
    return make_cell_cfg(task, head={"checkpoint": str(fitted_head(task))}, **updates)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_every_attack_setting_reaches_the_engine(make_cell_cfg, fitted_head, monkeypatch, task: str) -> None:
    spy = spy_engine(monkeypatch)
    attack = {"eps": 0.05, "step_size": 0.01, "steps": 2, "restarts": 2, "norm": "l2", "random_start": False,
              "stop_when_fooled": False}
    run_cell(head_cfg(make_cell_cfg, fitted_head, task, attack=attack, seed=5))
    calls = spy.attacks()
    assert len(calls) >= 2 and {c["seed"] for c in calls} == {5}
    assert sorted(i for c in calls for i in c["ids"]) == list(range(2 * BATCH))  # each start seeded by (seed, item)
    for call in calls:
        kwargs = call["kwargs"]
        assert {k: kwargs[k] for k in ("eps", "step_size", "steps", "restarts", "norm", "random_start",
                                       "stop_when_fooled")} == attack
        assert (kwargs["success_fn"] is not None) == (task == "classification")  # misclassification
        assert (kwargs["damage_fn"] is not None) == (task == "segmentation")  # each image's most damaging iterate


@pytest.mark.parametrize("n_samples", [16, 1])  # two batches; one sample per step
def test_the_loss_curve_sums_every_batch(make_cell_cfg, fitted_head, monkeypatch, tmp_path: Path,
                                         n_samples: int) -> None:
    spy = spy_engine(monkeypatch)
    cfg = head_cfg(make_cell_cfg, fitted_head, "classification", attack={"stop_when_fooled": False},
                   data={"n_samples": n_samples})
    run_cell(cfg, tmp_path)
    results = [c["result"] for c in spy.attacks()]
    expected = sum(r.step_loss_sum for r in results) / sum(r.step_count for r in results)
    with open(tmp_path / "loss_curve.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, len(expected) + 1))
    np.testing.assert_allclose([float(r["mean_loss"]) for r in rows], expected.numpy(), rtol=1e-6)


def test_a_non_finite_gradient_in_the_first_batch_fails_the_check(make_cell_cfg, fitted_head, monkeypatch) -> None:
    def first_batch_non_finite(result, call) -> None:
        if call["eps"] > 0 and call["ids"][0] == 0:
            result.grad_finite = False

    spy_engine(monkeypatch, first_batch_non_finite)
    metrics = run_cell(head_cfg(make_cell_cfg, fitted_head, "classification"))
    assert metrics["check/grad_finite"] == 0.0 and metrics["check/all_passed"] == 0.0


def test_zero_gradients_fail_the_check_of_a_cell_that_takes_steps(make_cell_cfg, fitted_head, monkeypatch) -> None:
    def no_gradient(result, call) -> None:
        result.grad_zero = torch.ones(len(result.x_adv), dtype=torch.bool)

    spy_engine(monkeypatch, no_gradient)
    metrics = run_cell(head_cfg(make_cell_cfg, fitted_head, "classification"))
    assert metrics["check/grad_nonzero"] == 0.0


def test_a_success_the_scored_model_does_not_confirm_fails_the_rescore_check(make_cell_cfg, fitted_head,
                                                                             monkeypatch) -> None:
    def flip_first_sample(result, call) -> None:
        if call["eps"] > 0 and call["ids"][0] == 0:
            call["fooled"] = int(result.success.sum())
            result.success = result.success.clone()
            result.success[0] = ~result.success[0]

    spy = spy_engine(monkeypatch, flip_first_sample)
    metrics = run_cell(head_cfg(make_cell_cfg, fitted_head, "classification", attack={"eps": "1/255", "steps": 1}))
    assert 1 < spy.attacks()[0]["fooled"] < BATCH - 1  # a weak attack: fooled and unfooled samples both
    assert metrics["check/success_matches_rescore"] == 0.0 and metrics["attack/rescore_disagreements"] == 1.0


def test_a_classification_cell_rescores_its_successes(make_cell_cfg, fitted_head) -> None:
    metrics = run_cell(head_cfg(make_cell_cfg, fitted_head, "classification"))
    assert metrics["check/success_matches_rescore"] == 1.0 and metrics["attack/rescore_disagreements"] == 0.0


def test_uniform_noise_is_not_checked_for_scoring_no_better_than_clean(make_cell_cfg, fitted_head) -> None:
    metrics = run_cell(head_cfg(make_cell_cfg, fitted_head, "classification", attack={"name": "noise"}))
    assert "check/adv_not_better" not in metrics
    assert "check/adv_not_better" in run_cell(head_cfg(make_cell_cfg, fitted_head, "classification"))


def test_the_embedding_attack_is_not_checked_for_scoring_no_better_than_clean(make_cell_cfg, fitted_head) -> None:
    metrics = run_cell(head_cfg(make_cell_cfg, fitted_head, "segmentation", attack={"name": "embed"}))
    assert "check/adv_not_better" not in metrics and metrics["check/all_passed"] == 1.0


def test_the_example_figure_shows_the_first_batch_and_its_attack(make_cell_cfg, fitted_head, monkeypatch,
                                                                 tmp_path: Path) -> None:
    spy = spy_engine(monkeypatch)
    shown: list[Example] = []
    real = cell_module.save_examples
    monkeypatch.setattr(cell_module, "save_examples", lambda example, *args: shown.append(example) or real(example, *args))
    run_cell(head_cfg(make_cell_cfg, fitted_head, "classification"), tmp_path)
    first = spy.attacks()[0]
    (example,) = shown
    assert torch.equal(example.x, first["x"][:4].cpu()) and torch.equal(example.x_adv, first["x_adv"][:4].cpu())
    with Image.open(tmp_path / "adv_examples.png") as image:
        assert image.size == (510, 720)  # 3 panels of 1.7 in x 4 rows at 100 dpi: readable, not a thumbnail strip


def test_results_go_into_a_folder_created_with_its_parents(make_cell_cfg, fitted_head, tmp_path: Path) -> None:
    out_dir = tmp_path / "a" / "b"
    run_cell(head_cfg(make_cell_cfg, fitted_head, "classification", attack={"steps": 1}), out_dir)
    assert {p.name for p in out_dir.iterdir()} == {"adv_examples.png", "per_sample.csv", "loss_curve.csv"}


def test_results_are_written_into_a_folder_created_with_its_parents(tmp_path: Path) -> None:
    task, info = TASKS.get("classification"), TaskInfo("classification", num_classes=3)
    out_dir = tmp_path / "a" / "b"
    write_results(out_dir, task, Tally(task.scores(info), task.scores(info)))
    assert {p.name for p in out_dir.iterdir()} == {"per_sample.csv", "loss_curve.csv"}


def test_a_head_is_saved_into_a_folder_created_with_its_parents(make_cell_cfg, tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "head.safetensors"
    prepare_head(make_cell_cfg("classification", head={"epochs": 1}), path)
    assert path.is_file()


def test_a_cell_logs_its_head_attack_and_data_times_within_its_own(make_cell_cfg) -> None:
    start = time.perf_counter()
    metrics = run_cell(make_cell_cfg("classification", head={"epochs": 1}, attack={"steps": 1}))
    assert metrics["time/cell_seconds"] <= time.perf_counter() - start
    for part in ("head", "attack", "data"):
        assert 0 < metrics[f"time/{part}_seconds"] < metrics["time/cell_seconds"]
    assert not [k for k in metrics if "head_data" in k.lower()]  # counted in time/data_seconds


def test_a_fitted_cell_logs_the_size_of_its_cached_features(make_cell_cfg, tiny_encoder) -> None:
    cfg = make_cell_cfg("classification", head={"epochs": 1}, attack={"steps": 1})
    metrics = run_cell(cfg)
    cls_values = (cfg.data.n_train + cfg.data.n_val) * tiny_encoder.embed_dim  # float16 CLS features
    assert 2 * cls_values <= metrics["head/feature_bytes"] < 4 * cls_values


@pytest.mark.parametrize("n_samples", [1, BATCH])
def test_adv_loss_is_the_mean_attack_loss_of_the_samples(make_cell_cfg, fitted_head, tmp_path: Path,
                                                         n_samples: int) -> None:
    metrics = run_cell(head_cfg(make_cell_cfg, fitted_head, "classification", data={"n_samples": n_samples}),
                       tmp_path)
    with open(tmp_path / "per_sample.csv") as f:
        losses = [float(row["attack_loss"]) for row in csv.DictReader(f)]
    assert len(losses) == n_samples
    assert metrics["adv/loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)


def test_the_cells_seed_picks_its_synthetic_test_images(make_cell_cfg, fitted_head, monkeypatch) -> None:
    seen = []
    for seed in (0, 1):
        spy = spy_engine(monkeypatch)
        run_cell(head_cfg(make_cell_cfg, fitted_head, "classification", seed=seed, attack={"steps": 1}))
        seen.append(spy.attacks()[0]["x"])
    assert not torch.equal(seen[0], seen[1])


def test_the_attack_shows_a_progress_bar_named_for_it_that_goes_when_done(make_cell_cfg, fitted_head,
                                                                         monkeypatch) -> None:
    bars: list[dict] = []

    def recording_tqdm(iterable, **kwargs):
        bars.append(kwargs)
        return iterable

    monkeypatch.setattr(cell_module, "tqdm", recording_tqdm)
    run_cell(head_cfg(make_cell_cfg, fitted_head, "classification", attack={"steps": 1}))
    assert bars == [{"desc": f"pgd eps={8 / 255:.4f}", "leave": False}]


def test_a_one_batch_cell_runs_its_eps0_check_on_that_batch(make_cell_cfg, fitted_head, monkeypatch) -> None:
    spy = spy_engine(monkeypatch)
    metrics = run_cell(head_cfg(make_cell_cfg, fitted_head, "classification", data={"n_samples": BATCH}))
    assert [c["eps"] == 0 for c in spy.calls] == [True, False]
    assert metrics["attack/grad_steps"] == sum(c["grad_forwards"] for c in spy.calls)


def test_a_cell_given_a_head_checkpoint_fits_no_head(make_cell_cfg, fitted_head) -> None:
    metrics = run_cell(head_cfg(make_cell_cfg, fitted_head, "classification", attack={"steps": 1}))
    assert not [k for k in metrics if k.startswith("head/") or k == "time/head_seconds"]


def test_classification_without_the_cascade_under_select_final_scores_the_final_iterate(make_cell_cfg, fitted_head,
                                                                                        monkeypatch) -> None:
    """As the poster's code: no success function reaches the engine, so a sample fooled only by an
    earlier iterate counts as robust; the any-iterate score can only be lower."""
    final_cfg = head_cfg(make_cell_cfg, fitted_head, "classification",
                         attack={"select": "final", "stop_when_fooled": False, "eps": "2/255", "steps": 8})
    spy = spy_engine(monkeypatch)
    final = run_cell(final_cfg)
    assert all(call["kwargs"]["success_fn"] is None for call in spy.attacks())
    any_iterate = run_cell(head_cfg(make_cell_cfg, fitted_head, "classification",
                                    attack={"select": "worst", "stop_when_fooled": False, "eps": "2/255", "steps": 8}))
    assert final["adv/acc"] >= any_iterate["adv/acc"]
    assert final["check/all_passed"] == 1.0
