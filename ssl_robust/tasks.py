"""What a task is, in one place: its metric and direction, head, training loss, validation score,
score accumulator, per-sample column, the representation EmbedAttack pushes, and its attacks.

Adding a task means registering a ``TaskSpec`` here, its objective (``objectives.py`` plus its
attack in ``attacks.py``) and a data set that serves it (``data/``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ssl_robust.attacks import ATTACKS, attacks_for, task_attack
from ssl_robust.data.catalog import TaskInfo
from ssl_robust.config import DataCfg, HeadCfg
from ssl_robust.heads import DINOv2DepthHead, LinearClassifier, LinearDepthHead, LinearSegmenter
from ssl_robust.metrics import (ClassificationScores, DepthScores, SegmentationScores, depth_errors, per_image_miou,
                                valid_depth_mask)
from ssl_robust.objectives import OBJECTIVES, log_depth_gradient, silog
from ssl_robust.pgd import DamageFn
from ssl_robust.registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Scores(Protocol):
    per_sample: list[float]
    pixels: int  # labelled (valid) pixels scored; 0 for classification

    def add(self, output: torch.Tensor, target: torch.Tensor) -> None: ...

    def summary(self) -> dict[str, float]: ...

    def per_image(self) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class TaskSpec:
    """A task: everything cells, heads, sweeps and reports need to know about it."""

    name: str
    metric: str  # the primary metric key in ``scores(info).summary()``
    label: str  # how tables name the metric
    higher_is_better: bool
    per_sample: str  # what the per-sample column holds
    embedding: Literal["cls", "tokens"]  # the representation the head reads (EmbedAttack's target)
    build_head: Callable[[TaskInfo, int, HeadCfg], nn.Module]  # (info, embed_dim, head config) -> head
    loss: Callable[[TaskInfo, HeadCfg], LossFn]  # training loss of the head
    scores: Callable[[TaskInfo], Scores]  # accumulator of the task's scores over batches
    fooled: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # per-sample success
    damage: Callable[[TaskInfo], DamageFn] | None = None  # per-sample harm of an output, to pick the worst iterate
    default_eval: Literal["resize", "slide"] = "resize"  # how test images are sized and scored
    objective_kwargs: Callable[[TaskInfo], dict[str, Any]] = field(default=lambda info: {})

    @property
    def token_grid(self) -> bool:
        """The head reads the patch-token grid (else CLS and at most the mean patch token)."""
        return self.embedding == "tokens"

    @property
    def attacks(self) -> list[str]:
        return attacks_for(self.name)

    @property
    def own_attack(self) -> str | None:
        return task_attack(self.name)

    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    def validation_score(self, info: TaskInfo, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """The primary metric over (output, target) batches, signed so that higher is better."""
        scores = self.scores(info)
        for outputs, targets in batches:
            scores.add(outputs, targets)
        value = scores.summary()[self.metric]
        return value if self.higher_is_better else -value

    def objective(self, attack: str, info: TaskInfo) -> Callable[..., torch.Tensor]:
        """The attack's objective, bound to the task's label facts (ignore index, depth range)."""
        spec = ATTACKS.get(attack)
        fn = OBJECTIVES.get(spec.objective)
        return fn if spec.on_embedding else functools.partial(fn, **self.objective_kwargs(info))


DEPTH_HEADS = {"smooth": LinearDepthHead, "dinov2": DINOv2DepthHead}
GRADIENT_WEIGHT = {"silog": 0.0, "silog_grad": 0.5}  # head.depth_loss: DINOv2's depth heads weigh it 0.5


def depth_loss(output: torch.Tensor, target: torch.Tensor, min_depth: float, gradient_weight: float) -> torch.Tensor:
    """The depth head's training loss: SILog, plus ``gradient_weight`` x the log-depth gradient loss."""
    loss = silog(output, target, min_depth=min_depth)
    if gradient_weight:
        loss = loss + gradient_weight * log_depth_gradient(output, target, min_depth=min_depth)
    return loss.mean()


def _misclassified(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.argmax(1) != labels


TASKS: Registry[TaskSpec] = Registry("task")
TASKS.register("classification")(TaskSpec(
    name="classification", metric="acc", label="Accuracy", higher_is_better=True, per_sample="correct",
    embedding="cls",
    build_head=lambda info, dim, head: LinearClassifier(dim, info.num_classes, head.classifier_input),
    loss=lambda info, head: F.cross_entropy,
    scores=ClassificationScores,
    fooled=_misclassified,
))
TASKS.register("segmentation")(TaskSpec(
    name="segmentation", metric="miou", label="mIoU", higher_is_better=True, per_sample="pixel_acc",
    embedding="tokens", default_eval="slide",
    build_head=lambda info, dim, head: LinearSegmenter(dim, info.num_classes),
    loss=lambda info, head: functools.partial(F.cross_entropy, ignore_index=info.ignore_index),
    scores=SegmentationScores,
    damage=lambda info: lambda logits, masks: -per_image_miou(logits.argmax(1), masks, info.num_classes,
                                                              info.ignore_index).nan_to_num(1.0),
    objective_kwargs=lambda info: {"ignore_index": info.ignore_index},
))
TASKS.register("depth")(TaskSpec(
    name="depth", metric="rmse", label="RMSE", higher_is_better=False, per_sample="rmse",
    embedding="tokens", default_eval="slide",
    build_head=lambda info, dim, head: DEPTH_HEADS[head.depth_head](dim, head.n_bins, info.min_depth, info.max_depth),
    loss=lambda info, head: functools.partial(depth_loss, min_depth=info.min_depth,
                                              gradient_weight=GRADIENT_WEIGHT[head.depth_loss]),
    scores=DepthScores,
    damage=lambda info: lambda depth, target: depth_errors(
        depth, target, valid_depth_mask(target, info.min_depth, info.max_depth))["rmse"].nan_to_num(0.0),
    objective_kwargs=lambda info: {"min_depth": info.min_depth},
))


def eval_mode(data: DataCfg) -> Literal["resize", "slide", "whole"]:
    """``data.eval`` resolved by the task's default; ``slide`` and ``whole`` need a task with a dense output."""
    spec = TASKS.get(data.resolved_task)
    if data.eval in ("slide", "whole") and spec.default_eval != "slide":
        raise ValueError(f"data.eval={data.eval!r} needs a dense task; {data.name!r} is evaluated on {spec.name!r}")
    return data.eval or spec.default_eval


def eval_sizing(data: DataCfg) -> Literal["square", "short_side", "native"]:
    """How the test split is sized: ``short_side`` (native-resolution targets) under ``slide``,
    ``native`` images and targets under ``whole``, ``square`` under ``resize``."""
    return {"slide": "short_side", "whole": "native", "resize": "square"}[eval_mode(data)]
