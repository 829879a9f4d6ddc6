"""One entry point for any model, as AutoAttack has: ``evaluate(model, images, targets, task=..., eps=...)``.

``model`` maps [0, 1] images to class logits [B, C], segmentation logits [B, C, H, W] or depth
[B, 1, H, W]. The attacks run as the cells run them (``suite.py``): classification as a cascade
over the still-robust samples, dense tasks keeping each image's worst. The result carries the
worst case, each attack's own result and the validity checks of every attack.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ssl_robust import checks, suite
from ssl_robust.attacks import ATTACKS, attacks_for, check_applies
from ssl_robust.data.catalog import TaskInfo
from ssl_robust.engine import AttackSettings
from ssl_robust.tasks import TASKS, Scores, TaskSpec

STANDARD_STEPS = {"classification": 100, "segmentation": 300, "depth": 100}  # AutoAttack's and SEA's per attack


@dataclass
class Evaluation:
    """``score``: the task's primary metric under the worst case; ``robust``: per item, not fooled
    (classification); ``per_image``: per item, the primary per-sample score; ``per_attack``: each
    attack's own (classification: cumulative over the cascade); ``checks``: name -> holds."""

    score: float
    clean_score: float
    per_image: list[float]
    robust: list[bool] | None = None
    per_attack: dict[str, "Evaluation"] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    grad_steps: int = 0


def _result(task: TaskSpec, scores: Scores, clean: float) -> Evaluation:
    per_sample = list(scores.per_sample)
    robust = [bool(v) for v in per_sample] if task.fooled is not None else None
    return Evaluation(scores.summary()[task.metric], clean, per_sample, robust)


def _plan(attacks: str | Sequence[str], task: TaskSpec, info: TaskInfo, settings: AttackSettings,
          n_target_classes: int) -> list[suite.Member]:
    names = [attacks] if isinstance(attacks, str) else list(attacks)
    found = []
    for name in names:
        ATTACKS.get(name)
        check_applies(name, task.name)
        if ATTACKS.get(name).on_embedding:
            raise ValueError(f"attack {name!r} needs the encoder's representation; evaluate() attacks the model's "
                             f"output: use one of {[a for a in attacks_for(task.name) if not ATTACKS.get(a).on_embedding]}")
        found += suite.members(name, task, info, settings, n_target_classes)
    return found


def evaluate(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, targets: torch.Tensor, *,
             task: str, eps: float, norm: str = "linf", attacks: str | Sequence[str] = "standard", seed: int = 0,
             steps: int | None = None, restarts: int = 1, batch_size: int = 64, n_target_classes: int = 9,
             ignore_index: int = 255, min_depth: float = 1e-3, max_depth: float = 10.0) -> Evaluation:
    """Attack ``model`` on ``images`` in [0, 1] against ``targets`` (labels [N], masks [N, H, W] or
    depth [N, H, W]) within the ``norm`` ball of radius ``eps``; ``steps`` per attack defaults to
    AutoAttack's 100 (classification, depth) and SEA's 300 (segmentation)."""
    spec = TASKS.get(task)
    steps = STANDARD_STEPS[task] if steps is None else steps
    if task == "depth":
        model = _depth_map(model)
    settings = AttackSettings(eps=eps, steps=steps, optimizer="apgd", norm=norm, restarts=restarts, seed=seed,
                              stop_when_fooled=True)
    with torch.no_grad():
        probe = model(images[:1])
    info = TaskInfo(task, num_classes=probe.shape[1] if task != "depth" else 0, ignore_index=ignore_index,
                    min_depth=min_depth, max_depth=max_depth)
    plan = _plan(attacks, spec, info, settings, n_target_classes)
    clean, members = spec.scores(info), [spec.scores(info) for _ in plan]
    bounds, zero, attacked, finite, grad_steps = [], 0, 0, True, 0
    damage = spec.damage(info) if spec.damage else None
    for start in range(0, len(images), batch_size):
        x, y = images[start:start + batch_size].detach(), targets[start:start + batch_size]
        with torch.no_grad():
            clean_out = model(x)
        clean.add(clean_out, y)
        ids = range(start, start + len(x))
        results = (suite.cascade(model, x, y, clean_out, plan, spec.fooled, ids) if spec.fooled is not None
                   else suite.dense(model, x, y, plan, damage, ids))
        for scores, result in zip(members, results):
            scores.add(result.output if result.output is not None else model(result.x_adv).detach(), y)
            bounds.append(checks.perturbation_checks(x, result.x_adv, eps, norm))
            finite &= result.grad_finite
            grad_steps += result.grad_steps
        scored = results[-1:] if spec.fooled is not None else results
        masks = [r.grad_zero for r in scored if r.grad_zero is not None]
        if masks:
            zero += int(torch.stack(masks).all(dim=0).sum())
            attacked += len(x)
    worst = suite.combine(spec, info, members) if spec.fooled is None else members[-1]
    clean_score = clean.summary()[spec.metric]
    out = _result(spec, worst, clean_score)
    out.per_attack = {m.name: _result(spec, s, clean_score) for m, s in zip(plan, members)}
    out.grad_steps = grad_steps
    found = {k: min(b[k] for b in bounds) for k in ("check/delta_in_ball", "check/x_adv_in_box")}
    found.update(checks.gradient_checks(finite, zero, attacked, eps, steps))
    found.update(checks.score_checks(clean_score, out.score, spec.higher_is_better, 0.0))
    out.checks = {k.removeprefix("check/"): v == 1.0 for k, v in found.items()
                  if k.startswith("check/") and k not in ("check/eps0_equals_clean", "check/eps0_max_output_gap")}
    return out


def _depth_map(model: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Depth [B, 1, H, W] as the [B, H, W] map the depth scores and losses compare with targets."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        return out[:, 0] if out.dim() == 4 else out

    return forward

