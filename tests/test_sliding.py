"""Sliding-window inference: window placement, exact reconstruction, averaging, gradients, tokens."""
from __future__ import annotations

import pytest
import torch

from ssl_robust.sliding import n_windows, resize_to, slide, slide_tokens, window_starts


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
