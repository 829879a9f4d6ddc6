"""The dry run's settings lines: a head's recipe and test protocol, an attack's step rule."""
from __future__ import annotations

import pytest

from ssl_robust.cli import main
from ssl_robust.config import CellCfg
from ssl_robust.encoders import resolve_encoder
from ssl_robust.plan_lines import attack_settings, head_line
from tests.helpers import REPO_ROOT


def test_a_head_line_names_its_recipe_and_the_test_protocol() -> None:
    cell = CellCfg.model_validate({
        "encoder": {"name": "dinov2_vits14"},
        "data": {"name": "voc2012", "n_samples": None, "slide_stride": 341, "slide_average": "probs",
                 "voc_background": "exclude"},
        "head": {"optimizer": "adamw", "lr": 0.001, "weight_decay": 1e-4, "schedule": "poly", "warmup_steps": 1500,
                 "epochs": 50, "batch_size": 16, "augment": "crop_flip"},
        "attack": {"name": "segpgd"}})
    assert head_line(cell, resolve_encoder(cell.encoder)) == (
        f"head {cell.head_id} dinov2_vits14@518 voc2012 segmentation: adamw lr=0.001 weight_decay=0.0001 poly "
        f"(warm-up 1500 steps) epochs=50 batch=16 augment=crop_flip | test=all images eval=slide stride=341 "
        f"average=probs background=exclude")


def test_attack_settings_say_whether_fooled_samples_stop() -> None:
    pgd = CellCfg.model_validate({"data": {"name": "cifar10"}, "attack": {"name": "pgd", "eps": "8/255", "steps": 20,
                                                                          "step_size": "2/255"}})
    assert attack_settings(pgd) == "step_size=2/255 restarts=1 select=worst (fooled samples stop)"
    final = pgd.model_copy(update={"attack": pgd.attack.model_copy(update={"stop_when_fooled": False,
                                                                            "select": "final"})})
    assert attack_settings(final) == "step_size=2/255 restarts=1 select=final (every step)"


def test_the_poster_dry_run_lists_each_tasks_recipe_and_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", str(REPO_ROOT / "sweeps" / "poster.yaml"), "--dry-run"]) == 0
    heads = [line for line in capsys.readouterr().out.splitlines() if line.startswith("head ")]
    assert len(heads) == 3 * 7
    by_data = {line.split()[3]: line for line in heads if " dinov2_vits14@518 " in line}
    assert "adam lr=0.5 weight_decay=0 constant epochs=5 batch=128 augment=crop_flip" in by_data["cifar10"]
    assert "test=1024 images eval=resize" in by_data["cifar10"]
    assert "poly (warm-up 1500 steps) epochs=50 batch=16" in by_data["ade20k"]
    assert "eval=slide stride=341 average=probs" in by_data["ade20k"]
    assert "background=exclude" in by_data["voc2012"]
    assert "augment=flip depth_head=dinov2 loss=silog_grad | test=all images eval=whole" in by_data["nyuv2"]
