"""The PGD engine (``ssl_robust.pgd``): budget and box constraints, determinism, optimality on linear
models, which iterate it returns, early stop, gradients and errors, its bookkeeping (loss curves,
costs, ties, the cascade's edges) and batching, and every tensor it makes on its input's device."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_robust.objectives import cross_entropy, segpgd
from ssl_robust.pgd import RandomStarts, pgd
from tests.helpers import SHAPE, boundary_images, images, labels, linear_forward, linear_model, misclassified


def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs):
    kwargs.setdefault("step_size", 2.5 * kwargs["eps"] / max(kwargs.get("steps", 10), 1))
    kwargs.setdefault("steps", 10)
    return pgd(model, cross_entropy, x, y, **kwargs)


# ----------------------------------------------------------------------------- constraints


@pytest.mark.parametrize("inputs", ["interior", "boundary"])
def test_linf_perturbation_stays_inside_eps_ball(inputs: str) -> None:
    model, eps = linear_model(3), 8 / 255
    x = images(8) if inputs == "interior" else boundary_images(8)
    result = run(model, x, labels(8, 3), eps=eps, norm="linf", step_size=0.5)  # overshooting steps
    assert float((result.x_adv - x).abs().max()) <= eps + 1e-6


@pytest.mark.parametrize("inputs", ["interior", "boundary"])
def test_l2_perturbation_stays_inside_eps_ball_per_sample(inputs: str) -> None:
    model, eps = linear_model(3), 0.5
    x = images(8) if inputs == "interior" else boundary_images(8)
    result = run(model, x, labels(8, 3), eps=eps, norm="l2", step_size=2.0)
    norms = (result.x_adv - x).flatten(1).norm(dim=1)
    assert bool((norms <= eps * (1 + 1e-5)).all()), norms


@pytest.mark.parametrize("norm, eps", [("linf", 0.3), ("l2", 3.0)])
@pytest.mark.parametrize("inputs", ["interior", "boundary"])
def test_adversarial_image_stays_inside_unit_box(norm: str, eps: float, inputs: str) -> None:
    model = linear_model(3)
    x = images(8) if inputs == "interior" else boundary_images(8)
    result = run(model, x, labels(8, 3), eps=eps, norm=norm)
    assert float(result.x_adv.min()) >= 0.0
    assert float(result.x_adv.max()) <= 1.0


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_zero_budget_returns_input_unchanged_and_clean_loss(norm: str) -> None:
    model, x, y = linear_model(3), images(6), labels(6, 3)
    result = pgd(model, cross_entropy, x, y, eps=0.0, step_size=0.1, steps=5, norm=norm,
                 random_start=True, success_fn=misclassified)
    assert torch.equal(result.x_adv, x)
    with torch.no_grad():
        clean_logits = model(x)
    torch.testing.assert_close(result.loss, F.cross_entropy(clean_logits, y, reduction="none"))
    assert torch.equal(result.success, misclassified(clean_logits, y))


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_same_seed_gives_identical_result(norm: str, eps: float) -> None:
    model, x, y = linear_model(3), images(6), labels(6, 3)
    first = run(model, x, y, eps=eps, norm=norm, steps=3, seed=7)
    second = run(model, x, y, eps=eps, norm=norm, steps=3, seed=7)
    assert torch.equal(first.x_adv, second.x_adv)
    assert torch.equal(first.loss, second.loss)


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_different_seeds_give_different_random_starts(norm: str, eps: float) -> None:
    model, x, y = linear_model(3), images(6), labels(6, 3)
    first = run(model, x, y, eps=eps, norm=norm, steps=0, seed=1)
    second = run(model, x, y, eps=eps, norm=norm, steps=0, seed=2)
    assert not torch.equal(first.x_adv, second.x_adv)


def test_default_seed_is_zero() -> None:
    x, y = images(3), torch.tensor([0, 1, 2])
    kwargs = dict(eps=8 / 255, step_size=2 / 255, steps=2)
    assert torch.equal(pgd(linear_forward(), cross_entropy, x, y, **kwargs).x_adv,
                       pgd(linear_forward(), cross_entropy, x, y, seed=0, **kwargs).x_adv)
    assert not torch.equal(pgd(linear_forward(), cross_entropy, x, y, **kwargs).x_adv,
                           pgd(linear_forward(), cross_entropy, x, y, seed=1, **kwargs).x_adv)


def _random_start_deltas(norm: str, eps: float, shape: tuple[int, ...]) -> torch.Tensor:
    """The random start itself: zero steps, so only the start is evaluated and returned."""
    x = torch.full(shape, 0.5)
    result = pgd(lambda z: z.flatten(1).sum(1, keepdim=True), lambda out, t, step, steps: out[:, 0], x,
                 torch.zeros(shape[0]), eps=eps, step_size=0.0, steps=0, norm=norm, seed=0)
    return result.x_adv - x


def test_linf_random_start_is_uniform_in_the_box() -> None:
    delta = _random_start_deltas("linf", 0.1, (50, 3, 4, 4))
    assert float(delta.abs().max()) <= 0.1
    assert float(delta.abs().mean()) == pytest.approx(0.05, rel=0.05)  # E|U(-eps, eps)| = eps / 2
    assert float(delta.mean()) == pytest.approx(0.0, abs=0.005)


def test_l2_random_start_is_uniform_in_the_ball() -> None:
    delta = _random_start_deltas("l2", 0.1, (4000, 1, 1, 2))  # two dimensions: a disc
    radius = delta.flatten(1).norm(dim=1)
    assert float(radius.max()) <= 0.1 * (1 + 1e-6)
    assert float((radius < 0.05).float().mean()) == pytest.approx(0.25, abs=0.03)  # area ratio (1/2)^2
    angle = torch.atan2(delta[:, 0, 0, 1], delta[:, 0, 0, 0])
    assert float((angle > 0).float().mean()) == pytest.approx(0.5, abs=0.03)


def test_l2_random_start_of_a_single_image_lies_in_the_ball() -> None:
    from ssl_robust.pgd import RandomStarts

    delta = RandomStarts(0, range(len(images(1)))).draw(images(1), 0.5, "l2")
    assert delta.shape == (1, *SHAPE) and 0 < float(delta.norm()) <= 0.5 + 1e-6


def test_random_start_has_the_dtype_of_the_images() -> None:
    from ssl_robust.pgd import RandomStarts

    x = images(2).to(torch.bfloat16)
    for norm in ("linf", "l2"):
        assert RandomStarts(0, range(len(x))).draw(x, 8 / 255, norm).dtype == torch.bfloat16


def test_seed_does_not_touch_the_global_rng() -> None:
    model, x, y = linear_model(3), images(4), labels(4, 3)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run(model, x, y, eps=8 / 255, steps=2, seed=5)
    assert torch.equal(torch.rand(3), expected)


# ----------------------------------------------------------------------------- strength


def test_stronger_budget_never_scores_higher(fitted_classifier) -> None:
    model, x, y = fitted_classifier
    accuracies = []
    for k in (0, 1, 2, 4, 8):
        eps = k / 255
        result = pgd(model, cross_entropy, x, y, eps=eps, step_size=2.5 * eps / 10, steps=10, seed=0,
                     success_fn=misclassified)
        accuracies.append(1 - float(result.success.float().mean()))
    assert accuracies[0] > 0.5, "the fitted classifier should be better than chance on clean data"
    assert all(a >= b for a, b in zip(accuracies, accuracies[1:])), accuracies
    assert accuracies[-1] < accuracies[0]


def _binary_setup():
    """A two-class linear model and inputs away from the box edges (so the box never binds)."""
    model = linear_model(2, seed=3)
    x, y = images(16, low=0.3, high=0.7), labels(16, 2)
    w_diff = model.weight[y] - model.weight[1 - y]  # w_y - w_j, [B, D]
    b_diff = model.bias[y] - model.bias[1 - y]
    margin = ((x.flatten(1) * w_diff).sum(1) + b_diff).detach()
    return model, x, y, w_diff.detach(), margin


def test_linf_pgd_reaches_closed_form_worst_case_of_linear_binary_classifier() -> None:
    model, x, y, w_diff, margin = _binary_setup()
    eps = 0.05
    result = pgd(model, cross_entropy, x, y, eps=eps, step_size=2.5 * eps / 10, steps=10, norm="linf", seed=0)
    worst_margin = margin - eps * w_diff.abs().sum(1)  # min over the L-inf ball of (w_y - w_j).x + b
    torch.testing.assert_close(result.loss, F.softplus(-worst_margin), rtol=1e-4, atol=1e-5)
    corner = x - eps * w_diff.sign().view(-1, *SHAPE)  # the analytic maximiser
    torch.testing.assert_close(result.x_adv, corner, rtol=0, atol=1e-6)


def test_l2_pgd_reaches_closed_form_worst_case_of_linear_binary_classifier() -> None:
    model, x, y, w_diff, margin = _binary_setup()
    eps = 0.5
    result = pgd(model, cross_entropy, x, y, eps=eps, step_size=eps / 4, steps=30, norm="l2", seed=0)
    worst_margin = margin - eps * w_diff.norm(dim=1)
    torch.testing.assert_close(result.loss, F.softplus(-worst_margin), rtol=1e-3, atol=1e-4)
    maximiser = x - eps * (w_diff / w_diff.norm(dim=1, keepdim=True)).view(-1, *SHAPE)
    torch.testing.assert_close(result.x_adv, maximiser, rtol=0, atol=1e-3)


@pytest.mark.parametrize("norm, eps, dual", [("linf", 0.05, lambda w: w.abs().sum(1)),
                                             ("l2", 0.5, lambda w: w.norm(dim=1))])
def test_pgd_reaches_closed_form_worst_margin_of_linear_multiclass_model(norm, eps, dual) -> None:
    """Maximising z_j - z_y over the ball gives (w_j - w_y).x + b_j - b_y + eps * ||w_j - w_y||_dual."""
    model = linear_model(5, seed=4)
    x, y = images(16, low=0.3, high=0.7), labels(16, 5)
    j = (y + 1) % 5

    def margin_objective(logits, target, step, steps):
        return logits.gather(1, ((target + 1) % 5)[:, None])[:, 0] - logits.gather(1, target[:, None])[:, 0]

    result = pgd(model, margin_objective, x, y, eps=eps, step_size=eps / 4, steps=30, norm=norm, seed=0)
    w = (model.weight[j] - model.weight[y]).detach()
    expected = (x.flatten(1) * w).sum(1) + (model.bias[j] - model.bias[y]).detach() + eps * dual(w)
    torch.testing.assert_close(result.loss, expected, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- best iterate


def _band_attack(**kwargs):
    """Ascending mean(x) from 0.5 by 0.01 a step passes through a 'fooled' band and leaves it."""
    x = torch.full((2, *SHAPE), 0.5)
    x[1] = 0.2  # never reaches the band

    def forward(z):
        return z.flatten(1).mean(1, keepdim=True)

    def objective(out, target, step, steps):
        return out[:, 0]

    def in_band(out, target):
        return (out[:, 0] > 0.525) & (out[:, 0] < 0.545)

    result = pgd(forward, objective, x, torch.zeros(2), eps=0.1, step_size=0.01, steps=10, norm="linf",
                 random_start=False, success_fn=in_band, **kwargs)
    return x, result, forward, in_band


@pytest.mark.parametrize("stop_when_fooled", [False, True])
def test_sample_counts_as_fooled_if_any_iterate_fooled_it(stop_when_fooled: bool) -> None:
    x, result, forward, in_band = _band_attack(stop_when_fooled=stop_when_fooled)
    final_iterate = x + 0.1  # where ten steps of 0.01 end: outside the band again
    assert not bool(in_band(forward(final_iterate), None)[0])
    assert result.success.tolist() == [True, False]


def test_fooled_sample_returns_its_fooling_iterate() -> None:
    x, result, forward, in_band = _band_attack()
    assert bool(in_band(forward(result.x_adv), None)[0])
    torch.testing.assert_close(result.x_adv[0], x[0] + 0.03)  # the first iterate inside the band
    torch.testing.assert_close(result.loss[0], forward(result.x_adv)[0, 0])


def test_unfooled_sample_returns_its_final_iterate_and_the_loss_there() -> None:
    """Sample 1 never reaches the band: it gets the final iterate (on this rising loss also its
    highest-loss one) and the loss of exactly that input."""
    x, result, forward, _ = _band_attack()
    torch.testing.assert_close(result.x_adv[1], x[1] + 0.1)
    torch.testing.assert_close(result.loss[1], forward(result.x_adv)[1, 0])


def test_unfooled_sample_returns_its_final_iterate_not_the_step_whose_step_weighted_loss_is_highest() -> None:
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


def test_success_flags_match_the_returned_adversarial_images(fitted_classifier) -> None:
    model, x, y = fitted_classifier
    result = pgd(model, cross_entropy, x, y, eps=2 / 255, step_size=0.5 / 255, steps=8, seed=0,
                 success_fn=misclassified)
    with torch.no_grad():
        assert torch.equal(result.success, misclassified(model(result.x_adv), y))


def test_restarts_never_lose_a_success() -> None:
    model, x, y = linear_model(4), images(16), labels(16, 4)
    kwargs = dict(eps=2 / 255, step_size=1 / 255, steps=3, seed=0, success_fn=misclassified)
    one = pgd(model, cross_entropy, x, y, restarts=1, **kwargs)
    three = pgd(model, cross_entropy, x, y, restarts=3, **kwargs)
    assert bool((three.success | ~one.success).all())
    assert bool((three.loss >= one.loss - 1e-6)[~one.success].all())


def _toy_segmenter(x: torch.Tensor) -> torch.Tensor:
    """[B,1,H,W] -> two-class logits [B,2,H,W]: a pixel is class 0 while its value is below 0.5."""
    return torch.stack([10 * (0.5 - x[:, 0]), torch.zeros_like(x[:, 0])], dim=1)


def test_segpgd_attack_returns_an_iterate_at_least_as_damaging_as_the_final_one() -> None:
    x, target = torch.full((1, 1, 2, 2), 0.485), torch.zeros(1, 2, 2, dtype=torch.long)
    result = pgd(_toy_segmenter, functools.partial(segpgd, ignore_index=255), x, target, eps=0.05,
                 step_size=0.01, steps=5, norm="linf", random_start=False)

    def wrong_pixels(z: torch.Tensor) -> int:
        return int((_toy_segmenter(z).argmax(1) != target).sum())

    final_iterate = x + 0.05  # five ascent steps of 0.01 push every pixel past 0.5
    assert wrong_pixels(final_iterate) == 4
    assert wrong_pixels(result.x_adv) >= wrong_pixels(final_iterate)


# ----------------------------------------------------------------------------- early stop


def test_stop_when_fooled_gives_same_success_with_fewer_forward_passes(fitted_classifier) -> None:
    model, x, y = fitted_classifier
    kwargs = dict(eps=1 / 255, step_size=0.25 / 255, steps=8, seed=3, success_fn=misclassified)
    full = pgd(model, cross_entropy, x, y, stop_when_fooled=False, **kwargs)
    early = pgd(model, cross_entropy, x, y, stop_when_fooled=True, **kwargs)
    assert 0 < int(full.success.sum()) < len(y), "need both fooled and robust samples"
    assert torch.equal(early.success, full.success)
    assert early.forward_passes < full.forward_passes
    assert full.forward_passes == len(y) * (8 + 1)  # every step plus the final iterate
    torch.testing.assert_close(early.x_adv, full.x_adv, rtol=0, atol=1e-6)


def test_forward_passes_count_sample_forwards() -> None:
    model, x, y = linear_model(3), images(5), labels(5, 3)
    result = run(model, x, y, eps=8 / 255, steps=4, restarts=2)
    assert result.forward_passes == 5 * (4 + 1) * 2


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


# ----------------------------------------------------------------------------- gradients, errors


def test_gradients_are_taken_wrt_delta_only() -> None:
    model, x, y = linear_model(3), images(4), labels(4, 3)
    x.requires_grad_(True)
    result = run(model, x, y, eps=8 / 255, steps=3)
    assert all(p.grad is None for p in model.parameters())
    assert x.grad is None
    assert not result.x_adv.requires_grad
    assert result.grad_finite and result.grad_nonzero == 1.0


def test_gradients_into_a_frozen_encoder_leave_its_parameters_untouched(tiny_encoder) -> None:
    x = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        target = tiny_encoder.embed(x)

    def embed_l2(out, tgt, step, steps):
        return (out - tgt).pow(2).sum(1)

    before = {k: v.clone() for k, v in tiny_encoder.state_dict().items()}
    result = pgd(tiny_encoder.embed, embed_l2, x, target, eps=8 / 255, step_size=2 / 255, steps=2)
    assert all(p.grad is None for p in tiny_encoder.parameters())
    assert all(torch.equal(before[k], v) for k, v in tiny_encoder.state_dict().items())
    assert result.grad_finite and result.grad_nonzero == 1.0
    assert bool((result.loss > 0).all())


@pytest.mark.parametrize("kwargs", [dict(norm="l1"), dict(norm="Linf"), dict(eps=-0.1), dict(steps=-1),
                                    dict(restarts=0)])
def test_invalid_arguments_raise_value_error(kwargs) -> None:
    model, x, y = linear_model(3), images(2), labels(2, 3)
    args = dict(eps=8 / 255, step_size=1 / 255, steps=2, norm="linf") | kwargs
    with pytest.raises(ValueError):
        pgd(model, cross_entropy, x, y, **args)


def test_invalid_settings_raise_errors_that_name_them() -> None:
    import pytest

    x, y = images(2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="norm must be 'linf' or 'l2', got 'l1'"):
        pgd(linear_forward(), cross_entropy, x, y, eps=0.1, step_size=0.1, steps=1, norm="l1")
    with pytest.raises(ValueError, match=r"restarts >= 1; got 0.1, 1, 0"):
        pgd(linear_forward(), cross_entropy, x, y, eps=0.1, step_size=0.1, steps=1, restarts=0)


def test_damage_fn_returns_each_samples_most_damaging_iterate_not_the_final_one() -> None:
    """The objective climbs x (1, 2, 3 steps of 0.1) but damage peaks at the first step: with a
    damage function the engine must return that iterate, without one the final iterate."""
    x = torch.full((2, 1, 1, 1), 0.5)
    forward = lambda z: z.flatten(1)  # noqa: E731
    objective = lambda out, target, step=1, steps=1: out[:, 0]  # noqa: E731
    damage = lambda out, target: -(out[:, 0] - 0.6).abs()  # noqa: E731  (highest at x = 0.6)
    kwargs = dict(eps=0.3, step_size=0.1, steps=3, random_start=False)
    worst = pgd(forward, objective, x, torch.zeros(2), damage_fn=damage, **kwargs)
    final = pgd(forward, objective, x, torch.zeros(2), **kwargs)
    torch.testing.assert_close(worst.x_adv, torch.full_like(x, 0.6))
    torch.testing.assert_close(final.x_adv, torch.full_like(x, 0.8))


# ----------------------------------------------------------------------------- what the engine returns


def _textbook_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, step_size: float, steps: int,
                  seed: int) -> torch.Tensor:
    """The loop of the PGD paper, written out: the same seeded random start, sign steps, clamps."""
    from ssl_robust.pgd import RandomStarts

    delta = RandomStarts(seed, range(len(x))).draw(x, eps, "linf")
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y, reduction="sum"), delta)
        delta = ((x + (delta.detach() + step_size * grad.sign()).clamp(-eps, eps)).clamp(0, 1) - x)
    return x + delta


@pytest.mark.parametrize("seed", [0, 5])
def test_all_steps_pgd_returns_the_textbook_final_iterate(seed: int) -> None:
    model, x, y = linear_model(4), images(6), labels(6, 4)
    result = run(model, x, y, eps=8 / 255, step_size=2 / 255, steps=7, seed=seed)
    expected = _textbook_pgd(model, x, y, 8 / 255, 2 / 255, 7, seed)
    assert torch.equal(result.x_adv, expected)


@pytest.mark.parametrize("kwargs", [{}, {"success_fn": misclassified},
                                    {"success_fn": misclassified, "stop_when_fooled": True},
                                    {"restarts": 3, "success_fn": misclassified}])
def test_returned_output_is_the_forward_of_the_returned_input(kwargs) -> None:
    model, x, y = linear_model(4), images(9), labels(9, 4)
    result = run(model, x, y, eps=8 / 255, steps=4, seed=1, **kwargs)
    with torch.no_grad():
        torch.testing.assert_close(result.output, model(result.x_adv))


def test_the_returned_output_has_the_dtype_of_the_forward() -> None:
    weight = torch.randn(3, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, y = images(2).double(), torch.tensor([0, 1])
    result = pgd(lambda v: v.flatten(1) @ weight.T, cross_entropy, x, y, eps=8 / 255, step_size=2 / 255, steps=2,
                 success_fn=lambda output, target: output.argmax(1) != target)
    assert result.output is not None and result.output.dtype == torch.float64


def test_no_output_is_returned_unless_every_sample_has_one() -> None:
    def nan_for_sample_0(output, target, step, steps):
        loss = cross_entropy(output, target)
        return torch.where(torch.arange(len(loss)) == 0, torch.full_like(loss, float("nan")), loss)

    result = pgd(linear_forward(), nan_for_sample_0, images(2), torch.tensor([0, 1]), eps=8 / 255,
                 step_size=2 / 255, steps=1)
    assert result.output is None


def test_damage_selection_returns_the_output_of_the_selected_iterate() -> None:
    x, target = torch.full((2, 1, 2, 2), 0.485), torch.zeros(2, 2, 2, dtype=torch.long)
    result = pgd(_toy_segmenter, functools.partial(segpgd, ignore_index=255), x, target, eps=0.05, step_size=0.01,
                 steps=5, random_start=False, damage_fn=lambda out, t: (out.argmax(1) != t).float().mean((1, 2)))
    torch.testing.assert_close(result.output, _toy_segmenter(result.x_adv))


@pytest.mark.parametrize("restarts", [1, 3])
def test_grad_steps_count_every_sample_gradient_step(restarts: int) -> None:
    model, x, y = linear_model(3), images(5), labels(5, 3)
    result = run(model, x, y, eps=8 / 255, steps=4, restarts=restarts)
    assert result.grad_steps == 5 * 4 * restarts
    assert result.step_count.tolist() == [5 * restarts] * 4


def test_cascade_spends_fewer_grad_steps_than_the_samples_times_steps(fitted_classifier) -> None:
    model, x, y = fitted_classifier
    kwargs = dict(eps=1 / 255, step_size=0.25 / 255, steps=8, seed=3, success_fn=misclassified)
    full = pgd(model, cross_entropy, x, y, stop_when_fooled=False, **kwargs)
    early = pgd(model, cross_entropy, x, y, stop_when_fooled=True, **kwargs)
    assert full.grad_steps == len(y) * 8
    assert early.grad_steps == int(early.step_count.sum()) < full.grad_steps


def test_step_loss_sums_are_the_summed_objective_at_each_step() -> None:
    seen: list[float] = []

    def recording(output, target, step, steps):
        loss = cross_entropy(output, target)
        if output.requires_grad:  # a gradient step, not the final evaluation
            seen.append(float(loss.sum()))
        return loss

    x, y = images(4), torch.tensor([0, 1, 2, 0])
    result = pgd(linear_forward(), recording, x, y, eps=8 / 255, step_size=2 / 255, steps=3, restarts=2)
    per_step = torch.tensor(seen, dtype=torch.float64).view(2, 3).sum(0)  # restarts x steps
    assert result.step_loss_sum.dtype == torch.float64
    torch.testing.assert_close(result.step_loss_sum, per_step)
    assert result.step_count.tolist() == [8, 8, 8]


def test_zero_steps_give_an_empty_float64_loss_curve() -> None:
    result = pgd(linear_forward(), cross_entropy, images(2), torch.tensor([0, 1]), eps=8 / 255, step_size=1 / 255,
                 steps=0)
    assert result.step_loss_sum.shape == (0,) and result.step_loss_sum.dtype == torch.float64


def test_a_non_finite_gradient_is_reported() -> None:
    model, x, y = linear_model(3), images(4), labels(4, 3)
    result = pgd(lambda z: model(z) * torch.tensor(float("nan")), cross_entropy, x, y, eps=8 / 255,
                 step_size=2 / 255, steps=2)
    assert not result.grad_finite


def test_a_non_finite_gradient_at_an_early_step_is_reported() -> None:
    def infinite_at_first_step(output, target, step, steps):  # gradient +-inf everywhere, its sign finite
        return output.sum(1) * (float("inf") if step == 1 else 1.0)

    result = pgd(linear_forward(), infinite_at_first_step, images(2), torch.tensor([0, 1]), eps=8 / 255,
                 step_size=2 / 255, steps=3)
    assert result.grad_finite is False


def test_zero_gradient_fraction_is_measured_at_the_first_step() -> None:
    model, x, y = linear_model(3), images(4), labels(4, 3)
    dead = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(-1, 1)
    result = pgd(lambda z: model(z) * dead, cross_entropy, x, y, eps=8 / 255, step_size=2 / 255, steps=2)
    assert result.grad_nonzero == 0.5


def test_a_sample_with_a_small_gradient_on_one_pixel_counts_as_nonzero() -> None:
    forward = lambda x: 1e-3 * x[:, :1, 0, 0] * torch.tensor([[1.0, -1.0]])  # noqa: E731  one pixel, two logits
    result = pgd(forward, cross_entropy, images(3), torch.tensor([0, 1, 0]), eps=8 / 255, step_size=2 / 255,
                 steps=2)
    assert result.grad_nonzero == 1.0


def test_without_gradient_steps_the_nonzero_fraction_is_one() -> None:
    result = pgd(linear_forward(), cross_entropy, images(2), torch.tensor([0, 1]), eps=8 / 255, step_size=1 / 255,
                 steps=0)
    assert result.grad_nonzero == 1.0


# ----------------------------------------------------------------------------- ties and the cascade


def half_fooled_batch(forward):
    """Four images: the first two labelled with their least likely class (fooled at once), the last
    two with their predicted class by a wide margin (a tiny eps never flips them)."""
    x = images(4)
    logits = forward(x)
    y = torch.cat([logits[:2].argmin(1), logits[2:].argmax(1)])
    return x, y


def test_fooled_samples_stay_in_the_batch_unless_asked_to_leave() -> None:
    forward = linear_forward()
    x = images(4)
    y = forward(x).argmin(1)  # every sample already misclassified... by its least likely class
    fooled = lambda output, target: output.argmax(1) != target  # noqa: E731
    result = pgd(forward, cross_entropy, x, y, eps=8 / 255, step_size=2 / 255, steps=3, success_fn=fooled)
    assert bool(result.success.all())
    assert result.grad_steps == 4 * 3 and result.forward_passes == 4 * (3 + 1)


def test_ties_between_restarts_keep_the_first_restart() -> None:
    from ssl_robust.pgd import RandomStarts

    x, y = images(2), torch.tensor([0, 1])
    constant = lambda output, target, step, steps: output.sum(1) * 0  # noqa: E731
    result = pgd(linear_forward(), constant, x, y, eps=8 / 255, step_size=2 / 255, steps=0, restarts=3)
    first_start = RandomStarts(0, range(len(x))).draw(x, 8 / 255, "linf")
    torch.testing.assert_close(result.x_adv, x + first_start)


def test_ties_in_damage_keep_the_earliest_iterate() -> None:
    from ssl_robust.pgd import RandomStarts

    x, y = images(2), torch.tensor([0, 1])
    result = pgd(linear_forward(), cross_entropy, x, y, eps=8 / 255, step_size=2 / 255, steps=3,
                 damage_fn=lambda output, target: torch.zeros(len(output)))
    first_iterate = x + RandomStarts(0, range(len(x))).draw(x, 8 / 255, "linf")
    torch.testing.assert_close(result.x_adv, first_iterate)


def test_restarts_after_every_sample_is_fooled_are_skipped() -> None:
    forward = linear_forward()
    x, y = images(3), forward(images(3)).argmin(1)
    result = pgd(forward, cross_entropy, x, y, eps=8 / 255, step_size=2 / 255, steps=3, restarts=3,
                 success_fn=misclassified, stop_when_fooled=True)
    assert bool(result.success.all()) and result.grad_steps == 3  # one step of the first restart


def test_later_restarts_attack_only_the_samples_still_robust() -> None:
    forward = linear_forward()
    x, y = half_fooled_batch(forward)
    result = pgd(forward, cross_entropy, x, y, eps=1e-6, step_size=1e-7, steps=3, restarts=2,
                 success_fn=misclassified, stop_when_fooled=True)
    assert result.success.tolist() == [True, True, False, False]
    assert result.grad_steps == (4 + 2 + 2) + 2 * 3  # restart 1: all, then the robust two; restart 2: the two
    assert result.step_count.tolist() == [4 + 2, 2 + 2, 2 + 2]


def test_most_damaging_iterate_of_samples_still_attacked_does_not_depend_on_those_that_left() -> None:
    forward = linear_forward()
    x, y = half_fooled_batch(forward)
    kwargs = dict(eps=1e-6, step_size=1e-7, steps=3, random_start=False, success_fn=misclassified,
                  stop_when_fooled=True, damage_fn=lambda output, target: -output.gather(1, target[:, None])[:, 0])
    together = pgd(forward, cross_entropy, x, y, **kwargs)
    alone = pgd(forward, cross_entropy, x[2:], y[2:], **kwargs)
    torch.testing.assert_close(together.x_adv[2:], alone.x_adv)


def test_the_last_robust_sample_is_attacked_for_every_step() -> None:
    forward = linear_forward()
    x, y = half_fooled_batch(forward)
    pair = [1, 3]  # one fooled at once (it leaves after step 1), one robust (then alone in the batch)
    result = pgd(forward, cross_entropy, x[pair], y[pair], eps=1e-6, step_size=1e-7, steps=3, success_fn=misclassified,
                 stop_when_fooled=True)
    assert result.success.tolist() == [True, False] and result.grad_steps == 2 + 1 + 1


# ----------------------------------------------------------------------------- batching


def _rowwise(x: torch.Tensor) -> torch.Tensor:
    """Logits that each image's own pixels give by elementwise arithmetic: bit-for-bit the same at
    any batch size (a matmul may round differently at another batch size)."""
    flat = x.flatten(1)
    return torch.stack([flat[:, 0::3].sum(1), flat[:, 1::3].sum(1), flat[:, 2::3].sum(1)], dim=1) * 4


@pytest.mark.parametrize("norm, restarts, cascade", [("linf", 1, False), ("l2", 2, False), ("linf", 3, True)])
def test_a_batch_split_in_parts_gives_bit_for_bit_the_results_of_the_whole_batch(
        norm: str, restarts: int, cascade: bool) -> None:
    """Each sample's random starts come from (seed, its id), not from its place in a batch."""
    x, y = images(6), labels(6, 3)
    kwargs = dict(eps=8 / 255 if norm == "linf" else 0.5, step_size=2 / 255 if norm == "linf" else 0.1, steps=4,
                  norm=norm, restarts=restarts, seed=3, success_fn=lambda out, t: out.argmax(1) != t,
                  stop_when_fooled=cascade)
    whole = pgd(_rowwise, cross_entropy, x, y, sample_ids=range(6), **kwargs)
    parts = [pgd(_rowwise, cross_entropy, x[rows], y[rows], sample_ids=range(6)[rows], **kwargs)
             for rows in (slice(0, 1), slice(1, 4), slice(4, 6))]
    assert torch.equal(torch.cat([p.x_adv for p in parts]), whole.x_adv)
    assert torch.equal(torch.cat([p.loss for p in parts]), whole.loss)
    assert torch.equal(torch.cat([p.success for p in parts]), whole.success)


def test_samples_with_other_ids_start_elsewhere() -> None:
    x, y = images(1).repeat(2, 1, 1, 1), labels(2, 3)
    result = pgd(_rowwise, cross_entropy, x, y, eps=8 / 255, step_size=2 / 255, steps=0, sample_ids=[0, 1])
    assert not torch.equal(result.x_adv[0], result.x_adv[1])
    again = pgd(_rowwise, cross_entropy, x[:1], y[:1], eps=8 / 255, step_size=2 / 255, steps=0, sample_ids=[1])
    assert torch.equal(again.x_adv[0], result.x_adv[1])


# ----------------------------------------------------------------------------- devices


# Every tensor the engine makes is on its input's device, never on torch's default device: a user who
# sets `torch.set_default_device("cuda")` and attacks CPU images (or the reverse) gets the same answer.
# Checked on the CPU with conftest's ``default_device_elsewhere`` (the default device is `meta`).


def negative_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -cross_entropy(output, target)


def attack_everything(x: torch.Tensor, y: torch.Tensor, norm: str = "linf", **options):
    return pgd(linear_forward(), cross_entropy, x, y, eps=8 / 255, step_size=2 / 255, steps=3, norm=norm,
               restarts=2, **options)


def assert_on_cpu(result) -> None:
    for name in ("x_adv", "loss", "success", "output", "step_loss_sum", "step_count"):  # success: None without success_fn
        value = getattr(result, name)
        assert value is None or value.device.type == "cpu", f"{name} is on {value.device}"
    assert float(result.loss.sum()) == float(result.loss.sum())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_drawn_on_the_cpu_and_placed_on_the_images_device(default_device_elsewhere, norm: str) -> None:
    x = images(2)
    delta = RandomStarts(0, range(len(x))).draw(x, 8 / 255, norm)
    assert delta.device.type == "cpu"
    assert float(delta.abs().sum()) > 0


def test_pgd_keeps_its_results_on_the_images_device(default_device_elsewhere) -> None:
    x, y = images(4), torch.tensor([0, 1, 2, 0], device="cpu")
    assert_on_cpu(attack_everything(x, y))


def test_pgd_with_a_success_function_keeps_its_results_on_the_images_device(default_device_elsewhere) -> None:
    x, y = images(4), torch.tensor([0, 1, 2, 0], device="cpu")
    assert_on_cpu(attack_everything(x, y, success_fn=misclassified))


def test_the_cascade_keeps_its_results_on_the_images_device(default_device_elsewhere) -> None:
    forward, x = linear_forward(), images(4)
    logits = forward(x)  # two images labelled with their least likely class (fooled at once), two not
    y = torch.cat([logits[:2].argmin(1), logits[2:].argmax(1)])
    result = pgd(forward, cross_entropy, x, y, eps=1e-6, step_size=1e-7, steps=3, restarts=2,
                 success_fn=misclassified, stop_when_fooled=True)
    assert_on_cpu(result)
    assert result.success.tolist() == [True, True, False, False]


def test_damage_selection_keeps_its_results_on_the_images_device(default_device_elsewhere) -> None:
    x, y = images(4), torch.tensor([0, 1, 2, 0], device="cpu")
    assert_on_cpu(attack_everything(x, y, "l2", damage_fn=negative_loss))


def test_pgd_without_steps_keeps_its_results_on_the_images_device(default_device_elsewhere) -> None:
    x, y = images(2), torch.tensor([0, 1], device="cpu")
    result = pgd(linear_forward(), cross_entropy, x, y, eps=8 / 255, step_size=2 / 255, steps=0)
    assert result.step_loss_sum.device.type == "cpu" and result.step_count.device.type == "cpu"


def test_steps_no_sample_reached_are_summed_on_the_images_device(default_device_elsewhere) -> None:
    forward, x = linear_forward(), images(3)
    y = forward(x).argmin(1)  # every image labelled with its least likely class: fooled at the first look
    result = pgd(forward, cross_entropy, x, y, eps=8 / 255, step_size=2 / 255, steps=3,
                 success_fn=misclassified, stop_when_fooled=True)
    assert result.step_count.tolist() == [3, 0, 0]
    assert_on_cpu(result)
