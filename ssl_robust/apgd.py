"""APGD, the step-size-free optimiser of AutoAttack (Croce & Hein, ICML 2020), per sample:

    z      = Proj(delta + eta * sign(grad))                      (L2: grad / ||grad||_2)
    delta' = Proj(delta + a (z - delta) + (1 - a) (delta - delta_prev)),   a = 0.75 (1 at the first step)

with eta = 2 eps at the start. At checkpoints (after 22 % of the steps, then ever shorter intervals
down to 6 %) a sample's step size is halved, and it restarts from its highest-loss point, when its
loss increased in at most 75 % of the steps since the last checkpoint, or when neither its step
size nor its best loss changed since then. ``steps`` gradient evaluations are spent per restart and
the last iterate is evaluated without one, so its cost equals fixed-step PGD's at the same steps.

Scoring follows ``pgd``: a sample fooled by any iterate keeps its first fooling iterate, a dense
output its most damaging iterate (``damage_fn``), anything else its highest-loss iterate.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch

from ssl_robust.pgd import (AttackResult, DamageFn, Forward, Ledger, ObjectiveFn, RandomStarts, SuccessFn,
                            _per_sample_norm, check_settings, project)

FIRST_CHECKPOINT, CHECKPOINT_SHRINK, MIN_INTERVAL = 0.22, 0.03, 0.06  # fractions of the steps
MOMENTUM = 0.75
RHO = 0.75  # a step size is kept while the loss increased in more than this fraction of the steps
INITIAL_STEP = 2.0  # times eps


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    return grad.sign() if norm == "linf" else grad / _per_sample_norm(grad).clamp_min(1e-12)


def _column(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


class _State:
    """Per-sample optimiser state of the samples still attacked; ``keep`` compacts it."""

    names = ("delta", "delta_prev", "grad", "step", "delta_best", "grad_best", "loss_best", "loss_last_check",
             "reduced_last_check", "increases", "loss_prev")

    def __init__(self, **tensors: torch.Tensor) -> None:
        self.__dict__.update(tensors)

    @classmethod
    def first(cls, delta: torch.Tensor, grad: torch.Tensor, loss: torch.Tensor, eps: float) -> "_State":
        """The state after the first gradient: step 2 eps, the start as the best point."""
        n, device = len(delta), delta.device
        return cls(delta=delta, delta_prev=delta, grad=grad, step=torch.full((n,), INITIAL_STEP * eps, device=device),
                   delta_best=delta, grad_best=grad, loss_best=loss, loss_last_check=loss,
                   reduced_last_check=torch.ones(n, dtype=torch.bool, device=device),
                   increases=torch.zeros(n, device=device), loss_prev=loss)

    def update(self, delta: torch.Tensor, grad: torch.Tensor, loss: torch.Tensor) -> None:
        """A later gradient: count the loss increase and keep each sample's best point."""
        self.grad = grad
        self.increases += (loss > self.loss_prev).float()
        self.loss_prev = loss
        improved = loss > self.loss_best
        self.delta_best = torch.where(_column(improved, delta), delta, self.delta_best)
        self.grad_best = torch.where(_column(improved, grad), grad, self.grad_best)
        self.loss_best = torch.where(improved, loss, self.loss_best)

    def keep(self, mask: torch.Tensor) -> None:
        for name in self.names:
            setattr(self, name, getattr(self, name)[mask])


def apgd(
    forward: Forward,
    objective: ObjectiveFn,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    eps: float,
    steps: int,
    norm: Literal["linf", "l2"] = "linf",
    random_start: bool = True,
    restarts: int = 1,
    seed: int = 0,
    success_fn: SuccessFn | None = None,
    stop_when_fooled: bool = False,
    damage_fn: DamageFn | None = None,
    sample_ids: Sequence[int] | None = None,
) -> AttackResult:
    """Maximise ``objective(forward(x + delta), target)`` per sample within the eps-ball with APGD;
    random starts per sample as in ``pgd``."""
    check_settings(eps, steps, restarts, norm)
    ledger = Ledger(x, target, steps, success_fn, damage_fn, cascade=stop_when_fooled and success_fn is not None)
    starts = RandomStarts(seed, range(len(x)) if sample_ids is None else sample_ids)
    schedule = _Checkpoints(steps)
    for _ in range(restarts):
        now = ledger.restart(starts.draw(x, eps, norm) if random_start and eps > 0 else None)
        if now is None:
            break
        state: _State | None = None
        schedule.reset()
        for i in range(steps):
            x_now, output, loss, grad = ledger.input_gradient(forward, objective, now, i + 1)
            ledger.record(now, x_now, output, loss, compare_loss=True)
            del x_now, output  # the next step's peak holds only its own (the state keeps the gradient)
            with torch.no_grad():
                if state is None:
                    state = _State.first(now.delta.detach(), grad, loss, eps)
                else:
                    state.update(now.delta.detach(), grad, loss)
                    if schedule.due():
                        _checkpoint(state, schedule.interval)
                        schedule.next()
                if ledger.cascade:
                    keep = ledger.keep_still_robust(now)
                    if keep is not None:
                        state.keep(keep)
                    if now.empty:
                        break
                now.delta = _momentum_step(state, now.x, eps, norm, first=i == 0)
        ledger.evaluate_last(forward, objective, now)
    return ledger.result()


class _Checkpoints:
    """When APGD checks its step sizes: after 22 % of the steps, then at intervals shrinking by 3 %
    of the steps down to 6 %."""

    def __init__(self, steps: int) -> None:
        self.first = max(int(FIRST_CHECKPOINT * steps), 1)
        self.shrink, self.min_interval = max(int(CHECKPOINT_SHRINK * steps), 1), max(int(MIN_INTERVAL * steps), 1)
        self.reset()

    def reset(self) -> None:
        self.interval, self.since = self.first, 0

    def due(self) -> bool:
        """Count a step; True when it ends the interval."""
        self.since += 1
        return self.since == self.interval

    def next(self) -> None:
        self.since, self.interval = 0, max(self.interval - self.shrink, self.min_interval)


def _checkpoint(state: _State, interval: int) -> None:
    """Halve the step of the samples whose loss stalled, and move them back to their best point."""
    oscillating = state.increases <= interval * RHO
    stuck = ~state.reduced_last_check & (state.loss_last_check >= state.loss_best)
    reduce = oscillating | stuck
    state.step = torch.where(reduce, state.step / 2, state.step)
    state.delta = torch.where(_column(reduce, state.delta), state.delta_best, state.delta)
    state.grad = torch.where(_column(reduce, state.grad), state.grad_best, state.grad)
    state.reduced_last_check, state.loss_last_check = reduce, state.loss_best.clone()
    state.increases = torch.zeros_like(state.increases)


def _momentum_step(state: _State, x: torch.Tensor, eps: float, norm: str, first: bool) -> torch.Tensor:
    """The next iterate: a projected step along the gradient's direction, then momentum."""
    delta = state.delta
    z = project(delta + _column(state.step, delta) * _direction(state.grad, norm), x, eps, norm)
    a = 1.0 if first else MOMENTUM
    new = project(delta + a * (z - delta) + (1 - a) * (delta - state.delta_prev), x, eps, norm)
    state.delta_prev, state.delta = delta, new
    return new
