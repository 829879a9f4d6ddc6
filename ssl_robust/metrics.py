"""Task metrics: accuracy, mIoU from an accumulated confusion matrix, depth RMSE/AbsRel/delta1, and
one score accumulator per task (``add`` a batch, ``summary`` at the end, ``per_sample`` values)."""
from __future__ import annotations

import torch

from ssl_robust.data.catalog import TaskInfo


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean())


def check_labels(target: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Raise naming the labels outside [0, num_classes) that are not ``ignore_index``."""
    t = target[target != ignore_index]
    bad = t[(t < 0) | (t >= num_classes)]
    if bad.numel():
        raise ValueError(f"labels {sorted(set(bad.tolist()))[:5]} outside [0, {num_classes}) "
                         f"and not ignore_index {ignore_index}")


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """[num_classes, num_classes] counts, rows = ground truth, ignored pixels left out."""
    check_labels(target, num_classes, ignore_index)
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
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


def per_image_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                  ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and class: (intersection [B, C], union [B, C]) pixel counts over labelled pixels."""
    b = pred.shape[0]
    keep = target != ignore_index
    image = torch.arange(b, device=pred.device).view(-1, *([1] * (pred.dim() - 1))).expand_as(pred)[keep]
    t, p = target[keep].long(), pred[keep].long()
    size = b * num_classes
    inter = torch.bincount((image * num_classes + t)[p == t], minlength=size)
    area_t = torch.bincount(image * num_classes + t, minlength=size)
    area_p = torch.bincount(image * num_classes + p, minlength=size)
    return inter.view(b, -1), (area_t + area_p - inter).view(b, -1)


def per_image_miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                   ignore_index: int = 255) -> torch.Tensor:
    """mIoU of each image over the classes present in its labels or prediction ([B])."""
    return miou_of_counts(*per_image_iou(pred, target, num_classes, ignore_index))


def miou_of_counts(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """Per image, the mean IoU over the classes present (union > 0) from its per-class counts
    ([N, C] each; float64 [N]); 1 for an image with no class present (nothing to get wrong)."""
    present = union > 0
    count = present.sum(1)
    iou = (inter.double() / union.clamp_min(1)) * present
    return torch.where(count > 0, iou.sum(1) / count.clamp_min(1), torch.ones((), dtype=torch.float64))


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


class ClassificationScores:
    """Accuracy over batches; per sample: 1.0 if correct."""

    pixels = 0  # no pixels are scored

    def __init__(self, info: TaskInfo) -> None:
        self.per_sample: list[float] = []

    def per_image(self) -> dict[str, torch.Tensor]:
        return {}

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.per_sample.extend((logits.detach().cpu().argmax(1) == labels.cpu()).float().tolist())

    def summary(self) -> dict[str, float]:
        return {"acc": sum(self.per_sample) / max(len(self.per_sample), 1)}

    @classmethod
    def picked(cls, info: TaskInfo, members: list["ClassificationScores"], pick: list[int]) -> "ClassificationScores":
        """Sample i from ``members[pick[i]]`` (members scored the same samples in the same order)."""
        out = cls(info)
        out.per_sample = [members[m].per_sample[i] for i, m in enumerate(pick)]
        return out


class SegmentationScores:
    """mIoU and pixel accuracy from per-image, per-class intersections and unions summed over images
    (the confusion matrix's diagonal and margins, as exact integers); per sample: pixel accuracy."""

    def __init__(self, info: TaskInfo) -> None:
        self.info, self.per_sample = info, []
        self.inter: list[torch.Tensor] = []
        self.union: list[torch.Tensor] = []

    def add(self, logits: torch.Tensor, masks: torch.Tensor) -> None:
        pred, masks, ignore = logits.detach().cpu().argmax(1), masks.cpu(), self.info.ignore_index
        check_labels(masks, self.info.num_classes, ignore)
        inter, union = per_image_iou(pred, masks, self.info.num_classes, ignore)
        self.inter.append(inter), self.union.append(union)
        self.per_sample.extend(_pixel_acc(inter, union).tolist())

    @property
    def pixels(self) -> int:
        """Labelled pixels scored: per image, sum(union) + sum(inter) = 2 x labelled."""
        return int(sum(int(u.sum() + i.sum()) for i, u in zip(self.inter, self.union)) // 2)

    def per_image(self) -> dict[str, torch.Tensor]:
        """Per image and class intersections and unions [N, C]: mIoU of any subset of images (worst
        case over attacks, bootstrap intervals) is exact from them."""
        return {"inter": torch.cat(self.inter), "union": torch.cat(self.union)} if self.inter else {}

    def summary(self) -> dict[str, float]:
        if not self.inter:
            return {"miou": float("nan"), "pixel_acc": 0.0}
        inter, union = torch.cat(self.inter).sum(0).double(), torch.cat(self.union).sum(0).double()
        present = union > 0
        miou = float((inter[present] / union[present]).mean()) if bool(present.any()) else float("nan")
        labelled = (union.sum() + inter.sum()) / 2
        return {"miou": miou, "pixel_acc": float(inter.sum() / labelled.clamp_min(1))}

    @classmethod
    def picked(cls, info: TaskInfo, members: list["SegmentationScores"], pick: list[int]) -> "SegmentationScores":
        """Image i from ``members[pick[i]]`` (members scored the same images in the same order)."""
        out = cls(info)
        inter = torch.stack([torch.cat(m.inter) for m in members])
        union = torch.stack([torch.cat(m.union) for m in members])
        rows = torch.arange(inter.shape[1])
        chosen = torch.as_tensor(pick, dtype=torch.long)
        out.inter, out.union = [inter[chosen, rows]], [union[chosen, rows]]
        out.per_sample = _pixel_acc(out.inter[0], out.union[0]).tolist()
        return out


def _pixel_acc(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """Per image: correct pixels over labelled ones (labelled = (sum union + sum inter) / 2)."""
    correct = inter.sum(1).double()
    labelled = (union.sum(1) + inter.sum(1)).double() / 2
    return correct / labelled.clamp_min(1)


class DepthScores:
    """Per-image RMSE, AbsRel and delta<1.25 on valid pixels, averaged over images; per sample: RMSE."""

    def __init__(self, info: TaskInfo) -> None:
        self.info, self.per_sample = info, []
        self.errors: dict[str, list[torch.Tensor]] = {"rmse": [], "abs_rel": [], "delta1": []}
        self.pixels = 0  # valid pixels scored

    def per_image(self) -> dict[str, torch.Tensor]:
        return {}

    def add(self, depth: torch.Tensor, target: torch.Tensor) -> None:
        depth, target = depth.detach().cpu(), target.cpu()
        valid = valid_depth_mask(target, self.info.min_depth, self.info.max_depth)
        self.pixels += int(valid.sum())
        for key, value in depth_errors(depth, target, valid).items():
            self.errors[key].append(value)
        self.per_sample.extend(self.errors["rmse"][-1].tolist())

    def summary(self) -> dict[str, float]:
        return {k: float(torch.cat(v).nanmean()) if v else float("nan") for k, v in self.errors.items()}

    @classmethod
    def picked(cls, info: TaskInfo, members: list["DepthScores"], pick: list[int]) -> "DepthScores":
        """Image i from ``members[pick[i]]`` (members scored the same images in the same order)."""
        out = cls(info)
        chosen, rows = torch.as_tensor(pick, dtype=torch.long), torch.arange(len(pick))
        for key in out.errors:
            out.errors[key] = [torch.stack([torch.cat(m.errors[key]) for m in members])[chosen, rows]]
        out.per_sample = out.errors["rmse"][0].tolist()
        out.pixels = members[0].pixels
        return out
