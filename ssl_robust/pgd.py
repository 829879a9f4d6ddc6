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
        noise = torch.empty(x.shape, device="cpu")
        for row, g in zip(noise, generators):
            row.uniform_(-eps, eps, generator=g)
        return project(noise.to(x), x, eps, norm)
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
    ledger = Ledger(x, target, steps, success_fn, damage_fn, cascade=stop_when_fooled and success_fn is not None)
    starts = RandomStarts(seed, range(len(x)) if sample_ids is None else sample_ids)
    for _ in range(restarts):
        now = ledger.restart(starts.draw(x, eps, norm) if random_start and eps > 0 else None)
        if now is None:
            break
        for step in range(1, steps + 1):
            x_now, output, loss, grad = ledger.input_gradient(forward, objective, now, step)
            if success_fn is not None or damage_fn is not None:
                ledger.record(now, x_now, output, loss, compare_loss=False)
            with torch.no_grad():
                now.delta = project(now.delta + step_size * _ascent_direction(grad, norm), now.x, eps, norm)
            del x_now, output, loss, grad  # the next step's peak holds only its own tensors
            if ledger.cascade:
                ledger.keep_still_robust(now)
                if now.empty:
                    break
        ledger.evaluate_last(forward, objective, now)
    return ledger.result()


@dataclass
class Attacked:
    """The samples a restart attacks now: their indices in the batch (``active``; ``idx`` is the
    gather index, None while it is the whole batch, so no gathers), inputs, targets and perturbation."""

    active: torch.Tensor
    idx: torch.Tensor | None
    x: torch.Tensor
    target: torch.Tensor
    delta: torch.Tensor

    @property
    def empty(self) -> bool:
        return self.active.numel() == 0


class Ledger:
    """What an attack keeps over its restarts and steps, shared by the optimisers: each sample's
    best (``_Best``), the gradient checks (finite, non-zero at the first step), the sample-forwards
    and gradient steps spent, and the summed loss per step."""

    def __init__(self, x: torch.Tensor, target: torch.Tensor, steps: int, success_fn: SuccessFn | None,
                 damage_fn: DamageFn | None, cascade: bool) -> None:
        self.x, self.target, self.steps = x.detach(), target, steps
        self.success_fn, self.damage_fn, self.cascade = success_fn, damage_fn, cascade
        self.best = _Best(self.x, damage_fn is not None)
        self.grad_sum = torch.zeros((), device=x.device)  # non-finite iff some gradient entry was (a NaN/inf sum)
        self.nonzero: torch.Tensor | None = None
        self.zero_grad: torch.Tensor | None = None
        self.forwards = self.grad_steps = 0
        self.step_sums: list[list[torch.Tensor]] = [[] for _ in range(steps)]
        self.step_count = [0] * steps

    def restart(self, start: torch.Tensor | None) -> Attacked | None:
        """One restart's samples from ``start`` (a perturbation of the whole batch; None = zero):
        the still-robust ones under the cascade, None when there are none."""
        n = self.x.shape[0]
        active = torch.arange(n, device=self.x.device)
        if self.cascade:
            active = active[~self.best.fooled]
        if active.numel() == 0:
            return None
        idx = None if active.numel() == n else active
        delta = torch.zeros_like(self.x) if start is None else start
        if idx is None:
            return Attacked(active, None, self.x, self.target, delta)
        return Attacked(active, idx, self.x[idx], self.target[idx], delta[idx])

    def input_gradient(self, forward: Forward, objective: ObjectiveFn, now: Attacked,
                       step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradient step ``step`` (1-based): the input, output, detached loss and the gradient of the
        summed loss with respect to the perturbation, counted and checked."""
        delta = now.delta.detach().requires_grad_(True)
        x_now = now.x + delta
        output = forward(x_now)
        loss = objective(output, now.target, step, self.steps)
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        loss = loss.detach()
        self.step_sums[step - 1].append(loss.sum())
        self.step_count[step - 1] += len(now.x)
        self.grad_sum += grad.sum()
        if self.nonzero is None:
            self.nonzero = (grad.flatten(1).abs().sum(dim=1) > 0).float().mean()
            self.zero_grad = _unmovable(grad, output, now.target, self.success_fn)
        self.forwards += len(now.x)
        self.grad_steps += len(now.x)
        return x_now, output, loss, grad

    def record(self, now: Attacked, x_now: torch.Tensor, output: torch.Tensor, loss: torch.Tensor,
               compare_loss: bool) -> None:
        record(self.best, self.success_fn, self.damage_fn, self.target, now.idx, x_now, output, loss, compare_loss)

    def keep_still_robust(self, now: Attacked) -> torch.Tensor | None:
        """Under the cascade, drop the samples fooled so far from ``now`` (the one host sync in the
        loop); the mask kept, or None when every sample stays."""
        keep = ~self.best.take("fooled", now.idx)
        if bool(keep.all()):
            return None
        now.active, now.delta = now.active[keep], now.delta[keep]
        now.idx, now.x, now.target = now.active, self.x[now.active], self.target[now.active]
        return keep

    def evaluate_last(self, forward: Forward, objective: ObjectiveFn, now: Attacked) -> None:
        """Score the restart's last iterate, which no gradient step has evaluated (in inference
        mode: no autograd bookkeeping at all, measurably faster than ``no_grad`` on small models)."""
        if now.empty:
            return
        with torch.inference_mode():
            x_now = now.x + now.delta
            output = forward(x_now)
            last = max(self.steps, 1)
            loss = objective(output, now.target, last, last)
        self.record(now, x_now, output, loss, compare_loss=True)
        self.forwards += len(now.x)

    def result(self) -> AttackResult:
        best, device = self.best, self.x.device
        return AttackResult(
            x_adv=best.x,
            loss=best.loss,
            success=best.fooled if self.success_fn else None,
            output=best.output if best.output is not None and bool(best.has_output.all()) else None,
            grad_finite=bool(torch.isfinite(self.grad_sum)),
            grad_nonzero=1.0 if self.nonzero is None else float(self.nonzero),
            grad_zero=self.zero_grad,
            forward_passes=self.forwards,
            grad_steps=self.grad_steps,
            step_loss_sum=_sum_per_step(self.step_sums, device),
            step_count=torch.tensor(self.step_count, dtype=torch.long, device=device),
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


def record(best: "_Best", success_fn: SuccessFn | None, damage_fn: DamageFn | None, target: torch.Tensor,
           idx: torch.Tensor | None, x_now: torch.Tensor, output: torch.Tensor, loss: torch.Tensor,
           compare_loss: bool) -> None:
    """Keep each sample's first fooling iterate; else its most damaging iterate (``damage_fn``); else
    its highest-loss iterate among those whose losses are compared (``compare_loss``: PGD compares
    only final iterates, since objectives such as SegPGD weigh their terms by step; APGD every
    iterate). ``idx``: the samples attacked (None = all). Masked writes, no host sync on an
    accelerator; on the CPU, where a host check is free, a step that betters no sample writes nothing
    (the image-sized masked write is most of a small model's per-step bookkeeping)."""
    output, loss = output.detach(), loss.detach().to(best.loss.dtype)
    fooled_before = best.take("fooled", idx)
    target_now = target if idx is None else target[idx]
    now_fooled = success_fn(output, target_now) if success_fn else torch.zeros_like(fooled_before)
    if damage_fn is not None:
        damage = damage_fn(output, target_now).to(best.damage.dtype)
        better = damage > best.take("damage", idx)
    else:
        better = ~fooled_before & (now_fooled | (loss > best.take("loss", idx)) if compare_loss else now_fooled)
    if better.device.type == "cpu" and not bool(better.any()):
        return
    if damage_fn is not None:
        best.put("damage", idx, better, damage)
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
