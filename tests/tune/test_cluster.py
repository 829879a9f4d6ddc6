"""The Ray session of a sweep: what its workers print when Ray stops them."""
from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO_ROOT

GARBAGE = """
import gc, sys
from ssl_robust.tune.cluster import quiet_worker_exit

class Dies:
    def __init__(self, error):
        self.error = error
    def __del__(self):
        raise self.error

if sys.argv[1] == "quiet":
    quiet_worker_exit()
Dies(SystemExit(1))  # what Ray's SIGTERM handler raises inside a garbage-collection callback
Dies(ValueError("a real error"))
gc.collect()
"""


def _stderr(mode: str) -> str:
    done = subprocess.run([sys.executable, "-c", GARBAGE, mode], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
    return done.stderr


def test_a_worker_drops_only_the_system_exit_that_a_sigterm_raises_in_a_callback() -> None:
    plain, quiet = _stderr("plain"), _stderr("quiet")
    assert "SystemExit: 1" in plain and "ValueError: a real error" in plain  # Python's default: both printed
    assert "SystemExit" not in quiet and "ValueError: a real error" in quiet
