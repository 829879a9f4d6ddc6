"""The benchmarks run end to end and print their tables (no timing asserted)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ssl_robust import cost
from tests.helpers import require_torchattacks

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_benchmark_prints_table_with_every_method(tmp_path):
    require_torchattacks()
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attack_throughput.py"), "--quick",
                          "--repeats", "1", "--bf16", "all", "--json", str(tmp_path / "bench.json")],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    for method in ("ssl_robust pgd (all steps)", "ssl_robust pgd (all steps, bf16)",
                   "ssl_robust pgd (stop when fooled)", "torchattacks.PGD", "floor: fwd + input-grad"):
        assert sum(line.startswith(method + " ") for line in out.splitlines()) == 2  # one table row per model
    assert out.count("same robust samples as all-steps: True") == 2
    assert cost.read_throughput(str(tmp_path / "bench.json")) > 0  # what --dry-run --throughput reads


@pytest.mark.slow
def test_head_memory_benchmark_prints_both_storages_per_size() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "head_memory.py"), "--quick", "--n", "16", "48"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["16"], ["48"])]
    assert [(r[0], r[1]) for r in rows] == [("16", "disk"), ("16", "memory"), ("48", "disk"), ("48", "memory")]


@pytest.mark.slow
def test_attack_strength_suite_is_at_least_torchattacks_and_its_own_members(tmp_path):
    require_torchattacks()
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attack_strength.py"), "--quick",
                          "--json", str(tmp_path / "strength.json")],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    result = json.loads((tmp_path / "strength.json").read_text())
    lines = [line.split() for line in out.splitlines()]
    assert {row["model"] for row in result["classification"]} == {"vit", "cnn", "cnn_x100"}
    for row in result["classification"]:  # one row in the robust-accuracy table, one in the steps table
        assert sum(cells[:3] == [row["model"], f"{row['eps255']:g}", str(row["steps"])] for cells in lines) == 2
        assert row["robust"]["standard"] <= row["robust"]["TA union"] + 1 / row["n"]
    seg, depth = result["segmentation"], result["depth"]
    for name in [*seg["scores"], *depth["scores"]]:
        assert any(cells[:1] == [name] for cells in lines)
    assert all(seg["scores"]["standard"] <= seg["scores"][m] + 1e-9 for m in seg["members"])
    assert all(depth["scores"]["standard"] >= depth["scores"][m] - 1e-9 for m in depth["members"])
