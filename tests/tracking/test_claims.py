"""The claim protocol, one rule at a time: when a run's owner counts as alive, when a new run may
take a key, and when a holder keeps it (`ssl_robust.tracking.claims`)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run, RunData, RunInfo, RunTag

from ssl_robust import tracking
from ssl_robust.tracking import claims
from ssl_robust.tracking.cells import claim_for
from tests.helpers import dead_pid

NOW = 1_800_000_000.0  # seconds; a clock given to `alive`, far from the real one


def run(status: str = "RUNNING", start_ms: int = 0, **tags: str) -> Run:
    info = RunInfo(run_id="r1", experiment_id="0", user_id="u", status=status, start_time=start_ms,
                   end_time=None, lifecycle_stage="active")
    return Run(info, RunData(tags=[RunTag(k, v) for k, v in tags.items()]))


def test_a_running_run_with_a_recent_heartbeat_is_alive() -> None:
    assert claims.alive(run(heartbeat=f"{NOW - 1:.0f}", host="elsewhere"), now=NOW)


def test_a_heartbeat_as_old_as_the_stale_limit_is_dead() -> None:
    assert not claims.alive(run(heartbeat=f"{NOW - claims.STALE_S:.0f}", host="elsewhere"), now=NOW)


def test_a_finished_run_is_not_alive() -> None:
    assert not claims.alive(run("FINISHED", heartbeat=f"{NOW:.0f}"), now=NOW)


def test_liveness_is_judged_at_the_time_given() -> None:
    beat = run(heartbeat="1000", host="elsewhere")
    assert claims.alive(beat, now=1001.0)
    assert not claims.alive(beat, now=1000.0 + claims.STALE_S)


def test_without_a_time_given_liveness_is_judged_now() -> None:
    assert claims.alive(run(heartbeat=f"{time.time():.0f}", host="elsewhere"))
    assert not claims.alive(run(heartbeat="1000", host="elsewhere"))


def test_without_a_heartbeat_the_start_time_counts_as_the_last_beat() -> None:
    assert claims.alive(run(start_ms=int((NOW - 1) * 1000), host="elsewhere"), now=NOW)
    assert not claims.alive(run(start_ms=int((NOW - claims.STALE_S - 1) * 1000), host="elsewhere"), now=NOW)


def test_a_run_started_at_the_epoch_without_a_heartbeat_beat_last_then() -> None:
    assert claims.alive(run(host="elsewhere"), now=claims.STALE_S - 0.0005)
    assert not claims.alive(run(host="elsewhere"), now=claims.STALE_S)


def test_a_run_of_this_host_whose_process_lives_is_alive() -> None:
    assert claims.alive(run(host=socket.gethostname(), pid=str(os.getpid()), heartbeat=f"{NOW:.0f}"), now=NOW)


def test_checking_a_process_does_not_signal_it() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        assert claims.alive(run(host=socket.gethostname(), pid=str(child.pid), heartbeat=f"{NOW:.0f}"), now=NOW)
        time.sleep(0.2)
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_a_run_of_this_host_whose_process_died_is_dead_whatever_its_heartbeat() -> None:
    assert not claims.alive(run(host=socket.gethostname(), pid=str(dead_pid()), heartbeat=f"{NOW:.0f}"), now=NOW)


def test_a_run_of_this_host_without_a_pid_is_judged_by_its_heartbeat() -> None:
    assert claims.alive(run(host=socket.gethostname(), heartbeat=f"{NOW:.0f}"), now=NOW)
    assert claims.alive(run(host=socket.gethostname(), pid="", heartbeat=f"{NOW:.0f}"), now=NOW)


def test_an_acquire_counts_as_in_time_up_to_a_third_of_the_settling_time() -> None:
    assert claims.tagged_in_time(claims.SETTLE_S / 3)
    assert not claims.tagged_in_time(claims.SETTLE_S / 3 + 1e-6)
    assert claims.tagged_in_time(claims.SETTLE_S / 4 + 1e-6)


# Claims on a real store (the module's ``uri``, tests/tracking/conftest.py): runs of one key
# ("cell_id" = "c") in an experiment of each test's own.

@pytest.fixture()
def key(uri: str, request: pytest.FixtureRequest) -> tuple[MlflowClient, str, claims.Claim]:
    """(client, experiment id, the claim of cell "c") in an experiment of this test's own."""
    exp_id = tracking.ensure_experiment(f"claims-{request.node.name}", uri)
    return MlflowClient(uri), exp_id, claim_for(uri, exp_id, "attack", "c")


def new_run(client: MlflowClient, exp_id: str, start_ms: int | None = None, **tags: str) -> str:
    tags = {"phase": "attack", "cell_id": "c", **claims.owner_tags(), **tags}
    return client.create_run(exp_id, start_time=start_ms, tags=tags).info.run_id


def test_acquire_tags_the_run_as_the_holder(key) -> None:
    client, exp_id, claim = key
    mine = new_run(client, exp_id)
    assert claim.acquire(mine)
    assert client.get_run(mine).data.tags[claims.CLAIM_TAG] == claims.HELD


def test_acquire_gives_way_to_a_finished_run(key) -> None:
    client, exp_id, claim = key
    client.set_terminated(new_run(client, exp_id), "FINISHED")
    assert not claim.acquire(new_run(client, exp_id))


def test_acquire_gives_way_to_a_live_holder_even_a_newer_one(key) -> None:
    client, exp_id, claim = key
    mine = new_run(client, exp_id, start_ms=1_000)
    new_run(client, exp_id, start_ms=2_000, claim=claims.HELD)
    assert not claim.acquire(mine)


def test_acquire_gives_way_to_an_older_live_run(key) -> None:
    client, exp_id, claim = key
    new_run(client, exp_id, start_ms=1_000)
    assert not claim.acquire(new_run(client, exp_id, start_ms=2_000))


def test_acquire_ignores_a_dead_holder(key) -> None:
    client, exp_id, claim = key
    new_run(client, exp_id, start_ms=1_000, claim=claims.HELD, host="elsewhere", heartbeat="0")
    assert claim.acquire(new_run(client, exp_id, start_ms=2_000))


def test_a_slow_acquire_gives_the_claim_back(key, monkeypatch: pytest.MonkeyPatch) -> None:
    client, exp_id, claim = key
    monkeypatch.setattr(claims, "SETTLE_S", 0.0)  # any acquire is too slow
    mine = new_run(client, exp_id)
    assert not claim.acquire(mine)
    assert client.get_run(mine).data.tags[claims.CLAIM_TAG] == ""


def test_confirm_waits_until_the_settling_time_after_acquire(key, monkeypatch: pytest.MonkeyPatch) -> None:
    client, exp_id, claim = key
    mine = new_run(client, exp_id)
    assert claim.acquire(mine)
    waits: list[float] = []
    monkeypatch.setattr(claims.time, "sleep", waits.append)
    assert claim.confirm(mine)
    assert claims.SETTLE_S - 1.0 < waits[0] <= claims.SETTLE_S


def test_confirm_does_not_wait_once_the_settling_time_has_passed(key, monkeypatch: pytest.MonkeyPatch) -> None:
    client, exp_id, claim = key
    mine = new_run(client, exp_id)
    assert claim.acquire(mine)
    claim.held_at -= claims.SETTLE_S + 10
    waits: list[float] = []
    monkeypatch.setattr(claims.time, "sleep", waits.append)
    assert claim.confirm(mine)
    assert waits == [0.0]


def acquired(key, monkeypatch: pytest.MonkeyPatch, start_ms: int | None = None) -> str:
    """A new run of the key that holds the claim; a later ``confirm`` does not wait."""
    client, exp_id, claim = key
    mine = new_run(client, exp_id, start_ms=start_ms)
    assert claim.acquire(mine)
    monkeypatch.setattr(claims, "SETTLE_S", 0.0)
    return mine


def test_confirm_gives_way_to_an_older_live_holder(key, monkeypatch: pytest.MonkeyPatch) -> None:
    client, exp_id, claim = key
    mine = acquired(key, monkeypatch, start_ms=2_000)
    new_run(client, exp_id, start_ms=1_000, claim=claims.HELD)  # tagged while we settled
    assert not claim.confirm(mine)


def test_confirm_fails_a_run_that_is_no_longer_running(key, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _, claim = key
    mine = acquired(key, monkeypatch)
    client.set_terminated(mine, "FAILED")  # judged dead by another trial meanwhile
    assert not claim.confirm(mine)


def test_confirm_gives_way_to_a_run_that_finished_meanwhile(key, monkeypatch: pytest.MonkeyPatch) -> None:
    client, exp_id, claim = key
    mine = acquired(key, monkeypatch)
    client.set_terminated(new_run(client, exp_id), "FINISHED")
    assert not claim.confirm(mine)


def test_owner_tags_name_this_host_this_process_and_now() -> None:
    tags = claims.owner_tags()
    assert tags["host"] == socket.gethostname() and tags["pid"] == str(os.getpid())
    assert abs(float(tags[claims.HEARTBEAT_TAG]) - time.time()) < 5


def test_a_head_claim_does_not_reuse_a_finished_head_without_its_weights(uri: str) -> None:
    client, exp_id = MlflowClient(uri), tracking.ensure_experiment("claims-head-weights", uri)
    lost = client.create_run(exp_id, tags={"phase": "head", "head_id": "h"}).info.run_id
    client.set_terminated(lost, "FINISHED")
    assert claim_for(uri, exp_id, "head", "h").wait() is None
    assert client.get_run(lost).info.status == "FAILED"


def test_confirm_without_acquire_does_not_wait(key, monkeypatch: pytest.MonkeyPatch) -> None:
    client, exp_id, claim = key
    waits: list[float] = []
    monkeypatch.setattr(claims.time, "sleep", waits.append)
    claim.confirm(new_run(client, exp_id))
    assert waits == [0.0]


def test_wait_polls_a_live_run_at_one_to_two_poll_intervals(key, monkeypatch: pytest.MonkeyPatch) -> None:
    client, exp_id, claim = key
    other = new_run(client, exp_id)
    waits: list[float] = []

    def other_finishes(seconds: float) -> None:
        waits.append(seconds)
        client.set_terminated(other, "FINISHED")

    monkeypatch.setattr(claims.time, "sleep", other_finishes)
    assert claim.wait() == other
    assert len(waits) == 1 and claims.POLL_S <= waits[0] < 2 * claims.POLL_S


@pytest.fixture()
def fast_beats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(claims, "HEARTBEAT_S", 0.05)


def test_a_heartbeat_refreshes_its_runs_tag(key, fast_beats: None) -> None:
    client, exp_id, _ = key
    run_id = new_run(client, exp_id, heartbeat="0")
    beat = claims.Heartbeat(client.tracking_uri, run_id)
    try:
        deadline = time.time() + 30
        while client.get_run(run_id).data.tags[claims.HEARTBEAT_TAG] == "0" and time.time() < deadline:
            time.sleep(0.05)
        assert abs(float(client.get_run(run_id).data.tags[claims.HEARTBEAT_TAG]) - time.time()) < 5
    finally:
        beat.stop()
    assert not beat.thread.is_alive()


def test_a_heartbeat_runs_in_a_daemon_thread_named_after_its_run(key, fast_beats: None) -> None:
    client, exp_id, _ = key
    run_id = new_run(client, exp_id)
    beat = claims.Heartbeat(client.tracking_uri, run_id)
    beat.stop()
    assert beat.thread.daemon and beat.thread.name == f"heartbeat-{run_id[:8]}"


def test_a_heartbeat_keeps_beating_after_a_failed_write(key, fast_beats: None) -> None:
    client, _, _ = key
    beat = claims.Heartbeat(client.tracking_uri, "no-such-run")  # every write fails
    try:
        time.sleep(0.5)  # ten beats
        assert beat.thread.is_alive()
    finally:
        beat.stop()
