"""Attack objectives: each maps (model output, target, step t of T) to one loss per sample.

The PGD engine ascends these losses. ``target`` is whatever the objective compares against:
labels for ``cross_entropy``/``segpgd``, a depth map for ``silog``, the clean embedding for ``embed_*``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ssl_robust.registry import Registry


OBJECTIVES: Registry[Callable[..., torch.Tensor]] = Registry("objective")


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)


@OBJECTIVES.register("embed_l2")
def embed_l2(output: torch.Tensor, target: torch.Tensor, step: int = 1, steps: int = 1) -> torch.Tensor:
    """EmbedAttack: squared L2 distance to the clean embedding (CLS [B,D] or tokens [B,D,h,w])."""
    return (_flat(output) - _flat(target)).pow(2).sum(dim=1)


@OBJECTIVES.register("embed_cos")
def embed_cos(output: torch.Tensor, target: torch.Tensor, step: int = 1, steps: int = 1) -> torch.Tensor:
    """Cosine form of EmbedAttack (DeACL's inner attack): 1 - cos(f(x+d), f(x)), mean over tokens."""
    if output.dim() > 2:  # token grid [B,D,h,w]: cosine per token
        return (1 - F.cosine_similarity(output, target, dim=1)).flatten(1).mean(dim=1)
    return 1 - F.cosine_similarity(output, target, dim=1)


@OBJECTIVES.register("cross_entropy")
def cross_entropy(output: torch.Tensor, target: torch.Tensor, step: int = 1, steps: int = 1) -> torch.Tensor:
    """PGD: cross-entropy of the class logits [B,C] against labels [B]."""
    return F.cross_entropy(output, target, reduction="none")


def segpgd_weight(step: int, steps: int) -> float:
    """SegPGD's lambda_t = (t - 1) / (2T): early steps push correct pixels, later steps wrong ones."""
    return (step - 1) / (2 * max(steps, 1))


def segpgd(output: torch.Tensor, target: torch.Tensor, step: int = 1, steps: int = 1,
           ignore_index: int = 255) -> torch.Tensor:
    """SegPGD (Gu et al. 2022): (1-l)*sum_correct CE + l*sum_wrong CE, both over labelled pixels."""
    pixel_ce = F.cross_entropy(output, target, ignore_index=ignore_index, reduction="none")  # [B,H,W]
    labelled = target != ignore_index
    correct = (output.argmax(dim=1) == target) & labelled
    wrong = labelled & ~correct
    lam = segpgd_weight(step, steps)
    n_labelled = labelled.flatten(1).sum(dim=1).clamp_min(1)
    correct_sum = (pixel_ce * correct).flatten(1).sum(dim=1)
    wrong_sum = (pixel_ce * wrong).flatten(1).sum(dim=1)
    return ((1 - lam) * correct_sum + lam * wrong_sum) / n_labelled


OBJECTIVES.register("segpgd")(segpgd)


def silog(output: torch.Tensor, target: torch.Tensor, step: int = 1, steps: int = 1,
          variance_focus: float = 0.85, min_depth: float = 1e-3) -> torch.Tensor:
    """DepthPGD: scale-invariant log loss sqrt(mean g^2 - 0.85 (mean g)^2) over valid pixels."""
    pred = output.squeeze(1) if output.dim() == 4 else output
    valid = target > min_depth
    g = torch.where(valid, torch.log(pred.clamp_min(min_depth)) - torch.log(target.clamp_min(min_depth)),
                    torch.zeros_like(pred))
    n = valid.flatten(1).sum(dim=1).clamp_min(1)
    mean_g = g.flatten(1).sum(dim=1) / n
    mean_g2 = g.pow(2).flatten(1).sum(dim=1) / n
    return torch.sqrt((mean_g2 - variance_focus * mean_g.pow(2)).clamp_min(0) + 1e-8)


OBJECTIVES.register("silog")(silog)
