"""DeACL fine-tuning (``ssl_robust.deacl``): the learning-rate schedules, the attacked model,
robustness gain, exact resume, checkpoints, the seed's switches (momentum, warm-up, fp16, no held-out
part) and its recipe end to end. The loss and the augmentations are in test_deacl_loss.py, the
config in test_deacl_config.py."""
from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from ssl_robust import deacl
from ssl_robust.config import EncoderCfg
from ssl_robust.deacl import RESUME_FILE, DeaclHooks, _load_data, _optimization, fine_tune, lr_factor
from ssl_robust.deacl_config import DeaclCfg
from ssl_robust.encoders import create_encoder
from tests.data.fixtures import write_imagenet
from tests.helpers import TINY_ENCODER, TINY_IMAGE_SIZE, deacl_cfg


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


# ----------------------------------------------------------------------------- the learning rate


def test_learning_rate_warms_up_linearly_then_decays_to_zero() -> None:
    factors = [lr_factor(step, warmup_steps=4, total_steps=12) for step in range(13)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a > b for a, b in zip(factors[4:], factors[5:]))
    assert factors[8] == pytest.approx(0.5) and factors[12] == 0.0


def test_warmup_start_lr_per_step_ramps_from_it_to_lr() -> None:
    factors = [lr_factor(step, warmup_steps=4, total_steps=12, start=0.1) for step in range(5)]
    assert factors == pytest.approx([0.1, 0.4, 0.7, 1.0, 1.0])


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
def test_deacl_raises_embed_attack_accuracy_and_keeps_clean_accuracy(tmp_path: Path) -> None:
    """Measured over seeds 0-9 with these settings (3 epochs of 4 batches, 256 test images): EmbedAttack
    accuracy rose by +0.12 to +0.48 over the teacher's, clean accuracy changed by -0.004 to +0.07.
    The bounds below (+0.05 gained, at most 0.05 lost, i.e. ~2.5 binomial standard errors of a
    256-image score) therefore hold with room for any seed."""
    cfg = deacl_cfg(data={"n_train": 128}, epochs=3, warmup_epochs=0, checkpoint_every=3,
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
    fine_tune(deacl_cfg(), work_dir, hooks)
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
        fine_tune(deacl_cfg(), tmp_path, killed)
    assert sorted(killed.checkpoints) == [1]
    resumed = Recorder(resume=tmp_path / RESUME_FILE)
    fine_tune(deacl_cfg(), tmp_path, resumed)
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


def test_data_set_without_classification_fails_before_training(tmp_path: Path) -> None:
    cfg = deacl_cfg(data={"name": "nyuv2", "task": None})
    with pytest.raises(ValueError, match="data.name.*classification"):
        fine_tune(cfg, tmp_path, Recorder())
    assert not any(tmp_path.iterdir())


def test_the_probe_attack_can_be_fixed_apart_from_the_training_attack(tmp_path: Path) -> None:
    """A zero-budget probe attack scores the embedding attack like the clean probe."""
    metrics = fine_tune(deacl_cfg(epochs=1, probe={"eps": 0, "steps": 0}), tmp_path)
    assert metrics["probe/embed_acc"] == metrics["probe/clean_acc"]


# ----------------------------------------------------------------------------- the attacked model


def _what_it_evaluates(features: Any, run: Any, x: torch.Tensor) -> dict[str, bool]:
    """Whose outputs ``features`` reproduces on ``x`` and whether its gradient reaches the student's weights."""
    with torch.no_grad():
        got, student, teacher = (f(x)[0] for f in (features, run.student.features, run.teacher.features))
    out = features(x)[0]
    params = list(run.student.model.parameters())
    grads = torch.autograd.grad(out.sum(), params, allow_unused=True) if out.requires_grad else [None]
    return {"student": torch.allclose(got, student), "teacher": torch.allclose(got, teacher),
            "student_grad": any(g is not None and bool(g.abs().sum() > 0) for g in grads)}


def test_inner_attack_runs_on_the_student_not_the_teacher(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The inner attack must evaluate the student f_R being trained, not the frozen teacher f.

    The obvious checks pass on the broken code that attacks the teacher: the student starts as a
    bit-identical copy of the teacher, so on the first batch both give the same x_adv, and over a
    short fine-tune they stay close, so the teacher's x_adv still transfers and the loss still
    falls. Measured: with the attack pointed at the teacher, the robustness test above (seed 0)
    still passes, EmbedAttack accuracy +0.12 over the teacher's. Here the student is
    perturbed before the first step, so the two differ from the start, and a spy on the attack
    (what ``deacl`` imports from ``deacl_loss``) checks by effect that its forward reproduces the
    student's embeddings, not the teacher's, and that its gradient reaches the student's weights.
    The last assertion shows the same check flags the teacher's forward.
    """
    runs, seen = [], []
    real_build, real_attack = deacl._build, deacl.embed_attack

    def build(cfg: DeaclCfg, resolved: Any) -> Any:
        run = real_build(cfg, resolved)
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for p in run.student.model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
        runs.append(run)
        return run

    def spy(features: Any, x: torch.Tensor, target: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(_what_it_evaluates(features, runs[0], x))
        return real_attack(features, x, target, **kwargs)

    monkeypatch.setattr(deacl, "_build", build)
    monkeypatch.setattr(deacl, "embed_attack", spy)
    fine_tune(deacl_cfg(epochs=1), tmp_path)
    assert len(seen) == 2  # one attack per batch
    assert all(s == {"student": True, "teacher": False, "student_grad": True} for s in seen)
    x = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    assert _what_it_evaluates(runs[0].teacher.features, runs[0], x) == {
        "student": False, "teacher": True, "student_grad": False}


# ----------------------------------------------------------------------------- the seed's switches


def _linear_run(cfg: DeaclCfg, steps_per_epoch: int = 4) -> tuple[torch.nn.Linear, Any, Any]:
    model = torch.nn.Linear(3, 2)
    optimizer, scheduler, _ = _optimization(cfg, SimpleNamespace(model=model), torch.device("cpu"), steps_per_epoch)
    return model, optimizer, scheduler


def _step_against_plain_sgd(momentum: float) -> list[bool]:
    """Two optimizer steps with given gradients; per step, whether it equals p - lr * g by hand."""
    torch.manual_seed(0)
    model, optimizer, scheduler = _linear_run(deacl_cfg(optimizer="sgd", lr=0.05, momentum=momentum, weight_decay=0.0))
    generator, matches = torch.Generator().manual_seed(1), []
    for _ in range(2):
        before = [p.detach().clone() for p in model.parameters()]
        grads = [torch.randn(p.shape, generator=generator) for p in model.parameters()]
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        matches.append(all(torch.allclose(p, b - lr * g) for p, b, g in zip(model.parameters(), before, grads)))
    return matches


def test_momentum_zero_makes_plain_sgd_steps() -> None:
    """The seed's SGD has no momentum: every step is p - lr * g. With 0.9 the second step is not."""
    assert _step_against_plain_sgd(0.0) == [True, True]
    assert _step_against_plain_sgd(0.9) == [True, False]


def _pl_bolts_lr(epoch: int, base: float, start: float, warmup: int, epochs: int) -> float:
    """The seed's LinearWarmupCosineAnnealingLR (pl_bolts, eta_min 0) in closed form at ``epoch``."""
    if epoch < warmup:
        return start + epoch * (base - start) / (warmup - 1)
    return 0.5 * base * (1 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))


def test_epoch_warmup_starts_at_warmup_start_lr_and_follows_the_seed() -> None:
    """Per epoch from 0.003: epoch 0 at 0.003, epoch 1 at 0.003 + 0.047 / 9, constant within an
    epoch, and every epoch's lr as the seed's scheduler stepped once per epoch by Lightning."""
    cfg = deacl_cfg(optimizer="sgd", lr=0.05, momentum=0.0, warmup_start_lr=0.003, warmup_unit="epoch",
                   warmup_epochs=10, epochs=101)
    _, optimizer, scheduler = _linear_run(cfg, steps_per_epoch=3)
    lrs = []
    for _ in range(3 * cfg.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:3] == pytest.approx([0.003] * 3) and lrs[3:6] == pytest.approx([0.003 + 0.047 / 9] * 3)
    assert lrs[27] == pytest.approx(0.05) and lrs[30] == pytest.approx(0.05)  # epochs 9 and 10 at lr
    assert lrs[::3] == pytest.approx([_pl_bolts_lr(e, 0.05, 0.003, 10, 101) for e in range(101)])


def test_fp16_on_the_cpu_trains_in_fp32_without_a_gradient_scaler() -> None:
    _, _, scaler = _optimization(deacl_cfg(precision="fp16"), SimpleNamespace(model=torch.nn.Linear(2, 2)),
                                 torch.device("cpu"), 1)
    assert not scaler.is_enabled()
    run = SimpleNamespace(cfg=deacl_cfg(precision="fp16"), device=torch.device("cpu"))
    with deacl._autocast(run):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_val_fraction_zero_trains_on_the_whole_train_split(tmp_path: Path) -> None:
    """No held-out part: DeACL sees all train images, and the probe fits on some of them."""
    write_imagenet(tmp_path)  # 9 train images
    data = {"name": "imagenet", "root": str(tmp_path), "n_train": None}
    held_out, _, _ = _load_data(deacl_cfg(data=data), TINY_IMAGE_SIZE)
    train, (fit, test), num_classes = _load_data(deacl_cfg(data=data, val_fraction=0, probe={"n_train": 4}),
                                                 TINY_IMAGE_SIZE)
    assert (len(held_out), len(train), len(fit), len(test), num_classes) == (8, 9, 4, 6, 1000)
    train_images = {tuple(train[i][0].flatten()[:8].tolist()) for i in range(len(train))}
    assert all(tuple(fit[i][0].flatten()[:8].tolist()) in train_images for i in range(len(fit)))


def test_the_seed_recipe_runs_end_to_end(tmp_path: Path) -> None:
    """Every switch of the poster preset together, on the tiny encoder (fp16 runs as fp32 on the CPU)."""
    cfg = deacl_cfg(epochs=2, optimizer="sgd", lr=0.05, momentum=0.0, weight_decay=0.0, augment="seed",
                   warmup_start_lr=0.003, warmup_unit="epoch", warmup_epochs=1, precision="fp16",
                   val_fraction=0, batch_size=16, grad_accum=2)
    hooks = Recorder()
    metrics = fine_tune(cfg, tmp_path, hooks)
    assert sorted(hooks.checkpoints) == [1, 2] and math.isfinite(metrics["loss/total"])
    state = torch.load(tmp_path / RESUME_FILE, map_location="cpu", weights_only=True)
    assert state["step"] == 4  # 64 images in micro-batches of 16, two per optimizer step
