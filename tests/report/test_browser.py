"""The page opens in a real headless browser (Debian's ``chromium``, installed here if missing) and its
screenshot shows the tables and the plots: checked by page content and pixels, not by file existence."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ssl_robust.report import write_report
from tests.helpers import CHROMIUM_FLAGS as FLAGS
from tests.report.fake import sweep

pytestmark = [pytest.mark.services, pytest.mark.slow]  # Chromium on a whole report: seconds each

@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    cells = sweep(root / "runs", special={("dinov2_vits14", "classification", "pgd", 8): {"adv_q": 0.95}})
    trials = pd.DataFrame({"number": range(4), "state": ["COMPLETE"] * 4, "probe/clean_acc": [0.9, 0.8, 0.7, 0.6],
                           "probe/embed_acc": [0.1, 0.4, 0.3, 0.5]})
    return write_report(cells.rows, root / "report", artifacts=cells.artifacts, searches={"s": trials},
                        title="browser check")


def _run(chromium: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args], capture_output=True,
                          text=True, timeout=180)


def test_the_page_renders_tables_images_and_flags_in_chromium(chromium: str, page: Path, tmp_path: Path) -> None:
    dom = _run(chromium, tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count("<table") >= 4 and "Clean Accuracy ↑" in html and "Worst case mIoU ↑" in html
    assert html.count('<img src="data:image/png;base64,') >= 4  # inlined: opens offline, without other files
    assert 'class="num fail"' in html and "cross/eps_monotone" in html  # the non-monotone cell, in red
    assert "http://" not in html.split("<body>")[0] and "https://" not in html  # no CDN, nothing remote


def test_the_screenshot_is_not_blank(chromium: str, page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    done = _run(chromium, tmp_path, f"--screenshot={shot}", page.as_uri())
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (2000, 1400)
    assert pixels.std() > 20  # text, tables and plots, not one flat colour
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # anti-aliased text and coloured plot lines
    red = (pixels[..., 0] > 240) & (pixels[..., 1] < 235) & (pixels[..., 1] > 215) & (pixels[..., 2] < 235)
    assert red.sum() > 50  # the failed cell's red background is on screen
    keep = os.environ.get("REPORT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
