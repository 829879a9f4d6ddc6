"""One grid point: fit (or load) a head on a frozen encoder (``head_fit``), then measure clean and
attacked scores.

``head_fit.prepare_head(cfg, path)`` is phase 1 (one head per encoder x data set); ``run_cell(cfg)``
is phase 2 and runs in a plain Python process, with or without Ray.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ssl_robust import checks, suite
from ssl_robust.attacks import ATTACKS, suite_members
from ssl_robust.config import CellCfg
from ssl_robust.data.catalog import TaskInfo
from ssl_robust.data.load import load_split, size_batches, task_info
from ssl_robust.devices import resolve_device
from ssl_robust.encoders import ResolvedEncoder, create_encoder, resolve_encoder
from ssl_robust.head_fit import Timed, fit_cell_head, fit_splits, load_head
from ssl_robust.heads import TaskModel
from ssl_robust.engine import AttackSettings, run_attack
from ssl_robust.examples import Example, save_examples
from ssl_robust.cell_views import Views, views
from ssl_robust.memory import AdaptiveBatch
from ssl_robust.pgd import AttackResult
from ssl_robust.results import EXAMPLES, CellArtifacts, iou_arrays, loss_curve_frame, per_sample_frame
from ssl_robust.tasks import TASKS, Scores, TaskSpec, eval_mode, eval_sizing


def _test_loader(cfg: CellCfg, size: int) -> tuple[Timed, list[list[int]]]:
    """The test split, sized for the evaluation mode (short-side images batched by equal size),
    and the items' indices batch by batch: per-sample results name their item."""
    sizing = eval_sizing(cfg.data)
    dataset, _ = load_split(cfg.data, "test", size, seed=cfg.seed, sizing=sizing)
    n, size = len(dataset), cfg.batch_size
    batches = size_batches(dataset, size) if sizing == "short_side" else \
        [list(range(i, min(i + size, n))) for i in range(0, n, size)]
    return Timed(DataLoader(dataset, batch_sampler=batches, **cfg.loader.model_dump())), batches


@dataclass
class AttackSetup:
    """What the engine attacks: ``forward`` and ``objective`` against the target, the success
    (cascade) and damage (worst iterate) functions."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    objective: Callable[..., torch.Tensor]
    success: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    damage: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    on_embedding: bool

    def target(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Labels, or (EmbedAttack) the clean representation."""
        if not self.on_embedding:
            return labels
        with torch.no_grad():
            return self.forward(x)


def scores_final_iterate(cfg: CellCfg, task: TaskSpec) -> bool:
    """Classification scored on each sample's final iterate (of its best restart), as the poster's
    code does: ``attack.select: final`` without the cascade (``stop_when_fooled: false``), not a
    suite. Otherwise a sample counts as fooled if any iterate fooled it."""
    return (task.fooled is not None and cfg.attack.select == "final" and not cfg.attack.stop_when_fooled
            and not ATTACKS.get(cfg.attack.name).suite)


def attack_setup(cfg: CellCfg, view: Views, task: TaskSpec, info: TaskInfo) -> AttackSetup:
    """EmbedAttack pushes the representation; task attacks ascend the task objective on the
    scored output (a suite: its first member's). Without a success function (EmbedAttack, final-
    iterate classification) the engine keeps the final iterate and the cell rescores it."""
    name = suite_members(cfg.attack.name, task.name)[0]
    on_embedding = ATTACKS.get(name).on_embedding
    worst = cfg.attack.select == "worst" and not on_embedding and task.damage is not None
    success = None if on_embedding or scores_final_iterate(cfg, task) else task.fooled
    return AttackSetup(view.representation if on_embedding else view.scored, task.objective(name, info),
                       success, task.damage(info) if worst else None, on_embedding)


@torch.no_grad()
def unmoved(setup: AttackSetup, x: torch.Tensor, labels: torch.Tensor, clean_out: torch.Tensor,
            steps: int) -> AttackResult:
    """The result of an attack that cannot move the input: the clean input and output, the
    objective there, and no gradient steps."""
    target = setup.target(x, labels)
    reference = target if setup.on_embedding else clean_out
    last = max(steps, 1)
    return AttackResult(x_adv=x, loss=setup.objective(reference, target, last, last).float(),
                        success=setup.success(clean_out, labels) if setup.success else None, output=clean_out,
                        step_loss_sum=torch.zeros(steps, dtype=torch.float64),
                        step_count=torch.zeros(steps, dtype=torch.long))


def settings(cfg: CellCfg, eps: float, steps: int, seed: int) -> AttackSettings:
    """The engine's settings of the cell's attack at this budget and seed."""
    a = cfg.attack
    return AttackSettings(eps=eps, steps=steps, optimizer=a.resolved_optimizer, step_size=a.resolved_step_size,
                          norm=a.norm, random_start=a.random_start, restarts=a.restarts, seed=seed,
                          stop_when_fooled=a.stop_when_fooled)


def _attack(cfg: CellCfg, setup: AttackSetup, x: torch.Tensor, labels: torch.Tensor, eps: float, steps: int,
            seed: int, ids: list[int]) -> AttackResult:
    return run_attack(setup.forward, setup.objective, x, setup.target(x, labels), settings(cfg, eps, steps, seed),
                      setup.success, setup.damage, sample_ids=ids)


@torch.no_grad()
def eps0_gap(cfg: CellCfg, setup: AttackSetup, scored: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
             labels: torch.Tensor, clean_out: torch.Tensor, ids: list[int]) -> tuple[float, AttackResult]:
    """How far the attack path at eps = 0 is from the scored model: its returned input rescored,
    and its loss against the objective of the scored output (a forward that differs from the
    scored model, or is not deterministic, shows here); and the check's attack (for its cost)."""
    with torch.enable_grad():
        zero = _attack(cfg, setup, x, labels, eps=0.0, steps=1, seed=cfg.seed, ids=ids)
    expected = unmoved(setup, x, labels, clean_out, steps=1).loss
    gap = max(float((scored(zero.x_adv) - clean_out).abs().max()), float((zero.loss - expected).abs().max()))
    return gap, zero


@dataclass
class Tally:
    """What a cell accumulates over its test batches; a suite's members' scores under ``members``
    (classification: cumulative; dense: each member's own, the worst case chosen at the end)."""

    clean: Scores
    adv: Scores
    members: dict[str, Scores] = field(default_factory=dict)
    indices: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    bounds: list[dict[str, float]] = field(default_factory=list)
    eps0_gap: float = 0.0
    disagreements: int = 0
    grad_finite: bool = True
    grad_zero: int = 0  # attacked samples with an all-zero input gradient at their first step (in every member)
    attacked: int = 0  # samples that took a gradient step
    grad_steps: int = 0  # sample-gradient-steps spent, the eps = 0 check's included
    forward_passes: int = 0  # sample-forwards of the attacks (with and without gradient)
    step_loss: torch.Tensor | None = None  # summed loss per gradient step
    step_count: torch.Tensor | None = None
    example: Example | None = None  # the first batch's first images, for the example figure

    def add_cost(self, result: AttackResult) -> None:
        self.grad_finite &= result.grad_finite
        self.grad_steps += result.grad_steps
        self.forward_passes += result.forward_passes

    def add_attack(self, result: AttackResult, indices: list[int]) -> None:
        """The batch's scored result: its items, losses and loss curve (a suite's first member's)."""
        self.indices.extend(indices)
        self.losses.extend(result.loss.cpu().tolist())
        if result.step_loss_sum is not None:
            loss, count = result.step_loss_sum.cpu(), result.step_count.cpu()  # new sums: the result is left as it is
            self.step_loss = loss if self.step_loss is None else self.step_loss + loss
            self.step_count = count if self.step_count is None else self.step_count + count

    def add_zero_grad(self, results: list[AttackResult], n: int) -> None:
        """Samples whose gradient was all zero in every result that stepped on them."""
        masks = [r.grad_zero for r in results if r.grad_zero is not None]
        if masks:
            self.grad_zero += int(torch.stack([m.cpu() for m in masks]).all(dim=0).sum())
            self.attacked += n


@dataclass
class Outcome:
    """One batch's clean and attacked outputs and results, computed but not yet counted: a batch
    that runs out of memory is retried in halves, and only finished ones reach the tally."""

    x: torch.Tensor
    y: torch.Tensor
    ids: list[int]  # the items
    clean_out: torch.Tensor
    result: AttackResult  # the scored result (a cascade: the cumulative last member's)
    adv_out: torch.Tensor  # the scored result's attacked output
    counted: list[AttackResult]  # results whose bounds and costs count
    curve: AttackResult  # whose losses and loss curve are logged
    zero_grad: list[AttackResult] = field(default_factory=list)  # results the zero-gradient check reads
    members: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # a suite's attacked outputs
    count_adv: bool = True  # False for a dense suite, whose attacked score is chosen at the end
    eps0: tuple[float, AttackResult] | None = None  # the eps = 0 check (the first batch)
    disagreements: int = 0


def _rescored(view: Views, setup: AttackSetup, task: TaskSpec, outcome_disagreements: list[int],
              result: AttackResult, y: torch.Tensor, check: bool) -> torch.Tensor:
    """The attacked output: the engine's (task attacks), rescored when ``check`` (the first batch)
    to check that the attack's successes are the scored model's; EmbedAttack's is scored here."""
    adv_out = None if setup.on_embedding else result.output
    if adv_out is None or (check and result.success is not None):
        with torch.no_grad():
            rescored = view.scored(result.x_adv)
        if result.success is not None:
            outcome_disagreements.append(int((result.success != task.fooled(rescored, y)).sum()))
        adv_out = rescored if adv_out is None else adv_out
    return adv_out


def _suite_batch(cfg: CellCfg, view: Views, setup: AttackSetup, task: TaskSpec, info: TaskInfo,
                 x: torch.Tensor, y: torch.Tensor, clean_out: torch.Tensor, ids: list[int],
                 disagreements: list[int]) -> tuple[list[AttackResult], list[tuple[str, torch.Tensor]]]:
    """Every member of the cell's suite on the batch: the results, the scored one (cascade: the
    cumulative last) at the end, and each member's attacked output."""
    plan = suite.members(cfg.attack.name, task, info, settings(cfg, cfg.attack.eps, cfg.attack.gradient_steps,
                         cfg.seed), cfg.attack.targets, cfg.attack.optimizer)
    if task.fooled is not None:
        results = suite.cascade(setup.forward, x, y, clean_out, plan, task.fooled, ids)
    else:
        results = suite.dense(setup.forward, x, y, plan, setup.damage, ids)
    outputs = [(member.name, _rescored(view, setup, task, disagreements, result, y, check=False))
               for member, result in zip(plan, results)]  # the scored result is checked by the caller
    return results, outputs


def _attack_batch(cfg: CellCfg, model: TaskModel, task: TaskSpec, info: TaskInfo, x: torch.Tensor,
                  y: torch.Tensor, ids: list[int], first: bool) -> Outcome:
    """Score one batch clean and attacked (through the same view); ``ids`` (the items) seed each
    sample's random start.

    An attack that cannot move the input (eps = 0) is scored clean with no gradient step. The
    attacked output is the one the engine computed (task attacks), rescored on the ``first`` batch
    to check that the attack's successes are the scored model's. A suite runs each member; a dense
    suite's attacked score is chosen at the end (``suite.combine``)."""
    view = views(cfg, model, task, tuple(y.shape[-2:]))
    setup = attack_setup(cfg, view, task, info)
    with torch.no_grad():
        clean_out = view.scored(x)
    if not cfg.attack.moves_input:
        result = unmoved(setup, x, y, clean_out, cfg.attack.gradient_steps)
        return Outcome(x, y, ids, clean_out, result, clean_out, [result], result)
    eps0 = eps0_gap(cfg, setup, view.scored, x, y, clean_out, ids) if first else None
    disagreements: list[int] = []
    members: list[tuple[str, torch.Tensor]] = []
    if ATTACKS.get(cfg.attack.name).suite:
        results, members = _suite_batch(cfg, view, setup, task, info, x, y, clean_out, ids, disagreements)
        result = results[-1] if task.fooled is not None else results[0]
    else:
        results = [_attack(cfg, setup, x, y, eps=cfg.attack.eps, steps=cfg.attack.gradient_steps, seed=cfg.seed,
                           ids=ids)]
        result = results[0]
    adv_out = _rescored(view, setup, task, disagreements, result, y, check=first)
    classified = task.fooled is not None
    scored = results[-1:] if classified else results
    return Outcome(x, y, ids, clean_out, result, adv_out, scored, result if classified else results[0], scored, members,
                   count_adv=classified or not members, eps0=eps0, disagreements=sum(disagreements))


def _count(cfg: CellCfg, task: TaskSpec, info: TaskInfo, tally: Tally, outcome: Outcome) -> None:
    """Add a finished batch's outputs, results and checks to the tally."""
    y = outcome.y
    tally.clean.add(outcome.clean_out, y)
    if outcome.eps0 is not None:
        tally.eps0_gap = max(tally.eps0_gap, outcome.eps0[0])
        tally.add_cost(outcome.eps0[1])
    for name, output in outcome.members:
        tally.members.setdefault(name, task.scores(info)).add(output, y)
    tally.disagreements += outcome.disagreements
    if outcome.zero_grad:
        tally.add_zero_grad(outcome.zero_grad, len(outcome.x))
    if outcome.count_adv:
        tally.adv.add(outcome.adv_out, y)
    for item in outcome.counted:
        tally.bounds.append(checks.perturbation_checks(outcome.x, item.x_adv, cfg.attack.eps, cfg.attack.norm))
        tally.add_cost(item)
    tally.add_attack(outcome.curve, outcome.ids)
    if tally.example is None:
        tally.example = Example.first(outcome.x, outcome.result.x_adv, outcome.clean_out, outcome.adv_out, y)


def attack_loader_batch(cfg: CellCfg, model: TaskModel, task: TaskSpec, info: TaskInfo, tally: Tally,
                        batch: AdaptiveBatch, x: torch.Tensor, y: torch.Tensor, indices: list[int],
                        first: bool) -> None:
    """One loader batch, attacked in slices that fit in memory (``batch``), counted slice by slice
    in order: the same numbers as one pass over the whole batch."""
    batch.run(len(x), lambda rows: _attack_batch(cfg, model, task, info, x[rows], y[rows], indices[rows], first),
              lambda outcome: _count(cfg, task, info, tally, outcome))


def _suite_summary(cfg: CellCfg, task: TaskSpec, info: TaskInfo, tally: Tally) -> dict[str, float]:
    """A dense suite's worst case becomes the attacked score; every member's own scores are logged
    as ``suite/<member>/<metric>``."""
    if tally.members and task.fooled is None:
        tally.adv = suite.combine(task, info, list(tally.members.values()))
    return {f"suite/{name}/{k}": v for name, scores in tally.members.items() for k, v in scores.summary().items()}


def _summary(cfg: CellCfg, task: TaskSpec, info: TaskInfo, tally: Tally) -> dict[str, float]:
    """Scores, counts and checks of a finished cell."""
    member_metrics = _suite_summary(cfg, task, info, tally)
    clean_scores, adv_scores = tally.clean.summary(), tally.adv.summary()
    metrics = {f"clean/{k}": v for k, v in clean_scores.items()}
    metrics.update({f"adv/{k}": v for k, v in adv_scores.items()})
    metrics.update(member_metrics)
    metrics["adv/loss"] = sum(tally.losses) / max(len(tally.losses), 1)
    metrics["n_samples"] = float(len(tally.clean.per_sample))
    metrics["eval/slide"] = float(eval_mode(cfg.data) == "slide")
    if tally.clean.pixels:
        metrics["eval/pixels"] = float(tally.clean.pixels)
    metrics.update({k: min(b[k] for b in tally.bounds) for k in ("check/delta_in_ball", "check/x_adv_in_box")})
    metrics["attack/max_delta"] = max(b["attack/max_delta"] for b in tally.bounds)
    metrics["attack/grad_steps"] = float(tally.grad_steps)
    metrics["attack/forward_passes"] = float(tally.forward_passes)
    steps = cfg.attack.gradient_steps if cfg.attack.moves_input else 0
    metrics.update(checks.gradient_checks(tally.grad_finite, tally.grad_zero, tally.attacked, cfg.attack.eps, steps))
    metrics.update(checks.score_checks(clean_scores[task.metric], adv_scores[task.metric], task.higher_is_better,
                                       tally.eps0_gap, searched=ATTACKS.get(cfg.attack.name).aims_at_task))
    metrics.update(checks.rescore_checks(tally.disagreements))
    metrics["check/all_passed"] = checks.all_passed(metrics)
    return metrics


def run_cell(cfg: CellCfg, out_dir: Path | None = None, resolved: ResolvedEncoder | None = None) -> dict[str, float]:
    """Phase 2: clean and attacked scores on the cell's test images, with sanity checks; with
    ``out_dir``, per-sample results, per-image IoU (segmentation), the loss curve and examples.
    ``resolved``: the cell's encoder as the command resolved it (None: resolved here)."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    resolved = resolved or resolve_encoder(cfg.encoder)
    loader, batches = _test_loader(cfg, resolved.image_size)  # fails before any work
    splits = None if cfg.head.checkpoint else fit_splits(cfg, resolved.image_size)
    encoder = create_encoder(cfg.encoder, resolved).to(device)
    metrics: dict[str, float] = {}
    if splits is None:
        head = load_head(cfg, encoder, cfg.head.checkpoint)
    else:
        head, metrics = fit_cell_head(cfg, encoder, splits, device)
    model = TaskModel(encoder, head.to(device)).eval().requires_grad_(False)
    task, info = TASKS.get(cfg.data.resolved_task), task_info(cfg.data)
    tally = Tally(task.scores(info), task.scores(info))
    attack_start = time.perf_counter()
    batch = AdaptiveBatch(cfg.batch_size, device, lambda: f"one {'x'.join(map(str, shape))} image through "
                          f"{cfg.encoder.name} ({cfg.precision})")
    for i, (x, y) in enumerate(tqdm(loader, desc=f"{cfg.attack.name} eps={cfg.attack.eps:.4f}", leave=False)):
        x, y = x.to(device, non_blocking=cfg.loader.pin_memory), torch.as_tensor(y).to(device)
        shape = tuple(x.shape[-2:])
        attack_loader_batch(cfg, model, task, info, tally, batch, x, y, batches[i], first=i == 0)
        if out_dir is not None and i == 0:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            save_examples(tally.example, task.name, Path(out_dir) / EXAMPLES, info.ignore_index)
    metrics["time/attack_seconds"] = time.perf_counter() - attack_start
    metrics["attack/batch_size_used"] = float(batch.size or cfg.batch_size)
    metrics["time/data_seconds"] = loader.seconds + metrics.pop("time/head_data_seconds", 0.0)
    metrics.update(_summary(cfg, task, info, tally))
    if out_dir is not None:
        write_results(Path(out_dir), task, tally)
    metrics["time/cell_seconds"] = time.perf_counter() - start
    return metrics


def write_results(out_dir: Path, task: TaskSpec, tally: Tally) -> None:
    """The cell's result files (``results``): per-sample scores and losses, per-image IoU
    (segmentation) and the loss curve."""
    CellArtifacts(per_sample_frame(task.per_sample, tally.indices, tally.clean.per_sample, tally.adv.per_sample,
                                   tally.losses),
                  iou_arrays(tally.indices, tally.clean.per_image(), tally.adv.per_image()),
                  loss_curve_frame(tally.step_loss, tally.step_count)).write(out_dir)
