"""What a grid costs before it runs: sample-gradient-steps, sample-forwards and FLOPs per cell and
per head, and the hours at a sustained throughput.

FLOPs are counted analytically for a ViT (linear layers, attention, patch embedding), the count
``benchmarks/attack_throughput.py`` measures with torch's FLOP counter (12.25 GFLOP for one
ViT-S/14 forward at 224 px); a forward plus the gradient to the input costs 2.1 forwards there.
Counts are upper bounds where the cascade (``stop_when_fooled``) drops fooled samples early.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ssl_robust.attacks import ATTACKS, engine_runs
from ssl_robust.config import CellCfg, DataCfg
from ssl_robust.data.catalog import DATASETS
from ssl_robust.data.load import slide_stride, task_info
from ssl_robust.encoders import ResolvedEncoder, ResolvedEncoders
from ssl_robust.engine import AttackSettings
from ssl_robust.sliding import n_windows
from ssl_robust.tasks import eval_mode

FWD_GRAD_PER_FWD = 25.71 / 12.25  # forward + input gradient over forward, ViT-S/14 (benchmarks/attack_throughput.py)
BENCHMARK_MODEL, BENCHMARK_METHOD = "vits14", "ssl_robust pgd (all steps)"


@dataclass(frozen=True)
class Cost:
    """Sample-gradient-steps (forward + backward to the input), sample-forwards (all, the gradient
    steps' included) and GFLOP."""

    grad_steps: int = 0
    forwards: int = 0
    gflop: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.grad_steps + other.grad_steps, self.forwards + other.forwards, self.gflop + other.gflop)


def forward_gflop(encoder: ResolvedEncoder, frame: tuple[int, int] | None = None) -> float:
    """One image at the encoder's input size (or an H x W ``frame``, padded to whole patches) through
    it: (8 + 4·mlp)·T·D² (qkv, projection, MLP) + 4·T²·D (attention) per block, plus the patch embedding."""
    width, patch, size = encoder.width, encoder.patch_size, encoder.image_size
    patches = (size // patch) ** 2 if frame is None else math.ceil(frame[0] / patch) * math.ceil(frame[1] / patch)
    tokens = patches + encoder.prefix_tokens
    per_block = (8 + 4 * encoder.mlp_ratio) * tokens * width ** 2 + 4 * tokens ** 2 * width
    return (encoder.depth * per_block + 2 * patches * 3 * patch ** 2 * width) / 1e9


def split_images(data: DataCfg, split: str) -> int | None:
    """Images a cell reads from ``split`` (test, train, val), from the data set's known sizes."""
    sizes = DATASETS.get(data.name).sizes
    limit = {"train": data.n_train, "val": data.n_val, "test": data.n_samples}[split]
    if split == "test":
        known = sizes.get("test")
    elif "val" in sizes:
        known = sizes.get(split)
    elif "train" in sizes:
        val = round(sizes["train"] * data.val_fraction)
        known = val if split == "val" else sizes["train"] - val
    else:
        known = None
    if known is None:
        return limit
    return known if limit is None else min(limit, known)


def windows_per_image(cell: CellCfg, size: int) -> int:
    """Sliding windows per test image (1 under ``resize``): the short side is resized to the window."""
    if eval_mode(cell.data) != "slide":
        return 1
    long_side = round(size * DATASETS.get(cell.data.name).aspect)
    return n_windows(size, long_side, size, slide_stride(cell.data, size))


def _gflop(encoder: ResolvedEncoder, grad_steps: int, forwards: int, windows: int = 1,
           frame: tuple[int, int] | None = None) -> float:
    return windows * forward_gflop(encoder, frame) * (grad_steps * FWD_GRAD_PER_FWD + (forwards - grad_steps))


def cell_cost(cell: CellCfg, encoder: ResolvedEncoder) -> Cost | None:
    """The attack phase of a cell (None when the test split's size is unknown): the clean forward,
    the eps = 0 check and the attack (all steps of every restart of every engine run: a suite's
    members, APGD-T once per target class), rescoring, EmbedAttack's target."""
    n = split_images(cell.data, "test")
    if n is None:
        return None
    attack, on_embedding = cell.attack, ATTACKS.get(cell.attack.name).on_embedding
    steps, first = attack.gradient_steps, min(cell.batch_size, n)
    runs = engine_runs(attack.name, cell.data.resolved_task, task_info(cell.data).num_classes, attack.targets)
    forwards, grad_steps = n, 0  # clean
    if on_embedding:
        forwards += n  # the clean representation EmbedAttack pushes away from
    if attack.moves_input:
        settings = AttackSettings(eps=attack.eps, steps=steps, restarts=attack.restarts)
        run_grads, run_forwards = settings.cost(n)  # what the engine spends on every test image, per run
        check_grads, check_forwards = dataclasses.replace(settings, eps=0.0, steps=1).cost(first)  # the eps = 0 check
        grad_steps = run_grads * runs + check_grads
        forwards += run_forwards * runs + check_forwards + first  # + the check's rescoring
        forwards += n if on_embedding else first  # rescoring: every batch (EmbedAttack) or the first
    frame = DATASETS.get(cell.data.name).native_size if eval_mode(cell.data) == "whole" else None
    return Cost(grad_steps, forwards, _gflop(encoder, grad_steps, forwards,
                                             windows_per_image(cell, encoder.image_size), frame))


def head_cost(cell: CellCfg, encoder: ResolvedEncoder) -> Cost | None:
    """Fitting the cell's head: one forward per val image and per train image, every epoch when the
    train images are augmented (``head.augment``), else once (None if their number is unknown)."""
    if cell.head.checkpoint:
        return Cost()
    train, val = (split_images(cell.data, split) for split in ("train", "val"))
    if train is None or val is None:
        return None
    forwards = train * (cell.head.epochs if cell.head.augment != "none" else 1) + val
    return Cost(0, forwards, _gflop(encoder, 0, forwards))


def grid_cost(cells: list[CellCfg], encoders: ResolvedEncoders) -> tuple[Cost, Cost, int]:
    """Total cost of the cells' attacks and of fitting their distinct heads; and how many cells or
    heads have an unknown size (left out of the totals)."""
    heads: dict[str, CellCfg] = {}
    for cell in cells:
        heads.setdefault(cell.head_id, cell)
    totals, unknown = [], 0
    for costs in ([cell_cost(c, encoders.of(c.encoder)) for c in cells],
                  [head_cost(c, encoders.of(c.encoder)) for c in heads.values()]):
        total = Cost()
        for item in costs:
            if item is None:
                unknown += 1
            else:
                total = total + item
        totals.append(total)
    return totals[0], totals[1], unknown


def read_throughput(value: str) -> float:
    """Sustained GFLOP/s: a number, or the JSON ``benchmarks/attack_throughput.py --json`` wrote
    (the achieved GFLOP/s of its all-steps PGD on the ViT-S/14)."""
    try:
        gflops = float(value)
    except ValueError:
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"--throughput: {value!r} is neither a number (GFLOP/s) nor a benchmark JSON file")
        try:
            gflops = float(json.loads(path.read_text())["models"][BENCHMARK_MODEL]["methods"][BENCHMARK_METHOD]
                           ["achieved_gflops"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"--throughput: {value} has no models.{BENCHMARK_MODEL}.methods.{BENCHMARK_METHOD!r}"
                             ".achieved_gflops") from err
    if not gflops > 0:
        raise ValueError(f"--throughput must be positive GFLOP/s, got {value!r}")
    return gflops


def describe(cost: Cost | None) -> str:
    if cost is None:
        return "cost unknown (no test split size)"
    return f"grad_steps={cost.grad_steps} forwards={cost.forwards} TFLOP={cost.gflop / 1e3:,.1f}"


def summary(cells: list[CellCfg], gflops: float | None, encoders: ResolvedEncoders) -> list[str]:
    """The dry run's totals: steps, forwards, FLOPs of the attacks and of the heads, and the hours
    at ``gflops`` (sustained GFLOP/s)."""
    attacks, heads, unknown = grid_cost(cells, encoders)
    total = attacks + heads

    def line(label: str, cost: Cost) -> str:
        return (f"{label}: {cost.grad_steps:,} sample-gradient-steps, {cost.forwards:,} sample-forwards, "
                f"{cost.gflop / 1e6:,.1f} PFLOP")

    lines = [line("attacks", attacks), line("heads", heads),
             line("total", total) + " (upper bounds: the cascade stops attacking fooled samples)"]
    if unknown:
        lines.append(f"  {unknown} cells or heads have no known split size and are not counted")
    if gflops is not None:
        lines.append(f"  at {gflops:,.0f} GFLOP/s sustained: {total.gflop / gflops / 3600:,.2f} hours")
    else:
        lines.append("  pass --throughput GFLOP/s (or a benchmarks/attack_throughput.py --json file) for hours")
    return lines
