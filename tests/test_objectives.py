"""Attack objectives: each equals its textbook formula, computed here by hand."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_robust.objectives import OBJECTIVES, cross_entropy, embed_cos, embed_l2, segpgd, segpgd_weight, silog

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
