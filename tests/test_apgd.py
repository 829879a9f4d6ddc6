"""APGD (Croce & Hein 2020): budget and box constraints, edges, cost accounting, optimality on linear
models, the step-size schedule and momentum, best-iterate scoring, and the strongest peers (fixed-step
PGD at equal steps, torchattacks' APGD)."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssl_robust.apgd as apgd_module
import ssl_robust.pgd as pgd_module
from ssl_robust.apgd import apgd
from ssl_robust.objectives import cross_entropy, dlr
from ssl_robust.pgd import RandomStarts, pgd
from tests.helpers import DIM, SHAPE, boundary_images, images, labels, linear_model, misclassified


class Centred(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) * 8.0  # steep enough that the eps-ball reaches across ReLU kinks


def small_classifier() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A random-init two-hidden-layer ReLU MLP (10 classes), 64 random images labelled with its own
    clean predictions (clean accuracy 1). Nonlinear at the eps scale, unlike a linear model, so
    attacks differ in strength on it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), Centred(), nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                              nn.Linear(64, 10))
    model = model.eval().requires_grad_(False)
    x = images(64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


class Recorder:
    """A forward that keeps every input (and output) it is called on: the iterates APGD evaluates."""

    def __init__(self, forward) -> None:
        self.forward, self.inputs, self.outputs = forward, [], []

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        out = self.forward(z)
        self.inputs.append(z.detach().clone())
        self.outputs.append(out.detach().clone())
        return out


def identity(z: torch.Tensor) -> torch.Tensor:
    return z


def neg_squared_distance(out: torch.Tensor, target: torch.Tensor, step: int = 1, steps: int = 1) -> torch.Tensor:
    """-||out - target||^2 per sample: a concave bowl, highest (0) at the target."""
    return -(out - target).pow(2).flatten(1).sum(1)


# ----------------------------------------------------------------------------- constraints

MODES = {"plain": {}, "restarts": {"restarts": 3},
         "cascade": {"restarts": 2, "success_fn": misclassified, "stop_when_fooled": True}}


def _distance(z: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per row of z, its distance to x's row of the same index (a batch of the same size) or to the
    nearest row of x (a batch the cascade compacted)."""
    ord_ = float("inf") if norm == "linf" else 2.0
    if len(z) == len(x):
        return torch.linalg.vector_norm((z - x).flatten(1), ord=ord_, dim=1)
    pairwise = torch.linalg.vector_norm(z.flatten(1)[:, None] - x.flatten(1)[None], ord=ord_, dim=2)
    return pairwise.min(dim=1).values


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("random_start", [True, False])
@pytest.mark.parametrize("inputs", ["interior", "boundary"])
@pytest.mark.parametrize("norm, eps", [("linf", 0.3), ("l2", 3.0)])  # budgets the box cuts
def test_every_iterate_stays_inside_eps_ball_and_unit_box(norm: str, eps: float, mode: str, random_start: bool,
                                                          inputs: str) -> None:
    model = Recorder(linear_model(3))
    x = images(8) if inputs == "interior" else boundary_images(8)
    result = apgd(model, cross_entropy, x, labels(8, 3), eps=eps, steps=10, norm=norm, random_start=random_start,
                  **MODES[mode])
    assert len(model.inputs) > 1
    for z in [result.x_adv, *model.inputs]:
        assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0
        assert float(_distance(z, x, norm).max()) <= eps * (1 + 1e-5)
    assert float(_distance(result.x_adv, x, norm).max()) > 0.5 * eps  # the budget was used


# ----------------------------------------------------------------------------- edges


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_zero_budget_returns_clean_input_and_clean_loss(norm: str) -> None:
    model, x, y = linear_model(3), images(6), labels(6, 3)
    result = apgd(model, cross_entropy, x, y, eps=0.0, steps=5, norm=norm, random_start=True, restarts=2,
                  success_fn=misclassified)
    assert torch.equal(result.x_adv, x)
    with torch.no_grad():
        clean_logits = model(x)
    torch.testing.assert_close(result.loss, F.cross_entropy(clean_logits, y, reduction="none"))
    assert torch.equal(result.success, misclassified(clean_logits, y))


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_zero_steps_evaluate_only_the_start_point(norm: str, eps: float) -> None:
    model, x, y = Recorder(linear_model(3)), images(5), labels(5, 3)
    result = apgd(model, cross_entropy, x, y, eps=eps, steps=0, norm=norm, seed=4)
    start = x + RandomStarts(4, range(len(x))).draw(x, eps, norm)
    assert result.grad_steps == 0 and result.forward_passes == 5
    assert len(model.inputs) == 1 and torch.equal(model.inputs[0], start)
    assert torch.equal(result.x_adv, start)
    torch.testing.assert_close(result.loss, cross_entropy(model.outputs[0], y))
    assert result.grad_zero is None and result.grad_nonzero == 1.0
    assert result.step_loss_sum.shape == (0,) and result.step_count.tolist() == []


@pytest.mark.parametrize("kwargs", [dict(norm="l1"), dict(eps=-0.1), dict(steps=-1), dict(restarts=0)])
def test_invalid_arguments_raise_value_error(kwargs) -> None:
    args = dict(eps=8 / 255, steps=2, norm="linf") | kwargs
    with pytest.raises(ValueError):
        apgd(linear_model(3), cross_entropy, images(2), labels(2, 3), **args)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_result_and_different_seeds_different_starts() -> None:
    model, x, y = linear_model(3), images(6), labels(6, 3)
    first, second = (apgd(model, cross_entropy, x, y, eps=8 / 255, steps=4, seed=7) for _ in range(2))
    assert torch.equal(first.x_adv, second.x_adv) and torch.equal(first.loss, second.loss)
    other = apgd(model, cross_entropy, x, y, eps=8 / 255, steps=0, seed=8)
    assert not torch.equal(apgd(model, cross_entropy, x, y, eps=8 / 255, steps=0, seed=7).x_adv, other.x_adv)


def test_seed_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    apgd(linear_model(3), cross_entropy, images(4), labels(4, 3), eps=8 / 255, steps=3, restarts=2, seed=5)
    assert torch.equal(torch.rand(3), expected)


# ----------------------------------------------------------------------------- cost accounting


@pytest.mark.parametrize("restarts", [1, 3])
@pytest.mark.parametrize("success_fn", [None, misclassified])
def test_without_cascade_cost_is_samples_times_steps_times_restarts(restarts: int, success_fn) -> None:
    model, x, y = Recorder(linear_model(3)), images(5), labels(5, 3)
    result = apgd(model, cross_entropy, x, y, eps=8 / 255, steps=7, restarts=restarts, success_fn=success_fn)
    assert result.grad_steps == 5 * 7 * restarts
    assert result.forward_passes == 5 * (7 + 1) * restarts  # every step plus the last iterate
    assert sum(len(z) for z in model.inputs) == result.forward_passes
    assert result.step_count.tolist() == [5 * restarts] * 7


def test_cascade_spends_less_and_fools_the_same_samples() -> None:
    model, x, y = small_classifier()
    kwargs = dict(eps=8 / 255, steps=10, restarts=2, seed=3, success_fn=misclassified)
    full = apgd(model, cross_entropy, x, y, stop_when_fooled=False, **kwargs)
    early = apgd(model, cross_entropy, x, y, stop_when_fooled=True, **kwargs)
    assert 0 < int(full.success.sum()) < len(y), "need both fooled and robust samples"
    assert torch.equal(early.success, full.success)
    assert early.grad_steps == int(early.step_count.sum()) < full.grad_steps == len(y) * 10 * 2
    assert early.forward_passes < full.forward_passes == len(y) * 11 * 2
    torch.testing.assert_close(early.x_adv, full.x_adv, rtol=0, atol=1e-6)


def _half_fooled_batch():
    """Four images under a linear model: the first two labelled with their least likely class
    (fooled at once), the last two with their predicted class by a wide margin (a tiny eps never
    flips them)."""
    model, x = linear_model(3), images(4)
    with torch.no_grad():
        logits = model(x)
    return model, x, torch.cat([logits[:2].argmin(1), logits[2:].argmax(1)])


def test_cascade_drops_fooled_samples_within_a_restart_and_from_later_restarts() -> None:
    model, x, y = _half_fooled_batch()
    result = apgd(model, cross_entropy, x, y, eps=1e-6, steps=3, restarts=2, success_fn=misclassified,
                  stop_when_fooled=True)
    assert result.success.tolist() == [True, True, False, False]
    assert result.grad_steps == (4 + 2 + 2) + 2 * 3  # restart 1: all, then the robust two; restart 2: the two
    assert result.step_count.tolist() == [4 + 2, 2 + 2, 2 + 2]
    assert result.forward_passes == result.grad_steps + 2 * 2  # plus the last iterate of each restart


def test_restarts_after_every_sample_is_fooled_are_skipped() -> None:
    model, x = linear_model(3), images(3)
    with torch.no_grad():
        y = model(x).argmin(1)
    result = apgd(model, cross_entropy, x, y, eps=8 / 255, steps=3, restarts=3, success_fn=misclassified,
                  stop_when_fooled=True)
    assert bool(result.success.all()) and result.grad_steps == 3 and result.forward_passes == 3


# ----------------------------------------------------------------------------- optimality on linear models


def _binary_setup():
    """A two-class linear model and inputs away from the box edges."""
    model = linear_model(2, seed=3)
    x, y = images(16, low=0.3, high=0.7), labels(16, 2)
    w_diff = (model.weight[y] - model.weight[1 - y]).detach()  # w_y - w_other, [B, D]
    margin = ((x.flatten(1) * w_diff).sum(1) + (model.bias[y] - model.bias[1 - y])).detach()
    return model, x, y, w_diff, margin


def test_linf_apgd_reaches_closed_form_worst_case_of_linear_binary_classifier() -> None:
    """CE = softplus(-margin), decreasing in the margin (w_y - w_other).x + b: its maximiser over the
    L-inf ball is the corner x - eps sign(w_y - w_other), where the margin drops by eps ||w_y - w_other||_1."""
    model, x, y, w_diff, margin = _binary_setup()
    eps = 0.05
    corner = x - eps * w_diff.sign().view(-1, *SHAPE)
    assert float(corner.min()) > 0 and float(corner.max()) < 1, "the box must not bind"
    result = apgd(model, cross_entropy, x, y, eps=eps, steps=10, norm="linf", seed=0)
    torch.testing.assert_close(result.loss, F.softplus(-(margin - eps * w_diff.abs().sum(1))), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.x_adv, corner, rtol=0, atol=1e-6)


def test_l2_apgd_reaches_closed_form_worst_case_of_linear_binary_classifier() -> None:
    """Over the L2 ball the maximiser is x - eps (w_y - w_other) / ||w_y - w_other||_2."""
    model, x, y, w_diff, margin = _binary_setup()
    eps = 0.5
    maximiser = x - eps * (w_diff / w_diff.norm(dim=1, keepdim=True)).view(-1, *SHAPE)
    assert float(maximiser.min()) > 0 and float(maximiser.max()) < 1, "the box must not bind"
    result = apgd(model, cross_entropy, x, y, eps=eps, steps=30, norm="l2", seed=0)
    torch.testing.assert_close(result.loss, F.softplus(-(margin - eps * w_diff.norm(dim=1))), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(result.x_adv, maximiser, rtol=0, atol=2e-3)


@pytest.mark.parametrize("norm, eps, dual", [("linf", 0.05, lambda w: w.abs().sum(1)),
                                             ("l2", 0.5, lambda w: w.norm(dim=1))])
def test_apgd_reaches_closed_form_worst_margin_of_linear_multiclass_model(norm, eps, dual) -> None:
    """Maximising z_j - z_y over the ball gives (w_j - w_y).x + b_j - b_y + eps ||w_j - w_y||_dual."""
    model = linear_model(5, seed=4)
    x, y = images(16, low=0.3, high=0.7), labels(16, 5)
    j = (y + 1) % 5

    def margin_objective(logits, target, step, steps):
        return logits.gather(1, ((target + 1) % 5)[:, None])[:, 0] - logits.gather(1, target[:, None])[:, 0]

    result = apgd(model, margin_objective, x, y, eps=eps, steps=30, norm=norm, seed=0)
    w = (model.weight[j] - model.weight[y]).detach()
    expected = (x.flatten(1) * w).sum(1) + (model.bias[j] - model.bias[y]).detach() + eps * dual(w)
    torch.testing.assert_close(result.loss, expected, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- strength


def test_stronger_budget_never_scores_higher() -> None:
    model, x, y = small_classifier()
    accuracies = []
    for k in (0, 1, 2, 4, 8, 16):
        result = apgd(model, cross_entropy, x, y, eps=k / 255, steps=10, seed=0, success_fn=misclassified)
        accuracies.append(1 - float(result.success.float().mean()))
    assert accuracies[0] == 1.0
    assert all(a >= b for a, b in zip(accuracies, accuracies[1:])), accuracies
    assert accuracies[-1] < 0.5


@pytest.mark.parametrize("objective", [cross_entropy, dlr], ids=["ce", "dlr"])
def test_apgd_finds_at_least_as_many_adversarial_examples_as_pgd_at_equal_steps(objective) -> None:
    model, x, y = small_classifier()
    eps, steps = 8 / 255, 10
    ours = apgd(model, objective, x, y, eps=eps, steps=steps, seed=0, success_fn=misclassified)
    fixed = pgd(model, objective, x, y, eps=eps, step_size=2.5 * eps / steps, steps=steps, seed=0,
                success_fn=misclassified)
    assert ours.grad_steps == fixed.grad_steps and ours.forward_passes == fixed.forward_passes
    assert 0 < int(fixed.success.sum()) < len(y)
    assert int(ours.success.sum()) >= int(fixed.success.sum())


def _torchattacks_fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str, eps: float,
                         steps: int) -> torch.Tensor:
    torchattacks = pytest.importorskip("torchattacks")
    with torch.random.fork_rng(devices=[]):  # torchattacks seeds the global generator
        adv = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=0, loss=loss)(x, y)
    adv = adv.detach()
    assert float((adv - x).abs().max()) <= eps + 1e-6
    with torch.no_grad():
        return misclassified(model(adv), y)


@pytest.mark.parametrize("loss, objective", [("ce", cross_entropy), ("dlr", dlr)])
def test_apgd_matches_torchattacks_robust_accuracy_within_one_sample(loss: str, objective) -> None:
    """Same model, inputs, eps and steps as ``torchattacks.APGD(loss=...)``, each with its own random
    start. Both evaluate steps + 1 iterates; ours spends ``steps`` gradient evaluations (the last
    iterate is only scored), torchattacks spends steps + 1 (it also differentiates the last one)."""
    model, x, y = small_classifier()
    eps, steps = 8 / 255, 10
    ours = apgd(model, objective, x, y, eps=eps, steps=steps, seed=0, success_fn=misclassified)
    theirs = _torchattacks_fooled(model, x, y, loss, eps, steps)
    assert ours.grad_steps == len(y) * steps
    assert 0 < int(theirs.sum()) < len(y)
    assert abs(int(ours.success.sum()) - int(theirs.sum())) <= 1


def _torchattacks_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """torchattacks' L-inf start under its seed 0: uniform noise scaled so its largest entry is eps."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        t = 2 * torch.rand(x.shape) - 1
    delta = eps * t / t.flatten(1).abs().amax(1).view(-1, *([1] * (x.dim() - 1)))
    return (x + delta).clamp(0, 1) - x


@pytest.mark.parametrize("loss, objective", [("ce", cross_entropy), ("dlr", dlr)])
def test_from_torchattacks_start_apgd_fools_exactly_the_samples_torchattacks_fools(
        loss: str, objective, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the random start made the same, only the algorithm is compared: step 2 eps, momentum
    0.75, the checkpoints and the restarts from the best point. (torchattacks counts the first
    interval's loss increases against a zero-initialised row, not against the start's loss as the
    paper does; it does not change the outcome here.)"""
    model, x, y = small_classifier()
    eps, steps = 8 / 255, 10
    monkeypatch.setattr(pgd_module, "random_delta", _torchattacks_start)  # the start both engines draw
    ours = apgd(model, objective, x, y, eps=eps, steps=steps, success_fn=misclassified)
    theirs = _torchattacks_fooled(model, x, y, loss, eps, steps)
    assert torch.equal(ours.success, theirs)


# ----------------------------------------------------------------------------- step size and momentum


def test_step_size_halves_at_each_checkpoint_from_22_percent_of_the_steps() -> None:
    """One pixel at 0.5, eps 0.4, 100 steps. The objective u - step has gradient +1 everywhere while
    its value falls at every step, so at every checkpoint the loss rose in 0 % of the steps: the
    step halves and the iterate moves back to the best point, the start. Checkpoints come after
    22 % of the steps (22), then at intervals shrinking by 3 % (3 steps) down to 6 % (6): after
    steps 22, 41, 57, 70, 80, 87, 93, 99. Right after a restart from delta = 0, with the
    pre-checkpoint iterate delta_prev, delta_next = 0.75 eta + 0.25 (0 - delta_prev) while
    eta <= eps: the step eta is read off the iterates."""
    x, eps = torch.full((1, 1, 1, 1), 0.5), 0.4
    forward = Recorder(identity)
    result = apgd(forward, lambda out, target, step, steps: out.flatten(1)[:, 0] - step, x, torch.zeros(1),
                  eps=eps, steps=100, random_start=False)
    delta = torch.stack([z.flatten()[0] for z in forward.inputs]) - 0.5  # iterates 0..100
    assert len(delta) == 101
    assert torch.equal(result.x_adv, x)  # the start has the highest loss
    torch.testing.assert_close(delta[1:23], torch.full((22,), eps))  # the first step 2 eps, cut by the ball
    restarts = [i for i in range(1, 101) if delta[i] < delta[i - 1] - 1e-6]
    assert restarts == [23, 42, 58, 71, 81, 88, 94, 100]
    steps_after = [float((delta[i] + 0.25 * delta[i - 2]) / 0.75) for i in restarts]
    assert steps_after == pytest.approx([eps / 2 ** k for k in range(8)], rel=1e-4)  # 2 eps halved 1..8 times


def _scripted(values: list[float], steps: int = 50):
    """One pixel at 0.5, eps 0.4, no random start, ``steps`` steps, the loss of iterate i scripted:
    values[i] + 1e-3 u (the u term only fixes the gradient's sign, +1: after its first step of 2 eps
    the pixel sits on the ball's edge, where u and so ties stay exact). Returns the iterates' deltas."""
    forward = Recorder(identity)

    def objective(out, target, step, steps):
        i = step - 1  # the objective of iterate i gets step i + 1
        return 1e-3 * out.flatten(1)[:, 0] + (values[i] if i < len(values) else -100.0)

    apgd(forward, objective, torch.full((1, 1, 1, 1), 0.5), torch.zeros(1), eps=0.4, steps=steps,
         random_start=False)
    return [float(z.flatten()[0]) - 0.5 for z in forward.inputs]


START_BEST = [100.0]  # iterate 0, the start, has the highest loss: a restart moves back to it, visibly
CHECKPOINT_CASES = {
    # 50 steps: checkpoints after iterates 11 (11 comparisons, i = 1..11) and 21 (10, i = 12..21).
    # Loss rose in 8 of 11 (<= 75 %; ties count as no rise): halve; at 21 the best is unchanged,
    # but the step was just reduced: keep.
    "rose in 8 of 11 steps: halve": (START_BEST + list(range(9)) + [8, 8] + list(range(9, 19)), [12]),
    # Rose in 9 of 11 (> 75 %): keep; at 21 it rose in 10 of 10 but neither the step nor the best
    # loss changed since 11: halve.
    "rose in 9 of 11 steps: keep, then stuck: halve": (START_BEST + list(range(10)) + [9] + list(range(10, 20)),
                                                       [22]),
    "rose in 10 of 11 steps: keep, then stuck: halve": (START_BEST + list(range(11)) + list(range(11, 21)), [22]),
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_checkpoint_halves_and_moves_back_to_the_best_point_exactly_when_its_rule_says(case: str) -> None:
    """A checkpoint reduces a sample's step when its loss rose in at most 75 % of the steps since
    the last checkpoint, or when neither its step nor its best loss changed since then."""
    values, expected_restarts = CHECKPOINT_CASES[case]
    delta = _scripted([float(v) for v in values])
    assert delta[11] == pytest.approx(0.4)  # on the ball's edge before the first checkpoint
    restarts = [i for i in (12, 22) if delta[i] < delta[i - 1] - 1e-6]
    assert restarts == expected_restarts


def test_a_restart_steps_along_the_gradient_of_its_best_point() -> None:
    """As above, u - step falls at every step, so the first checkpoint (after step 11 of 50) moves
    the iterate back to the start. Here the objective is -u - step at the checkpoint's iterate: its
    gradient points down, the start's up. The restart must step along the start's gradient:
    delta_12 = 0.75 eps - 0.25 delta_10 = 0.5 eps (along the checkpoint's: -0.75 eps - 0.25 eps)."""
    eps, forward = 0.4, Recorder(identity)

    def objective(out, target, step, steps):
        return (-1.0 if step == 12 else 1.0) * out.flatten(1)[:, 0] - step

    apgd(forward, objective, torch.full((1, 1, 1, 1), 0.5), torch.zeros(1), eps=eps, steps=50, random_start=False)
    delta = [float(z.flatten()[0]) - 0.5 for z in forward.inputs]
    assert delta[10] == pytest.approx(eps) and delta[11] == pytest.approx(eps)
    assert delta[12] == pytest.approx(0.5 * eps)


def test_halving_the_step_settles_apgd_where_a_fixed_step_oscillates(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a concave bowl with its top inside the ball, a sign step of 2 eps overshoots forever; with
    the checkpoints the step shrinks and APGD ends at the top. The broken case (checkpoints that
    never halve) is built by disabling the checkpoint."""
    gen = torch.Generator().manual_seed(0)
    x, eps = images(4, low=0.3, high=0.7), 0.1
    top = x + 0.9 * eps * (2 * torch.rand(x.shape, generator=gen) - 1)
    working = apgd(identity, neg_squared_distance, x, top, eps=eps, steps=30, random_start=False)
    monkeypatch.setattr(apgd_module, "_checkpoint", lambda state, interval: None)
    never_halving = apgd(identity, neg_squared_distance, x, top, eps=eps, steps=30, random_start=False)
    assert float(working.loss.min()) > -1e-4  # the optimum is 0
    assert float(never_halving.loss.max()) < -1e-2
    assert bool((working.loss > never_halving.loss).all())


def _first_steps(top: float = 0.53):
    """One pixel at 0.5, eps 0.1, no random start, a bowl whose top is at ``top``, 20 steps (the
    first checkpoint after step 4). The first step (2 eps) lands on the ball's edge delta_1 = 0.1,
    past the top, so the second gradient points back; the third points up again. Returns the first
    four deltas and the plain projected sign step z_k = Proj(delta_k + 2 eps sign(grad_k)), k = 1, 2."""
    x, eps = torch.full((1, 1, 1, 1), 0.5), 0.1
    forward = Recorder(identity)
    apgd(forward, neg_squared_distance, x, torch.full_like(x, top), eps=eps, steps=20, random_start=False)
    d = [float(z.flatten()[0]) - 0.5 for z in forward.inputs[:4]]
    z = [max(min(d[k] + 2 * eps * (1.0 if 0.5 + d[k] < top else -1.0), eps), -eps) for k in (1, 2)]
    return d, z


def _with_momentum(d: list[float], z: list[float], k: int) -> float:
    return max(min(d[k] + 0.75 * (z[k - 1] - d[k]) + 0.25 * (d[k] - d[k - 1]), 0.1), -0.1)


def test_second_and_third_steps_carry_momentum() -> None:
    """delta_{k+1} = Proj(delta_k + 0.75 (z_k - delta_k) + 0.25 (delta_k - delta_{k-1})); the third
    step's z is cut by the ball (delta_2 + 2 eps > eps), so the projection of z counts too."""
    d, z = _first_steps()
    assert d[:2] == pytest.approx([0.0, 0.1], abs=1e-6)
    assert d[2] == pytest.approx(_with_momentum(d, z, 1), abs=1e-6) and d[2] == pytest.approx(-0.025, abs=1e-6)
    assert d[3] == pytest.approx(_with_momentum(d, z, 2), abs=1e-6) and d[3] == pytest.approx(0.0375, abs=1e-6)
    assert d[2] != pytest.approx(z[0], abs=1e-3)  # not the plain projected sign step


def test_without_momentum_the_second_step_is_the_plain_projected_sign_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The broken case of the test above: it tells MOMENTUM = 1 apart."""
    monkeypatch.setattr(apgd_module, "MOMENTUM", 1.0)
    d, z = _first_steps()
    assert d[2] == pytest.approx(z[0], abs=1e-6) and d[2] == pytest.approx(-0.1, abs=1e-6)
    assert d[2] != pytest.approx(_with_momentum(d, z, 1), abs=1e-3)


# ----------------------------------------------------------------------------- what APGD returns


def test_damage_fn_returns_each_samples_most_damaging_iterate() -> None:
    """The damage (how far logit 1 is above logit 0) is not the objective (CE): the returned input
    is the evaluated iterate with the highest damage over all steps and restarts, the earliest on ties."""
    forward = Recorder(linear_model(3, seed=1))
    x, y = images(8), labels(8, 3)

    def damage(output, target):
        return output[:, 1] - output[:, 0]

    result = apgd(forward, cross_entropy, x, y, eps=0.1, steps=6, restarts=2, damage_fn=damage)
    inputs, outputs = torch.stack(forward.inputs), torch.stack(forward.outputs)  # [iterates, B, ...]
    damages = torch.stack([damage(o, y) for o in outputs])
    best = damages.argmax(0)
    torch.testing.assert_close(result.x_adv, inputs[best, torch.arange(8)])
    torch.testing.assert_close(result.output, outputs[best, torch.arange(8)])
    assert bool((best != len(inputs) - 1).any()), "some sample's most damaging iterate is not the last one"
    plain = apgd(linear_model(3, seed=1), cross_entropy, x, y, eps=0.1, steps=6, restarts=2)
    assert not torch.allclose(plain.x_adv, result.x_adv)


def test_without_success_or_damage_the_highest_loss_iterate_is_returned() -> None:
    forward = Recorder(linear_model(3, seed=1))
    x, y = images(8), labels(8, 3)
    result = apgd(forward, cross_entropy, x, y, eps=0.1, steps=6, restarts=2)
    losses = torch.stack([cross_entropy(o, y) for o in forward.outputs])
    torch.testing.assert_close(result.loss, losses.max(0).values)
    torch.testing.assert_close(result.x_adv, torch.stack(forward.inputs)[losses.argmax(0), torch.arange(8)])


def _level_objective(out, target, step, steps):
    """Gradient +1 on the first pixel, value exactly 0 at every iterate: every loss ties."""
    u = out.flatten(1)[:, 0]
    return u - u.detach()


@pytest.mark.parametrize("scoring", ["loss", "damage"])
def test_ties_keep_the_earliest_iterate(scoring: str) -> None:
    forward = Recorder(identity)
    x = images(2, low=0.3, high=0.7)
    damage_fn = (lambda output, target: torch.zeros(len(output))) if scoring == "damage" else None
    result = apgd(forward, _level_objective, x, torch.zeros(2), eps=0.1, steps=4, restarts=2, damage_fn=damage_fn)
    assert not torch.equal(forward.inputs[0], forward.inputs[-1])  # the iterates did move
    assert torch.equal(result.x_adv, forward.inputs[0])  # the start of the first restart


def _in_band(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return output.flatten(1)[:, 0] > 0.59


@pytest.mark.parametrize("stop_when_fooled", [False, True])
def test_sample_fooled_at_any_iterate_counts_as_fooled_and_returns_its_fooling_input(stop_when_fooled: bool) -> None:
    """Two pixels ascend a bowl whose top is 0.03 above them: the first (at 0.5) passes through the
    'fooled' band u > 0.59 at its first step (0.6) and settles below it at 0.53; the second (at 0.2)
    never gets there."""
    x = torch.tensor([0.5, 0.2]).view(2, 1, 1, 1)
    forward = Recorder(identity)
    result = apgd(forward, neg_squared_distance, x, x + 0.03, eps=0.1, steps=20, random_start=False,
                  success_fn=_in_band, stop_when_fooled=stop_when_fooled)
    assert not bool(_in_band(forward.inputs[-1], None)[-1])  # the last iterate is outside the band again
    assert result.success.tolist() == [True, False]
    assert result.x_adv[0].item() == pytest.approx(0.6)  # the first iterate inside the band
    assert _in_band(result.x_adv, None).tolist() == [True, False]  # rescoring confirms
    torch.testing.assert_close(result.loss, neg_squared_distance(result.x_adv, x + 0.03))


@pytest.mark.parametrize("restarts", [1, 3])
def test_success_flags_match_the_rescored_adversarial_images(restarts: int) -> None:
    model, x, y = small_classifier()
    result = apgd(model, cross_entropy, x, y, eps=4 / 255, steps=8, restarts=restarts, seed=0,
                  success_fn=misclassified)
    assert 0 < int(result.success.sum()) < len(y)
    with torch.no_grad():
        logits = model(result.x_adv)
    assert torch.equal(result.success, misclassified(logits, y))
    torch.testing.assert_close(result.loss, cross_entropy(logits, y))
    torch.testing.assert_close(result.output, logits)


def test_restarts_never_lose_a_success() -> None:
    model, x, y = small_classifier()
    kwargs = dict(eps=4 / 255, steps=5, seed=0, success_fn=misclassified)
    one = apgd(model, cross_entropy, x, y, restarts=1, **kwargs)
    three = apgd(model, cross_entropy, x, y, restarts=3, **kwargs)
    assert bool((three.success | ~one.success).all())
    assert bool((three.loss >= one.loss - 1e-6)[~three.success].all())  # a fooled one keeps its fooling iterate


# ----------------------------------------------------------------------------- gradient checks


def test_grad_zero_marks_samples_whose_saturated_softmax_gives_an_exactly_zero_gradient() -> None:
    """Logits x 1e4: in float32 the softmax of a correctly classified sample is exactly one-hot, so
    its CE gradient is exactly zero; a misclassified sample's is not."""
    model, x = linear_model(3), images(8)
    y = labels(8, 3)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert 0 < int(correct.sum()) < 8
    result = apgd(lambda z: 1e4 * model(z), cross_entropy, x, y, eps=1e-4, steps=3, random_start=False)
    assert result.grad_zero.dtype == torch.bool and result.grad_zero.shape == (8,)
    assert torch.equal(result.grad_zero, correct)
    assert result.grad_nonzero == pytest.approx(1 - float(correct.float().mean()))


def test_grad_zero_marks_samples_in_a_dead_relu_region() -> None:
    """logits = relu(mean(x) - 0.5) v: dark images stay below the kink for the whole ball."""
    v = torch.tensor([1.0, -1.0, 0.5])
    x = torch.cat([torch.full((2, *SHAPE), 0.2), torch.full((2, *SHAPE), 0.8), torch.full((1, *SHAPE), 0.1)])
    result = apgd(lambda z: F.relu(z.flatten(1).mean(1, keepdim=True) - 0.5) * v, cross_entropy, x,
                  torch.tensor([0, 1, 0, 1, 2]), eps=8 / 255, steps=2)
    assert result.grad_zero.tolist() == [True, True, False, False, True]
    assert result.grad_nonzero == pytest.approx(0.4)


# ----------------------------------------------------------------------------- devices


@pytest.mark.parametrize("kwargs", [{}, {"success_fn": misclassified},
                                    {"success_fn": misclassified, "stop_when_fooled": True, "restarts": 2},
                                    {"norm": "l2", "damage_fn": lambda o, t: -cross_entropy(o, t)},
                                    {"steps": 0}], ids=["plain", "success", "cascade", "damage", "no-steps"])
def test_apgd_keeps_its_results_on_the_images_device(default_device_elsewhere, kwargs) -> None:
    weight = torch.randn(3, DIM, generator=torch.Generator().manual_seed(0), device="cpu")
    x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(1), device="cpu")
    y = torch.tensor([0, 1, 2, 0], device="cpu")
    result = apgd(lambda z: z.flatten(1) @ weight.T, cross_entropy, x, y, eps=8 / 255,
                  **({"steps": 12} | kwargs))
    for name in ("x_adv", "loss", "success", "output", "grad_zero", "step_loss_sum", "step_count"):
        value = getattr(result, name)
        assert value is None or value.device.type == "cpu", f"{name} is on {value.device}"
    assert float(result.loss.sum()) == float(result.loss.sum())  # readable: has data
