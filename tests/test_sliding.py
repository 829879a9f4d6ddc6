"""Sliding-window inference: window placement, exact reconstruction, averaging (of logits or of
probabilities), gradients, tokens; the whole image in one padded pass."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_robust.sliding import (log_probs, n_windows, pad_to_multiple, resize_to, slide, slide_tokens, whole,
                                window_starts)


@pytest.mark.parametrize("length,crop,stride", [(24, 16, 8), (25, 16, 8), (16, 16, 11), (10, 16, 11),
                                                (1036, 518, 341), (690, 518, 341), (100, 7, 3)])
def test_window_starts_cover_exactly_with_the_last_flush(length, crop, stride):
    starts = window_starts(length, crop, stride)
    assert starts[0] == 0 and starts == sorted(set(starts))
    if length <= crop:
        assert starts == [0]
        return
    assert starts[-1] == length - crop  # last window flush with the end
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))  # no gaps
    covered = torch.zeros(length, dtype=torch.bool)
    for s in starts:
        covered[s:s + crop] = True
    assert covered.all()


def test_window_starts_known_values():
    assert window_starts(1036, 518, 341) == [0, 341, 518]
    assert window_starts(24, 16, 8) == [0, 8]
    assert window_starts(32, 16, 8) == [0, 8, 16]
    assert n_windows(16, 24, 16, 11) == 2


@pytest.mark.parametrize("shape", [(2, 3, 16, 24), (1, 3, 37, 16), (2, 3, 16, 16), (1, 3, 10, 20)])
def test_identity_like_fn_reconstructs_the_input(shape):
    x = torch.rand(shape)
    assert torch.allclose(slide(lambda w: w[:, :1], x, crop=16, stride=11), x[:, :1], atol=1e-6)
    depth = slide(lambda w: w[:, 1], x, crop=16, stride=11)  # rank-3 output keeps its rank
    assert depth.shape == (shape[0], *shape[2:]) and torch.allclose(depth, x[:, 1], atol=1e-6)


def test_overlaps_are_averaged():
    x = torch.zeros(2, 3, 8, 14)  # width 14, crop 8, stride 3: windows at columns 0, 3, 6
    calls = []

    def fn(windows):  # window k of each image outputs the constant k (+ 100 for the second image)
        calls.append(len(windows))
        n = len(windows) // 2
        k = torch.arange(len(windows), dtype=torch.float32) % n + 100 * (torch.arange(len(windows)) >= n)
        return k.float()[:, None, None, None].expand(-1, 2, 8, 8)

    out = slide(fn, x, crop=8, stride=3)
    assert calls == [6] and out.shape == (2, 2, 8, 14)  # one call with all windows of all images
    cover = [[k for k, s in enumerate([0, 3, 6]) if s <= col < s + 8] for col in range(14)]
    expected = torch.tensor([sum(ks) / len(ks) for ks in cover])
    assert torch.allclose(out[0, 0, 0], expected) and torch.allclose(out[1, 1, 5], expected + 100)
    chunked = slide(fn, x, crop=8, stride=3, max_windows=4)
    assert calls[1:] == [4, 2]
    assert chunked.shape == out.shape


def test_gradients_reach_every_pixel_through_every_window():
    x = torch.rand(2, 3, 16, 27, requires_grad=True)
    weight = torch.randn(3)
    slide(lambda w: (w * weight[:, None, None]).sum(1), x, crop=16, stride=5).sum().backward()
    assert (x.grad != 0).all()
    # the averaged output of a linear fn is the fn itself: d/dx = weight everywhere
    assert torch.allclose(x.grad, weight[None, :, None, None].expand_as(x), atol=1e-5)


def test_padding_never_reaches_the_output():
    x = torch.rand(1, 3, 9, 12, requires_grad=True)  # both sides shorter than the window
    out = slide(lambda w: w * 2, x, crop=16, stride=11)
    assert out.shape == x.shape and torch.allclose(out, 2 * x)
    out.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 2.0))


def test_slide_tokens_lays_windows_side_by_side():
    x = torch.rand(2, 3, 16, 24)  # windows at columns 0 and 8

    def tokens_fn(windows):  # [N, 3, 16, 16] -> [N, 5, 4, 4]: 4x4 patch means, 5 channels
        pooled = torch.nn.functional.avg_pool2d(windows, 4)
        return torch.cat([pooled, pooled[:, :2]], dim=1)

    tokens = slide_tokens(tokens_fn, x, crop=16, stride=8)
    assert tokens.shape == (2, 5, 4, 2 * 4)
    assert torch.allclose(tokens[:, :, :, :4], tokens_fn(x[:, :, :, :16]))
    assert torch.allclose(tokens[:, :, :, 4:], tokens_fn(x[:, :, :, 8:]))


def test_resize_to_native_size_keeps_rank():
    logits, depth = torch.rand(2, 5, 16, 24), torch.rand(2, 16, 24)
    assert resize_to(logits, (32, 48)).shape == (2, 5, 32, 48)
    assert resize_to(depth, torch.Size([32, 48])).shape == (2, 32, 48)
    assert resize_to(depth, (16, 24)) is depth
    constant = torch.full((1, 3, 4), 2.5)
    assert torch.allclose(resize_to(constant, (7, 9)), torch.full((1, 7, 9), 2.5))


def test_a_stride_beyond_the_window_is_refused():
    with pytest.raises(ValueError, match="never be scored"):
        window_starts(40, 16, 17)


# Two windows (columns 0-3 and 2-5 of a 4 x 6 image) with constant logits over 3 classes: the first
# is sure of class 0 in logits but torn between classes 0 and 2 in probabilities, the second prefers
# class 1. Their overlap (columns 2-3) is class 0 by mean logits and class 1 by mean probabilities.
WINDOW_LOGITS = torch.tensor([[10.0, 0.0, 9.5], [0.0, 3.0, 0.0]])


def _constant_windows(windows: torch.Tensor) -> torch.Tensor:
    per_image = WINDOW_LOGITS.repeat(len(windows) // len(WINDOW_LOGITS), 1)  # windows are image-major
    return per_image[:, :, None, None].expand(len(windows), 3, 4, 4)


def _softmax_by_hand(logits: list[float]) -> list[float]:
    exps = [math.exp(v) for v in logits]
    return [e / sum(exps) for e in exps]


def test_probability_averaging_differs_from_logit_averaging_as_computed_by_hand():
    x = torch.zeros(1, 3, 4, 6)
    by_logits = slide(_constant_windows, x, crop=4, stride=2)
    by_probs = slide(_constant_windows, x, crop=4, stride=2, average="probs")
    first, second = _softmax_by_hand([10.0, 0.0, 9.5]), _softmax_by_hand([0.0, 3.0, 0.0])
    overlap = torch.tensor([(a + b) / 2 for a, b in zip(first, second)])
    assert torch.allclose(by_logits[0, :, 0, 2], torch.tensor([5.0, 1.5, 4.75]))
    assert torch.allclose(by_probs[0, :, 0, 2], overlap, atol=1e-6)
    assert torch.allclose(by_probs[0, :, 0, 0], torch.tensor(first), atol=1e-6)  # one window: its softmax
    assert torch.allclose(by_probs[0, :, 0, 5], torch.tensor(second), atol=1e-6)
    assert by_logits[0, :, 0, 2].argmax() == 0 and by_probs[0, :, 0, 2].argmax() == 1
    assert torch.allclose(by_probs.sum(1), torch.ones(1, 4, 6))


def test_log_probs_score_like_the_averaged_probabilities():
    probs = slide(_constant_windows, torch.zeros(2, 3, 4, 6), crop=4, stride=2, average="probs")
    scores = log_probs(probs)
    assert torch.equal(scores.argmax(1), probs.argmax(1))
    labels = torch.ones(2, 4, 6, dtype=torch.long)
    assert torch.allclose(F.cross_entropy(scores, labels), -probs[:, 1].log().mean(), atol=1e-6)
    assert torch.isfinite(log_probs(torch.zeros(1, 2, 1, 1))).all()


def test_probability_averaging_of_depth_is_refused():
    with pytest.raises(ValueError, match="probs"):
        slide(lambda w: w[:, 0], torch.rand(1, 3, 4, 6), crop=4, stride=2, average="probs")


def test_pad_to_multiple_centres_the_image_in_the_fill_and_copies_it_exactly():
    x = torch.rand(2, 3, 9, 14, requires_grad=True)
    fill = torch.tensor([0.5, 0.25, 0.75]).view(1, 3, 1, 1)
    padded, top, left = pad_to_multiple(x, 7, fill)
    assert padded.shape == (2, 3, 14, 14) and (top, left) == (2, 0)  # 5 rows: 2 above, 3 below
    assert torch.equal(padded[:, :, 2:11], x)
    outside = torch.ones(14, dtype=torch.bool)
    outside[2:11] = False
    assert torch.equal(padded[:, :, outside], fill.view(1, 3, 1, 1).expand(2, 3, 5, 14))
    padded.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert pad_to_multiple(x, 7)[0][:, :, :2].abs().sum() == 0  # no fill: zeros
    unpadded = x[:, :, :7, :7]
    same, top, left = pad_to_multiple(unpadded, 7)
    assert same is unpadded and (top, left) == (0, 0)  # already a multiple: unchanged


def test_whole_runs_once_at_the_padded_size_and_crops_back():
    x = torch.rand(1, 3, 10, 13)
    seen = []

    def fn(images):
        seen.append(tuple(images.shape[-2:]))
        return images[:, 0] * 3  # a per-pixel map keeps its position

    out = whole(fn, x, 4)
    assert seen == [(12, 16)] and out.shape == (1, 10, 13)
    assert torch.allclose(out, 3 * x[:, 0])
    with pytest.raises(ValueError, match="keep the input's size"):
        whole(lambda images: images[:, :, :4, :4], x, 4)
