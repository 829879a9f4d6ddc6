"""Sanity checks recorded with every cell: each flag is 1.0 when its property holds, 0.0 otherwise."""
from __future__ import annotations

import pytest
import torch

from ssl_robust.checks import ZERO_GRAD_LIMIT, all_passed, gradient_checks, perturbation_checks, score_checks


def interior_images(n: int = 4) -> torch.Tensor:
    """``n`` seeded 3x5x5 images inside [0.2, 0.8]: a budget of up to 0.2 keeps them in the unit box."""
    return 0.2 + 0.6 * torch.rand(n, 3, 5, 5, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_perturbation_inside_the_ball_passes(norm: str, eps: float) -> None:
    x = interior_images()
    delta = torch.randn_like(x)
    delta = eps * (delta.sign() if norm == "linf" else delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    checks = perturbation_checks(x, x + delta, eps, norm)
    assert checks["check/delta_in_ball"] == 1.0 and checks["check/x_adv_in_box"] == 1.0
    assert checks["attack/max_delta"] == pytest.approx(eps, rel=1e-5)


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_perturbation_outside_the_ball_of_one_sample_fails(norm: str, eps: float) -> None:
    x = interior_images()
    x_adv = x.clone()
    x_adv[2, 0, 0, 0] += 1.5 * eps  # one pixel of one sample: outside both balls
    assert perturbation_checks(x, x_adv, eps, norm)["check/delta_in_ball"] == 0.0


def test_l2_check_is_per_sample_not_per_batch() -> None:
    x = interior_images()
    x_adv = x + 0.4 / (3 * 5 * 5) ** 0.5  # every sample at L2 distance 0.4, the batch at 0.8
    assert perturbation_checks(x, x_adv, 0.5, "l2")["check/delta_in_ball"] == 1.0


def test_adversarial_image_outside_the_unit_box_fails() -> None:
    x = interior_images()
    x[0, 0, 0, 0] = 1.0
    x_adv = x.clone()
    x_adv[0, 0, 0, 0] = 1.01
    assert perturbation_checks(x, x_adv, 8 / 255, "linf")["check/x_adv_in_box"] == 0.0


def test_gradient_checks_flag_non_finite_and_all_zero_gradients() -> None:
    assert gradient_checks(True, 0, 64, 8 / 255, 10)["check/grad_finite"] == 1.0
    assert gradient_checks(False, 0, 64, 8 / 255, 10)["check/grad_finite"] == 0.0
    assert gradient_checks(True, 64, 64, 8 / 255, 10)["check/grad_nonzero"] == 0.0
    assert gradient_checks(True, 64, 64, 0.0, 10)["check/grad_nonzero"] == 1.0  # no budget: nothing to check
    assert gradient_checks(True, 64, 64, 8 / 255, 0)["check/grad_nonzero"] == 1.0


def test_the_zero_gradient_check_fails_when_a_few_samples_of_many_have_no_gradient() -> None:
    """One sample with a gradient is not enough: a saturated head leaves most samples unmoved."""
    assert gradient_checks(True, 119, 128, 8 / 255, 10)["check/grad_nonzero"] == 0.0
    assert gradient_checks(True, 2, 128, 8 / 255, 10)["check/grad_nonzero"] == 0.0


def test_the_zero_gradient_check_allows_up_to_its_stated_fraction() -> None:
    limit = ZERO_GRAD_LIMIT * 1000
    assert gradient_checks(True, int(limit), 1000, 8 / 255, 10)["check/grad_nonzero"] == 1.0
    assert gradient_checks(True, int(limit) + 1, 1000, 8 / 255, 10)["check/grad_nonzero"] == 0.0


@pytest.mark.parametrize("clean, adv, higher_is_better, expected", [
    (0.9, 0.2, True, 1.0), (0.9, 0.9, True, 1.0), (0.5, 0.6, True, 0.0),
    (1.0, 2.0, False, 1.0), (1.0, 0.5, False, 0.0),
])
def test_adversarial_score_better_than_clean_fails(clean, adv, higher_is_better, expected) -> None:
    assert score_checks(clean, adv, higher_is_better, 0.0)["check/adv_not_better"] == expected


def test_zero_budget_output_gap_is_checked() -> None:
    assert score_checks(0.9, 0.1, True, 0.0)["check/eps0_equals_clean"] == 1.0
    assert score_checks(0.9, 0.1, True, 0.3)["check/eps0_equals_clean"] == 0.0


def test_all_passed_needs_every_flag_but_ignores_the_gap_value() -> None:
    flags = {"check/a": 1.0, "check/b": 1.0, "check/eps0_max_output_gap": 0.25, "attack/max_delta": 0.03}
    assert all_passed(flags) == 1.0
    assert all_passed({**flags, "check/b": 0.0}) == 0.0


def test_random_noise_is_not_required_to_leave_the_score_no_better() -> None:
    from ssl_robust.checks import score_checks

    assert score_checks(0.5, 0.6, True, 0.0)["check/adv_not_better"] == 0.0
    assert "check/adv_not_better" not in score_checks(0.5, 0.6, True, 0.0, searched=False)


def test_gradient_checks_report_the_nonzero_fraction_and_the_zero_count() -> None:
    found = gradient_checks(True, 48, 64, 8 / 255, 10)
    assert found["attack/grad_nonzero_frac"] == 0.25 and found["attack/grad_zero_samples"] == 48


def test_one_step_attack_with_all_zero_gradients_fails() -> None:
    assert gradient_checks(True, 4, 4, 8 / 255, 1)["check/grad_nonzero"] == 0.0


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_delta_exactly_at_the_tolerance_edge_passes(norm: str) -> None:
    x = torch.zeros(2, 1, 1, 1, dtype=torch.float64)
    x_adv = x + 1e-5  # eps = 0: the ball is [0, TOLERANCE], closed
    assert perturbation_checks(x, x_adv, 0.0, norm)["check/delta_in_ball"] == 1.0


def test_delta_within_the_relative_tolerance_passes() -> None:
    x = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    eps = 0.5  # bound eps * (1 + 1e-5) + 1e-5 = 0.500015
    assert perturbation_checks(x, x + 0.50001, eps, "linf")["check/delta_in_ball"] == 1.0
    assert perturbation_checks(x, x + 0.50002, eps, "linf")["check/delta_in_ball"] == 0.0


def test_adversarial_image_on_the_edges_of_the_unit_box_passes() -> None:
    x = torch.full((2, 1, 1, 2), 0.5)
    x_adv = torch.tensor([0.0, 1.0, 1.0, 0.0]).view(2, 1, 1, 2)
    assert perturbation_checks(x, x_adv, 0.5, "linf")["check/x_adv_in_box"] == 1.0


def test_empty_batch_reports_a_zero_max_delta() -> None:
    x = torch.zeros(0, 3, 4, 4)
    checks = perturbation_checks(x, x, 8 / 255, "linf")
    assert checks["attack/max_delta"] == 0.0 and checks["check/delta_in_ball"] == 1.0


@pytest.mark.parametrize("higher_is_better, sign", [(True, 1), (False, -1)])
def test_adversarial_score_better_by_exactly_the_tolerance_passes(higher_is_better: bool, sign: int) -> None:
    from ssl_robust.checks import TOLERANCE

    adv = 0.5 + sign * TOLERANCE
    assert score_checks(0.5, adv, higher_is_better, 0.0)["check/adv_not_better"] == 1.0


def test_zero_budget_output_gap_of_exactly_the_threshold_passes_and_is_reported() -> None:
    checks = score_checks(0.9, 0.1, True, 1e-4)
    assert checks["check/eps0_equals_clean"] == 1.0 and checks["check/eps0_max_output_gap"] == 1e-4
