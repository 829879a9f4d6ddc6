"""End to end on real parts: a DeACL sweep fine-tunes on a local Ray, logs its checkpoints through an
`mlflow server` into S3 (moto), benchmarks every chosen epoch, and a rerun adds nothing."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from ssl_robust.cli import main
from tests.helpers import REPO_ROOT, write_sweep

pytestmark = [pytest.mark.services, pytest.mark.slow]  # a DeACL sweep on Ray, MLflow server and S3


def tiny_deacl_sweep(name: str) -> dict[str, Any]:
    data = yaml.safe_load((REPO_ROOT / "sweeps" / "deacl_quickstart.yaml").read_text())
    data["name"] = name
    data["deacl"].update(epochs=1, data={"name": "synthetic", "task": "classification", "n_train": 32},
                         probe={"n_train": 32, "n_samples": 16, "epochs": 2})
    data["grid"] = {"gamma": [2.0]}
    data["benchmark"].update(epochs=[0, 1], datasets=[{"name": "synthetic", "task": "classification",
                                                       "n_train": 32, "n_val": 16}],
                             attacks=["embed"], defaults={"head": {"epochs": 2}, "data": {"n_samples": 8},
                                                          "device": "cpu"})
    return data


def runs_by_phase(uri: str, experiment: str) -> Counter:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return Counter((r.data.tags["phase"], r.info.status) for r in client.search_runs([exp.experiment_id]))


def args(command: str, config: Path, stack: dict[str, str], tmp_path: Path) -> list[str]:
    return [command, "--config", str(config), "--tracking-uri", stack["tracking_uri"],
            "--storage-path", str(tmp_path / "ray"), "--report", str(tmp_path / "report")]


@pytest.fixture(scope="module")
def deacl_sweep(stack_env: dict[str, str], ray_local: None, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[str, Path, Path]:
    """(experiment, config, folder) of a tiny DeACL sweep run once."""
    name, folder = "e2e-deacl", tmp_path_factory.mktemp("deacl-sweep")
    config = write_sweep(folder / "deacl.yaml", tiny_deacl_sweep(name))
    assert main(args("deacl-sweep", config, stack_env, folder)) == 0
    return name, config, folder


def test_deacl_sweep_benchmarks_every_chosen_epoch_and_reruns_nothing(stack: dict[str, str], s3: Any,
                                                                      deacl_sweep: tuple[str, Path, Path]) -> None:
    name, config, folder = deacl_sweep
    uri = stack["tracking_uri"]
    assert runs_by_phase(uri, name) == {("deacl", "FINISHED"): 1, ("head", "FINISHED"): 2,
                                        ("attack", "FINISHED"): 2}
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    (deacl,) = client.search_runs([exp.experiment_id], "tags.phase = 'deacl'")
    checkpoints = {a.path for a in client.list_artifacts(deacl.info.run_id, "checkpoints")}
    assert checkpoints == {"checkpoints/epoch_001.safetensors"}
    listing = s3.list_objects_v2(Bucket=stack["bucket"], Prefix=f"mlartifacts/{exp.experiment_id}/{deacl.info.run_id}/")
    assert any(o["Key"].endswith("checkpoints/epoch_001.safetensors") for o in listing["Contents"])
    cells = client.search_runs([exp.experiment_id], "tags.phase = 'attack'")
    assert sorted(r.data.params["encoder.checkpoint"] for r in cells) == \
        ["", f"runs:/{deacl.info.run_id}/checkpoints/epoch_001.safetensors"]

    assert main(args("deacl-sweep", config, stack, folder)) == 0  # nothing missing: nothing new
    assert sum(runs_by_phase(uri, name).values()) == 5


def test_a_benchmark_sweep_names_a_deacl_experiment_as_its_encoders(stack: dict[str, str], tmp_path: Path,
                                                                    deacl_sweep: tuple[str, Path, Path]) -> None:
    name = deacl_sweep[0]
    bench = tiny_deacl_sweep(name)["benchmark"]
    sweep = {"name": name, "encoders": [{"deacl": {"experiment": name, "epochs": bench.pop("epochs")}}], **bench}
    config = write_sweep(tmp_path / "bench.yaml", sweep)
    before = runs_by_phase(stack["tracking_uri"], name)
    assert main(args("sweep", config, stack, tmp_path)) == 0  # the same students, the same cells: all done
    assert runs_by_phase(stack["tracking_uri"], name) == before
