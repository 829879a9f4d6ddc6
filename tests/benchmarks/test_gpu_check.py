"""benchmarks/gpu_check.sh runs end to end on the CPU (``--device cpu --quick``), so that the check
prepared for a GPU machine cannot rot between the sessions that have one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import require_torchattacks

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHON": sys.executable})


@pytest.mark.slow
def test_the_gpu_check_writes_its_json_and_tables_on_the_cpu(tmp_path: Path) -> None:
    require_torchattacks()
    done = _run("--device", "cpu", "--quick", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    cells = json.loads((tmp_path / "cells.json").read_text())["cells"]
    assert {(c["task"], c["attack"]) for c in cells} == {(t, a) for t, own in (
        ("classification", "pgd"), ("segmentation", "segpgd"), ("depth", "depthpgd")) for a in (own, "standard")}
    assert all(c["checks_passed"] for c in cells)
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| vits14 | 56 | torchattacks.PGD |" in table and "| tiny | 56 | ssl_robust pgd (all steps, bf16) |" in table
    assert "| tiny | 56 | all steps | compiled |" in table  # compiled_cell.py --quick: the tiny ViT alone
    assert "| tiny cls pgd | 8 |" in table  # memory_plan.py --quick: measured against the estimate
    assert json.loads((tmp_path / "env.json").read_text())["device"] == "cpu"


def test_the_gpu_check_refuses_a_device_torch_does_not_have(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    done = _run("--device", "cuda", "--out", str(tmp_path))
    assert done.returncode != 0 and "torch sees no CUDA device" in done.stderr


def test_the_gpu_check_names_its_options_on_a_bad_argument(tmp_path: Path) -> None:
    done = _run("--gpu", "0")
    assert done.returncode == 2 and "unknown argument --gpu (use --device, --out, --quick)" in done.stderr
