"""What a cell spends and how: gradient steps, clean eps = 0 cells, precision, the feature cache, loaders."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssl_robust.cell import run_cell
from ssl_robust.head_fit import prepare_head
from ssl_robust.config import ConfigError, LoaderCfg, validate

N_SAMPLES, BATCH = 16, 8  # conftest's tiny cell
PRIMARY = {"classification": "acc", "segmentation": "miou", "depth": "rmse"}


@pytest.mark.parametrize("task, attack", [("classification", "pgd"), ("classification", "embed"),
                                          ("segmentation", "segpgd"), ("depth", "depthpgd"), ("depth", "embed")])
def test_eps0_cell_spends_no_gradient_step_and_scores_clean(make_cell_cfg, fitted_head, task: str,
                                                             attack: str) -> None:
    cfg = make_cell_cfg(task, attack={"name": attack, "eps": 0}, head={"checkpoint": str(fitted_head(task))})
    metrics = run_cell(cfg)
    assert metrics["attack/grad_steps"] == 0 and metrics["attack/forward_passes"] == 0
    assert metrics[f"adv/{PRIMARY[task]}"] == metrics[f"clean/{PRIMARY[task]}"]
    assert metrics["check/all_passed"] == 1.0


def test_attack_without_steps_or_random_start_is_scored_clean(make_cell_cfg, fitted_head) -> None:
    cfg = make_cell_cfg(attack={"steps": 0, "random_start": False},
                        head={"checkpoint": str(fitted_head("classification"))})
    metrics = run_cell(cfg)
    assert metrics["attack/grad_steps"] == 0 and metrics["adv/acc"] == metrics["clean/acc"]


@pytest.mark.parametrize("steps, restarts", [(3, 1), (2, 3)])
def test_grad_steps_are_samples_times_steps_times_restarts_plus_the_eps0_check(make_cell_cfg, fitted_head,
                                                                                steps: int, restarts: int) -> None:
    cfg = make_cell_cfg(attack={"steps": steps, "restarts": restarts, "stop_when_fooled": False},
                        head={"checkpoint": str(fitted_head("classification"))})
    metrics = run_cell(cfg)
    check = BATCH * 1 * restarts  # the eps = 0 check: one step on the first batch
    assert metrics["attack/grad_steps"] == N_SAMPLES * steps * restarts + check
    assert metrics["attack/forward_passes"] == N_SAMPLES * (steps + 1) * restarts + BATCH * 2 * restarts


def test_cascade_spends_fewer_grad_steps_than_all_steps(make_cell_cfg, fitted_head) -> None:
    head = {"checkpoint": str(fitted_head("classification"))}
    full = run_cell(make_cell_cfg(attack={"stop_when_fooled": False, "eps": "16/255"}, head=head))
    cascade = run_cell(make_cell_cfg(attack={"stop_when_fooled": True, "eps": "16/255"}, head=head))
    assert cascade["adv/acc"] == full["adv/acc"]
    assert cascade["attack/grad_steps"] < full["attack/grad_steps"]


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_bf16_cell_runs_end_to_end_on_cpu_close_to_fp32(make_cell_cfg, fitted_head, task: str) -> None:
    head = {"checkpoint": str(fitted_head(task))}
    fp32 = run_cell(make_cell_cfg(task, head=head))
    bf16 = run_cell(make_cell_cfg(task, head=head, precision="bf16"))
    metric = PRIMARY[task]
    assert bf16["check/all_passed"] == 1.0
    assert bf16[f"clean/{metric}"] == pytest.approx(fp32[f"clean/{metric}"], abs=0.15)
    assert bf16[f"adv/{metric}"] <= bf16[f"clean/{metric}"]


def test_head_from_the_disk_feature_cache_equals_the_head_from_memory(make_cell_cfg, tmp_path: Path) -> None:
    prepare_head(make_cell_cfg("segmentation", head={"features": "disk", "epochs": 3}), tmp_path / "disk.safetensors")
    prepare_head(make_cell_cfg("segmentation", head={"features": "memory", "epochs": 3}), tmp_path / "mem.safetensors")
    disk, memory = load_file(str(tmp_path / "disk.safetensors")), load_file(str(tmp_path / "mem.safetensors"))
    assert disk.keys() == memory.keys()
    assert all(torch.equal(disk[k], memory[k]) for k in disk)


def test_cells_log_the_seconds_spent_waiting_for_data(make_cell_cfg, fitted_head) -> None:
    metrics = run_cell(make_cell_cfg(head={"checkpoint": str(fitted_head("classification"))}))
    assert 0 < metrics["time/data_seconds"] < metrics["time/cell_seconds"]


def test_cells_load_with_worker_processes(make_cell_cfg, fitted_head) -> None:
    head = {"checkpoint": str(fitted_head("classification"))}
    inline = run_cell(make_cell_cfg(head=head))
    workers = run_cell(make_cell_cfg(head=head, loader={"num_workers": 1, "persistent_workers": True}))
    assert workers["clean/acc"] == inline["clean/acc"] and workers["adv/acc"] == inline["adv/acc"]


def test_persistent_workers_without_workers_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="num_workers"):
        validate(LoaderCfg, {"persistent_workers": True}, "loader")


def test_loader_and_feature_storage_do_not_change_a_cells_identity(make_cell_cfg) -> None:
    plain = make_cell_cfg()
    assert make_cell_cfg(loader={"num_workers": 4, "pin_memory": True}).cell_id == plain.cell_id
    assert make_cell_cfg(head={"features": "memory"}).head_id == plain.head_id
    assert make_cell_cfg(precision="bf16").cell_id != plain.cell_id
    assert "precision" not in plain.identity()  # fp32 ids are those of cells logged before the field existed
