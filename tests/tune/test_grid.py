"""End to end on real parts: a local Ray instance (2 CPUs), an `mlflow server` with SQLite (and, for
resuming, one with PostgreSQL) whose artifacts land in an S3 bucket served by moto, all on loopback."""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
from mlflow import MlflowClient

from ssl_robust import tracking
from ssl_robust.cli import main
from ssl_robust.encoders import ResolvedEncoders
from ssl_robust.sweep_config import load_sweep
from ssl_robust.tune import grid
from tests.helpers import count_resolutions, tiny_sweep, write_sweep

pytestmark = pytest.mark.services  # a local Ray, the stack's MLflow server and S3 endpoint


@pytest.fixture(scope="module", autouse=True)
def fast_claims() -> Iterator[None]:
    """A short claim settle delay for the trials of this module's Ray instance (set before it starts)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSL_ROBUST_CLAIM_SETTLE_S", "0.5")
        yield


def all_runs(uri: str, experiment: str) -> list[Any]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return list(client.search_runs([exp.experiment_id], max_results=1000)) if exp else []


def by_status(runs: list[Any], phase: str) -> Counter:
    return Counter(r.info.status for r in runs if r.data.tags.get("phase") == phase)


def sweep_args(config: Path, stack: dict[str, str], tmp_path: Path, *extra: str) -> list[str]:
    return ["sweep", "--config", str(config), "--tracking-uri", stack["tracking_uri"],
            "--storage-path", str(tmp_path / "ray_results"), "--report", str(tmp_path / "report"), *extra]


def is_ray_worker(pid: int) -> bool:
    try:
        return "ray" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


class CellKiller(threading.Thread):
    """Kills (SIGKILL) the Ray worker of the first attack run seen RUNNING, as a crash would."""

    def __init__(self, uri: str, experiment: str) -> None:
        super().__init__(daemon=True)
        self.uri, self.experiment = uri, experiment
        self.killed: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        client = MlflowClient(self.uri)
        while not self.stop.is_set() and self.killed is None:
            exp = client.get_experiment_by_name(self.experiment)
            running = client.search_runs(
                [exp.experiment_id], "tags.phase = 'attack' and attributes.status = 'RUNNING'"
            ) if exp else []
            for run in running:
                pid = int(run.data.tags["pid"])
                if is_ray_worker(pid):  # not a stale run whose worker is already gone
                    os.kill(pid, signal.SIGKILL)
                    self.killed = run.info.run_id
                    return
            time.sleep(0.05)

    def __enter__(self) -> "CellKiller":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=10)


@pytest.mark.slow
def test_grid_tracks_one_finished_run_per_cell_on_s3(stack: dict[str, str], ray_local: None, s3: Any,
                                                     tmp_path: Path) -> None:
    config = write_sweep(tmp_path / "grid.yaml", tiny_sweep("e2e-grid"))
    _, cells = load_sweep(config)
    uri = stack["tracking_uri"]
    assert main(sweep_args(config, stack, tmp_path)) == 0

    runs = all_runs(uri, "e2e-grid")
    attack = [r for r in runs if r.data.tags["phase"] == "attack"]
    heads = [r for r in runs if r.data.tags["phase"] == "head"]
    assert by_status(runs, "attack") == {"FINISHED": len(cells)} and len(attack) == 8
    assert sorted(r.data.tags["cell_id"] for r in attack) == sorted(c.cell_id for c in cells)
    assert by_status(runs, "head") == {"FINISHED": 2}  # one head per (encoder, data set)
    assert {r.data.tags["head_id"] for r in heads} == {c.head_id for c in cells}
    head_runs = {r.info.run_id for r in heads}
    cfg_of = {c.cell_id: c for c in cells}
    for run in attack:
        cell, params, metrics = cfg_of[run.data.tags["cell_id"]], run.data.params, run.data.metrics
        assert params["encoder"] == cell.encoder.name and params["attack"] == cell.attack.name
        assert (params["dataset"], params["task"]) == ("synthetic", "classification")
        assert float(params["attack.eps"]) == pytest.approx(cell.attack.eps)
        assert params["steps"] == "3" and params["data.n_samples"] == "16"
        assert params["head.checkpoint"].split("/")[1] in head_runs
        assert {"clean/acc", "adv/acc", "time/cell_seconds", "check/all_passed"} <= set(metrics)
        assert run.data.tags["code_version"] and run.data.tags["sweep"] == "e2e-grid"
        for value in [*params.values(), *run.data.tags.values()]:
            assert stack["secret"] not in value

    exp_id = attack[0].info.experiment_id
    listing = s3.list_objects_v2(Bucket=stack["bucket"], Prefix=f"mlartifacts/{exp_id}/")
    keys = {obj["Key"] for obj in listing.get("Contents", [])}
    for run in attack:
        base = f"mlartifacts/{exp_id}/{run.info.run_id}/artifacts"
        assert {f"{base}/config.yaml", f"{base}/results/per_sample.csv"} <= keys
    assert any(k.endswith("adv_examples.png") for k in keys)
    for run in heads:
        assert f"mlartifacts/{exp_id}/{run.info.run_id}/artifacts/head/head.safetensors" in keys
    (session,) = [r for r in runs if r.data.tags["phase"] == "sweep"]  # the summary and report, on S3
    assert session.info.status == "FINISHED" and session.data.tags["sweep"] == "e2e-grid"
    base = f"mlartifacts/{exp_id}/{session.info.run_id}/artifacts"
    assert {f"{base}/summary.txt", f"{base}/report/index.html"} <= keys
    assert set(tracking.finished_cells("e2e-grid", uri)) == set(cfg_of)

    assert main(sweep_args(config, stack, tmp_path)) == 0  # a second run finds everything done
    assert len(all_runs(uri, "e2e-grid")) == len(runs)


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_killed_cells_are_rerun_to_exactly_one_finished_run(store: str, stack: dict[str, str], ray_local: None,
                                                            tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Against the stack's `mlflow server` on SQLite, and on one backed by PostgreSQL (production)."""
    name = f"e2e-resume-{store}"
    if store == "postgresql":
        stack = {**stack, "tracking_uri": request.getfixturevalue("postgres_stack_servers")["tracking_uri"]}
    # Embed attacks run every step (no early stop), so a cell lasts long enough to be killed.
    data = tiny_sweep(name, encoders=tiny_sweep(name)["encoders"][:1], attacks=["embed"],
                      eps=["2/255", "4/255", "8/255", "16/255"], steps=[40],
                      defaults={"head": {"epochs": 2}, "data": {"n_samples": 64}, "device": "cpu"})
    config = write_sweep(tmp_path / "resume.yaml", data)
    _, cells = load_sweep(config)
    uri = stack["tracking_uri"]

    with CellKiller(uri, name) as killer:  # a crashed worker, no retries: the sweep is left short
        assert main(sweep_args(config, stack, tmp_path, "max_failures=0")) == 1
    assert killer.killed is not None
    runs = all_runs(uri, name)  # the run the crash left RUNNING is marked FAILED when the sweep ends
    assert by_status(runs, "attack") == {"FINISHED": len(cells) - 1, "FAILED": 1}

    with CellKiller(uri, name) as second:  # rerun: the missing cell crashes once and is retried
        assert main(sweep_args(config, stack, tmp_path, "max_failures=1")) == 0
    assert second.killed is not None
    runs = all_runs(uri, name)
    finished = [r.data.tags["cell_id"] for r in runs
                if r.data.tags["phase"] == "attack" and r.info.status == "FINISHED"]
    assert sorted(finished) == sorted(c.cell_id for c in cells)  # exactly one FINISHED per cell
    assert by_status(runs, "attack") == {"FINISHED": len(cells), "FAILED": 2}
    assert by_status(runs, "head") == {"FINISHED": 1}  # the head was reused, not refitted
    client = MlflowClient(uri)
    assert client.get_run(killer.killed).info.status == "FAILED"
    assert client.get_run(second.killed).info.status == "FAILED"


def test_local_path_reads_s3_from_the_configured_endpoint(stack: dict[str, str], s3: Any,
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    s3.put_object(Bucket=stack["bucket"], Key="checkpoints/enc.safetensors", Body=b"encoder")
    uri = f"s3://{stack['bucket']}/checkpoints/enc.safetensors"
    assert tracking.local_path(uri, tmp_path / "a").read_bytes() == b"encoder"
    endpoint = os.environ["AWS_ENDPOINT_URL_S3"]
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
    got = tracking.local_path(uri, tmp_path / "b")
    assert got == tmp_path / "b" / "enc.safetensors" and got.read_bytes() == b"encoder"
    assert tracking.local_path(uri, tmp_path / "b") == got  # cached: no second download


def test_a_trial_builds_its_encoder_as_the_command_resolved_it(make_cell_cfg, tracking_uri: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The searcher's trial config carries the resolution; the trial (here in this process, as Ray
    runs it in a worker) resolves nothing again."""
    monkeypatch.setenv("SSL_ROBUST_CLAIM_SETTLE_S", "0")
    cell = make_cell_cfg()
    destination = {"tracking_uri": tracking_uri, "experiment": "resolved", "session": "s",
                   "experiment_id": tracking.ensure_experiment("resolved", tracking_uri)}
    config = grid.TwoPhaseSearcher(destination, [cell], [cell], {}, ResolvedEncoders([cell.encoder])).suggest("t")
    resolutions = count_resolutions(monkeypatch)
    result = grid.trial(config)
    assert config["phase"] == "head" and result["reused"] == 0 and resolutions == []
