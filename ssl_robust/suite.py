"""Attack suites on one batch: every member attack of a suite (``attacks.suite_members``), combined
per sample as the field does.

Classification is AutoAttack's cascade: each member attacks only the samples no earlier member
fooled, APGD-T once per target class (the top classes of the clean output); a member's result is
cumulative (robust after it and every member before). Dense tasks run every member on every image
and keep each member's own result; the worst per image is chosen over the whole test set
(``pick_worst``), where a data-set mIoU can be made no higher than any member's own.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ssl_robust.attacks import ATTACKS, suite_members, target_ranks
from ssl_robust.data.catalog import TaskInfo
from ssl_robust.engine import AttackSettings, run_attack
from ssl_robust.objectives import target_classes
from ssl_robust.pgd import AttackResult, DamageFn, ObjectiveFn
from ssl_robust.tasks import Scores, TaskSpec
from ssl_robust.worst import worst_mean_pick, worst_miou_pick

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Member:
    """One attack of a suite: its name, objective and settings; ``ranks`` are APGD-T's target ranks."""

    name: str
    objective: ObjectiveFn
    settings: AttackSettings
    ranks: tuple[int, ...] = ()


def members(attack: str, task: TaskSpec, info: TaskInfo, settings: AttackSettings, targets: int,
            optimizer: str | None = None) -> list[Member]:
    """The members ``attack`` runs on ``task``; a plain attack is its own one member. ``optimizer``
    overrides each member's own; APGD-T has ``min(targets, classes - 1)`` target ranks and is left
    out below the 4 classes targeted DLR needs."""
    found = []
    for name in suite_members(attack, task.name):
        spec = ATTACKS.get(name)
        ranks = target_ranks(info.num_classes, targets) if spec.targeted else ()
        if spec.targeted and not ranks:
            continue
        chosen = dataclasses.replace(settings, optimizer=optimizer or spec.optimizer)
        found.append(Member(name, task.objective(name, info), chosen, ranks))
    return found


def _merge(into: AttackResult, part: AttackResult, idx: torch.Tensor) -> None:
    """Write a later member's result on the samples ``idx`` it attacked into the cumulative one."""
    fooled = part.success
    into.x_adv[idx] = torch.where(fooled.view(-1, *([1] * (part.x_adv.dim() - 1))), part.x_adv, into.x_adv[idx])
    into.success[idx] = into.success[idx] | fooled
    if into.output is not None and part.output is not None:
        into.output[idx] = torch.where(fooled.view(-1, 1), part.output, into.output[idx])
    elif part.output is None:
        into.output = None
    if into.grad_zero is not None and part.grad_zero is not None:
        into.grad_zero[idx] = into.grad_zero[idx] & part.grad_zero
    into.grad_finite &= part.grad_finite
    into.grad_steps += part.grad_steps
    into.forward_passes += part.forward_passes


def _copy(result: AttackResult) -> AttackResult:
    return dataclasses.replace(result, x_adv=result.x_adv.clone(), success=result.success.clone(),
                               output=None if result.output is None else result.output.clone(),
                               grad_zero=None if result.grad_zero is None else result.grad_zero.clone())


def cascade(forward: Forward, x: torch.Tensor, labels: torch.Tensor, clean_logits: torch.Tensor,
            plan: list[Member], fooled: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            ids: Sequence[int] | None = None) -> list[AttackResult]:
    """Classification: each member on the samples still robust; one cumulative result per member.
    The combined loss and loss curve are the first member's (the losses of members differ in kind).
    ``ids``: the samples' ids that seed their random starts (default: their positions)."""
    ids = torch.arange(len(x)) if ids is None else torch.as_tensor(list(ids))
    results: list[AttackResult] = []
    combined: AttackResult | None = None
    for member in plan:
        for rank in member.ranks or (None,):
            pool = torch.arange(len(x), device=x.device) if combined is None else (~combined.success).nonzero()[:, 0]
            if pool.numel() == 0:
                break
            target = labels[pool] if rank is None else target_classes(clean_logits[pool], labels[pool], rank)
            success = fooled if rank is None else (lambda out, t: fooled(out, t[:, 0]))
            settings = dataclasses.replace(member.settings, seed=member.settings.seed + (rank or 0))
            part = run_attack(forward, member.objective, x[pool], target, settings, success,
                              sample_ids=ids[pool.cpu()].tolist())
            if combined is None:
                combined = part
            else:
                _merge(combined, part, pool)
        if combined is not None:
            results.append(_copy(combined))
    return results


def dense(forward: Forward, x: torch.Tensor, labels: torch.Tensor, plan: list[Member],
          damage: DamageFn | None, ids: Sequence[int] | None = None) -> list[AttackResult]:
    """Segmentation and depth: every member on every image, each result its own (``ids`` as in
    ``cascade``)."""
    return [run_attack(forward, m.objective, x, labels, m.settings, None, damage, sample_ids=ids) for m in plan]


def pick_worst(task: TaskSpec, member_scores: list[Scores]) -> list[int]:
    """Per item, which member's result the worst case keeps: classification, any member that fooled
    it (the cumulative last member holds them all); depth, the highest per-image error; segmentation,
    a choice whose data-set mIoU is at most every member's own (``worst.worst_miou_pick``)."""
    if task.name == "segmentation":
        images = [s.per_image() for s in member_scores]
        inter = np.stack([i["inter"].numpy() for i in images])
        union = np.stack([i["union"].numpy() for i in images])
        return worst_miou_pick(inter, union).tolist()
    scores = np.array([s.per_sample for s in member_scores], dtype=float)
    return worst_mean_pick(scores, task.higher_is_better).tolist()


def combine(task: TaskSpec, info: TaskInfo, member_scores: list[Scores]) -> Scores:
    """The worst case over the members' scores of the same items."""
    if len(member_scores) == 1:
        return member_scores[0]
    return type(member_scores[0]).picked(info, member_scores, pick_worst(task, member_scores))
