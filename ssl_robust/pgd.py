"""The one attack engine: projected gradient ascent on a per-sample objective, in [0,1] pixel space.

    delta <- Proj_eps(delta + step_size * sign(grad_delta L))      (L-inf)
    delta <- Proj_eps(delta + step_size * grad / ||grad||_2)       (L2)

with x + delta clamped to [0, 1]. Gradients are taken w.r.t. delta only. The engine is a pure
function: no module state, the random start is drawn from a seeded generator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch

from ssl_robust.seeds import derive_seed

Forward = Callable[[torch.Tensor], torch.Tensor]
ObjectiveFn = Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]
SuccessFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DamageFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class AttackResult:
    x_adv: torch.Tensor  # per sample: first fooling iterate, else final iterate of the best restart
    loss: torch.Tensor  # objective at x_adv, one per sample
    success: torch.Tensor | None  # per sample: any iterate fooled it (None without success_fn)
    output: torch.Tensor | None = None  # forward(x_adv) as computed in the attack (None unless every sample has one)
    grad_finite: bool = True  # every gradient seen was finite
    grad_nonzero: float = 1.0  # fraction of samples with a non-zero gradient at the first step
    grad_zero: torch.Tensor | None = None  # [n] bool: all-zero input gradient at the first step on a sample
    # not fooled there (None: no step)
    forward_passes: int = 0  # sample-forwards spent (for throughput accounting)
    grad_steps: int = 0  # sample-gradient-steps spent: forward + backward to the input, per sample
    step_loss_sum: torch.Tensor | None = None  # [steps] summed loss of the samples attacked at each step
    step_count: torch.Tensor | None = None  # [steps] how many samples were attacked at each step


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project delta onto the eps-ball and onto the box that keeps x + delta in [0, 1]."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta).clamp(0, 1) - x


def random_delta(x: torch.Tensor, eps: float, norm: str, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Uniform in the L-inf box, or uniform in the L2 ball; sample i drawn from ``generators[i]``."""
    shape = x.shape[1:]
    if norm == "linf":
        noise = torch.stack([torch.rand(shape, generator=g, device="cpu") for g in generators]).to(x) * 2 - 1
        return project(noise * eps, x, eps, norm)
    direction = torch.stack([torch.randn(shape, generator=g, device="cpu") for g in generators]).to(x)
    direction = direction / _per_sample_norm(direction).clamp_min(1e-12)
    radius = torch.cat([torch.rand(1, generator=g, device="cpu") for g in generators]).to(x) ** (1.0 / x[0].numel())
    return project(direction * radius.view(-1, *([1] * (x.dim() - 1))) * eps, x, eps, norm)


class RandomStarts:
    """Each sample's random starts from its own generator, seeded by (seed, the sample's id): a
    sample's start does not depend on the batch it is attacked in, so splitting a batch changes
    no result. Ids default to the positions in the batch."""

    def __init__(self, seed: int, ids: Sequence[int]) -> None:
        self.generators = [torch.Generator().manual_seed(derive_seed(seed, "start", int(i))) for i in ids]

    def draw(self, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
        """The next start of every sample of the batch ``x``."""
        return random_delta(x, eps, norm, self.generators)


def _ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / _per_sample_norm(grad).clamp_min(1e-12)


def pgd(
    forward: Forward,
    objective: ObjectiveFn,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    eps: float,
    step_size: float,
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
    """Maximise ``objective(forward(x + delta), target)`` per sample within the eps-ball.

    Random starts are drawn per sample from (``seed``, its entry of ``sample_ids``, default its
    position): a sample's result does not depend on the other samples of its batch.

    With ``success_fn`` (e.g. misclassification), a sample counts as fooled if any iterate fooled
    it, and its fooling iterate is returned; with ``stop_when_fooled`` fooled samples leave the batch
    (attack only the still-robust ones), which changes no outcome but saves their compute.

    With ``damage_fn`` (a per-sample measure of how much an output hurts the task, comparable
    across steps, e.g. minus the pixel accuracy), each sample's most damaging iterate over all steps
    and restarts is returned, not the final one: the outputs are computed anyway.
    """
    check_settings(eps, steps, restarts, norm)
    x = x.detach()
    device = x.device
    cascade = stop_when_fooled and success_fn is not None
    starts = RandomStarts(seed, range(len(x)) if sample_ids is None else sample_ids)
    best = _Best(x, damage_fn is not None)
    grad_sum = torch.zeros((), device=device)  # non-finite iff some gradient entry was (a NaN/inf sum)
    nonzero: torch.Tensor | None = None
    zero_grad: torch.Tensor | None = None
    forwards = grad_steps = 0
    step_sums: list[list[torch.Tensor]] = [[] for _ in range(steps)]
    step_count = [0] * steps

    for _ in range(restarts):
        start = restart(best, x, target, cascade, eps, norm, random_start, starts)
        if start is None:
            break
        active, idx, x_act, target_act, delta = start
        for step in range(1, steps + 1):
            delta.requires_grad_(True)
            x_now = x_act + delta
            output = forward(x_now)
            loss = objective(output, target_act, step, steps)
            (grad,) = torch.autograd.grad(loss.sum(), delta)
            step_sums[step - 1].append(loss.detach().sum())
            step_count[step - 1] += len(x_act)
            grad_sum += grad.sum()
            if nonzero is None:
                nonzero = (grad.flatten(1).abs().sum(dim=1) > 0).float().mean()
                zero_grad = _unmovable(grad, output, target_act, success_fn)
            forwards += len(x_act)
            grad_steps += len(x_act)
            if success_fn is not None or damage_fn is not None:
                record(best, success_fn, damage_fn, target, idx, x_now, output, loss, compare_loss=False)
            with torch.no_grad():
                delta = project(delta.detach() + step_size * _ascent_direction(grad, norm), x_act, eps, norm)
            if cascade:  # the one host sync in the loop: compacting the batch to the still-robust samples
                keep = ~best.take("fooled", idx)
                if not bool(keep.all()):
                    active, delta = active[keep], delta[keep]
                    idx, x_act, target_act = active, x[active], target[active]
                if active.numel() == 0:
                    break
        if active.numel() > 0:  # the final iterate has not been evaluated yet
            with torch.no_grad():
                x_now = x_act + delta
                output = forward(x_now)
                last = max(steps, 1)
                record(best, success_fn, damage_fn, target, idx, x_now, output,
                       objective(output, target_act, last, last), compare_loss=True)
            forwards += len(x_act)
    return AttackResult(
        x_adv=best.x,
        loss=best.loss,
        success=best.fooled if success_fn else None,
        output=best.output if best.output is not None and bool(best.has_output.all()) else None,
        grad_finite=bool(torch.isfinite(grad_sum)),
        grad_nonzero=1.0 if nonzero is None else float(nonzero),
        grad_zero=zero_grad,
        forward_passes=forwards,
        grad_steps=grad_steps,
        step_loss_sum=_sum_per_step(step_sums, device),
        step_count=torch.tensor(step_count, dtype=torch.long, device=device),
    )


def _unmovable(grad: torch.Tensor, output: torch.Tensor, target: torch.Tensor,
               success_fn: SuccessFn | None) -> torch.Tensor:
    """Per sample: an all-zero input gradient on a sample not fooled already (one that the start
    fooled needs no gradient; one that is still robust cannot be moved: masking)."""
    zero = grad.flatten(1).abs().sum(dim=1) == 0
    return zero if success_fn is None else zero & ~success_fn(output.detach(), target)


def check_settings(eps: float, steps: int, restarts: int, norm: str) -> None:
    """ValueError for settings no attack can run with."""
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if eps < 0 or steps < 0 or restarts < 1:
        raise ValueError(f"need eps >= 0, steps >= 0, restarts >= 1; got {eps}, {steps}, {restarts}")


Start = tuple[torch.Tensor, "torch.Tensor | None", torch.Tensor, torch.Tensor, torch.Tensor]


def restart(best: "_Best", x: torch.Tensor, target: torch.Tensor, cascade: bool, eps: float, norm: str,
            random_start: bool, starts: RandomStarts) -> Start | None:
    """One restart's samples (the still-robust ones under the cascade; None when there are none):
    their indices, the gather index (None = the whole batch, no gathers), inputs, targets and start."""
    n = x.shape[0]
    active = torch.arange(n, device=x.device)
    if cascade:
        active = active[~best.fooled]
    if active.numel() == 0:
        return None
    idx = None if active.numel() == n else active
    x_act, target_act = (x, target) if idx is None else (x[idx], target[idx])
    delta = starts.draw(x, eps, norm) if random_start and eps > 0 else torch.zeros_like(x)
    return active, idx, x_act, target_act, delta if idx is None else delta[idx]


def record(best: "_Best", success_fn: SuccessFn | None, damage_fn: DamageFn | None, target: torch.Tensor,
           idx: torch.Tensor | None, x_now: torch.Tensor, output: torch.Tensor, loss: torch.Tensor,
           compare_loss: bool) -> None:
    """Keep each sample's first fooling iterate; else its most damaging iterate (``damage_fn``); else
    its highest-loss iterate among those whose losses are compared (``compare_loss``: PGD compares
    only final iterates, since objectives such as SegPGD weigh their terms by step; APGD every
    iterate). ``idx``: the samples attacked (None = all). Masked writes, no host sync."""
    output, loss = output.detach(), loss.detach().to(best.loss.dtype)
    fooled_before = best.take("fooled", idx)
    target_now = target if idx is None else target[idx]
    now_fooled = success_fn(output, target_now) if success_fn else torch.zeros_like(fooled_before)
    if damage_fn is not None:
        damage = damage_fn(output, target_now).to(best.damage.dtype)
        better = damage > best.take("damage", idx)
        best.put("damage", idx, better, damage)
    else:
        better = ~fooled_before & (now_fooled | (compare_loss & (loss > best.take("loss", idx))))
    best.put("x", idx, better, x_now.detach())
    best.put("loss", idx, better, loss)
    best.put("fooled", idx, better, now_fooled)
    best.put_output(idx, better, output)


def _sum_per_step(step_sums: list[list[torch.Tensor]], device: torch.device) -> torch.Tensor:
    """[steps] float64 totals of the per-restart loss sums (zero for a step no sample reached)."""
    zero = torch.zeros((), dtype=torch.float64, device=device)
    if not step_sums:
        return torch.zeros(0, dtype=torch.float64, device=device)
    return torch.stack([torch.stack(sums).double().sum() if sums else zero for sums in step_sums])


class _Best:
    """Per-sample bests the engine keeps (iterate, loss, fooled, damage, output), updated by masked
    writes, in place for the whole batch or at sample indices: no boolean indexing, so no host
    synchronisation."""

    def __init__(self, x: torch.Tensor, track_damage: bool) -> None:
        n, device = x.shape[0], x.device
        self.x = x.clone()
        self.loss = torch.full((n,), -float("inf"), device=device)
        self.damage = torch.full((n,), -float("inf"), device=device) if track_damage else None
        self.fooled = torch.zeros(n, dtype=torch.bool, device=device)
        self.has_output = torch.zeros(n, dtype=torch.bool, device=device)
        self.output: torch.Tensor | None = None

    def take(self, name: str, idx: torch.Tensor | None) -> torch.Tensor:
        buffer = getattr(self, name)
        return buffer if idx is None else buffer[idx]

    def put(self, name: str, idx: torch.Tensor | None, better: torch.Tensor, new: torch.Tensor) -> None:
        buffer = getattr(self, name)
        mask = better.view(-1, *([1] * (new.dim() - 1)))
        if idx is None:
            torch.where(mask, new.to(buffer.dtype), buffer, out=buffer)
        else:
            buffer.index_copy_(0, idx, torch.where(mask, new.to(buffer.dtype), buffer[idx]))

    def put_output(self, idx: torch.Tensor | None, better: torch.Tensor, output: torch.Tensor) -> None:
        if self.output is None:
            self.output = torch.zeros((self.x.shape[0], *output.shape[1:]), dtype=output.dtype, device=output.device)
        self.put("output", idx, better, output)
        self.put("has_output", idx, better, better)
