"""Peak memory of one attack step, measured, beside ``ssl_robust.memory_plan``'s estimate.

Each case is a cell config (random-init encoder: nothing is downloaded) whose step runs the cell's
own code path: ``cell_views.views`` and ``cell.attack_setup`` on a ``TaskModel``, then ``run_attack`` with
three gradient steps (from the third on, the engine holds all it holds at any later step), every
image attacked at every step, on random images and labels of the sizes the estimate assumes (the
clean output and EmbedAttack's target computed beforehand, as the cell holds them). The measured
peak is all memory live at the attack's highest point:

- on CUDA, ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``;
- on a CPU, the bytes of the tensors alive before the step (weights, buffers, images, labels,
  clean output, target) plus the peak above them that torch's profiler records: its allocation and
  free events (``profile_memory=True``), summed in time order.

A warm-up attack runs first (lazy initialisation of kernels and workspaces is not a cell's peak).

    .venv/bin/python benchmarks/memory_plan.py                  # every case, ~6 min on 2 cores
    .venv/bin/python benchmarks/memory_plan.py --quick          # the tiny ViT and a ViT-S/14, ~20 s
    .venv/bin/python benchmarks/memory_plan.py --device cuda --json memory.json
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from ssl_robust import memory_plan
from ssl_robust.cell import attack_setup, settings
from ssl_robust.cell_views import views
from ssl_robust.config import CellCfg
from ssl_robust.data.load import task_info
from ssl_robust.encoders import create_encoder, resolve_encoder
from ssl_robust.engine import run_attack
from ssl_robust.heads import TaskModel
from ssl_robust.tasks import TASKS

TINY = {"name": "tiny_dinov2", "image_size": 112}
VITS = {"name": "dinov2_vits14", "pretrained": False, "image_size": 224, "model_kwargs": {"init_values": 1.0}}
VITB = {"name": "dinov2_vitb14", "pretrained": False, "image_size": 224, "model_kwargs": {"init_values": 1.0}}
WHOLE = {"dynamic_img_size": True, "init_values": 1.0}
ADE = {"name": "ade20k", "n_samples": None, "slide_average": "probs"}
STEPS = 3  # gradient steps measured: from the third on, the engine's state is that of any later step
# every image attacked at every step (no cascade): the steady state a cell's batch can reach
DEFAULTS = {"device": "cpu", "attack": {"eps": "8/255", "steps": 20, "step_size": "2/255", "stop_when_fooled": False}}


@dataclass(frozen=True)
class Case:
    """One measured cell: a label, the cell's fields over ``DEFAULTS``, the batch, and whether
    timm's attention runs fused (SDPA)."""

    label: str
    fields: dict[str, Any]
    batch: int
    fused_attn: bool = True
    quick: bool = False

    def cell(self) -> CellCfg:
        data = {**DEFAULTS, **self.fields, "attack": {**DEFAULTS["attack"], **self.fields.get("attack", {})}}
        return CellCfg.model_validate(data)


CASES = (
    Case("tiny cls pgd", {"encoder": TINY, "data": {"name": "synthetic", "task": "classification"},
                          "attack": {"name": "pgd"}}, 8, quick=True),
    Case("tiny cls pgd bf16", {"encoder": TINY, "data": {"name": "synthetic", "task": "classification"},
                               "attack": {"name": "pgd"}, "precision": "bf16"}, 8, quick=True),
    Case("tiny seg segpgd slide probs", {"encoder": TINY, "data": {"name": "synthetic", "task": "segmentation",
                                                                  "slide_average": "probs"},
                                         "attack": {"name": "segpgd"}}, 4, quick=True),
    Case("tiny depth depthpgd slide", {"encoder": TINY, "data": {"name": "synthetic", "task": "depth"},
                                       "head": {"depth_head": "dinov2"}, "attack": {"name": "depthpgd"}}, 4, quick=True),
    Case("tiny seg embed slide", {"encoder": TINY, "data": {"name": "synthetic", "task": "segmentation"},
                                  "attack": {"name": "embed"}}, 4, quick=True),
    Case("vits14@224 cls pgd", {"encoder": VITS, "data": {"name": "cifar10"}, "attack": {"name": "pgd"}}, 2,
         quick=True),
    Case("vits14@224 cls pgd", {"encoder": VITS, "data": {"name": "cifar10"}, "attack": {"name": "pgd"}}, 8),
    Case("vits14@224 cls pgd unfused", {"encoder": VITS, "data": {"name": "cifar10"}, "attack": {"name": "pgd"}}, 4,
         fused_attn=False),
    Case("vits14@224 cls pgd bf16", {"encoder": VITS, "data": {"name": "cifar10"}, "attack": {"name": "pgd"},
                                     "precision": "bf16"}, 2),
    Case("vits14@224 cls apgd_ce", {"encoder": VITS, "data": {"name": "cifar10"}, "attack": {"name": "apgd_ce"}}, 4),
    Case("vitb14@224 cls pgd", {"encoder": VITB, "data": {"name": "cifar10"}, "attack": {"name": "pgd"}}, 4),
    Case("vits14@224 ade20k segpgd slide probs", {"encoder": VITS, "data": ADE, "attack": {"name": "segpgd"}}, 2),
    Case("vits14@224 ade20k embed slide", {"encoder": VITS, "data": ADE, "attack": {"name": "embed"}}, 2),
    Case("vits14@224 cityscapes apgd_masked_ce slide",
         {"encoder": VITS, "data": {"name": "cityscapes", "n_samples": None}, "attack": {"name": "apgd_masked_ce"}}, 1),
    Case("vits14@518 cls pgd", {"encoder": {**VITS, "image_size": 518}, "data": {"name": "cifar10"},
                                "attack": {"name": "pgd"}}, 1),
    Case("vitb14@518 nyuv2 depthpgd whole",
         {"encoder": {**VITB, "image_size": 518, "model_kwargs": WHOLE},
          "data": {"name": "nyuv2", "n_samples": None, "eval": "whole"}, "head": {"depth_head": "dinov2"},
          "attack": {"name": "depthpgd"}}, 1),
)


def _labels(cell: CellCfg, batch: int, shape: tuple[int, int] | None, device: torch.device) -> torch.Tensor:
    """Random labels of the cell's task: classes, a label map, or a depth map."""
    task, info = cell.data.resolved_task, task_info(cell.data)
    if task == "classification":
        return torch.randint(info.num_classes, (batch,), device=device)
    if task == "segmentation":
        return torch.randint(info.num_classes, (batch, *shape), device=device)
    return torch.rand(batch, *shape, device=device) * (info.max_depth - 1) + 1


def _live_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def profiled_peak(fn: Callable[[], Any]) -> int:
    """The highest point above the start of the CPU allocations ``fn`` makes: torch's profiler's
    allocation (+) and free (-) events, summed in time order."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    total = peak = 0
    for event in events:
        if event.device_type() == torch.autograd.DeviceType.CPU:
            total += event.nbytes()
            peak = max(peak, total)
    return peak


def step_peak(cell: CellCfg, batch: int, device: torch.device, fused_attn: bool = True) -> int:
    """Measured peak bytes of an attack of ``STEPS`` steps of ``cell`` on ``batch`` random images."""
    torch.manual_seed(0)
    task, info = TASKS.get(cell.data.resolved_task), task_info(cell.data)
    encoder = create_encoder(cell.encoder)
    for module in encoder.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused_attn
    model = TaskModel(encoder, task.build_head(info, encoder.embed_dim, cell.head)).eval().requires_grad_(False)
    model = model.to(device)
    geo = memory_plan.geometry(cell, memory_plan.vit(resolve_encoder(cell.encoder)))
    x = torch.rand(batch, 3, *geo.image, device=device)
    y = _labels(cell, batch, geo.labels, device)
    view = views(cell, model, task, geo.labels or tuple(x.shape[-2:]))
    setup = attack_setup(cell, view, task, info)
    with torch.no_grad():
        clean_out = view.scored(x)
    target = setup.target(x, y)

    def step() -> None:
        run_attack(setup.forward, setup.objective, x, target, settings(cell, cell.attack.eps, STEPS, cell.seed),
                   setup.success, setup.damage)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    held = [*model.parameters(), *model.buffers(), x, y, clean_out, target]
    return _live_bytes(held) + profiled_peak(step)


def run_case(case: Case, device: torch.device) -> dict[str, Any]:
    """One table row: the estimate and the measured peak at the case's batch."""
    cell = case.cell().model_copy(update={"device": device.type})
    estimate = memory_plan.estimate(cell, resolve_encoder(cell.encoder), fused_attn=case.fused_attn)
    measured = step_peak(cell, case.batch, device, case.fused_attn)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    predicted = estimate.at(case.batch)
    return {"case": case.label, "encoder": cell.encoder.name, "image_size": cell.encoder.image_size,
            "batch": case.batch, "estimate_bytes": predicted, "measured_bytes": measured,
            "ratio": measured / predicted, "fixed_bytes": estimate.fixed, "per_sample_bytes": estimate.per_sample,
            "parts": estimate.parts}


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The printed table: case, batch, estimate, measured, measured / estimate."""
    width = max(len(row["case"]) for row in rows)
    lines = [f"{'case':<{width}} batch  estimate MiB  measured MiB  ratio", "-" * (width + 41)]
    for row in rows:
        lines.append(f"{row['case']:<{width}} {row['batch']:>5}  {row['estimate_bytes'] / 2**20:>12.1f}  "
                     f"{row['measured_bytes'] / 2**20:>12.1f}  {row['ratio']:.3f}")
    ratios = [row["ratio"] for row in rows]
    lines.append(f"measured / estimate: {min(ratios):.3f} .. {max(ratios):.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--quick", action="store_true", help="the tiny ViT and a ViT-S/14 at batch 2")
    parser.add_argument("--only", default="", metavar="TEXT", help="the cases whose label contains TEXT")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cases = [case for case in CASES if (case.quick or not args.quick) and args.only in case.label]
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}", flush=True)
    rows = []
    for case in cases:
        rows.append(run_case(case, device))
        print(f"  {case.label} @ {case.batch}: ratio {rows[-1]['ratio']:.3f}", file=sys.stderr, flush=True)
    print("\n".join(table(rows)))
    if args.json is not None:
        args.json.write_text(json.dumps({"torch": torch.__version__, "device": str(device), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
