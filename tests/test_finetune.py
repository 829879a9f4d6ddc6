"""A tracked DeACL fine-tune: one MLflow run, checkpoints that load through their runs:/ URI,
resume of a killed run into the same run, nothing done twice."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from ssl_robust import tracking
from ssl_robust.config import EncoderCfg
from ssl_robust.deacl_config import DeaclCfg
from ssl_robust.encoders import create_encoder
from ssl_robust.finetune import run_deacl
from tests.helpers import TINY_ENCODER

FAST: dict[str, Any] = {
    "name": "finetune-tests",
    "encoder": {"name": TINY_ENCODER},
    "data": {"name": "synthetic", "task": "classification", "n_train": 32},
    "epochs": 2, "batch_size": 16, "optimizer": "adamw", "lr": 3e-4, "weight_decay": 0.0,
    "warmup_epochs": 0, "checkpoint_every": 1,
    "attack": {"eps": "16/255", "step_size": "4/255", "steps": 1},
    "probe": {"n_train": 32, "n_samples": 16, "epochs": 2},
    "device": "cpu",
}


class Killed(Exception):
    """Stands for the process dying after the first checkpoint."""


def die_at(epoch: int):
    def report(at: int, metrics: dict[str, float]) -> None:
        if at == epoch:
            raise Killed(f"killed during epoch {at}")
    return report


@pytest.fixture(scope="module")
def store(module_tracking_uri: str) -> str:
    return module_tracking_uri


@pytest.fixture(scope="module")
def finished(store: str) -> tuple[str, DeaclCfg]:
    cfg = DeaclCfg.model_validate(FAST)
    run_id, metrics = run_deacl(cfg, store)
    assert metrics, "a new config is fine-tuned"
    return run_id, cfg


def weights(uri: str, store: str) -> dict[str, torch.Tensor]:
    return load_file(str(tracking.local_path(uri, tracking_uri=store)))


def test_one_run_per_fine_tune_with_metrics_per_epoch(finished: tuple[str, DeaclCfg], store: str) -> None:
    run_id, cfg = finished
    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["phase"] == "deacl"
    assert run.data.tags["deacl_id"] == cfg.deacl_id and run.data.params["gamma"] == "2.0"
    history = MlflowClient(store).get_metric_history(run_id, "probe/embed_acc")
    assert sorted(m.step for m in history) == [0, 1, 2]  # epoch 0 is the teacher
    assert sorted(m.step for m in MlflowClient(store).get_metric_history(run_id, "loss/total")) == [1, 2]


def test_checkpoint_loads_through_its_runs_uri_with_the_students_outputs(finished: tuple[str, DeaclCfg],
                                                                         store: str) -> None:
    run_id, cfg = finished
    run = MlflowClient(store).get_run(run_id)
    encoder_cfg = tracking.student_encoder(run, 2)
    assert encoder_cfg["checkpoint"] == f"runs:/{run_id}/checkpoints/epoch_002.safetensors"
    local = tracking.local_path(encoder_cfg["checkpoint"], tracking_uri=store)
    student = create_encoder(EncoderCfg(**{**encoder_cfg, "checkpoint": str(local)}))
    teacher = create_encoder(EncoderCfg(**tracking.student_encoder(run, 0)))
    x = torch.rand(4, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    expected = {k: v for k, v in load_file(str(local)).items()}
    assert all(torch.equal(v, expected[k]) for k, v in student.model.state_dict().items())
    assert not torch.allclose(student.embed(x), teacher.embed(x))


def test_a_finished_fine_tune_is_not_run_again(finished: tuple[str, DeaclCfg], store: str) -> None:
    run_id, cfg = finished
    again, metrics = run_deacl(cfg, store)
    assert again == run_id and metrics == {}
    assert len(tracking.deacl_runs(cfg.name, store)) == 1


def test_a_killed_fine_tune_resumes_its_own_run_to_the_same_weights(finished: tuple[str, DeaclCfg],
                                                                     store: str) -> None:
    run_id, cfg = finished
    other = "finetune-resume"
    with pytest.raises(Killed):
        run_deacl(cfg, store, experiment=other, report=die_at(2))  # dies after epoch 1's checkpoint
    (killed,) = tracking.deacl_runs(other, store)
    assert killed.info.status == "FAILED"
    resumed_id, metrics = run_deacl(cfg, store, experiment=other)
    assert resumed_id == killed.info.run_id and metrics
    final = "checkpoints/epoch_002.safetensors"
    ours, uninterrupted = weights(f"runs:/{resumed_id}/{final}", store), weights(f"runs:/{run_id}/{final}", store)
    assert ours.keys() == uninterrupted.keys()
    assert all(torch.equal(ours[k], uninterrupted[k]) for k in ours)
    history = MlflowClient(store).get_metric_history(resumed_id, "loss/total")
    assert sorted(m.step for m in history) == [1, 2]  # epoch 2 logged once, epoch 1 not repeated
    assert MlflowClient(store).get_run(resumed_id).info.status == "FINISHED"
