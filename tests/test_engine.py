"""The attack engine seam: AttackSettings and run_attack dispatching to fixed-step PGD or APGD."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import ssl_robust.engine as engine
from ssl_robust.apgd import apgd
from ssl_robust.engine import OPTIMIZERS, AttackSettings, run_attack
from ssl_robust.objectives import cross_entropy
from ssl_robust.pgd import AttackResult, pgd
from tests.helpers import images, labels, linear_forward, misclassified

CLASSES = 4  # of the linear model and of the labels


def damage(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return output[:, 1] - output[:, 0]


def differing_fields(a: AttackResult, b: AttackResult) -> list[str]:
    differ = []
    for field in dataclasses.fields(AttackResult):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            same = x.dtype == y.dtype and torch.equal(x, y)
        else:
            same = not isinstance(x, torch.Tensor) and not isinstance(y, torch.Tensor) and x == y
        if not same:
            differ.append(field.name)
    return differ


def assert_same_result(a: AttackResult, b: AttackResult) -> None:
    assert differing_fields(a, b) == []


# Settings that differ from every default, so that a setting run_attack dropped would show.
VARIANTS = {
    "defaults": dict(eps=8 / 255, steps=6),
    "l2 restarts seed": dict(eps=0.5, steps=5, norm="l2", restarts=2, seed=3),
    "no random start, own step": dict(eps=4 / 255, steps=4, random_start=False, step_size=3 / 255),
    "cascade": dict(eps=8 / 255, steps=6, restarts=3, seed=1, stop_when_fooled=True),
}
CALLBACKS = {"none": {}, "success": {"success_fn": misclassified}, "damage": {"damage_fn": damage}}


def _direct(optimizer: str, settings: AttackSettings, forward, x, y, callbacks) -> AttackResult:
    common = dict(eps=settings.eps, steps=settings.steps, norm=settings.norm, random_start=settings.random_start,
                  restarts=settings.restarts, seed=settings.seed, stop_when_fooled=settings.stop_when_fooled,
                  **callbacks)
    if optimizer == "pgd":
        return pgd(forward, cross_entropy, x, y, step_size=settings.resolved_step_size, **common)
    return apgd(forward, cross_entropy, x, y, **common)


@pytest.mark.parametrize("callbacks", CALLBACKS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("optimizer", ["pgd", "apgd"])
def test_run_attack_gives_the_result_of_calling_the_named_optimiser_directly(optimizer: str, variant: str,
                                                                             callbacks: str) -> None:
    forward, x, y = linear_forward(CLASSES), images(8), labels(8, CLASSES)
    settings = AttackSettings(optimizer=optimizer, **VARIANTS[variant])
    result = run_attack(forward, cross_entropy, x, y, settings, **CALLBACKS[callbacks])
    assert_same_result(result, _direct(optimizer, settings, forward, x, y, CALLBACKS[callbacks]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_two_optimisers_give_different_results(variant: str) -> None:
    """What makes the dispatch test above able to fail: a swapped dispatch would not match."""
    forward, x, y = linear_forward(CLASSES), images(8), labels(8, CLASSES)
    settings = AttackSettings(**VARIANTS[variant])
    by_pgd = run_attack(forward, cross_entropy, x, y, dataclasses.replace(settings, optimizer="pgd"))
    by_apgd = run_attack(forward, cross_entropy, x, y, dataclasses.replace(settings, optimizer="apgd"))
    assert "step_loss_sum" in differing_fields(by_pgd, by_apgd)


@pytest.mark.parametrize("optimizer", ["pgd", "apgd"])
def test_run_attack_passes_every_setting_and_callback_to_the_optimiser(optimizer: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict]] = []

    def spy(name):
        def call(forward, objective, x, target, **kwargs):
            calls.append((name, kwargs))
            return "result"
        return call

    monkeypatch.setattr(engine, "pgd", spy("pgd"))
    monkeypatch.setattr(engine, "apgd", spy("apgd"))
    settings = AttackSettings(eps=0.25, steps=7, optimizer=optimizer, step_size=0.125, norm="l2",
                              random_start=False, restarts=3, seed=9, stop_when_fooled=True)
    out = run_attack(linear_forward(CLASSES), cross_entropy, images(2), labels(2, CLASSES), settings, misclassified,
                     damage, sample_ids=[4, 7])
    expected = dict(eps=0.25, steps=7, norm="l2", random_start=False, restarts=3, seed=9, success_fn=misclassified,
                    stop_when_fooled=True, damage_fn=damage, sample_ids=[4, 7])
    if optimizer == "pgd":
        expected["step_size"] = 0.125
    assert out == "result"
    assert calls == [(optimizer, expected)]


def test_apgd_ignores_the_fixed_step_size() -> None:
    """APGD adapts its own step from 2 eps: PGD's step_size setting does not reach it."""
    forward, x, y = linear_forward(CLASSES), images(6), labels(6, CLASSES)
    base = AttackSettings(eps=8 / 255, steps=5, optimizer="apgd")
    assert_same_result(run_attack(forward, cross_entropy, x, y, base),
                       run_attack(forward, cross_entropy, x, y, dataclasses.replace(base, step_size=1 / 255)))
    pgd_base = dataclasses.replace(base, optimizer="pgd")
    assert not torch.equal(run_attack(forward, cross_entropy, x, y, pgd_base).x_adv,
                           run_attack(forward, cross_entropy, x, y,
                                      dataclasses.replace(pgd_base, step_size=1 / 255)).x_adv)


def test_an_unknown_optimizer_is_rejected_with_an_error_naming_the_allowed_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    monkeypatch.setattr(engine, "pgd", lambda *a, **k: ran.append("pgd"))
    monkeypatch.setattr(engine, "apgd", lambda *a, **k: ran.append("apgd"))
    settings = AttackSettings(eps=8 / 255, steps=2, optimizer="fgsm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"optimizer must be one of \('pgd', 'apgd'\), got 'fgsm'"):
        run_attack(linear_forward(CLASSES), cross_entropy, images(2), labels(2, CLASSES), settings)
    assert ran == []
    assert OPTIMIZERS == ("pgd", "apgd")


# ----------------------------------------------------------------------------- settings


def test_settings_default_to_single_restart_random_start_linf_pgd() -> None:
    settings = AttackSettings(eps=0.1, steps=3)
    assert (settings.optimizer, settings.step_size, settings.norm, settings.random_start, settings.restarts,
            settings.seed, settings.stop_when_fooled) == ("pgd", None, "linf", True, 1, 0, False)


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        AttackSettings(eps=0.1, steps=3).eps = 0.2  # type: ignore[misc]


@pytest.mark.parametrize("eps, steps, expected", [(8 / 255, 10, 2.5 * 8 / 255 / 10), (0.5, 4, 0.3125),
                                                  (0.2, 1, 0.5), (0.2, 0, 0.5), (0.0, 10, 0.0)])
def test_default_step_size_is_two_and_a_half_eps_over_steps(eps: float, steps: int, expected: float) -> None:
    assert AttackSettings(eps=eps, steps=steps).resolved_step_size == pytest.approx(expected)


@pytest.mark.parametrize("step_size", [0.01, 0.0])
def test_an_explicit_step_size_is_kept(step_size: float) -> None:
    assert AttackSettings(eps=0.3, steps=10, step_size=step_size).resolved_step_size == step_size


@pytest.mark.parametrize("n, steps, restarts", [(5, 7, 1), (3, 4, 3), (2, 0, 2), (0, 5, 1)])
def test_cost_is_samples_times_steps_times_restarts_plus_a_last_forward_per_restart(n, steps, restarts) -> None:
    settings = AttackSettings(eps=0.1, steps=steps, restarts=restarts)
    assert settings.cost(n) == (n * steps * restarts, n * (steps + 1) * restarts)


@pytest.mark.parametrize("restarts", [1, 2])
@pytest.mark.parametrize("optimizer", ["pgd", "apgd"])
def test_cost_is_what_either_optimiser_spends_without_the_cascade(optimizer: str, restarts: int) -> None:
    settings = AttackSettings(eps=8 / 255, steps=5, optimizer=optimizer, restarts=restarts)
    result = run_attack(linear_forward(CLASSES), cross_entropy, images(6), labels(6, CLASSES), settings,
                        misclassified)
    assert (result.grad_steps, result.forward_passes) == settings.cost(6)


@pytest.mark.parametrize("optimizer", ["pgd", "apgd"])
def test_cost_bounds_what_the_cascade_spends(optimizer: str) -> None:
    forward, x = linear_forward(CLASSES), images(8)
    y = forward(x).argmin(1)  # every sample misclassified at the first look: the cascade stops at once
    settings = AttackSettings(eps=8 / 255, steps=5, optimizer=optimizer, restarts=2, stop_when_fooled=True)
    result = run_attack(forward, cross_entropy, x, y, settings, misclassified)
    grad_bound, forward_bound = settings.cost(8)
    assert result.grad_steps < grad_bound and result.forward_passes < forward_bound


@pytest.mark.parametrize("optimizer", ["pgd", "apgd"])
def test_grad_zero_counts_only_samples_the_start_has_not_fooled(optimizer: str) -> None:
    """A constant model has no input gradient anywhere; only its correctly classified samples are
    unmovable (masked); a misclassified one needs no gradient."""
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0]])

    def constant(x: torch.Tensor) -> torch.Tensor:
        return logits.expand(len(x), -1) + 0 * x.flatten(1).sum(dim=1, keepdim=True)

    x = torch.rand(4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 1, 2])  # the first two are classified correctly
    result = run_attack(constant, cross_entropy, x, labels,
                        AttackSettings(eps=0.1, steps=2, optimizer=optimizer), lambda out, y: out.argmax(1) != y)
    assert result.grad_zero.tolist() == [True, True, False, False]
