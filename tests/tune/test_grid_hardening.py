"""A sweep on a real cluster shape, under signals and concurrency: joining a 0-CPU head that gets a
worker later, SIGINT/SIGTERM exit codes and counts, two sweeps on one fresh store, no AWS secret in
Ray's files or the tracking store, and a head whose artifact was deleted."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from mlflow import MlflowClient

from ssl_robust.cli import main
from ssl_robust.sweep_config import Resources, load_sweep
from tests.helpers import REPO_ROOT, free_port, sqlite_uri, tiny_sweep, write_sweep

pytestmark = [pytest.mark.services, pytest.mark.slow]  # sweeps on real Ray clusters: half a minute each
FAST_CLAIMS = {"SSL_ROBUST_CLAIM_SETTLE_S": "0.5"}


def small_sweep(name: str, eps: list[Any] | None = None, steps: int = 5) -> dict[str, Any]:
    """One encoder, one head, EmbedAttack at a few eps: seconds per cell."""
    return tiny_sweep(name, encoders=["tiny_dinov2"], attacks=["embed"], eps=eps or ["2/255", "4/255", "8/255"],
                      steps=[steps], defaults={"head": {"epochs": 2}, "data": {"n_samples": 16}, "device": "cpu"})


def runs(uri: str, experiment: str) -> list[Any]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return list(client.search_runs([exp.experiment_id], max_results=1000)) if exp else []


def statuses(uri: str, experiment: str) -> Counter:
    return Counter((r.data.tags.get("phase"), r.info.status) for r in runs(uri, experiment))


class Cli:
    """``python -m ssl_robust.cli ARGS`` in the background, its output in a file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TQDM_DISABLE": "1", **FAST_CLAIMS, **(env or {})}
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "ssl_robust.cli", *args], cwd=REPO_ROOT,
                                         env=full_env, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def finish(self, timeout: float) -> str:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.proc.kill()
        return self.output()


def finished_attacks(database: Path, status: str = "FINISHED") -> int:
    """Attack runs of ``status``, read with sqlite3 (an MLflow client could race the sweep's schema setup)."""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            return db.execute("select count(*) from runs r join tags t on t.run_uuid = r.run_uuid where "
                              "t.key = 'phase' and t.value = 'attack' and r.status = ?", (status,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def running_attacks(database: Path) -> int:
    return finished_attacks(database, "RUNNING")


def drivers_own(out: str) -> str:
    """The lines the driver printed itself, not those Ray forwards from worker processes (``(pid=...)``
    prefixes): on a shared Ray instance, the other sweep's actors can print a traceback when Ray
    stops them with SIGTERM at the end of that sweep."""
    return "\n".join(line for line in out.splitlines() if not re.match(r"^(\x1b\[\d+m)?\([^)]*pid=\d+", line))


def sweep_args(config: Path, uri: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["sweep", "--config", str(config), "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray_results"),
            "--report", str(tmp_path / "report"), *extra]


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture()
def short_tmp() -> Iterator[Path]:
    """A short folder for Ray (its socket paths must stay under 107 characters)."""
    path = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _uses(proc: Path, folder: str) -> bool:
    if folder in (proc / "cmdline").read_bytes().decode(errors="replace"):
        return True
    return any(os.readlink(fd).startswith(folder) for fd in (proc / "fd").iterdir())


def kill_ray_under(folder: Path) -> None:
    """SIGKILL the Ray processes started with ``folder`` as their temp dir: those whose command line
    names it or that hold a file in it (never a broad `ray stop`, other Ray instances may run here)."""
    for _ in range(2):
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if _uses(proc, str(folder)):
                    os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                continue
        time.sleep(0.5)


def ray_start(*args: str) -> None:
    ray_bin = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray_bin, "start", *args], check=True, capture_output=True, timeout=120,
                   env={**os.environ, "RAY_AUTH_MODE": "disabled"})


def test_a_sweep_joins_a_zero_cpu_head_and_waits_for_a_worker(stack: dict[str, str], tmp_path: Path,
                                                              tracking_uri: str, short_tmp: Path) -> None:
    import ray

    from ssl_robust.tune.cluster import ClusterError, ray_session

    port = free_port()
    address = f"127.0.0.1:{port}"
    try:
        ray_start("--head", "--num-cpus=0", f"--port={port}", f"--temp-dir={short_tmp}", "--include-dashboard=false",
                  "--node-ip-address=127.0.0.1", f"--dashboard-agent-listen-port={free_port()}",
                  f"--metrics-export-port={free_port()}")
        ray.init(address=address)
        try:  # the cluster must scale up: a file store is refused, and the wait has a deadline
            with pytest.raises(ClusterError, match="MLFLOW_TRACKING_URI"), \
                    ray_session(Resources(cpu=1), tracking_uri=tracking_uri):
                pass
            with pytest.raises(ClusterError, match="after 1 s"), \
                    ray_session(Resources(cpu=1), tracking_uri=stack["tracking_uri"], resource_timeout=1):
                pass
        finally:
            ray.shutdown()
        config = write_sweep(tmp_path / "join.yaml", small_sweep("e2e-join", eps=["4/255"]))
        sweep = Cli(sweep_args(config, stack["tracking_uri"], tmp_path), tmp_path / "join.log",
                    {"RAY_ADDRESS": address})
        wait_for(lambda: "waiting for the Ray cluster" in sweep.output(), 60, "the sweep to wait for resources")
        ray_start(f"--address={address}", "--num-cpus=1", f"--temp-dir={short_tmp}",
                  "--node-ip-address=127.0.0.1", f"--dashboard-agent-listen-port={free_port()}",
                  f"--metrics-export-port={free_port()}")
        out = sweep.finish(120)
    finally:
        kill_ray_under(short_tmp)
    assert sweep.proc.returncode == 0, out
    assert "0 CPU" not in out and "1 cells, 1 FINISHED" in out
    assert statuses(stack["tracking_uri"], "e2e-join") == {("head", "FINISHED"): 1, ("attack", "FINISHED"): 1,
                                                           ("sweep", "FINISHED"): 1}


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_sweep_honestly(signum: int, code: int, tmp_path: Path) -> None:
    name = f"e2e-{signal.Signals(signum).name.lower()}"
    database = tmp_path / "mlflow.db"
    uri = sqlite_uri(database)
    config = write_sweep(tmp_path / "sig.yaml", small_sweep(name, eps=["1/255", "2/255", "4/255", "8/255", "16/255"],
                                                            steps=10))
    sweep = Cli(sweep_args(config, uri, tmp_path, "--address", "local", "--num-cpus", "1"), tmp_path / "sig.log")
    try:
        wait_for(lambda: finished_attacks(database) > 0, 90, "a finished cell")
    finally:
        sweep.proc.send_signal(signum)
    out = sweep.finish(60)
    assert sweep.proc.returncode == code, out
    counts = statuses(uri, name)
    done = re.search(r"(\d+) of 5 cells FINISHED", out)
    assert done and int(done.group(1)) == counts[("attack", "FINISHED")] < 5, out
    assert not any(status == "RUNNING" for _, status in counts), counts
    assert "to resume:" in out and "--config" in out and "Traceback" not in out
    assert not (tmp_path / "report").exists()  # no partial report


@dataclass
class RayInstance:
    folder: Path  # its temp dir
    address: str  # its GCS address, for drivers in other processes


@pytest.fixture
def ray_tmp(stack_env: dict[str, str]) -> Iterator[RayInstance]:
    """A local Ray instance (2 CPUs, its own short temp dir) started after the stack's secret is set;
    one per test, so that no instance outlives its test (the join test connects to a cluster of its own)."""
    import ray

    folder = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in FAST_CLAIMS.items():  # the trial workers inherit it
            mp.setenv(key, value)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(folder))
        try:
            yield RayInstance(folder, ray.get_runtime_context().gcs_address)
        finally:
            ray.shutdown()
            shutil.rmtree(folder, ignore_errors=True)


def files_with(secret: bytes, *folders: Path) -> list[str]:
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            try:
                if path.is_file() and secret in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


def test_no_aws_secret_in_ray_files_or_the_tracking_store(stack: dict[str, str], ray_tmp: RayInstance,
                                                          tmp_path: Path) -> None:
    config = write_sweep(tmp_path / "secret.yaml", small_sweep("e2e-secret", eps=["4/255"]))
    assert main(sweep_args(config, stack["tracking_uri"], tmp_path)) == 0
    assert statuses(stack["tracking_uri"], "e2e-secret")[("attack", "FINISHED")] == 1
    assert files_with(stack["secret"].encode(), ray_tmp.folder, Path(stack["state"]), tmp_path) == []


def test_a_head_whose_artifact_is_gone_is_fitted_again(ray_tmp: RayInstance, tmp_path: Path,
                                                       tracking_uri: str) -> None:
    name, uri = "e2e-lost-head", tracking_uri
    first = write_sweep(tmp_path / "first.yaml", small_sweep(name, eps=["4/255"]))
    assert main(sweep_args(first, uri, tmp_path)) == 0
    (head,) = [r for r in runs(uri, name) if r.data.tags["phase"] == "head"]
    artifact = tmp_path / "mlruns" / name / head.info.run_id / "artifacts" / "head" / "head.safetensors"
    assert artifact.is_file()
    artifact.unlink()
    more = write_sweep(tmp_path / "more.yaml", small_sweep(name, eps=["4/255", "8/255"]))  # one new cell, same head
    assert main(sweep_args(more, uri, tmp_path)) == 0
    _, cells = load_sweep(more)
    heads = {r.info.run_id: r for r in runs(uri, name) if r.data.tags["phase"] == "head"}
    assert heads[head.info.run_id].info.status == "FAILED"
    assert heads[head.info.run_id].data.tags["artifact_missing"] == "true"
    assert [r.info.status for r in heads.values() if r.info.run_id != head.info.run_id] == ["FINISHED"]
    assert statuses(uri, name)[("attack", "FINISHED")] == len(cells) == 2


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_two_concurrent_sweeps_run_each_cell_and_head_once(store: str, ray_tmp: RayInstance, tmp_path: Path,
                                                           tracking_uri: str, request: pytest.FixtureRequest) -> None:
    """On a fresh SQLite file (neither process finds a schema) and on an `mlflow server` backed by
    PostgreSQL, the production tracking database."""
    name = f"e2e-twice-{store}"
    uri = tracking_uri if store == "sqlite" else \
        request.getfixturevalue("postgres_stack_servers")["tracking_uri"]
    config = write_sweep(tmp_path / "twice.yaml", small_sweep(name))
    sweeps = [Cli(sweep_args(config, uri, tmp_path / f"s{i}", "--address", ray_tmp.address), tmp_path / f"s{i}.log")
              for i in range(2)]  # both join the test's Ray instance
    outs = [sweep.finish(150) for sweep in sweeps]
    for sweep, out in zip(sweeps, outs):
        assert sweep.proc.returncode == 0, out
        assert "3 cells, 3 FINISHED" in out and "Traceback" not in drivers_own(out)
    found = runs(uri, name)
    finished = Counter((r.data.tags["phase"], r.data.tags.get("cell_id" if r.data.tags["phase"] == "attack"
                                                                     else "head_id"))
                       for r in found if r.info.status == "FINISHED" and r.data.tags["phase"] != "sweep")
    assert len(finished) == 4 and set(finished.values()) == {1}, finished  # 3 cells and 1 head, once each
    assert not any(r.info.status == "RUNNING" for r in found)


def _raylet_with(resource: str) -> int | None:
    """The pid of the raylet whose node carries the custom ``resource`` (one per ``ray start``)."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and "raylet" in cmdline.split("\0")[0] and resource in cmdline:
            return int(proc.name)
    return None


def _busy_workers(raylet: int) -> list[int]:
    """Worker processes of that raylet that are running a task or actor (not idle)."""
    busy = []
    for proc in Path("/proc").iterdir():
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            title = (proc / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if parent == raylet and title.startswith("ray::") and not title.startswith("ray::IDLE"):
            busy.append(int(proc.name))
    return busy


def test_a_worker_node_lost_mid_sweep_leaves_every_cell_finished_once(tmp_path: Path, short_tmp: Path) -> None:
    """Head (no CPU) and worker A (1 CPU) on this machine, so every trial runs on A; once a cell has
    finished and the next one is RUNNING there, worker B joins and A's raylet is killed: Tune retries
    the lost trial on B and the claims keep one FINISHED run per cell."""
    name, database = "e2e-node-lost", tmp_path / "mlflow.db"
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = [f"--temp-dir={short_tmp}", "--node-ip-address=127.0.0.1"]
    try:
        ray_start("--head", "--num-cpus=0", f"--port={port}", "--include-dashboard=false", *common,
                  f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}")
        worker = [f"--address={address}", "--num-cpus=1", *common]
        ray_start(*worker, '--resources={"node_a": 1}', f"--dashboard-agent-listen-port={free_port()}",
                  f"--metrics-export-port={free_port()}")
        config = write_sweep(tmp_path / "lost.yaml", {
            **small_sweep(name, eps=["1/255", "2/255", "4/255", "8/255", "16/255"], steps=40), "max_failures": 3})
        sweep = Cli(sweep_args(config, sqlite_uri(database), tmp_path), tmp_path / "lost.log",
                    {"RAY_ADDRESS": address})
        raylet = _raylet_with("node_a")
        assert raylet is not None
        wait_for(lambda: finished_attacks(database) >= 1 and running_attacks(database) >= 1, 240,
                 "a finished cell and the next one running on node A")
        ray_start(*worker, '--resources={"node_b": 1}', f"--dashboard-agent-listen-port={free_port()}",
                  f"--metrics-export-port={free_port()}")
        os.kill(raylet, signal.SIGKILL)
        for pid in _busy_workers(raylet):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        out = sweep.finish(400)
    finally:
        kill_ray_under(short_tmp)
    assert sweep.proc.returncode == 0, out
    assert "5 cells, 5 FINISHED" in out and "0 not finished" in out, out
    uri = sqlite_uri(database)
    finished = Counter(r.data.tags["cell_id"] for r in runs(uri, name)
                       if r.data.tags["phase"] == "attack" and r.info.status == "FINISHED")
    assert len(finished) == 5 and set(finished.values()) == {1}, finished
    counts = statuses(uri, name)
    assert not any(status == "RUNNING" for _, status in counts)
    lost = sum(n for (phase, status), n in counts.items() if phase == "attack" and status != "FINISHED")
    assert lost >= 1, counts  # the trial that ran on node A: its run did not finish, its retry did


def _quiet_run(tmp_path: Path, *extra: str) -> str:
    """A two-cell sweep's whole output, run as a user runs it: progress bars on, Ray's own auth mode."""
    config = write_sweep(tmp_path / "quiet.yaml", small_sweep("e2e-quiet", eps=["4/255", "8/255"]))
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "RAY_AUTH_MODE")}
    done = subprocess.run([sys.executable, "-m", "ssl_robust.cli", *sweep_args(config, sqlite_uri(tmp_path / "m.db"),
                                                                               tmp_path, "--address", "local"), *extra],
                          cwd=REPO_ROOT, env={**env, **FAST_CLAIMS}, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    return out


LIBRARY_NOISE = ("Started a local Ray instance", "Token authentication", "Creating initial MLflow database")


def test_a_sweep_prints_its_progress_and_summary_not_its_trials_bars(tmp_path: Path) -> None:
    """Without TQDM_DISABLE in the caller's environment: no trial progress bars, no MLflow download
    bars, no Tune banner, no library notices; the sweep's own bar, table, counts and paths."""
    out = _quiet_run(tmp_path)
    for noise in ("(trial pid", "Downloading artifacts", "Number of trials", "View detailed results", "fit head",
                  "Traceback", *LIBRARY_NOISE):
        assert noise not in out, noise
    assert "2 cells, 2 FINISHED" in out and "report (2 cells)" in out and "cells: 100%" in out
    assert len(out.splitlines()) < 25, out


def test_verbose_shows_what_ray_and_mlflow_log(tmp_path: Path) -> None:
    out = _quiet_run(tmp_path, "--verbose")
    assert "Started a local Ray instance" in out and "Creating initial MLflow database" in out
    assert "2 cells, 2 FINISHED" in out
