"""Attack objectives: each equals its textbook formula, computed here by hand."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_robust.metrics import depth_errors
from ssl_robust.objectives import (OBJECTIVES, cross_entropy, depth_l1, depth_l2, depth_log_l1, dlr, dlr_targeted,
                                   embed_cos, embed_l2, seg_balanced_ce, seg_js, seg_masked_ce, seg_masked_spherical,
                                   log_depth_gradient, segpgd, segpgd_weight, silog, target_classes)

IGNORE = 255


def by_hand_ce(logits: torch.Tensor, label: int) -> float:
    """-log softmax(logits)[label] for one logit vector, in float64 Python."""
    values = [float(v) for v in logits]
    top = max(values)
    return -(values[label] - top - math.log(sum(math.exp(v - top) for v in values)))


# ----------------------------------------------------------------------------- registry


def test_registered_objectives_are_the_module_functions() -> None:
    assert OBJECTIVES.get("embed_l2") is embed_l2
    assert OBJECTIVES.get("embed_cos") is embed_cos
    assert OBJECTIVES.get("cross_entropy") is cross_entropy
    assert OBJECTIVES.get("segpgd") is segpgd
    assert OBJECTIVES.get("silog") is silog


# ----------------------------------------------------------------------------- embedding, CE


@pytest.mark.parametrize("shape", [(4, 16), (4, 8, 3, 3)])
def test_embed_l2_is_squared_l2_distance_per_sample(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    expected = torch.tensor([sum((float(u) - float(v)) ** 2 for u, v in zip(a[i].flatten(), b[i].flatten()))
                             for i in range(shape[0])])
    torch.testing.assert_close(embed_l2(a, b), expected, rtol=1e-5, atol=1e-5)


def test_embed_l2_is_zero_at_the_clean_embedding() -> None:
    a = torch.randn(3, 10)
    assert torch.equal(embed_l2(a, a.clone()), torch.zeros(3))


def test_embed_cos_is_one_minus_cosine_and_averages_over_tokens() -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 5, generator=gen), torch.randn(2, 5, generator=gen)
    expected = 1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    torch.testing.assert_close(embed_cos(a, b), expected)
    grid_a, grid_b = torch.randn(2, 5, 2, 3, generator=gen), torch.randn(2, 5, 2, 3, generator=gen)
    per_token = 1 - F.cosine_similarity(grid_a, grid_b, dim=1)  # [2, 2, 3]
    torch.testing.assert_close(embed_cos(grid_a, grid_b), per_token.flatten(1).mean(1))


def test_ce_equals_per_sample_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(2)
    logits, labels = torch.randn(6, 5, generator=gen), torch.randint(5, (6,), generator=gen)
    loss = cross_entropy(logits, labels)
    assert loss.shape == (6,)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, reduction="none"))
    torch.testing.assert_close(loss, torch.tensor([by_hand_ce(logits[i], int(labels[i])) for i in range(6)]))


# ----------------------------------------------------------------------------- SegPGD


@pytest.mark.parametrize("step, steps, expected", [(1, 10, 0.0), (10, 10, 0.45), (6, 10, 0.25), (3, 3, 1 / 3),
                                                   (1, 1, 0.0)])
def test_segpgd_weight_is_t_minus_one_over_two_T(step: int, steps: int, expected: float) -> None:
    assert segpgd_weight(step, steps) == pytest.approx(expected)


def _segmentation_example():
    """One 1x5 image, 3 classes: pixels 0-1 correct, 2-3 wrong, 4 ignored."""
    logits = torch.tensor([[[2.0, 0.1, 0.2, 1.5, 9.0]],  # class 0
                           [[0.5, 1.9, 1.0, 0.3, -1.0]],  # class 1
                           [[0.1, 0.3, 0.4, 0.2, 0.0]]]).unsqueeze(0)  # class 2 -> [1, 3, 1, 5]
    target = torch.tensor([[[0, 1, 2, 1, IGNORE]]])  # argmax: 0, 1, 1, 0, 0
    pixel_ce = [by_hand_ce(logits[0, :, 0, p], int(target[0, 0, p])) for p in range(4)]
    return logits, target, pixel_ce


def test_segpgd_first_step_counts_only_correctly_classified_pixels() -> None:
    logits, target, pixel_ce = _segmentation_example()
    loss = segpgd(logits, target, step=1, steps=5, ignore_index=IGNORE)
    assert float(loss) == pytest.approx((pixel_ce[0] + pixel_ce[1]) / 4, rel=1e-5)


def test_segpgd_first_step_gradient_vanishes_on_wrong_and_ignored_pixels() -> None:
    logits, target, _ = _segmentation_example()
    logits.requires_grad_(True)
    segpgd(logits, target, step=1, steps=5, ignore_index=IGNORE).sum().backward()
    grad_norm = logits.grad[0, :, 0].abs().sum(0)  # per pixel
    assert bool((grad_norm[:2] > 0).all())
    assert torch.equal(grad_norm[2:], torch.zeros(3))


def test_segpgd_last_step_weights_match_formula() -> None:
    logits, target, pixel_ce = _segmentation_example()
    steps = 4
    lam = (steps - 1) / (2 * steps)
    expected = ((1 - lam) * (pixel_ce[0] + pixel_ce[1]) + lam * (pixel_ce[2] + pixel_ce[3])) / 4
    loss = segpgd(logits, target, step=steps, steps=steps, ignore_index=IGNORE)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_segpgd_ignored_pixels_never_contribute() -> None:
    logits, target, _ = _segmentation_example()
    changed = logits.clone()
    changed[0, :, 0, 4] = torch.tensor([-5.0, 7.0, 3.0])  # the ignored pixel, now "wrong" in every way
    for step in (1, 3, 5):
        torch.testing.assert_close(segpgd(changed, target, step, 5, ignore_index=IGNORE),
                                   segpgd(logits, target, step, 5, ignore_index=IGNORE))
    changed.requires_grad_(True)
    segpgd(changed, target, 5, 5, ignore_index=IGNORE).sum().backward()
    assert torch.equal(changed.grad[0, :, 0, 4], torch.zeros(3))


def test_segpgd_is_per_sample() -> None:
    logits, target, _ = _segmentation_example()
    batch = torch.cat([logits, logits.flip(-1)])
    targets = torch.cat([target, target.flip(-1)])
    loss = segpgd(batch, targets, 3, 5, ignore_index=IGNORE)
    assert loss.shape == (2,)
    torch.testing.assert_close(loss[0], segpgd(logits, target, 3, 5, ignore_index=IGNORE)[0])


def test_segpgd_when_every_pixel_is_wrong_is_finite_and_weights_wrong_pixels() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 3, 2, 3, generator=gen)
    target = (logits.argmax(1) + 1) % 3  # every pixel misclassified
    ce = F.cross_entropy(logits, target, reduction="none")
    logits.requires_grad_(True)
    first = segpgd(logits, target, 1, 4, ignore_index=IGNORE)
    last = segpgd(logits, target, 4, 4, ignore_index=IGNORE)
    assert float(first.detach()) == 0.0
    assert float(last.detach()) == pytest.approx(3 / 8 * float(ce.mean()), rel=1e-5)
    (grad,) = torch.autograd.grad(last.sum(), logits)
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0


def test_segpgd_when_every_pixel_is_ignored_is_zero_with_finite_zero_gradient() -> None:
    logits = torch.randn(2, 3, 2, 2, requires_grad=True)
    target = torch.full((2, 2, 2), IGNORE)
    loss = segpgd(logits, target, 2, 4, ignore_index=IGNORE)
    assert torch.equal(loss.detach(), torch.zeros(2))
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_segpgd_honours_a_custom_ignore_index() -> None:
    logits, target, pixel_ce = _segmentation_example()
    relabelled = torch.where(target == IGNORE, torch.tensor(-1), target)
    torch.testing.assert_close(segpgd(logits, relabelled, 1, 5, ignore_index=-1),
                               segpgd(logits, target, 1, 5, ignore_index=IGNORE))


# ----------------------------------------------------------------------------- depth (SILog)


def _depth_example():
    gen = torch.Generator().manual_seed(4)
    target = 0.5 + 5 * torch.rand(2, 6, 6, generator=gen)
    target[:, 0, :3] = 0.0  # invalid pixels
    pred = target * torch.exp(0.2 * torch.randn(2, 6, 6, generator=gen))
    pred[:, 0, :3] = 1.0
    return pred, target


def test_silog_is_zero_for_a_perfect_prediction() -> None:
    _, target = _depth_example()
    assert bool((silog(target.clone(), target) < 1e-3).all())


def test_silog_matches_formula_over_valid_pixels() -> None:
    pred, target = _depth_example()
    expected = []
    for p, t in zip(pred, target):
        valid = t > 1e-3
        g = torch.log(p[valid].double()) - torch.log(t[valid].double())
        expected.append(math.sqrt(float((g ** 2).mean() - 0.85 * g.mean() ** 2)))
    torch.testing.assert_close(silog(pred, target).double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-4, atol=1e-5)


def test_silog_accepts_channel_dimension() -> None:
    pred, target = _depth_example()
    torch.testing.assert_close(silog(pred[:, None], target), silog(pred, target))


def test_silog_is_scale_invariant_with_full_variance_focus() -> None:
    pred, target = _depth_example()
    torch.testing.assert_close(silog(3.0 * pred, target, variance_focus=1.0),
                               silog(pred, target, variance_focus=1.0), rtol=1e-3, atol=1e-3)


def test_silog_of_a_rescaled_perfect_prediction_is_sqrt_one_minus_focus_log_scale() -> None:
    _, target = _depth_example()
    loss = silog(2.0 * target, target)
    torch.testing.assert_close(loss, torch.full((2,), math.sqrt(0.15) * math.log(2.0)), rtol=1e-4, atol=1e-4)


def test_silog_ignores_invalid_pixels() -> None:
    pred, target = _depth_example()
    changed = pred.clone()
    changed[:, 0, :3] = 123.0  # prediction at invalid (0) target pixels
    torch.testing.assert_close(silog(changed, target), silog(pred, target))
    changed.requires_grad_(True)
    (grad,) = torch.autograd.grad(silog(changed, target).sum(), changed)
    assert torch.equal(grad[:, 0, :3], torch.zeros(2, 3))


@pytest.mark.parametrize("case", ["noisy", "perfect", "all_invalid", "non_positive_prediction"])
def test_silog_gradient_is_finite(case: str) -> None:
    pred, target = _depth_example()
    if case == "perfect":
        pred = target.clone()
    elif case == "all_invalid":
        target = torch.zeros_like(target)
    elif case == "non_positive_prediction":
        pred = pred.clone()
        pred[:, 2] = 0.0
        pred[:, 3] = -1.0
    pred.requires_grad_(True)
    loss = silog(pred, target)
    (grad,) = torch.autograd.grad(loss.sum(), pred)
    assert bool(torch.isfinite(loss).all())
    assert bool(torch.isfinite(grad).all())


def test_segpgd_defaults_are_the_first_step_ignoring_label_255() -> None:
    logits, target, pixel_ce = _segmentation_example()
    assert float(segpgd(logits, target)) == pytest.approx((pixel_ce[0] + pixel_ce[1]) / 4, rel=1e-5)


def test_silog_accepts_a_one_row_depth_map() -> None:
    pred, target = _depth_example()
    one_row_pred, one_row_target = pred[:, :1], target[:, 1:2]  # [B, 1, W]: a row, not a channel
    expected = torch.stack([silog(p[None], t[None])[0] for p, t in zip(one_row_pred, one_row_target)])
    torch.testing.assert_close(silog(one_row_pred, one_row_target), expected)
    assert silog(one_row_pred, one_row_target).shape == (2,)


def test_silog_at_exactly_min_depth_is_invalid() -> None:
    target = torch.tensor([[1e-3, 2.0]])
    pred = torch.tensor([[5.0, 2.0]])  # wrong only on the min_depth pixel
    assert float(silog(pred, target)) == pytest.approx(1e-4, abs=1e-6)  # sqrt(0 + 1e-8)


def test_silog_of_one_valid_pixel() -> None:
    target = torch.tensor([[2.0, 0.0]])
    pred = torch.tensor([[2.0 * math.e, 1.0]])  # g = 1 on the one valid pixel
    assert float(silog(pred, target)) == pytest.approx(math.sqrt(1 - 0.85), rel=1e-5)


def test_segpgd_of_one_labelled_pixel_is_its_cross_entropy() -> None:
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # [1, 2 classes, 1, 2]
    target = torch.tensor([[[0, IGNORE]]])
    assert float(segpgd(logits, target, 1, 3)) == pytest.approx(by_hand_ce(logits[0, :, 0, 0], 0), rel=1e-6)


# ----------------------------------------------------------------------------- standard attack losses: all


SEGMENTATION_LOSSES = {"seg_masked_ce": seg_masked_ce, "seg_balanced_ce": seg_balanced_ce, "seg_js": seg_js,
                       "seg_masked_spherical": seg_masked_spherical}
DEPTH_LOSSES = {"depth_l1": depth_l1, "depth_l2": depth_l2, "depth_log_l1": depth_log_l1}
NEW_LOSSES = {"dlr": dlr, "dlr_targeted": dlr_targeted, **SEGMENTATION_LOSSES, **DEPTH_LOSSES}


def _new_loss_inputs(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of 3 model outputs and targets of the kind each new loss reads."""
    gen = torch.Generator().manual_seed(5)
    if name in ("dlr", "dlr_targeted"):
        logits = torch.randn(3, 6, generator=gen)
        labels = torch.randint(6, (3,), generator=gen)
        return logits, (target_classes(logits, labels, 2) if name == "dlr_targeted" else labels)
    if name in SEGMENTATION_LOSSES:
        target = torch.randint(4, (3, 4, 5), generator=gen)
        target[:, 0, :2] = IGNORE
        return torch.randn(3, 4, 4, 5, generator=gen), target
    pred, target = _depth_example()
    return torch.cat([pred, pred[:1]])[:, None], torch.cat([target, target[:1]])


def test_new_objectives_are_registered_under_their_names() -> None:
    for name, fn in NEW_LOSSES.items():
        assert OBJECTIVES.get(name) is fn


@pytest.mark.parametrize("name", sorted(NEW_LOSSES))
def test_each_new_loss_is_one_finite_value_per_sample_with_a_finite_gradient(name: str) -> None:
    output, target = _new_loss_inputs(name)
    output.requires_grad_(True)
    loss = NEW_LOSSES[name](output, target)
    (grad,) = torch.autograd.grad(loss.sum(), output)
    assert loss.shape == (3,)
    assert bool(torch.isfinite(loss).all()) and bool(torch.isfinite(grad).all())
    assert float(grad.abs().sum()) > 0


# ----------------------------------------------------------------------------- DLR (AutoAttack)


def autoattack_dlr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """AutoAttack's ``APGDAttack.dlr_loss`` (autoattack/autopgd_base.py), sort-based as written there."""
    x_sorted, ind_sorted = x.sort(dim=1)
    ind = (ind_sorted[:, -1] == y).float()
    u = torch.arange(x.shape[0])
    return -(x[u, y] - x_sorted[:, -2] * ind - x_sorted[:, -1] * (1.0 - ind)) / (
        x_sorted[:, -1] - x_sorted[:, -3] + 1e-12)


def autoattack_dlr_targeted(x: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor) -> torch.Tensor:
    """AutoAttack's ``APGDAttack_targeted.dlr_loss_targeted`` (autoattack/autopgd_base.py)."""
    x_sorted, _ = x.sort(dim=1)
    u = torch.arange(x.shape[0])
    return -(x[u, y] - x[u, y_target]) / (x_sorted[:, -1] - 0.5 * (x_sorted[:, -3] + x_sorted[:, -4]) + 1e-12)


def test_dlr_matches_autoattack_on_hand_computed_logits() -> None:
    # z = [1, 4, 2, 0]; sorted descending 4, 2, 1, 0: z_pi1 - z_pi3 = 4 - 1 = 3.
    # y=0: -(1 - 4)/3 = 1.   y=1 (the top class): -(4 - 2)/3 = -2/3.   y=2: -(2 - 4)/3 = 2/3.
    logits = torch.tensor([[1.0, 4.0, 2.0, 0.0]]).repeat(3, 1)
    labels = torch.tensor([0, 1, 2])
    expected = torch.tensor([1.0, -2 / 3, 2 / 3])
    torch.testing.assert_close(dlr(logits, labels), expected)
    torch.testing.assert_close(autoattack_dlr(logits, labels), expected)


def test_dlr_equals_autoattacks_formula_on_random_logits() -> None:
    gen = torch.Generator().manual_seed(6)
    logits, labels = torch.randn(32, 10, generator=gen), torch.randint(10, (32,), generator=gen)
    labels[:8] = logits[:8].argmax(1)  # some correctly classified, where the runner-up is the max other
    torch.testing.assert_close(dlr(logits, labels), autoattack_dlr(logits, labels))


def test_dlr_is_invariant_to_scaling_and_shifting_the_logits() -> None:
    gen = torch.Generator().manual_seed(7)
    logits, labels = torch.randn(8, 5, generator=gen), torch.randint(5, (8,), generator=gen)
    torch.testing.assert_close(dlr(100 * logits + 7, labels), dlr(logits, labels), rtol=1e-5, atol=1e-6)


def test_dlr_gradient_survives_logits_where_cross_entropys_gradient_is_exactly_zero() -> None:
    # x100, every margin is >= 200: softmax is exactly one-hot in float32 (exp(-200) underflows to 0).
    base = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, -1.0]], requires_grad=True)
    labels = torch.tensor([0, 1])
    (ce_grad,) = torch.autograd.grad(cross_entropy(base * 100, labels).sum(), base)
    (dlr_grad,) = torch.autograd.grad(dlr(base * 100, labels).sum(), base)
    assert torch.equal(ce_grad, torch.zeros_like(ce_grad))
    assert bool((dlr_grad.abs().sum(dim=1) > 0).all())


def test_dlr_increases_as_the_true_logit_drops() -> None:
    labels = torch.tensor([0])
    losses = [float(dlr(torch.tensor([[z_y, 1.0, 0.0, -1.0]]), labels)) for z_y in (3.0, 2.5, 1.5, 0.5)]
    assert losses == sorted(losses) and len(set(losses)) == 4


def test_dlr_needs_at_least_three_classes() -> None:
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr(torch.randn(2, 2), torch.tensor([0, 1]))


def test_dlr_targeted_matches_autoattack_on_hand_computed_logits() -> None:
    # z = [1, 4, 2, 0]; sorted descending 4, 2, 1, 0: z_pi1 - (z_pi3 + z_pi4)/2 = 4 - (1 + 0)/2 = 3.5.
    # (y=1, t=2): -(4 - 2)/3.5 = -4/7.   (y=0, t=1): -(1 - 4)/3.5 = 6/7.
    logits = torch.tensor([[1.0, 4.0, 2.0, 0.0]]).repeat(2, 1)
    target = torch.tensor([[1, 2], [0, 1]])
    expected = torch.tensor([-4 / 7, 6 / 7])
    torch.testing.assert_close(dlr_targeted(logits, target), expected)
    torch.testing.assert_close(autoattack_dlr_targeted(logits, target[:, 0], target[:, 1]), expected)


def test_dlr_targeted_equals_autoattacks_formula_on_random_logits() -> None:
    gen = torch.Generator().manual_seed(8)
    logits, labels = torch.randn(32, 10, generator=gen), torch.randint(10, (32,), generator=gen)
    target = torch.stack([labels, torch.randint(10, (32,), generator=gen)], dim=1)
    expected = autoattack_dlr_targeted(logits, target[:, 0], target[:, 1])
    torch.testing.assert_close(dlr_targeted(logits, target), expected)


def test_ascending_dlr_targeted_raises_the_target_logit_and_lowers_the_true_one() -> None:
    # z = [4, 1, 0, -1, -2], y = 0 (z_pi1), t = 1 (z_pi2): the denominator 4 - (0 - 1)/2 = 4.5 holds z_y only.
    # d/dz_t = 1/4.5 > 0;  d/dz_y = -1/4.5 + (4 - 1)/4.5^2 = -2/27 < 0.
    logits = torch.tensor([[4.0, 1.0, 0.0, -1.0, -2.0]], requires_grad=True)
    (grad,) = torch.autograd.grad(dlr_targeted(logits, torch.tensor([[0, 1]])).sum(), logits)
    torch.testing.assert_close(grad[0, :2], torch.tensor([-2 / 27, 1 / 4.5]))


def test_dlr_targeted_needs_at_least_four_classes() -> None:
    with pytest.raises(ValueError, match="at least 4 classes"):
        dlr_targeted(torch.randn(2, 3), torch.tensor([[0, 1], [1, 2]]))


def test_target_classes_count_the_rank_from_the_top_class() -> None:
    logits = torch.tensor([[1.0, 4.0, 2.0, 0.0]])  # classes by logit, highest first: 1, 2, 0, 3
    labels = torch.tensor([1])
    picked = [int(target_classes(logits, labels, rank)[0, 1]) for rank in (1, 2, 3, 4)]
    assert picked == [1, 2, 0, 3]
    assert target_classes(logits, labels, 2).tolist() == [[1, 2]]


def test_target_classes_pick_autoattacks_target_for_every_rank() -> None:
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(16, 10, generator=gen)
    labels = torch.randint(10, (16,), generator=gen)  # the labels pass through, whatever the prediction
    for target_class in range(2, 9 + 2):  # AutoAttack's n_target_classes = 9
        target = target_classes(logits, labels, target_class)
        assert torch.equal(target[:, 0], labels)
        assert torch.equal(target[:, 1], logits.sort(dim=1)[1][:, -target_class])
        assert torch.equal(target[:, 1], logits.topk(target_class, dim=1).indices[:, -1])


def test_target_classes_reject_a_rank_outside_the_classes() -> None:
    for rank in (0, 5):
        with pytest.raises(ValueError, match="rank"):
            target_classes(torch.randn(2, 4), torch.tensor([0, 1]), rank)


# ----------------------------------------------------------------------------- segmentation (SEA)


def _confidence_drop(logits: torch.Tensor) -> torch.Tensor:
    """The example with correct pixel 0 less sure of its class 0 (2.0 -> 1.0, still the argmax)."""
    worse = logits.clone()
    worse[0, 0, 0, 0] = 1.0
    return worse


def _wrong_and_ignored_pixels_changed(logits: torch.Tensor) -> torch.Tensor:
    """The example with new logits on the wrong pixels 2-3 (still wrong) and the ignored pixel 4."""
    changed = logits.clone()
    changed[0, :, 0, 2] = torch.tensor([0.0, 5.0, -3.0])  # label 2, predicted 1
    changed[0, :, 0, 3] = torch.tensor([4.0, -2.0, 1.0])  # label 1, predicted 0
    changed[0, :, 0, 4] = torch.tensor([-5.0, 7.0, 3.0])
    return changed


def test_seg_masked_ce_averages_the_ce_of_correct_pixels_over_labelled_pixels() -> None:
    logits, target, pixel_ce = _segmentation_example()
    assert float(seg_masked_ce(logits, target)) == pytest.approx((pixel_ce[0] + pixel_ce[1]) / 4, rel=1e-5)


@pytest.mark.parametrize("name", ["seg_masked_ce", "seg_balanced_ce", "seg_masked_spherical"])
def test_masked_segmentation_losses_ignore_misclassified_and_ignored_pixels(name: str) -> None:
    fn = SEGMENTATION_LOSSES[name]
    logits, target, _ = _segmentation_example()
    changed = _wrong_and_ignored_pixels_changed(logits).requires_grad_(True)
    loss = fn(changed, target)
    torch.testing.assert_close(loss.detach(), fn(logits, target))
    (grad,) = torch.autograd.grad(loss.sum(), changed)
    assert torch.equal(grad[0, :, 0, 2:], torch.zeros(3, 3))
    assert float(grad[0, :, 0, :2].abs().sum()) > 0


def test_seg_balanced_ce_weights_each_correct_pixel_by_its_class_weight() -> None:
    logits, target, pixel_ce = _segmentation_example()
    weights = torch.tensor([0.2, 0.5, 0.3])  # pixel 0 is class 0, pixel 1 class 1; pixels 2-3 wrong
    expected = (0.2 * pixel_ce[0] + 0.5 * pixel_ce[1]) / 4
    assert float(seg_balanced_ce(logits, target, class_weights=weights)) == pytest.approx(expected, rel=1e-5)


def test_seg_balanced_ce_defaults_to_the_images_inverse_label_frequency() -> None:
    # Pixels 0-2 are class 0 (CE a each), pixel 3 class 1 (CE b), all correct. Inverse counts 1/3 and 1,
    # normalised to sum 1: w = [1/4, 3/4]. Loss = (3 * a/4 + 3 b/4) / 4 = 3 (a + b) / 16: both classes weigh alike.
    column_0, column_1 = [3.0, 1.0, 0.0], [0.5, 2.0, -1.0]
    logits = torch.tensor([column_0, column_0, column_0, column_1]).T.reshape(1, 3, 1, 4)
    target = torch.tensor([[[0, 0, 0, 1]]])
    a, b = by_hand_ce(torch.tensor(column_0), 0), by_hand_ce(torch.tensor(column_1), 1)
    assert float(seg_balanced_ce(logits, target)) == pytest.approx(3 * (a + b) / 16, rel=1e-5)


def test_seg_js_is_zero_for_a_perfect_confident_prediction_and_log_two_for_a_confident_wrong_one() -> None:
    target = torch.tensor([[[0, 1, 2]]])
    perfect = 30.0 * F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    wrong = 30.0 * F.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float()
    assert float(seg_js(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(seg_js(wrong, target)) == pytest.approx(math.log(2), abs=1e-6)


def test_seg_js_equals_the_kl_form_of_jensen_shannon_over_labelled_pixels() -> None:
    gen = torch.Generator().manual_seed(10)
    logits, target = torch.randn(2, 4, 3, 3, generator=gen), torch.randint(4, (2, 3, 3), generator=gen)
    target[0, 0] = IGNORE
    expected = []
    for z, y in zip(logits.double(), target):
        terms = []
        for i, j in zip(*torch.nonzero(y != IGNORE, as_tuple=True)):
            p = torch.softmax(z[:, i, j], dim=0)
            q = F.one_hot(y[i, j], 4).double()
            m = (p + q) / 2
            kl_pm = float((p * (p / m).log()).sum())
            kl_qm = float((q[q > 0] * (q[q > 0] / m[q > 0]).log()).sum())
            terms.append((kl_pm + kl_qm) / 2)
        expected.append(sum(terms) / len(terms))
    torch.testing.assert_close(seg_js(logits, target).double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)


def test_seg_js_is_finite_where_softmax_underflows() -> None:
    logits = torch.tensor([[[[500.0, -500.0]], [[-500.0, 500.0]], [[0.0, 0.0]]]], requires_grad=True)
    target = torch.tensor([[[0, 0]]])  # pixel 0 certain and right, pixel 1 certain and wrong
    loss = seg_js(logits, target)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert float(loss.detach()) == pytest.approx(math.log(2) / 2, abs=1e-6)
    assert bool(torch.isfinite(grad).all())


def test_seg_js_ignores_ignored_pixels() -> None:
    logits, target, _ = _segmentation_example()
    changed = _wrong_and_ignored_pixels_changed(logits)
    changed[0, :, 0, 2:4] = logits[0, :, 0, 2:4]  # only the ignored pixel differs
    changed.requires_grad_(True)
    loss = seg_js(changed, target)
    torch.testing.assert_close(loss.detach(), seg_js(logits, target))
    (grad,) = torch.autograd.grad(loss.sum(), changed)
    assert torch.equal(grad[0, :, 0, 4], torch.zeros(3))


def test_seg_js_grows_as_a_wrong_pixel_gets_more_wrong() -> None:
    logits, target, _ = _segmentation_example()
    worse = logits.clone()
    worse[0, 2, 0, 2] = -1.0  # pixel 2 (label 2): its class logit 0.4 -> -1.0
    assert float(seg_js(worse, target)) > float(seg_js(logits, target))


def test_seg_masked_spherical_is_minus_the_normalised_true_logit_on_correct_pixels() -> None:
    logits, target, _ = _segmentation_example()
    # pixel 0: z = [2.0, 0.5, 0.1], y = 0;  pixel 1: z = [0.1, 1.9, 0.3], y = 1;  4 labelled pixels.
    expected = -(2.0 / math.sqrt(4 + 0.25 + 0.01) + 1.9 / math.sqrt(0.01 + 3.61 + 0.09)) / 4
    assert float(seg_masked_spherical(logits, target)) == pytest.approx(expected, rel=1e-5)


def test_seg_masked_spherical_is_invariant_to_scaling_the_logits() -> None:
    logits, target, _ = _segmentation_example()
    torch.testing.assert_close(seg_masked_spherical(50 * logits, target), seg_masked_spherical(logits, target))


@pytest.mark.parametrize("name", sorted(SEGMENTATION_LOSSES))
def test_each_segmentation_loss_grows_as_a_correct_pixel_loses_confidence(name: str) -> None:
    fn = SEGMENTATION_LOSSES[name]
    logits, target, _ = _segmentation_example()
    assert float(fn(_confidence_drop(logits), target)) > float(fn(logits, target))


@pytest.mark.parametrize("name", sorted(SEGMENTATION_LOSSES))
def test_each_segmentation_loss_is_zero_with_a_zero_gradient_without_labelled_pixels(name: str) -> None:
    logits = torch.randn(2, 3, 2, 2, requires_grad=True)
    loss = SEGMENTATION_LOSSES[name](logits, torch.full((2, 2, 2), IGNORE))
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.equal(loss.detach(), torch.zeros(2))
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("name", sorted(SEGMENTATION_LOSSES))
def test_each_segmentation_loss_honours_a_custom_ignore_index(name: str) -> None:
    fn = SEGMENTATION_LOSSES[name]
    logits, target, _ = _segmentation_example()
    relabelled = torch.where(target == IGNORE, torch.tensor(-1), target)
    torch.testing.assert_close(fn(logits, relabelled, ignore_index=-1), fn(logits, target))


# ----------------------------------------------------------------------------- depth (RMSE, AbsRel)


def test_depth_losses_match_their_formulas_over_valid_pixels() -> None:
    pred, target = _depth_example()
    l1, l2, log_l1 = [], [], []
    for p, t in zip(pred.double(), target.double()):
        valid = t > 1e-3
        err = p[valid] - t[valid]
        l1.append(float(err.abs().mean()))
        l2.append(math.sqrt(float(err.pow(2).mean()) + 1e-8))
        log_l1.append(float((p[valid].log() - t[valid].log()).abs().mean()))
    for fn, expected in ((depth_l1, l1), (depth_l2, l2), (depth_log_l1, log_l1)):
        torch.testing.assert_close(fn(pred, target).double(), torch.tensor(expected, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-6)


def test_depth_l2_is_the_per_image_rmse_of_depth_errors() -> None:
    pred, target = _depth_example()
    rmse = depth_errors(pred, target, target > 1e-3)["rmse"]
    torch.testing.assert_close(depth_l2(pred, target), rmse, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(DEPTH_LOSSES))
def test_each_depth_loss_ignores_invalid_pixels(name: str) -> None:
    fn = DEPTH_LOSSES[name]
    pred, target = _depth_example()
    changed = pred.clone()
    changed[:, 0, :3] = 123.0  # prediction at invalid (0) target pixels
    changed.requires_grad_(True)
    loss = fn(changed, target)
    torch.testing.assert_close(loss.detach(), fn(pred, target))
    (grad,) = torch.autograd.grad(loss.sum(), changed)
    assert torch.equal(grad[:, 0, :3], torch.zeros(2, 3))


@pytest.mark.parametrize("name", sorted(DEPTH_LOSSES))
def test_each_depth_loss_grows_as_the_prediction_drifts_from_the_target(name: str) -> None:
    fn = DEPTH_LOSSES[name]
    _, target = _depth_example()
    losses = [fn(target * (1 + drift), target) for drift in (0.0, 0.1, 0.3, 0.6)]
    assert all(bool((a < b).all()) for a, b in zip(losses, losses[1:]))
    assert bool((losses[0] <= 1e-4 + 1e-7).all())  # perfect: 0, or sqrt(1e-8) for depth_l2


@pytest.mark.parametrize("name", sorted(DEPTH_LOSSES))
def test_each_depth_loss_is_zero_with_a_zero_gradient_without_valid_pixels(name: str) -> None:
    pred, target = _depth_example()
    pred.requires_grad_(True)
    loss = DEPTH_LOSSES[name](pred, torch.zeros_like(target))
    (grad,) = torch.autograd.grad(loss.sum(), pred)
    assert torch.equal(loss.detach(), torch.zeros(2))
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("name", sorted(DEPTH_LOSSES))
def test_each_depth_loss_accepts_a_channel_dimension(name: str) -> None:
    fn = DEPTH_LOSSES[name]
    pred, target = _depth_example()
    torch.testing.assert_close(fn(pred[:, None], target), fn(pred, target))


def test_depth_l2_gradient_is_finite_at_a_perfect_prediction() -> None:
    _, target = _depth_example()
    pred = target.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(depth_l2(pred, target).sum(), pred)
    assert bool(torch.isfinite(grad).all())


def test_depth_log_l1_clamps_non_positive_predictions_at_min_depth() -> None:
    target = torch.tensor([[1.0, 1.0]])
    pred = torch.tensor([[0.0, -1.0]], requires_grad=True)  # both read as 1e-3: |log 1e-3 - log 1| each
    loss = depth_log_l1(pred, target)
    (grad,) = torch.autograd.grad(loss.sum(), pred)
    assert float(loss.detach()) == pytest.approx(-math.log(1e-3), rel=1e-5)
    assert bool(torch.isfinite(grad).all())


# ----------------------------------------------------------------------------- log-depth gradient (head training)

def test_log_depth_gradient_by_hand_compares_pixels_two_apart() -> None:
    target = torch.ones(1, 3, 3)
    pred = torch.ones(1, 3, 3)
    pred[0, 0, 0] = math.e  # d = 1 at the corner: one vertical and one horizontal pair differ by 1
    assert float(log_depth_gradient(pred, target)) == pytest.approx(2 / 9)  # stride 1 only; / 9 valid pixels
    pred[0, 1, 1] = math.e ** 3  # the centre has no partner two pixels away inside a 3 x 3 map
    assert float(log_depth_gradient(pred, target)) == pytest.approx(2 / 9)


def test_log_depth_gradient_ignores_the_global_scale_of_the_prediction() -> None:
    target = torch.rand(2, 12, 12) * 5 + 0.5
    assert torch.allclose(log_depth_gradient(3.0 * target, target), torch.zeros(2), atol=1e-5)
    assert bool((log_depth_gradient(target.flip(-1), target) > 0).all())


def test_log_depth_gradient_leaves_out_pairs_with_an_invalid_pixel() -> None:
    target = torch.ones(1, 3, 3)
    pred = torch.ones(1, 3, 3)
    pred[0, 0, 0] = math.e
    target[0, 2, 0] = 0.0  # the vertical partner is invalid: only the horizontal pair counts, over 8 pixels
    assert float(log_depth_gradient(pred, target)) == pytest.approx(1 / 8)


def test_log_depth_gradient_adds_the_coarser_scales() -> None:
    target = torch.ones(1, 5, 5)
    pred = torch.ones(1, 5, 5)
    pred[0, 0, 0] = math.e  # stride 1: 2 pairs / 25; stride 2 (3 x 3 of rows/cols 0, 2, 4): 2 pairs / 9
    assert float(log_depth_gradient(pred, target)) == pytest.approx(2 / 25 + 2 / 9)
