"""Heads: the classifier's inputs, DINOv2's linear depth head, and feature caching."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from ssl_robust.heads import AugmentedFeatures, DINOv2DepthHead, LinearClassifier, extract_features


def test_classifier_reads_cls_or_cls_and_the_mean_patch_token() -> None:
    cls, tokens = torch.randn(3, 8), torch.randn(3, 8, 2, 2)
    only_cls = LinearClassifier(8, 5)
    assert only_cls.linear.in_features == 8
    both = LinearClassifier(8, 5, "cls_patch_mean")
    assert both.linear.in_features == 16
    pooled = tokens.mean(dim=(2, 3))
    torch.testing.assert_close(both(cls, tokens, (1, 1)), both(cls, pooled, (1, 1)))  # a cached mean works too
    torch.testing.assert_close(both(cls, tokens, (1, 1)), both.linear(torch.cat([cls, pooled], 1)))


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
