"""The runnable cell (``ssl_robust.cell``): fit or load a head, attack the synthetic test images,
score, check and write its files. Every setting that reaches the engine, what is attacked, how the
numbers and checks sum over batches, the sliding windows, the suites, what a cell spends (gradient
steps, clean eps = 0 cells, precision, loaders, times) and how it adapts to memory."""
from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_robust import cell as cell_module
from ssl_robust.cell import Tally, run_cell, write_results
from ssl_robust.data.catalog import TaskInfo
from ssl_robust.examples import Example
from ssl_robust.tasks import TASKS
from tests.helpers import TINY_BATCH, TINY_N_SAMPLES, head_cfg, shared_scope, spy_engine

PRIMARY = {"classification": ("acc", True), "segmentation": ("miou", True), "depth": ("rmse", False)}
CLEAN_KEYS = {"classification": {"acc"}, "segmentation": {"miou", "pixel_acc"},
              "depth": {"rmse", "abs_rel", "delta1"}}
CELLS = [("classification", "pgd"), ("classification", "embed"), ("segmentation", "segpgd"),
         ("segmentation", "embed"), ("depth", "depthpgd"), ("depth", "embed"),
         ("classification", "standard"), ("segmentation", "standard"), ("depth", "standard")]
TASK_ATTACK_CELLS = [cell for cell in CELLS if cell[1] != "embed"]
TASK_ATTACK = {task: attack for task, attack in TASK_ATTACK_CELLS if attack != "standard"}
N_SAMPLES, BATCH = TINY_N_SAMPLES, TINY_BATCH  # conftest's tiny cell: 16 test images in batches of 8
# The embedding attack does not aim at the task score: on a random tiny encoder 8/255 moves the
# task score only a little (either way), 16/255 reliably hurts it.
EMBED_EPS = "16/255"


def check_flags(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith("check/") and k != "check/eps0_max_output_gap"}


@pytest.fixture(scope=shared_scope("module"))
def cell_run(make_cell_cfg: Callable[..., Any], fitted_head: Callable[[str], Path],
             tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], tuple[dict[str, float], Path]]:
    """``cell_run(task, attack)`` -> (metrics, out_dir), run once per module.

    Task attacks fit their head inline; embedding attacks reuse the head ``prepare_head`` saved.
    """
    cache: dict[tuple[str, str], tuple[dict[str, float], Path]] = {}

    def get(task: str, attack: str) -> tuple[dict[str, float], Path]:
        if (task, attack) not in cache:
            out_dir = tmp_path_factory.mktemp(f"{task}_{attack}")
            if attack == "embed":
                cfg = make_cell_cfg(task, attack={"name": attack, "eps": EMBED_EPS},
                                    head={"checkpoint": str(fitted_head(task))})
            else:
                cfg = make_cell_cfg(task, attack={"name": attack})
            cache[task, attack] = run_cell(cfg, out_dir=out_dir), out_dir
        return cache[task, attack]

    return get


# ----------------------------------------------------------------------------- every task and attack


@pytest.mark.parametrize("task, attack", CELLS)
def test_cell_reports_clean_and_adversarial_scores(cell_run, task: str, attack: str) -> None:
    metrics, _ = cell_run(task, attack)
    for key in CLEAN_KEYS[task]:
        assert f"clean/{key}" in metrics and f"adv/{key}" in metrics
        assert metrics[f"clean/{key}"] == metrics[f"clean/{key}"], "NaN score"
    assert metrics["n_samples"] == N_SAMPLES
    assert "adv/loss" in metrics


@pytest.mark.parametrize("task, attack", CELLS)
def test_cell_sanity_checks_all_pass(cell_run, task: str, attack: str) -> None:
    metrics, _ = cell_run(task, attack)
    flags = check_flags(metrics)
    assert {"check/delta_in_ball", "check/x_adv_in_box", "check/grad_finite", "check/grad_nonzero",
            "check/eps0_equals_clean", "check/all_passed"} <= set(flags)
    assert ("check/adv_not_better" in flags) == (attack != "embed")  # EmbedAttack does not aim at the score
    assert flags == {k: 1.0 for k in flags}


@pytest.mark.parametrize("task, attack", CELLS)
def test_cell_perturbation_spends_exactly_the_budget(cell_run, task: str, attack: str) -> None:
    metrics, _ = cell_run(task, attack)
    eps = (16 if attack == "embed" else 8) / 255
    assert metrics["attack/max_delta"] == pytest.approx(eps, rel=1e-4)  # L-inf PGD spends its budget


@pytest.mark.parametrize("task, attack", CELLS)
def test_attack_makes_the_task_score_worse(cell_run, task: str, attack: str) -> None:
    metrics, _ = cell_run(task, attack)
    key, higher_is_better = PRIMARY[task]
    clean, adv = metrics[f"clean/{key}"], metrics[f"adv/{key}"]
    assert adv < clean if higher_is_better else adv > clean


@pytest.mark.parametrize("task, attack", TASK_ATTACK_CELLS)
def test_cell_writes_one_csv_row_per_sample(cell_run, task: str, attack: str) -> None:
    metrics, out_dir = cell_run(task, attack)
    with open(out_dir / "per_sample.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_SAMPLES
    assert sorted(int(r["index"]) for r in rows) == list(range(N_SAMPLES))  # each item once, by its index
    column = {"classification": "correct", "segmentation": "pixel_acc", "depth": "rmse"}[task]
    assert set(rows[0]) == {"index", f"clean_{column}", f"adv_{column}", "attack_loss"}
    clean = [float(r[f"clean_{column}"]) for r in rows]
    if task == "classification":
        assert set(clean) <= {0.0, 1.0}
        assert sum(clean) / N_SAMPLES == pytest.approx(metrics["clean/acc"])
    if task == "depth":  # image-averaged RMSE
        assert sum(clean) / N_SAMPLES == pytest.approx(metrics["clean/rmse"], rel=1e-5)
    losses = [float(r["attack_loss"]) for r in rows]
    assert sum(losses) / N_SAMPLES == pytest.approx(metrics["adv/loss"], rel=1e-5)


@pytest.mark.parametrize("task, attack", TASK_ATTACK_CELLS)
def test_cell_writes_adversarial_examples_image(cell_run, task: str, attack: str) -> None:
    _, out_dir = cell_run(task, attack)
    with Image.open(out_dir / "adv_examples.png") as image:
        width, height = image.size
    assert width > 28 and height >= 3 * 28  # rows: clean, adversarial, perturbation


def test_cell_is_deterministic(make_cell_cfg, fitted_head) -> None:
    cfg = make_cell_cfg("classification", attack={"eps": "2/255"},
                        head={"checkpoint": str(fitted_head("classification"))})
    first, second = run_cell(cfg), run_cell(cfg)
    assert {k: v for k, v in first.items() if not k.startswith("time/")} == \
        {k: v for k, v in second.items() if not k.startswith("time/")}


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_l2_cell_stays_inside_the_l2_ball(make_cell_cfg, fitted_head, task: str) -> None:
    cfg = make_cell_cfg(task, attack={"norm": "l2", "eps": 0.5, "steps": 3},
                        head={"checkpoint": str(fitted_head(task))})
    metrics = run_cell(cfg)
    assert metrics["check/delta_in_ball"] == 1.0
    assert 0 < metrics["attack/max_delta"] <= 0.5 + 1e-6
    assert check_flags(metrics)["check/all_passed"] == 1.0


@pytest.mark.parametrize("attack", ["embed_cos"])
def test_other_embedding_attacks_run_with_all_checks_passing(make_cell_cfg, fitted_head, attack: str) -> None:
    cfg = make_cell_cfg("segmentation", attack={"name": attack, "eps": EMBED_EPS},
                        head={"checkpoint": str(fitted_head("segmentation"))})
    metrics = run_cell(cfg)
    assert check_flags(metrics) == {k: 1.0 for k in check_flags(metrics)}
    assert metrics["adv/loss"] > 0


# ----------------------------------------------------------------------------- the head


@pytest.mark.parametrize("task", ["classification", "segmentation", "depth"])
def test_saved_head_gives_the_same_scores_as_fitting_inline(cell_run, make_cell_cfg, fitted_head,
                                                            task: str) -> None:
    inline, _ = cell_run(task, TASK_ATTACK[task])
    cfg = make_cell_cfg(task, head={"checkpoint": str(fitted_head(task))})
    loaded = run_cell(cfg)
    scores = {k: v for k, v in inline.items() if k.startswith(("clean/", "adv/"))}
    assert {k: loaded[k] for k in scores} == pytest.approx(scores, rel=1e-6, abs=1e-7)


def test_a_cell_given_a_head_checkpoint_fits_no_head(make_cell_cfg, fitted_head) -> None:
    metrics = run_cell(head_cfg(make_cell_cfg, fitted_head, "classification", attack={"steps": 1}))
    assert not [k for k in metrics if k.startswith("head/") or k == "time/head_seconds"]


def test_a_fitted_cell_logs_the_size_of_its_cached_features(make_cell_cfg, tiny_encoder) -> None:
    cfg = make_cell_cfg("classification", head={"epochs": 1}, attack={"steps": 1})
    metrics = run_cell(cfg)
    cls_values = (cfg.data.n_train + cfg.data.n_val) * tiny_encoder.embed_dim  # float16 CLS features
    assert 2 * cls_values <= metrics["head/feature_bytes"] < 4 * cls_values


# ----------------------------------------------------------------------------- zero budget


@pytest.mark.parametrize("task", ["classification", "segmentation", "depth"])
def test_zero_budget_scores_equal_clean_scores(make_cell_cfg, fitted_head, task: str) -> None:
    cfg = make_cell_cfg(task, attack={"eps": 0}, batch_size=5,  # the last batch is partial
                        head={"checkpoint": str(fitted_head(task))})
    metrics = run_cell(cfg)
    for key in CLEAN_KEYS[task]:
        assert metrics[f"adv/{key}"] == pytest.approx(metrics[f"clean/{key}"], rel=1e-6, abs=1e-7)
    assert metrics["attack/max_delta"] == 0.0
    assert metrics["n_samples"] == N_SAMPLES
    assert check_flags(metrics)["check/all_passed"] == 1.0


@pytest.mark.parametrize("task, attack", [("classification", "pgd"), ("classification", "embed"),
                                          ("segmentation", "segpgd"), ("depth", "depthpgd"), ("depth", "embed")])
def test_eps0_cell_spends_no_gradient_step_and_scores_clean(make_cell_cfg, fitted_head, task: str,
                                                             attack: str) -> None:
    cfg = make_cell_cfg(task, attack={"name": attack, "eps": 0}, head={"checkpoint": str(fitted_head(task))})
    metrics = run_cell(cfg)
    assert metrics["attack/grad_steps"] == 0 and metrics["attack/forward_passes"] == 0
    assert metrics[f"adv/{PRIMARY[task][0]}"] == metrics[f"clean/{PRIMARY[task][0]}"]
    assert metrics["check/all_passed"] == 1.0


def test_attack_without_steps_or_random_start_is_scored_clean(make_cell_cfg, fitted_head) -> None:
    cfg = make_cell_cfg(attack={"steps": 0, "random_start": False},
                        head={"checkpoint": str(fitted_head("classification"))})
    metrics = run_cell(cfg)
    assert metrics["attack/grad_steps"] == 0 and metrics["adv/acc"] == metrics["clean/acc"]


def test_a_one_batch_cell_runs_its_eps0_check_on_that_batch(make_cell_cfg, fitted_head, monkeypatch) -> None:
    spy = spy_engine(monkeypatch)
    metrics = run_cell(head_cfg(make_cell_cfg, fitted_head, "classification", data={"n_samples": BATCH}))
    assert [c["eps"] == 0 for c in spy.calls] == [True, False]
    assert metrics["attack/grad_steps"] == sum(c["grad_forwards"] for c in spy.calls)


# ----------------------------------------------------------------------------- what reaches the engine


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


@pytest.mark.parametrize("task", ["classification", "segmentation", "depth"])
def test_cell_spends_the_configured_steps_and_restarts_on_every_sample(make_cell_cfg, fitted_head, engine_spy,
                                                                       task: str) -> None:
    """Counted at the engine's forward: n_samples x steps x restarts at the cell's budget, and the
    cell's ``attack/grad_steps`` is that plus the eps = 0 check's steps."""
    cfg = head_cfg(make_cell_cfg, fitted_head, task, attack={"steps": 3, "restarts": 2, "stop_when_fooled": False})
    metrics = run_cell(cfg)
    assert sum(c["grad_forwards"] for c in engine_spy.attacks()) == N_SAMPLES * 3 * 2
    assert metrics["attack/grad_steps"] == sum(c["grad_forwards"] for c in engine_spy.calls)


def test_the_cells_seed_picks_its_synthetic_test_images(make_cell_cfg, fitted_head, monkeypatch) -> None:
    seen = []
    for seed in (0, 1):
        spy = spy_engine(monkeypatch)
        run_cell(head_cfg(make_cell_cfg, fitted_head, "classification", seed=seed, attack={"steps": 1}))
        seen.append(spy.attacks()[0]["x"])
    assert not torch.equal(seen[0], seen[1])


def test_every_batch_draws_its_own_random_start(make_cell_cfg, fitted_head, engine_spy) -> None:
    """Uniform noise on two batches: their perturbations differ (one seed for all would repeat
    the same noise pattern)."""
    run_cell(head_cfg(make_cell_cfg, fitted_head, "classification", attack={"name": "noise"}))
    first, second = [c["x_adv"] - c["x"] for c in engine_spy.attacks()]
    assert first.shape == second.shape
    same = (first - second).abs() < 1e-6
    assert float(same.float().mean()) < 0.1


@pytest.mark.parametrize("select", ["final", "worst"])
def test_dense_attacks_select_the_final_or_the_worst_iterate(make_cell_cfg, fitted_head, select: str) -> None:
    cfg = make_cell_cfg("segmentation", attack={"select": select, "steps": 4},
                        head={"checkpoint": str(fitted_head("segmentation"))})
    metrics = run_cell(cfg)
    assert metrics["check/all_passed"] == 1.0
    assert metrics["adv/miou"] <= metrics["clean/miou"]


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


def test_the_attack_shows_a_progress_bar_named_for_it_that_goes_when_done(make_cell_cfg, fitted_head,
                                                                         monkeypatch) -> None:
    bars: list[dict] = []

    def recording_tqdm(iterable, **kwargs):
        bars.append(kwargs)
        return iterable

    monkeypatch.setattr(cell_module, "tqdm", recording_tqdm)
    run_cell(head_cfg(make_cell_cfg, fitted_head, "classification", attack={"steps": 1}))
    assert bars == [{"desc": f"pgd eps={8 / 255:.4f}", "leave": False}]


# ----------------------------------------------------------------------------- what is attacked


def _setup(make_cell_cfg, model, **updates):
    from ssl_robust.cell import attack_setup
    from ssl_robust.cell_views import views
    from ssl_robust.data.load import task_info
    from ssl_robust.tasks import TASKS

    cfg = make_cell_cfg("classification", **updates)
    task = TASKS.get("classification")
    return cfg, attack_setup(cfg, views(cfg, model, task, (28, 28)), task, task_info(cfg.data))


def test_embed_attack_targets_the_last_block_unless_attack_layer_says_otherwise(make_cell_cfg) -> None:
    import torch

    from ssl_robust.config import EncoderCfg
    from ssl_robust.encoders import create_encoder
    from ssl_robust.heads import LinearClassifier, TaskModel

    torch.manual_seed(0)
    encoder = create_encoder(EncoderCfg(name="tiny_dinov2", layer=0))
    model = TaskModel(encoder, LinearClassifier(encoder.embed_dim, 4))
    x = torch.rand(2, 3, 28, 28)
    _, last = _setup(make_cell_cfg, model, encoder={"layer": 0}, attack={"name": "embed"})
    torch.testing.assert_close(last.forward(x), encoder.features_at(x, None)[0])
    assert not torch.allclose(last.forward(x), encoder.features(x)[0])  # the heads read block 0
    _, first = _setup(make_cell_cfg, model, encoder={"layer": 0}, attack={"name": "embed", "layer": 0})
    torch.testing.assert_close(first.forward(x), encoder.features(x)[0])


@pytest.mark.parametrize("task, part", [("classification", 0), ("segmentation", 1), ("depth", 1)])
def test_embed_attack_pushes_the_representation_the_task_head_reads(make_cell_cfg, tiny_encoder, task: str,
                                                                    part: int) -> None:
    """CLS [B, D] for classification, the patch-token grid [B, D, h, w] for dense tasks."""
    from ssl_robust.cell import attack_setup
    from ssl_robust.cell_views import views
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
    from ssl_robust.cell import attack_setup
    from ssl_robust.cell_views import views
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


# ----------------------------------------------------------------------------- attack path checks


@pytest.mark.parametrize("attack", ["pgd", "embed"])
def test_eps0_check_fails_when_the_attacked_forward_is_not_the_scored_model(make_cell_cfg, fitted_classifier,
                                                                           attack: str) -> None:
    import dataclasses

    import torch

    from ssl_robust.cell import eps0_gap

    model, x, y = fitted_classifier
    cfg, setup = _setup(make_cell_cfg, model, attack={"name": attack})
    with torch.no_grad():
        clean = model(x)
    assert eps0_gap(cfg, setup, model, x, y, clean, list(range(len(x))))[0] < 1e-5
    noisy = dataclasses.replace(setup, forward=lambda z: setup.forward(z) + 0.1 * torch.randn_like(setup.forward(z)))
    assert eps0_gap(cfg, noisy, model, x, y, clean, list(range(len(x))))[0] > 1e-3


def test_rescored_successes_disagree_with_an_attack_on_another_forward(make_cell_cfg, fitted_classifier) -> None:
    import dataclasses

    import torch

    from ssl_robust.cell import _attack
    from ssl_robust.tasks import TASKS

    model, x, y = fitted_classifier
    cfg, setup = _setup(make_cell_cfg, model)
    fooled = TASKS.get("classification").fooled
    honest = _attack(cfg, setup, x, y, eps=8 / 255, steps=3, seed=0, ids=list(range(len(x))))
    assert torch.equal(honest.success, fooled(model(honest.x_adv), y))
    broken = _attack(cfg, dataclasses.replace(setup, forward=lambda z: -model(z)), x, y, eps=8 / 255, steps=3, seed=0,
                     ids=list(range(len(x))))
    assert int((broken.success != fooled(model(broken.x_adv), y)).sum()) > 0


def test_cells_record_that_rescoring_agrees_with_the_attack(make_cell_cfg, fitted_head) -> None:
    cfg = make_cell_cfg("classification", head={"checkpoint": str(fitted_head("classification"))})
    metrics = run_cell(cfg)
    assert metrics["check/success_matches_rescore"] == 1.0 and metrics["attack/rescore_disagreements"] == 0


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


def test_uniform_noise_is_not_checked_for_scoring_no_better_than_clean(make_cell_cfg, fitted_head) -> None:
    metrics = run_cell(head_cfg(make_cell_cfg, fitted_head, "classification", attack={"name": "noise"}))
    assert "check/adv_not_better" not in metrics
    assert "check/adv_not_better" in run_cell(head_cfg(make_cell_cfg, fitted_head, "classification"))


def test_the_embedding_attack_is_not_checked_for_scoring_no_better_than_clean(make_cell_cfg, fitted_head) -> None:
    metrics = run_cell(head_cfg(make_cell_cfg, fitted_head, "segmentation", attack={"name": "embed"}))
    assert "check/adv_not_better" not in metrics and metrics["check/all_passed"] == 1.0


def _saturated_head(fitted_head: Callable[[str], Path], folder: Path, scale: float = 100.0) -> str:
    """The fitted classification head with its weights and bias times ``scale``: the same
    predictions, logits so large that cross-entropy's input gradient is exactly zero in float32."""
    from safetensors.torch import load_file, save_file

    weights = {k: v * scale for k, v in load_file(str(fitted_head("classification"))).items()}
    save_file(weights, str(folder / "saturated.safetensors"))
    return str(folder / "saturated.safetensors")


def test_a_saturated_head_attacked_by_cross_entropy_pgd_fails_the_zero_gradient_check(make_cell_cfg, fitted_head,
                                                                                     tmp_path: Path) -> None:
    head = {"checkpoint": _saturated_head(fitted_head, tmp_path)}
    plain = run_cell(make_cell_cfg(head={"checkpoint": str(fitted_head("classification"))}))
    saturated = run_cell(make_cell_cfg(head=head))
    assert saturated["clean/acc"] == plain["clean/acc"]  # the same predictions
    assert saturated["attack/grad_zero_samples"] > 0
    assert saturated["check/grad_nonzero"] == 0.0 and saturated["check/all_passed"] == 0.0


def test_the_standard_suite_finds_the_adversarial_examples_a_saturated_head_hides_from_pgd(
        make_cell_cfg, fitted_head, tmp_path: Path) -> None:
    head = {"checkpoint": _saturated_head(fitted_head, tmp_path)}
    pgd = run_cell(make_cell_cfg(head=head))
    suite = run_cell(make_cell_cfg(head=head, attack={"name": "standard"}))
    unsaturated = run_cell(make_cell_cfg(head={"checkpoint": str(fitted_head("classification"))},
                                         attack={"name": "standard"}))
    assert suite["adv/acc"] < pgd["adv/acc"]
    assert suite["adv/acc"] == unsaturated["adv/acc"]  # DLR is blind to the logits' scale
    assert suite["check/all_passed"] == 1.0


# ----------------------------------------------------------------------------- suites


def test_a_classification_suite_logs_each_attack_of_its_cascade(cell_run) -> None:
    metrics, _ = cell_run("classification", "standard")
    assert metrics["suite/apgd_ce/acc"] >= metrics["suite/apgd_t/acc"] == metrics["adv/acc"]  # cumulative


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_a_dense_suites_worst_case_is_no_better_than_any_of_its_attacks(cell_run, task: str) -> None:
    metrics, _ = cell_run(task, "standard")
    key, higher_is_better = PRIMARY[task]
    own = [v for k, v in metrics.items() if k.startswith("suite/") and k.endswith(f"/{key}")]
    assert len(own) == {"segmentation": 4, "depth": 3}[task]
    assert all(metrics[f"adv/{key}"] <= v if higher_is_better else metrics[f"adv/{key}"] >= v for v in own)


def test_the_segmentation_suite_scores_no_higher_than_segpgd(cell_run) -> None:
    assert cell_run("segmentation", "standard")[0]["adv/miou"] <= cell_run("segmentation", "segpgd")[0]["adv/miou"]


# ----------------------------------------------------------------------------- sliding windows


def test_slide_scores_a_non_square_image_at_its_native_label_resolution(make_cell_cfg, fitted_head) -> None:
    from ssl_robust.data.load import load_split

    head = str(fitted_head("segmentation"))
    cfg = make_cell_cfg("segmentation", data={"n_samples": 4}, head={"checkpoint": head})
    assert cfg.data.eval is None  # the task's default: slide
    metrics = run_cell(cfg)
    test, _ = load_split(cfg.data, "test", 28, seed=cfg.seed, sizing="short_side")
    labels = [test[i][1] for i in range(len(test))]
    assert all(mask.shape[0] != mask.shape[1] for mask in labels)  # native 2:3 or 3:2 labels
    assert metrics["eval/slide"] == 1.0
    assert metrics["eval/pixels"] == sum(int((mask != 255).sum()) for mask in labels)
    assert metrics["check/all_passed"] == 1.0
    resized = run_cell(make_cell_cfg("segmentation", data={"n_samples": 4, "eval": "resize"},
                                     head={"checkpoint": head}))
    square, _ = load_split(cfg.data, "test", 28, seed=cfg.seed)
    assert resized["eval/slide"] == 0.0
    assert resized["eval/pixels"] == sum(int((square[i][1] != 255).sum()) for i in range(len(square)))


def test_slide_gradients_reach_every_pixel_of_the_whole_image(make_cell_cfg, fitted_head) -> None:
    import torch

    from ssl_robust.cell_views import views
    from ssl_robust.head_fit import load_head
    from ssl_robust.encoders import create_encoder
    from ssl_robust.heads import TaskModel
    from ssl_robust.tasks import TASKS

    cfg = make_cell_cfg("segmentation")
    torch.manual_seed(cfg.seed)
    encoder = create_encoder(cfg.encoder)
    model = TaskModel(encoder, load_head(cfg, encoder, str(fitted_head("segmentation")))).eval()
    x = torch.rand(1, 3, 28, 42, requires_grad=True)
    out = views(cfg, model, TASKS.get("segmentation"), (60, 90)).scored(x)
    assert out.shape == (1, 5, 60, 90)
    out.pow(2).sum().backward()
    assert bool((x.grad.abs().sum(1) > 0).all())


# ----------------------------------------------------------------------------- results over all batches


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


def test_cells_record_the_mean_loss_of_every_gradient_step(cell_run, make_cell_cfg) -> None:
    _, out_dir = cell_run("classification", "embed")
    with open(out_dir / "loss_curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, make_cell_cfg().attack.steps + 1))
    assert float(rows[-1]["mean_loss"]) > float(rows[0]["mean_loss"])  # EmbedAttack climbs its loss


def test_the_noise_baseline_takes_no_gradient_step(make_cell_cfg, fitted_head, tmp_path: Path) -> None:
    cfg = make_cell_cfg("classification", attack={"name": "noise"},
                        head={"checkpoint": str(fitted_head("classification"))})
    metrics = run_cell(cfg, tmp_path)
    with open(tmp_path / "loss_curve.csv", newline="") as f:
        assert list(csv.DictReader(f)) == []
    assert metrics["check/all_passed"] == 1.0
    assert 0 < metrics["attack/max_delta"] <= cfg.attack.eps + 1e-6


@pytest.mark.parametrize("n_samples", [1, BATCH])
def test_adv_loss_is_the_mean_attack_loss_of_the_samples(make_cell_cfg, fitted_head, tmp_path: Path,
                                                         n_samples: int) -> None:
    metrics = run_cell(head_cfg(make_cell_cfg, fitted_head, "classification", data={"n_samples": n_samples}),
                       tmp_path)
    with open(tmp_path / "per_sample.csv") as f:
        losses = [float(row["attack_loss"]) for row in csv.DictReader(f)]
    assert len(losses) == n_samples
    assert metrics["adv/loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)


def test_segmentation_cells_store_per_image_intersections_and_unions(cell_run) -> None:
    import numpy as np

    from ssl_robust.metrics import miou_from_confusion  # noqa: F401  (the definition the sums must reproduce)

    metrics, out_dir = cell_run("segmentation", "segpgd")
    arrays = np.load(out_dir / "per_image_iou.npz")
    assert sorted(arrays["index"].tolist()) == list(range(N_SAMPLES))
    for side in ("clean", "adv"):
        inter, union = arrays[f"{side}_inter"].sum(0), arrays[f"{side}_union"].sum(0)
        present = union > 0
        assert float((inter[present] / union[present]).mean()) == pytest.approx(metrics[f"{side}/miou"])


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


# ----------------------------------------------------------------------------- costs


@pytest.mark.parametrize("steps, restarts", [(3, 1), (2, 3)])
def test_grad_steps_are_samples_times_steps_times_restarts_plus_the_eps0_check(make_cell_cfg, fitted_head,
                                                                                steps: int, restarts: int) -> None:
    cfg = make_cell_cfg(attack={"steps": steps, "restarts": restarts, "stop_when_fooled": False},
                        head={"checkpoint": str(fitted_head("classification"))})
    metrics = run_cell(cfg)
    check = BATCH * 1 * restarts  # the eps = 0 check: one step on the first batch
    assert metrics["attack/grad_steps"] == N_SAMPLES * steps * restarts + check
    assert metrics["attack/forward_passes"] == N_SAMPLES * (steps + 1) * restarts + BATCH * 2 * restarts


def test_cascade_spends_fewer_grad_steps_than_all_steps(make_cell_cfg, fitted_head) -> None:
    head = {"checkpoint": str(fitted_head("classification"))}
    full = run_cell(make_cell_cfg(attack={"stop_when_fooled": False, "eps": "16/255"}, head=head))
    cascade = run_cell(make_cell_cfg(attack={"stop_when_fooled": True, "eps": "16/255"}, head=head))
    assert cascade["adv/acc"] == full["adv/acc"]
    assert cascade["attack/grad_steps"] < full["attack/grad_steps"]


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_bf16_cell_runs_end_to_end_on_cpu_close_to_fp32(make_cell_cfg, fitted_head, task: str) -> None:
    head = {"checkpoint": str(fitted_head(task))}
    fp32 = run_cell(make_cell_cfg(task, head=head))
    bf16 = run_cell(make_cell_cfg(task, head=head, precision="bf16"))
    metric = PRIMARY[task][0]
    assert bf16["check/all_passed"] == 1.0
    assert bf16[f"clean/{metric}"] == pytest.approx(fp32[f"clean/{metric}"], abs=0.15)
    assert bf16[f"adv/{metric}"] <= bf16[f"clean/{metric}"]


def test_cells_log_the_seconds_spent_waiting_for_data(make_cell_cfg, fitted_head) -> None:
    metrics = run_cell(make_cell_cfg(head={"checkpoint": str(fitted_head("classification"))}))
    assert 0 < metrics["time/data_seconds"] < metrics["time/cell_seconds"]


def test_a_cell_logs_its_head_attack_and_data_times_within_its_own(make_cell_cfg) -> None:
    start = time.perf_counter()
    metrics = run_cell(make_cell_cfg("classification", head={"epochs": 1}, attack={"steps": 1}))
    assert metrics["time/cell_seconds"] <= time.perf_counter() - start
    for part in ("head", "attack", "data"):
        assert 0 < metrics[f"time/{part}_seconds"] < metrics["time/cell_seconds"]
    assert not [k for k in metrics if "head_data" in k.lower()]  # counted in time/data_seconds


def test_cells_load_with_worker_processes(make_cell_cfg, fitted_head) -> None:
    head = {"checkpoint": str(fitted_head("classification"))}
    inline = run_cell(make_cell_cfg(head=head))
    workers = run_cell(make_cell_cfg(head=head, loader={"num_workers": 1, "persistent_workers": True}))
    assert workers["clean/acc"] == inline["clean/acc"] and workers["adv/acc"] == inline["adv/acc"]


# ----------------------------------------------------------------------------- memory


def limit_memory(monkeypatch: pytest.MonkeyPatch, images: int) -> None:
    """The cell's encoder runs out of memory on batches of more than ``images`` images, as a
    too-small accelerator does (the forward raises torch's out-of-memory error).

    The random starts are bit-for-bit the same at any batch size (``test_pgd``); the forward's
    float arithmetic is the BLAS's, which may round differently at another batch size (1e-7 on
    this CPU): every count and outcome is equal, float scores and losses agree to 1e-6."""
    from ssl_robust import cell as cell_module
    from ssl_robust.encoders import create_encoder

    def limited(cfg, resolved=None):
        encoder = create_encoder(cfg, resolved)

        def refuse(module, args) -> None:
            if args[0].shape[0] > images:
                raise torch.OutOfMemoryError(f"simulated: {args[0].shape[0]} images do not fit")

        encoder.model.patch_embed.register_forward_pre_hook(refuse)
        return encoder

    monkeypatch.setattr(cell_module, "create_encoder", limited)


def result_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("time/") and k != "attack/batch_size_used"}


def per_sample(path: Path) -> list[list[float]]:
    with open(path / "per_sample.csv") as f:
        return [[float(v) for v in row.values()] for row in csv.DictReader(f)]


@pytest.mark.parametrize("task, attack", [("classification", "pgd"), ("classification", "standard"),
                                          ("segmentation", "segpgd"), ("depth", "embed")])
def test_a_cell_out_of_memory_splits_its_batches_and_gives_the_numbers_of_an_unsplit_run(
        make_cell_cfg, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, task: str, attack: str) -> None:
    cfg = make_cell_cfg(task, attack={"name": attack, "steps": 2})
    whole = run_cell(cfg, tmp_path / "whole")
    limit_memory(monkeypatch, images=3)
    split = run_cell(cfg, tmp_path / "split")
    assert whole["attack/batch_size_used"] == cfg.batch_size and split["attack/batch_size_used"] < cfg.batch_size
    assert result_metrics(split) == pytest.approx(result_metrics(whole), rel=1e-6, abs=1e-6)
    assert split["n_samples"] == whole["n_samples"] and split["attack/grad_steps"] == whole["attack/grad_steps"]
    for row_split, row_whole in zip(per_sample(tmp_path / "split"), per_sample(tmp_path / "whole"), strict=True):
        assert row_split == pytest.approx(row_whole, rel=1e-6, abs=1e-6)


def test_a_cell_whose_single_image_does_not_fit_fails_naming_the_image_model_and_device(
        make_cell_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    from ssl_robust.memory import DoesNotFit

    cfg = make_cell_cfg("classification", head={"checkpoint": None})
    limit_memory(monkeypatch, images=0)
    with pytest.raises(DoesNotFit, match=r"one image's features does not fit in the memory of cpu"):
        run_cell(cfg)
