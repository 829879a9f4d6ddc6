"""The memory plan of a sweep's dry run: each cell's estimated peak, the largest batch that fits, the
``--gpu-memory`` flag, and the estimate against a measured peak."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from ssl_robust import memory_plan
from ssl_robust.cli import main
from ssl_robust.command_line import build_parser
from ssl_robust.config import CellCfg
from ssl_robust.cost import windows_per_image
from ssl_robust.encoders import resolve_encoder
from ssl_robust.plan_lines import memory_settings
from ssl_robust.sweep_config import expand, parse_sweep
from tests.helpers import REPO_ROOT, tiny_sweep, write_sweep

MARGIN = (0.89, 1.10)  # measured / estimate, as stated in ssl_robust/memory_plan.py and docs/benchmarks.md
ADE20K = {"encoder": {"name": "dinov2_vits14", "image_size": 224}, "data": {"name": "ade20k", "n_samples": None},
          "attack": {"name": "segpgd"}}


def _cell(**fields: Any) -> CellCfg:
    return CellCfg.model_validate({"encoder": {"name": "dinov2_vits14", "image_size": 224},
                                   "data": {"name": "cifar10"}, "attack": {"name": "pgd"}, **fields})


def estimate(cell: CellCfg, fused_attn: bool = True) -> memory_plan.MemoryEstimate:
    return memory_plan.estimate(cell, resolve_encoder(cell.encoder), fused_attn)


def _benchmark() -> ModuleType:
    """benchmarks/memory_plan.py, whose measurement the calibration test shares."""
    spec = importlib.util.spec_from_file_location("memory_benchmark", REPO_ROOT / "benchmarks" / "memory_plan.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_estimate_grows_affinely_with_the_batch() -> None:
    found = estimate(_cell())
    peaks = [found.at(batch) for batch in (1, 2, 3, 16)]
    assert peaks[1] - peaks[0] == peaks[2] - peaks[1] == found.per_sample > 0
    assert peaks[3] == found.fixed + 16 * found.per_sample
    assert found.per_sample == sum(found.parts.values())


def test_the_fitted_batch_is_the_largest_that_fits() -> None:
    found = estimate(_cell())
    memory = found.at(5) + found.per_sample // 2
    batch = found.max_batch(memory)
    assert batch == 5 and found.at(batch) <= memory < found.at(batch + 1)
    assert found.max_batch(found.at(5)) == 5 and found.max_batch(found.at(5) - 1) == 4
    assert found.max_batch(found.at(1) - 1) == 0


def test_sliding_windows_multiply_the_activations() -> None:
    slide = CellCfg.model_validate(ADE20K)
    resize = CellCfg.model_validate({**ADE20K, "data": {**ADE20K["data"], "eval": "resize"}})
    windows = windows_per_image(slide, 224)
    assert windows == 2
    assert estimate(slide).parts["activations"] == windows * estimate(resize).parts[
        "activations"]


def test_unfused_attention_keeps_the_attention_matrices() -> None:
    cell = _cell()
    fused, unfused = estimate(cell), estimate(cell, fused_attn=False)
    width, depth, heads, tokens = 384, 12, 6, 257
    added = depth * (heads * tokens * tokens - tokens * width - heads * tokens) * 4
    assert unfused.parts["activations"] - fused.parts["activations"] == added


def test_the_heads_cached_features_take_no_device_memory() -> None:
    few = _cell(data={"name": "cifar10", "n_train": 100}, head={"features": "memory"})
    many = _cell(data={"name": "cifar10", "n_train": 40_000}, head={"features": "memory"})
    assert estimate(few) == estimate(many)


def test_bf16_keeps_float32_weights_and_stores_half_activations() -> None:
    fp32, bf16 = estimate(_cell()), estimate(_cell(precision="bf16"))
    assert bf16.fixed > fp32.fixed  # the float32 weights and autocast's half copies
    assert bf16.parts["activations"] < 0.7 * fp32.parts["activations"]


@pytest.mark.parametrize(("value", "size"), [("24GiB", 24 * 2 ** 30), ("24GB", 24 * 10 ** 9), ("80GiB", 80 * 2 ** 30),
                                             ("25769803776", 25769803776), ("512 mib", 512 * 2 ** 20)])
def test_gpu_memory_accepts_binary_and_decimal_sizes_and_bytes(value: str, size: int) -> None:
    args = build_parser().parse_args(["sweep", "sweeps/poster.yaml", "--dry-run", "--gpu-memory", value])
    assert args.gpu_memory == size


@pytest.mark.parametrize("value", ["24XB", "lots", "1.5", "0"])
def test_a_bad_gpu_memory_is_rejected_naming_the_flag(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "sweeps/poster.yaml", "--dry-run", "--gpu-memory", value]) == 2
    err = capsys.readouterr().err
    assert "argument --gpu-memory" in err and repr(value) in err


def test_gpu_memory_without_a_dry_run_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(tmp_path / "t.yaml", tiny_sweep("t"))
    assert main(["sweep", str(path), "--gpu-memory", "24GiB"]) == 2
    assert "--gpu-memory plans a dry run" in capsys.readouterr().err


def test_a_dry_run_prints_each_cells_peak_and_largest_batch(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(tmp_path / "t.yaml", tiny_sweep("t", resources={"cpu": 1, "gpu": 0.5}))
    assert main(["sweep", str(path), "--dry-run", "--gpu-memory", "24GiB"]) == 0
    out = capsys.readouterr().out
    cells = [line for line in out.splitlines() if "grad_steps=" in line]
    assert len(cells) == 8 and all(" peak=" in line and " max_batch=" in line for line in cells)
    assert "= 11.5GiB per trial" in out and "8 of 8 cells fit at their batch_size" in out


def test_without_gpu_memory_the_dry_run_prints_no_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sweep(tmp_path / "t.yaml", tiny_sweep("t"))
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "peak=" not in out and "memory:" not in out


def test_a_batch_that_does_not_fit_names_the_batch_that_would() -> None:
    cell = _cell(batch_size=16)
    found = estimate(cell)
    line = memory_settings(cell, resolve_encoder(cell.encoder), found.at(9))
    assert line.startswith(f"peak={memory_plan.describe_bytes(found.at(16))} max_batch=9 ")
    assert "batch_size=16 does not fit" in line and "batch_size=9 would" in line


def test_a_dry_run_fails_when_not_even_one_image_fits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tiny_sweep("t", encoders=[{"name": "dinov2_vits14", "image_size": 224}], attacks=["pgd"], eps=["8/255"])
    path = write_sweep(tmp_path / "t.yaml", sweep)
    assert main(["sweep", str(path), "--dry-run", "--gpu-memory", "600MiB"]) == 2
    captured = capsys.readouterr()
    cell, = expand(parse_sweep(sweep))
    one = memory_plan.describe_bytes(estimate(cell).at(1))
    assert f"cell {cell.cell_id} " in captured.err and f"needs {one} for one image" in captured.err
    assert "more than the 88MiB of one trial" in captured.err
    assert "max_batch=0 (one image needs" in captured.out


def test_the_poster_dry_run_prints_its_memory_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", str(REPO_ROOT / "sweeps" / "poster.yaml"), "--dry-run", "--gpu-memory", "24GiB"]) == 0
    out = capsys.readouterr().out
    cells = [line for line in out.splitlines() if "grad_steps=" in line]
    assert cells and all(" peak=" in line for line in cells)
    assert any("does not fit 11.5GiB" in line for line in cells)  # ADE20K at batch 16
    assert "memory: 24.0GiB per GPU x 0.5 (resources.gpu)" in out


@pytest.mark.parametrize("label", ["tiny cls pgd", "tiny seg segpgd slide probs"])
def test_the_estimate_holds_the_measured_peak_of_a_tiny_vit_step(label: str) -> None:
    benchmark = _benchmark()
    case = next(case for case in benchmark.CASES if case.label == label)
    row = benchmark.run_case(case, torch.device("cpu"))
    assert MARGIN[0] <= row["ratio"] <= MARGIN[1], row
