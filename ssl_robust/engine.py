"""The attack engine seam: one settings object, one call, the optimiser chosen by name.

Every objective (``objectives.py``) runs under every optimiser: fixed-step PGD (``pgd.py``) or APGD
(``apgd.py``). Both spend ``steps`` gradient evaluations per restart plus one forward of the last
iterate, and count what they spent in the result (``grad_steps``, ``forward_passes``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from ssl_robust.apgd import apgd
from ssl_robust.pgd import AttackResult, DamageFn, Forward, ObjectiveFn, SuccessFn, pgd

Optimizer = Literal["pgd", "apgd"]
OPTIMIZERS: tuple[str, ...] = ("pgd", "apgd")


@dataclass(frozen=True)
class AttackSettings:
    """How an attack searches the eps-ball; ``step_size`` is PGD's fixed step (None = 2.5 eps /
    steps), APGD adapts its own from 2 eps."""

    eps: float
    steps: int
    optimizer: Optimizer = "pgd"
    step_size: float | None = None
    norm: Literal["linf", "l2"] = "linf"
    random_start: bool = True
    restarts: int = 1
    seed: int = 0
    stop_when_fooled: bool = False

    @property
    def resolved_step_size(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / max(self.steps, 1)

    def cost(self, n: int) -> tuple[int, int]:
        """(sample-gradient-steps, sample-forwards) of attacking ``n`` samples, an upper bound where
        the cascade drops fooled samples."""
        return n * self.steps * self.restarts, n * (self.steps + 1) * self.restarts


def run_attack(forward: Forward, objective: ObjectiveFn, x: torch.Tensor, target: torch.Tensor,
               settings: AttackSettings, success_fn: SuccessFn | None = None,
               damage_fn: DamageFn | None = None, sample_ids: Sequence[int] | None = None) -> AttackResult:
    """Maximise ``objective(forward(x + delta), target)`` per sample under ``settings``; each
    sample's random start is seeded by (``settings.seed``, its entry of ``sample_ids``, default its
    position in the batch)."""
    common = dict(eps=settings.eps, steps=settings.steps, norm=settings.norm, random_start=settings.random_start,
                  restarts=settings.restarts, seed=settings.seed, success_fn=success_fn,
                  stop_when_fooled=settings.stop_when_fooled, damage_fn=damage_fn, sample_ids=sample_ids)
    if settings.optimizer == "pgd":
        return pgd(forward, objective, x, target, step_size=settings.resolved_step_size, **common)
    if settings.optimizer == "apgd":
        return apgd(forward, objective, x, target, **common)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {settings.optimizer!r}")
