"""The throughput benchmark runs end to end and prints its comparison table (no timing asserted)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_benchmark_prints_table_with_every_method(tmp_path):
    if importlib.util.find_spec("torchattacks") is None:
        if os.environ.get("CI"):
            pytest.fail("torchattacks is not installed; CI installs it (pip install --no-deps torchattacks)")
        pytest.skip("torchattacks is not installed (pip install --no-deps torchattacks)")
    import torchattacks  # noqa: F401  (installed but broken: an error, not a skip)
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attack_throughput.py"), "--quick",
                          "--repeats", "1", "--json", str(tmp_path / "bench.json")],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    for method in ("ssl_robust pgd (all steps)", "ssl_robust pgd (stop when fooled)", "torchattacks.PGD"):
        assert method in out
    assert "same robust samples as all-steps: True" in out
    assert (tmp_path / "bench.json").exists()
