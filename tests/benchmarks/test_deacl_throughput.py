"""The DeACL throughput benchmark runs end to end: both methods and a finite ratio (no timing asserted)."""
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_quick_benchmark_prints_both_methods_and_a_finite_ratio() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "deacl_throughput.py"), "--quick"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    rows = {line.split()[0] + " " + line.split()[1] for line in out.splitlines()
            if line.startswith(("DeACL step ", "bare loop "))}
    assert rows == {"DeACL step", "bare loop"}, out
    match = re.search(r"^ratio \(DeACL step img/s / bare loop img/s, medians\): (\S+)$", out, re.MULTILINE)
    assert match, out
    ratio = float(match.group(1))
    assert math.isfinite(ratio) and ratio > 0
    assert "student weights finite: True" in out
