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

from ssl_robust.pgd import (AttackResult, DamageFn, Forward, ObjectiveFn, RandomStarts, SuccessFn, _Best,
                            _per_sample_norm, _sum_per_step, _unmovable, check_settings, project, record, restart)

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
    x = x.detach()
    device = x.device
    cascade = stop_when_fooled and success_fn is not None
    starts = RandomStarts(seed, range(len(x)) if sample_ids is None else sample_ids)
    best = _Best(x, damage_fn is not None)
    grad_sum = torch.zeros((), device=device)
    nonzero: torch.Tensor | None = None
    zero_grad: torch.Tensor | None = None
    forwards = grad_steps = 0
    step_sums: list[list[torch.Tensor]] = [[] for _ in range(steps)]
    step_count = [0] * steps
    first_interval = max(int(FIRST_CHECKPOINT * steps), 1)
    shrink, min_interval = max(int(CHECKPOINT_SHRINK * steps), 1), max(int(MIN_INTERVAL * steps), 1)

    for _ in range(restarts):
        start = restart(best, x, target, cascade, eps, norm, random_start, starts)
        if start is None:
            break
        active, idx, x_act, target_act, delta = start
        state: _State | None = None
        interval, since_check = first_interval, 0
        for i in range(steps + 1):
            final = i == steps
            if final:
                with torch.no_grad():
                    output = forward(x_act + delta)
                    loss = objective(output, target_act, max(steps, 1), max(steps, 1))
                record(best, success_fn, damage_fn, target, idx, x_act + delta, output, loss, compare_loss=True)
                forwards += len(x_act)
                break
            delta.requires_grad_(True)
            x_now = x_act + delta
            output = forward(x_now)
            loss = objective(output, target_act, i + 1, steps)
            (grad,) = torch.autograd.grad(loss.sum(), delta)
            delta, loss = delta.detach(), loss.detach()
            step_sums[i].append(loss.sum())
            step_count[i] += len(x_act)
            grad_sum += grad.sum()
            if nonzero is None:
                per_sample = grad.flatten(1).abs().sum(dim=1)
                nonzero, zero_grad = (per_sample > 0).float().mean(), _unmovable(grad, output, target_act, success_fn)
            forwards += len(x_act)
            grad_steps += len(x_act)
            record(best, success_fn, damage_fn, target, idx, x_now, output, loss, compare_loss=True)
            with torch.no_grad():
                if state is None:
                    state = _State(delta=delta, delta_prev=delta, grad=grad,
                                   step=torch.full((len(x_act),), INITIAL_STEP * eps, device=device),
                                   delta_best=delta, grad_best=grad, loss_best=loss, loss_last_check=loss,
                                   reduced_last_check=torch.ones(len(x_act), dtype=torch.bool, device=device),
                                   increases=torch.zeros(len(x_act), device=device), loss_prev=loss)
                else:
                    state.grad = grad
                    state.increases += (loss > state.loss_prev).float()
                    state.loss_prev = loss
                    improved = loss > state.loss_best
                    state.delta_best = torch.where(_column(improved, delta), delta, state.delta_best)
                    state.grad_best = torch.where(_column(improved, grad), grad, state.grad_best)
                    state.loss_best = torch.where(improved, loss, state.loss_best)
                    since_check += 1
                    if since_check == interval:
                        _checkpoint(state, interval)
                        since_check, interval = 0, max(interval - shrink, min_interval)
                if cascade:
                    keep = ~best.take("fooled", idx)
                    if not bool(keep.all()):
                        active = active[keep]
                        state.keep(keep)
                        idx, x_act, target_act = active, x[active], target[active]
                    if active.numel() == 0:
                        break
                delta = _momentum_step(state, x_act, eps, norm, first=i == 0)
    return AttackResult(
        x_adv=best.x, loss=best.loss, success=best.fooled if success_fn else None,
        output=best.output if best.output is not None and bool(best.has_output.all()) else None,
        grad_finite=bool(torch.isfinite(grad_sum)), grad_nonzero=1.0 if nonzero is None else float(nonzero),
        grad_zero=zero_grad, forward_passes=forwards, grad_steps=grad_steps,
        step_loss_sum=_sum_per_step(step_sums, device),
        step_count=torch.tensor(step_count, dtype=torch.long, device=device),
    )


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
