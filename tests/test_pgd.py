"""The PGD engine: budget and box constraints, determinism, optimality on linear models, bookkeeping."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_robust.objectives import cross_entropy, segpgd
from ssl_robust.pgd import pgd
from tests.helpers import SHAPE, linear_model



def images(n: int, low: float = 0.0, high: float = 1.0, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, *SHAPE, generator=gen)


def labels(n: int, num_classes: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(num_classes, (n,), generator=torch.Generator().manual_seed(seed))


def misclassified(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.argmax(1) != y


def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs):
    kwargs.setdefault("step_size", 2.5 * kwargs["eps"] / max(kwargs.get("steps", 10), 1))
    kwargs.setdefault("steps", 10)
    return pgd(model, cross_entropy, x, y, **kwargs)


def boundary_images(n: int) -> torch.Tensor:
    """Images whose pixels are exactly 0 or exactly 1 (plus one all-0 and one all-1 image)."""
    x = (images(n) > 0.5).float()
    x[0], x[1] = 0.0, 1.0
    return x


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


def test_unfooled_sample_returns_its_highest_loss_iterate() -> None:
    x, result, forward, _ = _band_attack()
    torch.testing.assert_close(result.x_adv[1], x[1] + 0.1)
    torch.testing.assert_close(result.loss[1], forward(result.x_adv)[1, 0])


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


def test_a_non_finite_gradient_is_reported() -> None:
    model, x, y = linear_model(3), images(4), labels(4, 3)
    result = pgd(lambda z: model(z) * torch.tensor(float("nan")), cross_entropy, x, y, eps=8 / 255,
                 step_size=2 / 255, steps=2)
    assert not result.grad_finite


def test_zero_gradient_fraction_is_measured_at_the_first_step() -> None:
    model, x, y = linear_model(3), images(4), labels(4, 3)
    dead = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(-1, 1)
    result = pgd(lambda z: model(z) * dead, cross_entropy, x, y, eps=8 / 255, step_size=2 / 255, steps=2)
    assert result.grad_nonzero == 0.5


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
