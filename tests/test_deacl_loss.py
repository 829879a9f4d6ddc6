"""The pure parts of DeACL (``ssl_robust.deacl_loss``): the loss against its formula on hand-made
embeddings, the gradient of its adversarial term, and the seed's batch augmentation."""
from __future__ import annotations

import math

import pytest
import torch

from ssl_robust.deacl_loss import augment_batch, deacl_loss, pad_crop_flip, seed_padding


# ----------------------------------------------------------------------------- the loss


# Hand-made embeddings, B = 2, D = 2, a 1x2 token grid.


S_CLS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


T_CLS = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cos with S_CLS: 1, 1/sqrt(2)


A_CLS = torch.tensor([[0.0, 1.0], [0.0, 2.0]])  # cos with S_CLS: 0, 1


S_TOK = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]], [[[1.0, 0.0]], [[0.0, 1.0]]]])  # [2, 2, 1, 2]


T_TOK = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]], [[[1.0, 0.0]], [[0.0, 1.0]]]])  # cos: (1, 0), (1, 1)


A_TOK = torch.tensor([[[[-1.0, 1.0]], [[0.0, 0.0]]], [[[0.0, 1.0]], [[1.0, 0.0]]]])  # cos: (-1, 1), (0, 0)


CLEAN_CLS = -(1 + 1 / math.sqrt(2)) / 2


ADV_CLS = -(0 + 1) / 2


CLEAN_TOK = -((1 + 0) / 2 + (1 + 1) / 2) / 2  # per-sample token means 0.5 and 1


ADV_TOK = -((-1 + 1) / 2 + (0 + 0) / 2) / 2


def test_loss_matches_formula_on_cls() -> None:
    parts = deacl_loss((S_CLS, S_TOK), (T_CLS, T_TOK), (A_CLS, A_TOK), gamma=2.0)
    assert parts["clean"].item() == pytest.approx(CLEAN_CLS)
    assert parts["adv"].item() == pytest.approx(ADV_CLS)
    assert parts["total"].item() == pytest.approx(CLEAN_CLS + 2.0 * ADV_CLS)


def test_loss_matches_formula_with_dense_term() -> None:
    parts = deacl_loss((S_CLS, S_TOK), (T_CLS, T_TOK), (A_CLS, A_TOK), gamma=2.0, dense_weight=0.5)
    assert parts["clean"].item() == pytest.approx(CLEAN_CLS + 0.5 * CLEAN_TOK)
    assert parts["adv"].item() == pytest.approx(ADV_CLS + 0.5 * ADV_TOK)
    assert parts["total"].item() == pytest.approx(CLEAN_CLS + 0.5 * CLEAN_TOK + 2.0 * (ADV_CLS + 0.5 * ADV_TOK))


def test_gamma_and_dense_weight_zero_leave_only_the_clean_cls_term() -> None:
    adv_cls, adv_tok = A_CLS.clone().requires_grad_(True), A_TOK.clone().requires_grad_(True)
    parts = deacl_loss((S_CLS, S_TOK), (T_CLS, T_TOK), (adv_cls, adv_tok), gamma=0.0, dense_weight=0.0)
    assert parts["total"].item() == pytest.approx(CLEAN_CLS)
    parts["total"].backward()
    assert not adv_cls.grad.any() and adv_tok.grad is None


def test_adversarial_term_pulls_on_the_clean_student_embedding() -> None:
    """As in the original DeACL code, f_R(x) is not detached in the adversarial term."""
    s_cls = S_CLS.clone().requires_grad_(True)
    deacl_loss((s_cls, S_TOK), (T_CLS, T_TOK), (A_CLS, A_TOK), gamma=1.0)["adv"].backward()
    assert s_cls.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- augmentations


def _pad_crop_positions(image: torch.Tensor, out: torch.Tensor, padding: int) -> list[tuple[int, int, bool]]:
    """Every (top, left, flipped) at which ``out`` is a crop of the zero-padded ``image``."""
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    size, found = image.shape[-1], []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = padded[:, top:top + size, left:left + size]
            found += [(top, left, flip) for flip in (False, True) if torch.equal(out, crop.flip(-1) if flip else crop)]
    return found


def test_seed_augment_is_a_zero_padded_random_crop_and_a_flip() -> None:
    """``augment: seed`` = RandomCrop(S, padding=S/8) + RandomHorizontalFlip on each image."""
    assert seed_padding(224) == 28 and seed_padding(32) == 4
    x = torch.rand(1, 3, 32, 32).add(0.01).expand(48, -1, -1, -1).contiguous()  # no zero pixel inside
    out = augment_batch(x, "seed", (0.5, 1.0), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    positions = [_pad_crop_positions(x[0], o, 4) for o in out]
    assert all(len(p) == 1 for p in positions)  # each is exactly one padded crop, maybe flipped
    tops, lefts, flips = zip(*(p[0] for p in positions))
    assert {0, 8} <= set(tops) and {0, 8} <= set(lefts) and set(flips) == {False, True}
    again = pad_crop_flip(x, 4, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # a seed fixes the batch (exact resume)


def test_augment_none_returns_the_batch_itself() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert augment_batch(x, "none", (0.5, 1.0), torch.Generator()) is x
