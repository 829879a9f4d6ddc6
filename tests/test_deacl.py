"""DeACL fine-tuning: the loss formula, robustness gain, exact resume, checkpoints, bad configs."""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from ssl_robust.config import EncoderCfg
from ssl_robust.deacl_config import DeaclCfg
from ssl_robust.deacl import RESUME_FILE, DeaclHooks, fine_tune, lr_factor
from ssl_robust.deacl_loss import deacl_loss
from ssl_robust.encoders import create_encoder
from tests.helpers import TINY_ENCODER, merge

# A few seconds on one CPU thread: 2 batches per epoch, 32-image probe.
FAST: dict[str, Any] = {
    "encoder": {"name": TINY_ENCODER},
    "data": {"name": "synthetic", "task": "classification", "n_train": 64},
    "epochs": 2, "batch_size": 32, "optimizer": "adamw", "lr": 3e-4, "weight_decay": 0.0,
    "warmup_epochs": 0.5, "gamma": 2.0, "checkpoint_every": 1,
    "attack": {"eps": "16/255", "step_size": "4/255", "steps": 2},
    "probe": {"n_train": 32, "n_samples": 32, "epochs": 5},
    "device": "cpu",
}


def make_cfg(**updates: Any) -> DeaclCfg:
    return DeaclCfg.model_validate(merge(FAST, updates))


class Recorder(DeaclHooks):
    """Keeps every epoch's metrics and checkpoint; optionally resumes or dies after a checkpoint."""

    def __init__(self, resume: Path | None = None, die_after_checkpoint: bool = False) -> None:
        self.metrics: dict[int, dict[str, float]] = {}
        self.checkpoints: dict[int, tuple[Path, Path]] = {}
        self.resume, self.die = resume, die_after_checkpoint

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.metrics[epoch] = metrics

    def on_checkpoint(self, epoch: int, weights_path: Path, resume_path: Path) -> None:
        self.checkpoints[epoch] = (weights_path, resume_path)
        if self.die:
            raise KeyboardInterrupt("killed after the first checkpoint")

    def resume_state(self) -> Path | None:
        return self.resume


# ----------------------------------------------------------------------------- the loss

# Hand-made embeddings, B = 2, D = 2, a 1x2 token grid.
S_CLS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
T_CLS = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cos with S_CLS: 1, 1/sqrt(2)
A_CLS = torch.tensor([[0.0, 1.0], [0.0, 2.0]])  # cos with S_CLS: 0, 1
S_TOK = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]], [[[1.0, 0.0]], [[0.0, 1.0]]]])  # [2, 2, 1, 2]
T_TOK = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]], [[[1.0, 0.0]], [[0.0, 1.0]]]])  # cos: (1, 0), (1, 1)
A_TOK = torch.tensor([[[[-1.0, 1.0]], [[0.0, 0.0]]], [[[0.0, 1.0]], [[1.0, 0.0]]]])  # cos: (-1, 1), (0, 0)
CLEAN_CLS = -(1 + 1 / math.sqrt(2)) / 2
ADV_CLS = -(0 + 1) / 2
CLEAN_TOK = -((1 + 0) / 2 + (1 + 1) / 2) / 2  # per-sample token means 0.5 and 1
ADV_TOK = -((-1 + 1) / 2 + (0 + 0) / 2) / 2


def test_loss_matches_formula_on_cls() -> None:
    parts = deacl_loss((S_CLS, S_TOK), (T_CLS, T_TOK), (A_CLS, A_TOK), gamma=2.0)
    assert parts["clean"].item() == pytest.approx(CLEAN_CLS)
    assert parts["adv"].item() == pytest.approx(ADV_CLS)
    assert parts["total"].item() == pytest.approx(CLEAN_CLS + 2.0 * ADV_CLS)


def test_loss_matches_formula_with_dense_term() -> None:
    parts = deacl_loss((S_CLS, S_TOK), (T_CLS, T_TOK), (A_CLS, A_TOK), gamma=2.0, dense_weight=0.5)
    assert parts["clean"].item() == pytest.approx(CLEAN_CLS + 0.5 * CLEAN_TOK)
    assert parts["adv"].item() == pytest.approx(ADV_CLS + 0.5 * ADV_TOK)
    assert parts["total"].item() == pytest.approx(CLEAN_CLS + 0.5 * CLEAN_TOK + 2.0 * (ADV_CLS + 0.5 * ADV_TOK))


def test_gamma_and_dense_weight_zero_leave_only_the_clean_cls_term() -> None:
    adv_cls, adv_tok = A_CLS.clone().requires_grad_(True), A_TOK.clone().requires_grad_(True)
    parts = deacl_loss((S_CLS, S_TOK), (T_CLS, T_TOK), (adv_cls, adv_tok), gamma=0.0, dense_weight=0.0)
    assert parts["total"].item() == pytest.approx(CLEAN_CLS)
    parts["total"].backward()
    assert not adv_cls.grad.any() and adv_tok.grad is None


def test_adversarial_term_pulls_on_the_clean_student_embedding() -> None:
    """As in the original DeACL code, f_R(x) is not detached in the adversarial term."""
    s_cls = S_CLS.clone().requires_grad_(True)
    deacl_loss((s_cls, S_TOK), (T_CLS, T_TOK), (A_CLS, A_TOK), gamma=1.0)["adv"].backward()
    assert s_cls.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- training


def test_learning_rate_warms_up_linearly_then_decays_to_zero() -> None:
    factors = [lr_factor(step, warmup_steps=4, total_steps=12) for step in range(13)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a > b for a, b in zip(factors[4:], factors[5:]))
    assert factors[8] == pytest.approx(0.5) and factors[12] == 0.0


@pytest.mark.slow
def test_deacl_raises_embed_attack_accuracy_and_keeps_clean_accuracy(tmp_path: Path) -> None:
    """Measured over seeds 0-9 with these settings (3 epochs of 4 batches, 256 test images): EmbedAttack
    accuracy rose by +0.12 to +0.48 over the teacher's, clean accuracy changed by -0.004 to +0.07.
    The bounds below (+0.05 gained, at most 0.05 lost, i.e. ~2.5 binomial standard errors of a
    256-image score) therefore hold with room for any seed."""
    cfg = make_cfg(data={"n_train": 128}, epochs=3, warmup_epochs=0, checkpoint_every=3,
                   attack={"steps": 3}, probe={"n_train": 128, "n_samples": 256, "epochs": 20})
    hooks = Recorder()
    fine_tune(cfg, tmp_path, hooks)
    teacher, student = hooks.metrics[0], hooks.metrics[3]
    assert student["probe/embed_acc"] >= teacher["probe/embed_acc"] + 0.05
    assert student["probe/clean_acc"] >= teacher["probe/clean_acc"] - 0.05


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recorder, Path]:
    """An uninterrupted 2-epoch run with a checkpoint after each epoch."""
    work_dir = tmp_path_factory.mktemp("uninterrupted")
    hooks = Recorder()
    fine_tune(make_cfg(), work_dir, hooks)
    return hooks, work_dir


def test_epoch_metrics_are_reported(two_epochs: tuple[Recorder, Path]) -> None:
    hooks, _ = two_epochs
    assert set(hooks.metrics[0]) == {"probe/clean_acc", "probe/embed_acc"}
    assert set(hooks.metrics[2]) == {"loss/total", "loss/clean", "loss/adv", "probe/clean_acc",
                                     "probe/embed_acc", "time/epoch_seconds", "throughput/images_per_s"}
    assert sorted(hooks.checkpoints) == [1, 2]


def test_resumed_run_ends_with_identical_weights(two_epochs: tuple[Recorder, Path], tmp_path: Path) -> None:
    full, _ = two_epochs
    killed = Recorder(die_after_checkpoint=True)
    with pytest.raises(KeyboardInterrupt):
        fine_tune(make_cfg(), tmp_path, killed)
    assert sorted(killed.checkpoints) == [1]
    resumed = Recorder(resume=tmp_path / RESUME_FILE)
    fine_tune(make_cfg(), tmp_path, resumed)
    assert sorted(resumed.metrics) == [2]
    expected, got = load_file(full.checkpoints[2][0]), load_file(resumed.checkpoints[2][0])
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_resume_file_loads_weights_only(two_epochs: tuple[Recorder, Path]) -> None:
    _, work_dir = two_epochs
    state = torch.load(work_dir / RESUME_FILE, map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 4
    assert {"student", "optimizer", "scheduler", "scaler", "metrics"} <= set(state)


def test_checkpoint_loads_through_create_encoder(two_epochs: tuple[Recorder, Path]) -> None:
    hooks, work_dir = two_epochs
    torch.manual_seed(0)
    teacher = create_encoder(EncoderCfg(name=TINY_ENCODER))
    student = copy.deepcopy(teacher)  # how fine_tune holds the student: the teacher with trained weights
    student.model.load_state_dict(torch.load(work_dir / RESUME_FILE, weights_only=True)["student"])
    loaded = create_encoder(EncoderCfg(name=TINY_ENCODER, checkpoint=str(hooks.checkpoints[2][0])))
    x = torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for got, want, before in zip(loaded.features(x), student.features(x), teacher.features(x)):
            assert torch.equal(got, want)
            assert not torch.equal(got, before)


# ----------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize("updates, field", [
    ({"gamma": -1.0}, "gamma"),
    ({"data": {"name": "imagenet_typo"}}, "data.name"),
    ({"attack": {"eps": "abc"}}, "attack.eps"),
])
def test_bad_config_fails_naming_the_field(updates: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        make_cfg(**updates)
    assert field in {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}
    assert field in str(info.value)


def test_data_set_without_classification_fails_before_training(tmp_path: Path) -> None:
    cfg = make_cfg(data={"name": "nyuv2", "task": None})
    with pytest.raises(ValueError, match="data.name.*classification"):
        fine_tune(cfg, tmp_path, Recorder())
    assert not any(tmp_path.iterdir())


def test_the_probe_attack_can_be_fixed_apart_from_the_training_attack(tmp_path: Path) -> None:
    """A zero-budget probe attack scores the embedding attack like the clean probe."""
    metrics = fine_tune(make_cfg(epochs=1, probe={"eps": 0, "steps": 0}), tmp_path)
    assert metrics["probe/embed_acc"] == metrics["probe/clean_acc"]
