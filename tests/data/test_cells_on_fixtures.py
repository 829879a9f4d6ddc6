"""One cell per task runs end to end on tiny data sets written in the official formats."""
from __future__ import annotations

from pathlib import Path

import pytest

from ssl_robust.cell import run_cell
from ssl_robust.config import CellCfg

from .fixtures import write_cifar10, write_nyuv2, write_voc

TINY_ENCODER = {"name": "dinov2_vits14", "pretrained": False, "image_size": 28,
                "model_kwargs": {"depth": 1, "embed_dim": 24, "num_heads": 2, "init_values": 1.0}}


def _cell(name: str, root: Path, attack: str) -> CellCfg:
    return CellCfg.model_validate({
        "encoder": TINY_ENCODER,
        "data": {"name": name, "root": str(root), "n_samples": None, "val_fraction": 0.25},
        "head": {"epochs": 2, "batch_size": 8, "n_bins": 16},
        "attack": {"name": attack, "eps": "8/255", "steps": 2},
        "batch_size": 4,
    })


@pytest.mark.parametrize("writer,name,attack,metric", [
    (write_cifar10, "cifar10", "pgd", "acc"),
    (write_voc, "voc2012", "segpgd", "miou"),
    (write_nyuv2, "nyuv2", "depthpgd", "rmse"),
])
def test_cell_runs_end_to_end_on_official_format_fixture(tmp_path, writer, name, attack, metric):
    writer(tmp_path)
    metrics = run_cell(_cell(name, tmp_path, attack), out_dir=tmp_path / "out")
    assert {f"clean/{metric}", f"adv/{metric}"} <= metrics.keys()
    assert metrics["check/delta_in_ball"] == metrics["check/x_adv_in_box"] == 1.0
    assert metrics["check/eps0_equals_clean"] == 1.0
    assert (tmp_path / "out" / "per_sample.csv").exists()


def test_cell_on_missing_data_root_fails_before_any_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="voc2012"):
        run_cell(_cell("voc2012", tmp_path / "nowhere", "segpgd"))
