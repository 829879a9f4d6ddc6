"""Linear heads on a frozen encoder and their fit (``ssl_robust.heads``): every head computed by hand
(the classifier's inputs, the 1x1-conv segmenter, the depth heads' bins, weights and bilinear resizing
with half-pixel centres, their CLS input), the features cached for a head, and ``fit_head``: the epoch
kept is the best on validation, the optimiser, schedule, epochs and shuffling it is given."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ssl_robust import heads as heads_module
from ssl_robust.features import Features
from ssl_robust.heads import (AugmentedFeatures, DINOv2DepthHead, LinearClassifier, LinearDepthHead, extract_features,
                              fit_head, lr_factor, make_optimizer)


# ----------------------------------------------------------------------------- heads


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] linear interpolation with half-pixel centres (align_corners=False), edges clamped."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out - 0.5).clamp(0, n_in - 1)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=n_in - 1)
    w = src - lo
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m[torch.arange(n_out), lo] += 1 - w
    m[torch.arange(n_out), hi] += w
    return m


def resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [B, C, H, W] by hand, in float64."""
    rows, cols = resize_matrix(t.shape[2], size[0]), resize_matrix(t.shape[3], size[1])
    return torch.einsum("oh,bchw,pw->bcop", rows, t.double(), cols)


def one_by_one(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution as a matrix product (fails for any other kernel size)."""
    return torch.einsum("oc,bchw->bohw", conv.weight.double().view(conv.out_channels, -1), x) + \
        conv.bias.double().view(1, -1, 1, 1)


def tokens_and_cls(dim: int = 4, h: int = 2, w: int = 3):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, dim, generator=gen), torch.randn(2, dim, h, w, generator=gen)


def test_classifier_reads_cls_or_cls_and_the_mean_patch_token() -> None:
    cls, tokens = torch.randn(3, 8), torch.randn(3, 8, 2, 2)
    only_cls = LinearClassifier(8, 5)
    assert only_cls.linear.in_features == 8
    both = LinearClassifier(8, 5, "cls_patch_mean")
    assert both.linear.in_features == 16
    pooled = tokens.mean(dim=(2, 3))
    torch.testing.assert_close(both(cls, tokens, (1, 1)), both(cls, pooled, (1, 1)))  # a cached mean works too
    torch.testing.assert_close(both(cls, tokens, (1, 1)), both.linear(torch.cat([cls, pooled], 1)))


def test_linear_segmenter_is_a_1x1_conv_on_normalised_tokens_resized_bilinearly() -> None:
    from ssl_robust.heads import LinearSegmenter

    torch.manual_seed(0)
    head = LinearSegmenter(4, 3).eval()
    cls, tokens = tokens_and_cls()
    logits = one_by_one(head.conv, head.norm(tokens).double())
    with torch.no_grad():
        got = head(cls, tokens, (5, 7))
    torch.testing.assert_close(got.double(), resize(logits, (5, 7)), rtol=1e-5, atol=1e-5)


def test_linear_depth_head_is_the_expected_bin_centre_per_patch_resized_bilinearly() -> None:
    torch.manual_seed(0)
    head = LinearDepthHead(4, n_bins=5, min_depth=0.5, max_depth=4.5).eval()
    cls, tokens = tokens_and_cls()
    features = head.norm(torch.cat([tokens, cls[:, :, None, None].expand_as(tokens)], dim=1)).double()
    probs = one_by_one(head.conv, features).softmax(dim=1)
    depth = (probs * torch.linspace(0.5, 4.5, 5, dtype=torch.float64).view(1, -1, 1, 1)).sum(1, keepdim=True)
    with torch.no_grad():
        got = head(cls, tokens, (5, 7))
    torch.testing.assert_close(got.double(), resize(depth, (5, 7))[:, 0], rtol=1e-5, atol=1e-5)


def test_dinov2_depth_head_matches_its_formula_by_hand() -> None:
    torch.manual_seed(0)
    head = DINOv2DepthHead(4, n_bins=5, min_depth=0.5, max_depth=4.5).eval()
    cls, tokens = tokens_and_cls()
    features = resize(torch.cat([tokens, cls[:, :, None, None].expand_as(tokens)], dim=1), (8, 12))
    weights = F.relu(one_by_one(head.conv, head.norm(features.float()).double())) + 0.1
    weights = weights / weights.sum(1, keepdim=True)
    depth = (weights * torch.linspace(0.5, 4.5, 5, dtype=torch.float64).view(1, -1, 1, 1)).sum(1, keepdim=True)
    with torch.no_grad():
        got = head(cls, tokens, (5, 7))
    torch.testing.assert_close(got.double(), resize(depth, (5, 7))[:, 0], rtol=1e-5, atol=1e-5)


def test_dinov2_depth_head_weighs_its_bins_with_relu_plus_0_1_and_upsamples_x4() -> None:
    head = DINOv2DepthHead(8, n_bins=4, min_depth=1.0, max_depth=4.0).eval()
    seen = {}
    head.conv.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    depth = head(torch.randn(2, 8), torch.randn(2, 8, 3, 3), (24, 24))
    assert seen["shape"][-2:] == (12, 12) and depth.shape == (2, 24, 24)
    assert bool(((depth >= 1.0) & (depth <= 4.0)).all())
    with torch.no_grad():
        head.conv.weight.zero_(), head.conv.bias.fill_(-1.0)  # every logit below 0: ReLU + 0.1 is uniform
    torch.testing.assert_close(head(torch.randn(1, 8), torch.randn(1, 8, 2, 2), (4, 4)),
                               torch.full((1, 4, 4), 2.5))


@pytest.mark.parametrize("head_class", [LinearDepthHead, DINOv2DepthHead])
def test_depth_heads_read_the_cls_embedding(head_class) -> None:
    """The same patch tokens with another CLS give another depth map."""
    torch.manual_seed(0)
    head = head_class(8, n_bins=16, min_depth=0.5, max_depth=10.0).eval()
    tokens = torch.randn(1, 8, 2, 2)
    with torch.no_grad():
        one, other = head(torch.randn(1, 8), tokens, (8, 8)), head(5 * torch.randn(1, 8), tokens, (8, 8))
    assert float((one - other).abs().max()) > 1e-3


# ----------------------------------------------------------------------------- features for a head


class _Grid(torch.nn.Module):
    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(dim=(2, 3)), x


def test_features_for_a_cls_head_keep_the_mean_token_not_the_grid() -> None:
    images = torch.rand(6, 3, 4, 4)
    loader = DataLoader(TensorDataset(images, torch.arange(6)), batch_size=4)
    grid = extract_features(_Grid(), loader, torch.device("cpu"))
    pooled = extract_features(_Grid(), loader, torch.device("cpu"), tokens="mean")
    (_, grid_tokens, _), = grid.batches(6)
    (_, pooled_tokens, _), = pooled.batches(6)
    assert grid_tokens.shape == (6, 3, 4, 4) and pooled_tokens.shape == (6, 3)
    torch.testing.assert_close(pooled_tokens, images.mean(dim=(2, 3)), atol=1e-3, rtol=1e-3)  # float16 cache


def test_features_for_a_cls_only_head_keep_no_patch_tokens() -> None:
    loader = DataLoader(TensorDataset(torch.rand(6, 3, 4, 4), torch.arange(6)), batch_size=4)
    with extract_features(_Grid(), loader, torch.device("cpu"), tokens="none") as features:
        (cls, tokens, _), = features.batches(6)
        assert cls.shape == (6, 3) and tokens.shape == (6, 0) and features.nbytes() == 6 * 3 * 2 + 6 * 2


class _Maps(torch.utils.data.Dataset):
    """Images of varying widths whose first channel codes each pixel, with a label map of the codes."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        width = 8 + i
        codes = torch.arange(8 * width, dtype=torch.float32).view(8, width) + 1000 * i
        return torch.stack([codes, codes, codes]), codes.long()


def test_augmented_features_are_the_encoders_features_of_freshly_augmented_batches() -> None:
    features = AugmentedFeatures(_Grid(), _Maps(), torch.device("cpu"), augment="crop_flip", size=8)
    first = list(features.batches(4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [tokens.shape for _, tokens, _ in first] == [(4, 3, 8, 8), (2, 3, 8, 8)]
    for cls, tokens, target in first:
        assert torch.equal(tokens[:, 0].long(), target)  # each crop is its map's crop
        torch.testing.assert_close(cls, tokens.mean(dim=(2, 3)))
    seen = sorted(int(target[k].min()) // 1000 for _, _, target in first for k in range(len(target)))
    assert seen == list(range(6))  # every image once per pass
    again = list(features.batches(4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[2], b[2]) for a, b in zip(first, again))  # a seed fixes the pass
    other = list(features.batches(4, shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert not all(torch.equal(a[2], b[2]) for a, b in zip(first, other))  # a new pass is new crops


# ----------------------------------------------------------------------------- fit_head


def _overconfident_fit():
    """A separable train set and a validation set with a fifth of its labels flipped, scored by
    minus the validation cross-entropy: it improves while the margin grows to ln 4, then gets worse
    as the head grows overconfident, so the validation curve peaks early."""
    gen = torch.Generator().manual_seed(0)
    dim = 4

    def split(n: int, flip: float) -> tuple[Features, torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 2
        cls = torch.randn(n, dim, generator=gen) * 0.3
        cls[:, 0] += (2 * y - 1).float()
        labels = torch.where(torch.rand(n, generator=gen) < flip, 1 - y, y)
        features = Features(n, "memory")
        features.append(cls, torch.zeros(n, dim), labels)
        return features, cls.half().float(), labels  # the head sees float16-cached features

    (train, _, _), (val, val_cls, val_labels) = split(64, 0.0), split(200, 0.2)
    curve: list[float] = []

    def val_score(batches) -> float:
        outs, targets = zip(*batches)
        score = -float(F.cross_entropy(torch.cat(outs), torch.cat(targets)))
        curve.append(score)
        return score

    torch.manual_seed(0)
    head = LinearClassifier(dim, 2)
    head, metrics = fit_head(head, train, val, loss_fn=F.cross_entropy, val_score=val_score, epochs=30, lr=0.1,
                             weight_decay=0.0, batch_size=256, seed=0, device=torch.device("cpu"))
    return head, metrics, curve, (val_cls, val_labels)


def test_fit_head_keeps_the_epoch_best_on_validation_not_the_last() -> None:
    """The validation curve peaks mid-training; the returned head is that epoch's."""
    head, metrics, curve, val = _overconfident_fit()
    best = int(np.argmax(curve))
    assert 0 < best < len(curve) - 1 and curve[-1] < max(curve) - 1e-3, curve  # the peak is neither end
    assert metrics["head/best_epoch"] == best + 1
    assert metrics["head/val_score"] == pytest.approx(max(curve))
    with torch.no_grad():
        rescored = -float(F.cross_entropy(head(val[0], torch.zeros_like(val[0]), (1, 1)), val[1]))
    assert rescored == pytest.approx(max(curve), abs=1e-6)  # the weights are the best epoch's


def _features(n: int, dim: int = 3) -> Features:
    gen = torch.Generator().manual_seed(n)
    features = Features(n, "memory")
    features.append(torch.randn(n, dim, generator=gen), torch.zeros(n, dim), torch.arange(n) % 2)
    return features


def _fit(head, train, **kwargs):
    settings = dict(loss_fn=lambda out, target: F.cross_entropy(out, target),
                    val_score=lambda batches: 0.0, epochs=3, lr=0.1, weight_decay=0.0, batch_size=4, seed=0,
                    device=torch.device("cpu"))
    return fit_head(head, train, _features(4), **{**settings, **kwargs})


def _learning_rates(monkeypatch, **kwargs) -> list[float]:
    """The learning rate of every optimizer step of one ``_fit``."""
    seen: list[float] = []
    real = heads_module.make_optimizer

    def recording(*args, **kw):
        optimizer = real(*args, **kw)
        optimizer.register_step_pre_hook(lambda opt, a, k: seen.append(opt.param_groups[0]["lr"]))
        return optimizer

    monkeypatch.setattr(heads_module, "make_optimizer", recording)
    _fit(LinearClassifier(3, 2), _features(10), batch_size=4, **kwargs)  # 3 batches a epoch
    return seen


def test_fit_head_anneals_the_learning_rate_over_every_batch_of_every_epoch(monkeypatch) -> None:
    lrs = _learning_rates(monkeypatch, epochs=3, lr=0.1)
    assert lrs == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * t / 9)) for t in range(9)])


def test_fit_head_follows_the_named_schedule_and_warm_up(monkeypatch) -> None:
    assert _learning_rates(monkeypatch, epochs=2, lr=0.1, schedule="constant") == pytest.approx([0.1] * 6)
    poly = _learning_rates(monkeypatch, epochs=2, lr=0.1, schedule="poly", warmup_steps=2)
    assert poly == pytest.approx([0.1 * 1e-6, 0.1 * (5 / 6) * (0.5 + 0.5e-6), 0.1 * 4 / 6, 0.1 * 3 / 6,
                                  0.1 * 2 / 6, 0.1 * 1 / 6])


def test_lr_factor_refuses_an_unknown_schedule() -> None:
    with pytest.raises(ValueError, match="head.schedule: unknown 'step'"):
        lr_factor("step", 0, 10)


@pytest.mark.parametrize("name, kind, momentum", [("adamw", torch.optim.AdamW, None), ("adam", torch.optim.Adam, None),
                                                   ("sgd", torch.optim.SGD, 0.9)])
def test_make_optimizer_builds_the_named_optimizer(name, kind, momentum) -> None:
    optimizer = make_optimizer(name, LinearClassifier(3, 2).parameters(), lr=0.5, weight_decay=1e-4)
    assert type(optimizer) is kind
    assert optimizer.defaults["lr"] == 0.5 and optimizer.defaults["weight_decay"] == 1e-4
    assert optimizer.defaults.get("momentum") == momentum


def test_fit_head_uses_the_given_weight_decay() -> None:
    torch.manual_seed(0)
    head = LinearClassifier(3, 2)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    no_gradient = lambda out, target: 0.0 * out.sum()  # noqa: E731  only weight decay could move the weights
    head, _ = _fit(head, _features(8), loss_fn=no_gradient, weight_decay=0.0)
    for key, value in head.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def _labelled(n: int) -> Features:
    """Features whose targets number the images 0..n-1 (to see the training order)."""
    features = Features(n, "memory")
    features.append(torch.randn(n, 3, generator=torch.Generator().manual_seed(1)), torch.zeros(n, 3), torch.arange(n))
    return features


def test_fit_head_trains_exactly_the_given_epochs_on_batches_shuffled_afresh_each_epoch() -> None:
    seen: list[list[int]] = []
    scored: list[int] = []

    def loss_fn(out, target):
        seen.append(target.tolist())
        return out.sum() * 0 + out.pow(2).mean()

    def val_score(batches) -> float:
        list(batches)
        scored.append(1)
        return -float(len(scored))

    _fit(LinearClassifier(3, 10), _labelled(10), loss_fn=loss_fn, val_score=val_score, epochs=3, batch_size=4, seed=7)
    generator = torch.Generator().manual_seed(7)
    expected = [torch.randperm(10, generator=generator).tolist() for _ in range(3)]
    assert [sum(seen[3 * e:3 * e + 3], []) for e in range(3)] == expected and len(seen) == 9
    assert len(scored) == 3
    assert expected[0] != sorted(expected[0])


def test_fit_head_keeps_the_first_of_equally_scoring_epochs() -> None:
    _, metrics = _fit(LinearClassifier(3, 2), _features(8), val_score=lambda batches: 0.5, epochs=3)
    assert metrics["head/best_epoch"] == 1.0 and metrics["head/val_score"] == 0.5


def test_fit_head_reports_the_last_batch_training_loss() -> None:
    losses: list[float] = []

    def loss_fn(out, target):
        loss = F.cross_entropy(out, target)
        losses.append(float(loss))
        return loss

    _, metrics = _fit(LinearClassifier(3, 2), _features(10), loss_fn=loss_fn, epochs=2, batch_size=4)
    assert metrics["head/train_loss"] == losses[-1] and len(losses) == 6


def test_fit_head_shows_a_progress_bar_over_epochs_that_goes_when_done(monkeypatch) -> None:
    bars: list[dict] = []

    def recording_tqdm(iterable, **kwargs):
        bars.append(kwargs)
        return iterable

    monkeypatch.setattr(heads_module, "tqdm", recording_tqdm)
    _fit(LinearClassifier(3, 2), _features(4), epochs=1)
    assert bars[0] == {"desc": "fit head", "leave": False}
