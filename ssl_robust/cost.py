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
import re
from dataclasses import dataclass
from pathlib import Path

from ssl_robust.aliases import ENCODERS
from ssl_robust.attacks import ATTACKS, engine_runs
from ssl_robust.config import CellCfg, DataCfg, EncoderCfg
from ssl_robust.data.catalog import DATASETS
from ssl_robust.data.load import slide_stride, task_info
from ssl_robust.encoders import input_size
from ssl_robust.engine import AttackSettings
from ssl_robust.sliding import n_windows
from ssl_robust.tasks import eval_mode

FWD_GRAD_PER_FWD = 25.71 / 12.25  # forward + input gradient over forward, ViT-S/14 (benchmarks/attack_throughput.py)
VIT_SIZES = {"tiny": (192, 12), "small": (384, 12), "base": (768, 12), "large": (1024, 24), "giant": (1536, 40)}
BENCHMARK_MODEL, BENCHMARK_METHOD = "vits14", "ssl_robust pgd (all steps)"


@dataclass(frozen=True)
class Cost:
    """Sample-gradient-steps (forward + backward to the input), sample-forwards (all, the gradient
    steps' included) and GFLOP (None for an encoder whose shape is unknown)."""

    grad_steps: int = 0
    forwards: int = 0
    gflop: float | None = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        gflop = None if self.gflop is None or other.gflop is None else self.gflop + other.gflop
        return Cost(self.grad_steps + other.grad_steps, self.forwards + other.forwards, gflop)


def vit_shape(encoder: EncoderCfg) -> tuple[int, int, int, int] | None:
    """(width, depth, patch, prefix tokens) of a timm ViT name (and its ``model_kwargs``), or None."""
    alias = ENCODERS.get(encoder.name) if encoder.name in ENCODERS else None
    name = alias.timm_name if alias else encoder.name
    kwargs = {**(alias.model_kwargs if alias else {}), **encoder.model_kwargs}
    match = re.match(r"vit_(tiny|small|base|large|giant)_patch(\d+)", name)
    if match is None:
        return None
    width, depth = VIT_SIZES[match.group(1)]
    registers = re.search(r"reg(\d+)", name)
    registers = int(registers.group(1)) if registers else 0
    return (kwargs.get("embed_dim", width), kwargs.get("depth", depth), kwargs.get("patch_size", int(match.group(2))),
            1 + kwargs.get("reg_tokens", registers))


def forward_gflop(encoder: EncoderCfg, size: int, frame: tuple[int, int] | None = None) -> float | None:
    """One S x S image (or an H x W ``frame``, padded to whole patches) through the encoder:
    24·T·D² (qkv, projection, 4x MLP) + 4·T²·D (attention) per block, plus the patch embedding."""
    shape = vit_shape(encoder)
    if shape is None:
        return None
    width, depth, patch, prefix = shape
    patches = (size // patch) ** 2 if frame is None else math.ceil(frame[0] / patch) * math.ceil(frame[1] / patch)
    tokens = patches + prefix
    per_block = 24 * tokens * width ** 2 + 4 * tokens ** 2 * width
    return (depth * per_block + 2 * patches * 3 * patch ** 2 * width) / 1e9


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


def _gflop(encoder: EncoderCfg, size: int, grad_steps: int, forwards: int, windows: int = 1,
           frame: tuple[int, int] | None = None) -> float | None:
    per_forward = forward_gflop(encoder, size, frame)
    if per_forward is None:
        return None
    return windows * per_forward * (grad_steps * FWD_GRAD_PER_FWD + (forwards - grad_steps))


def cell_cost(cell: CellCfg) -> Cost | None:
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
    size = input_size(cell.encoder)
    frame = DATASETS.get(cell.data.name).native_size if eval_mode(cell.data) == "whole" else None
    return Cost(grad_steps, forwards, _gflop(cell.encoder, size, grad_steps, forwards, windows_per_image(cell, size),
                                             frame))


def head_cost(cell: CellCfg) -> Cost | None:
    """Fitting the cell's head: one forward per val image and per train image, every epoch when the
    train images are augmented (``head.augment``), else once (None if their number is unknown)."""
    if cell.head.checkpoint:
        return Cost()
    train, val = (split_images(cell.data, split) for split in ("train", "val"))
    if train is None or val is None:
        return None
    forwards = train * (cell.head.epochs if cell.head.augment != "none" else 1) + val
    return Cost(0, forwards, _gflop(cell.encoder, input_size(cell.encoder), 0, forwards))


def grid_cost(cells: list[CellCfg]) -> tuple[Cost, Cost, int]:
    """Total cost of the cells' attacks and of fitting their distinct heads; and how many cells or
    heads have an unknown size (left out of the totals)."""
    heads: dict[str, CellCfg] = {}
    for cell in cells:
        heads.setdefault(cell.head_id, cell)
    totals, unknown = [], 0
    for costs in ([cell_cost(c) for c in cells], [head_cost(c) for c in heads.values()]):
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
    flop = "?" if cost.gflop is None else f"{cost.gflop / 1e3:,.1f}"
    return f"grad_steps={cost.grad_steps} forwards={cost.forwards} TFLOP={flop}"


def summary(cells: list[CellCfg], gflops: float | None) -> list[str]:
    """The dry run's totals: steps, forwards, FLOPs of the attacks and of the heads, and the hours
    at ``gflops`` (sustained GFLOP/s)."""
    attacks, heads, unknown = grid_cost(cells)
    total = attacks + heads

    def line(label: str, cost: Cost) -> str:
        flop = "" if cost.gflop is None else f", {cost.gflop / 1e6:,.1f} PFLOP"
        return f"{label}: {cost.grad_steps:,} sample-gradient-steps, {cost.forwards:,} sample-forwards{flop}"

    lines = [line("attacks", attacks), line("heads", heads),
             line("total", total) + " (upper bounds: the cascade stops attacking fooled samples)"]
    if unknown:
        lines.append(f"  {unknown} cells or heads have no known split size and are not counted")
    if total.gflop is None:
        lines.append("  some encoders are not timm ViTs: no FLOP count, no hours")
    elif gflops is not None:
        lines.append(f"  at {gflops:,.0f} GFLOP/s sustained: {total.gflop / gflops / 3600:,.2f} hours")
    else:
        lines.append("  pass --throughput GFLOP/s (or a benchmarks/attack_throughput.py --json file) for hours")
    return lines
