"""Attack objectives: each maps (model output, target, step t of T) to one loss per sample.

The PGD engine ascends these losses. ``target`` is whatever the objective compares against:
labels for ``cross_entropy``/``dlr``/``segpgd``/``seg_*``, (label, target class) pairs for ``dlr_targeted``,
a depth map for ``silog``/``depth_*``, the clean embedding for ``embed_*``.
"""
from __future__ import annotations

import math
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
STEP_DEPENDENT = frozenset({"segpgd"})  # objectives that reweigh their terms by step: their loss rises by design


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

GRADIENT_STRIDES = (1, 2, 4, 6)  # the scales of MegaDepth's gradient loss as DINOv2 subsamples them


def log_depth_gradient(output: torch.Tensor, target: torch.Tensor, min_depth: float = 1e-3) -> torch.Tensor:
    """Multi-scale gradient matching (MegaDepth; DINOv2's GradientLoss), one value per image: at each
    stride s in 1, 2, 4, 6 the map is subsampled every s pixels and the error d = log pred - log
    target is compared two pixels apart, |d(i) - d(i+2)| vertically and horizontally over pairs of
    valid pixels, summed and divided by the valid pixel count; the scales are summed. A head
    penalised by it keeps depth edges where the target has them, whatever its global scale."""
    pred = output.squeeze(1) if output.dim() == 4 else output
    total = pred.new_zeros(pred.shape[0])
    for stride in GRADIENT_STRIDES:
        p, t = pred[:, ::stride, ::stride], target[:, ::stride, ::stride]
        valid = t > min_depth
        d = torch.where(valid, torch.log(p.clamp_min(min_depth)) - torch.log(t.clamp_min(min_depth)),
                        torch.zeros_like(p))
        vertical = (d[:, :-2] - d[:, 2:]).abs() * (valid[:, :-2] & valid[:, 2:])
        horizontal = (d[:, :, :-2] - d[:, :, 2:]).abs() * (valid[:, :, :-2] & valid[:, :, 2:])
        count = valid.flatten(1).sum(dim=1).clamp_min(1)
        total = total + (vertical.flatten(1).sum(dim=1) + horizontal.flatten(1).sum(dim=1)) / count
    return total


# ----------------------------------------------------------------------------- DLR (AutoAttack)


def _need_classes(output: torch.Tensor, minimum: int, name: str) -> None:
    if output.shape[1] < minimum:
        raise ValueError(f"{name} needs at least {minimum} classes, got {output.shape[1]}")


@OBJECTIVES.register("dlr")
def dlr(output: torch.Tensor, target: torch.Tensor, step: int = 1, steps: int = 1) -> torch.Tensor:
    """DLR loss (Croce & Hein 2020, AutoAttack): -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3 + 1e-12).

    Invariant to shifting and scaling the logits, so its gradient survives where CE's saturates."""
    _need_classes(output, 3, "DLR")
    top = output.sort(dim=1, descending=True).values
    z_y = output.gather(1, target[:, None]).squeeze(1)
    z_other = output.masked_fill(F.one_hot(target, output.shape[1]).bool(), float("-inf")).amax(dim=1)
    return -(z_y - z_other) / (top[:, 0] - top[:, 2] + 1e-12)


@OBJECTIVES.register("dlr_targeted")
def dlr_targeted(output: torch.Tensor, target: torch.Tensor, step: int = 1, steps: int = 1) -> torch.Tensor:
    """Targeted DLR (APGD-T): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2 + 1e-12), ``target`` [B,2] = (y, t).

    As AutoAttack's ``dlr_loss_targeted``: ascending it pushes the target logit above the true one."""
    _need_classes(output, 4, "targeted DLR")
    top = output.sort(dim=1, descending=True).values
    z_y, z_t = output.gather(1, target[:, :2]).unbind(dim=1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def target_classes(logits: torch.Tensor, labels: torch.Tensor, rank: int) -> torch.Tensor:
    """APGD-T's targets [B,2] = (labels, the class with the rank-th highest clean logit).

    ``rank`` counts from the top class (rank 1 is the argmax), as AutoAttack's ``target_class`` in
    ``output.sort(dim=1)[1][:, -target_class]``, which runs over 2 .. n_target_classes + 1."""
    if not 1 <= rank <= logits.shape[1]:
        raise ValueError(f"rank must be in 1..{logits.shape[1]}, got {rank}")
    return torch.stack([labels, logits.sort(dim=1)[1][:, -rank]], dim=1)


# ----------------------------------------------------------------------------- segmentation (SEA)


def _labels(target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(labelled mask, labels with ignored pixels set to class 0 so that they can index)."""
    labelled = target != ignore_index
    return labelled, torch.where(labelled, target, torch.zeros_like(target))


def _pixel_mean(pixel_loss: torch.Tensor, counted: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Per image: sum of the loss over ``counted`` pixels / number of ``labelled`` pixels (0 without any)."""
    total = torch.where(counted, pixel_loss, torch.zeros_like(pixel_loss)).flatten(1).sum(dim=1)
    return total / labelled.flatten(1).sum(dim=1).clamp_min(1)


@OBJECTIVES.register("seg_masked_ce")
def seg_masked_ce(output: torch.Tensor, target: torch.Tensor, step: int = 1, steps: int = 1,
                  ignore_index: int = 255) -> torch.Tensor:
    """Masked CE of SEA (Croce, Singh & Hein, "Towards Reliable Evaluation and Fast Training of Robust
    Semantic Segmentation Models"): CE on the pixels still classified correctly, none spent on fooled ones."""
    labelled, labels = _labels(target, ignore_index)
    correct = labelled & (output.argmax(dim=1) == labels)
    return _pixel_mean(F.cross_entropy(output, labels, reduction="none"), correct, labelled)


def _inverse_frequency(labels: torch.Tensor, labelled: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per image [B,C]: 1 / (labelled pixels of each class), normalised to sum 1 over the classes present."""
    counts = torch.zeros(labels.shape[0], num_classes, device=labels.device).scatter_add_(
        1, labels.flatten(1), labelled.flatten(1).float())
    inverse = torch.where(counts > 0, 1 / counts.clamp_min(1), torch.zeros_like(counts))
    return inverse / inverse.sum(dim=1, keepdim=True).clamp_min(1e-12)


@OBJECTIVES.register("seg_balanced_ce")
def seg_balanced_ce(output: torch.Tensor, target: torch.Tensor, step: int = 1, steps: int = 1,
                    ignore_index: int = 255, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Balanced masked CE of SEA (Croce, Singh & Hein, "Towards Reliable Evaluation and Fast Training of
    Robust Semantic Segmentation Models"): w[y_i] * CE_i on correctly classified pixels.

    SEA's ``w`` is a fixed table per data set (inverse class frequency, summing to 1), so small classes
    weigh as much as large ones; without ``class_weights`` the image's own label frequencies stand in."""
    labelled, labels = _labels(target, ignore_index)
    correct = labelled & (output.argmax(dim=1) == labels)
    if class_weights is None:
        weight = _inverse_frequency(labels, labelled, output.shape[1]).gather(1, labels.flatten(1))
    else:
        weight = class_weights.to(output.device)[labels]
    pixel_ce = F.cross_entropy(output, labels, reduction="none")
    return _pixel_mean(weight.view_as(pixel_ce).to(pixel_ce.dtype) * pixel_ce, correct, labelled)


@OBJECTIVES.register("seg_js")
def seg_js(output: torch.Tensor, target: torch.Tensor, step: int = 1, steps: int = 1,
           ignore_index: int = 255) -> torch.Tensor:
    """Jensen-Shannon divergence of SEA (Croce, Singh & Hein, "Towards Reliable Evaluation and Fast Training
    of Robust Semantic Segmentation Models") between softmax p and the one-hot label, per pixel.

    With a one-hot label it is 0.5 * (2 log 2 + p_y log p_y - (1 + p_y) log(1 + p_y)): bounded by log 2,
    and finite where softmax underflows to 0 (there SEA's KL form gives 0 * log 0 = NaN)."""
    labelled, labels = _labels(target, ignore_index)
    log_p_y = F.log_softmax(output, dim=1).gather(1, labels[:, None]).squeeze(1)
    p_y = log_p_y.exp()
    js = 0.5 * (2 * math.log(2) + p_y * log_p_y - (1 + p_y) * torch.log1p(p_y))
    return _pixel_mean(js, labelled, labelled)


@OBJECTIVES.register("seg_masked_spherical")
def seg_masked_spherical(output: torch.Tensor, target: torch.Tensor, step: int = 1, steps: int = 1,
                         ignore_index: int = 255) -> torch.Tensor:
    """Masked spherical loss of SEA (Croce, Singh & Hein, "Towards Reliable Evaluation and Fast Training of
    Robust Semantic Segmentation Models"): -z_y / ||z||_2 of the logits, on correctly classified pixels.

    Normalising the logits makes it scale-invariant, so it keeps pushing confidently correct pixels."""
    labelled, labels = _labels(target, ignore_index)
    correct = labelled & (output.argmax(dim=1) == labels)
    unit = output / output.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return _pixel_mean(-unit.gather(1, labels[:, None]).squeeze(1), correct, labelled)


# ----------------------------------------------------------------------------- depth (RMSE, AbsRel)


def _depth(output: torch.Tensor, target: torch.Tensor, min_depth: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction [B,H,W], valid pixels: target > min_depth)."""
    return (output.squeeze(1) if output.dim() == 4 else output), target > min_depth


@OBJECTIVES.register("depth_l1")
def depth_l1(output: torch.Tensor, target: torch.Tensor, step: int = 1, steps: int = 1,
             min_depth: float = 1e-3) -> torch.Tensor:
    """Mean |pred - target| over valid pixels: the absolute error inside AbsRel, not divided by depth."""
    pred, valid = _depth(output, target, min_depth)
    return _pixel_mean((pred - target).abs(), valid, valid)


@OBJECTIVES.register("depth_l2")
def depth_l2(output: torch.Tensor, target: torch.Tensor, step: int = 1, steps: int = 1,
             min_depth: float = 1e-3) -> torch.Tensor:
    """Per-image RMSE sqrt(mean (pred - target)^2 + 1e-8) over valid pixels (the 1e-8 keeps the gradient
    finite at 0); 0 for an image without valid pixels."""
    pred, valid = _depth(output, target, min_depth)
    rmse = torch.sqrt(_pixel_mean((pred - target).pow(2), valid, valid) + 1e-8)
    return torch.where(valid.flatten(1).any(dim=1), rmse, torch.zeros_like(rmse))


@OBJECTIVES.register("depth_log_l1")
def depth_log_l1(output: torch.Tensor, target: torch.Tensor, step: int = 1, steps: int = 1,
                 min_depth: float = 1e-3) -> torch.Tensor:
    """Mean |log pred - log target| over valid pixels, pred clamped at min_depth as in ``silog``."""
    pred, valid = _depth(output, target, min_depth)
    g = torch.log(pred.clamp_min(min_depth)) - torch.log(target.clamp_min(min_depth))
    return _pixel_mean(g.abs(), valid, valid)
