"""Task metrics: accuracy, mIoU from an accumulated confusion matrix, depth RMSE/AbsRel/delta1."""
from __future__ import annotations

import torch


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean())


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """[num_classes, num_classes] counts, rows = ground truth, ignored pixels left out."""
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    bad = t[(t < 0) | (t >= num_classes)]
    if bad.numel():
        raise ValueError(f"labels {sorted(set(bad.tolist()))[:5]} outside [0, {num_classes}) "
                         f"and not ignore_index {ignore_index}")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).view(num_classes, num_classes)


def miou_from_confusion(conf: torch.Tensor) -> float:
    """Mean IoU over classes present in ground truth or prediction."""
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean()) if bool(present.any()) else float("nan")


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> float:
    return miou_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index))


def valid_depth_mask(target: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    return (target > min_depth) & (target <= max_depth)


def depth_errors(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image RMSE, AbsRel and delta<1.25 over ``valid`` pixels ([B] tensors; NaN without any)."""
    pred = pred.clamp_min(1e-6)
    count = valid.flatten(1).sum(dim=1)
    n = torch.where(count > 0, count.to(pred.dtype), torch.full_like(count, float("nan"), dtype=pred.dtype))
    err = torch.where(valid, pred - target, torch.zeros_like(pred))
    ratio = torch.where(valid, torch.maximum(pred / target.clamp_min(1e-6), target / pred), torch.ones_like(pred))
    return {
        "rmse": (err.pow(2).flatten(1).sum(1) / n).sqrt(),
        "abs_rel": (err.abs() / target.clamp_min(1e-6)).flatten(1).sum(1) / n,
        "delta1": ((ratio < 1.25) & valid).flatten(1).sum(1) / n,
    }


def depth_metrics(pred: torch.Tensor, target: torch.Tensor, min_depth: float = 1e-3,
                  max_depth: float = 10.0) -> dict[str, float]:
    """Image-averaged RMSE, AbsRel, delta<1.25 on valid pixels (the mask comes from the target only);
    images without valid pixels are left out."""
    valid = valid_depth_mask(target, min_depth, max_depth)
    return {k: float(v.nanmean()) for k, v in depth_errors(pred, target, valid).items()}
