"""One FINISHED run per cell or head, however many sweeps run on one experiment at once.

A trial first waits while another live run of its key (``cell_id`` or ``head_id``) exists, and
reuses a valid FINISHED run if one appears. Otherwise it creates its run (RUNNING, tags ``host``,
``pid``, ``heartbeat``) and looks at the key's runs again (``acquire``): it gives up (deletes its run
and waits again) when a run is FINISHED, when a live run holds the claim (tag ``claim=held``) or
when a live run is older by ``(start_time, run_id)``; else it tags its own run ``claim=held``.
Before it finishes, ``confirm`` looks once more, at least ``SETTLE_S`` after the tag was written:
of two live holders only the older keeps the claim, and the other ends KILLED with
``claim=duplicate``. Two trials that both tag their run within ``SETTLE_S / 3`` of their first
look see each other's tag in that second look (a slower ``acquire`` gives up), so both cannot win.

A run is live while it is RUNNING and its owner is alive: same host, its pid exists; any host, its
``heartbeat`` tag (written every ``HEARTBEAT_S`` by the running trial) is newer than
``STALE_S``. Dead runs are marked FAILED by whoever sees them first, and their key is claimed anew.
"""
from __future__ import annotations

import os
import random
import socket
import threading
import time
from typing import Any, Callable

from mlflow import MlflowClient

from ssl_robust.tracking.store import search_runs

SETTLE_S = float(os.environ.get("SSL_ROBUST_CLAIM_SETTLE_S", "2"))
HEARTBEAT_S = float(os.environ.get("SSL_ROBUST_HEARTBEAT_S", "10"))
STALE_S = 6 * HEARTBEAT_S
POLL_S = 0.5
CLAIM_TAG, HELD, DUPLICATE = "claim", "held", "duplicate"
HEARTBEAT_TAG = "heartbeat"


def owner_tags() -> dict[str, str]:
    """The tags that tell whether a run's owner is alive."""
    return {"host": socket.gethostname(), "pid": str(os.getpid()), HEARTBEAT_TAG: f"{time.time():.0f}"}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def alive(run: Any, now: float | None = None) -> bool:
    """RUNNING and its owner alive (pid on this host, else a recent heartbeat)."""
    if run.info.status != "RUNNING":
        return False
    tags = run.data.tags
    if tags.get("host") == socket.gethostname() and tags.get("pid", "").isdigit() \
            and not _pid_alive(int(tags["pid"])):
        return False
    beat = float(tags.get(HEARTBEAT_TAG) or (run.info.start_time or 0) / 1000)
    return (time.time() if now is None else now) - beat < STALE_S


def _order(run: Any) -> tuple[int, str]:
    return run.info.start_time or 0, run.info.run_id


def tagged_in_time(elapsed_s: float) -> bool:
    """Whether ``acquire`` tagged its run within ``SETTLE_S / 3`` of its first look, as ``confirm``'s
    guarantee needs; a slower ``acquire`` gives the claim back and tries again."""
    return elapsed_s <= SETTLE_S / 3


class Heartbeat:
    """Refreshes a run's ``heartbeat`` tag from a daemon thread until stopped."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.client, self.run_id = MlflowClient(tracking_uri), run_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{run_id[:8]}")
        self.thread.start()

    def _beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            try:
                self.client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
            except Exception:  # a store outage: the next beat retries
                continue

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=HEARTBEAT_S)


class Claim:
    """The claim of one key: the runs matching ``filter_string`` in one experiment.

    ``valid(client, run)`` says whether a FINISHED run can be reused (a head needs its artifact).
    """

    def __init__(self, client: MlflowClient, experiment_id: str, filter_string: str,
                 valid: Callable[[MlflowClient, Any], bool] | None = None) -> None:
        self.client, self.experiment_id, self.filter = client, experiment_id, filter_string
        self.valid = valid
        self.checked: dict[str, bool] = {}
        self.held_at = 0.0

    def _runs(self) -> list[Any]:
        return list(search_runs(self.client, self.experiment_id, self.filter))

    def _done(self, runs: list[Any]) -> str | None:
        for run in sorted((r for r in runs if r.info.status == "FINISHED"), key=_order):
            run_id = run.info.run_id
            if run_id not in self.checked:
                self.checked[run_id] = self.valid is None or self.valid(self.client, run)
            if self.checked[run_id]:
                return run_id
        return None

    def _fail_dead(self, runs: list[Any], now: float) -> None:
        for run in runs:
            if run.info.status == "RUNNING" and not alive(run, now):
                self.client.set_terminated(run.info.run_id, "FAILED")

    def wait(self) -> str | None:
        """Block while another live run of the key exists; the id of a valid FINISHED run, or None
        when nobody is running the key (then create a run and ``acquire``)."""
        while True:
            runs, now = self._runs(), time.time()
            done = self._done(runs)
            if done:
                return done
            self._fail_dead(runs, now)
            if not any(alive(r, now) for r in runs):
                return None
            time.sleep(POLL_S * (1 + random.random()))

    def acquire(self, run_id: str) -> bool:
        """Tag ``run_id`` (just created) as the holder, unless another run finished, holds the
        claim or is older and live; False means: discard the run and ``wait``."""
        start = time.monotonic()
        runs, now = self._runs(), time.time()
        mine = [r for r in runs if r.info.run_id == run_id]
        others = [r for r in runs if r.info.run_id != run_id]
        if not mine or self._done(others):
            return False
        me = mine[0]
        if any(alive(r, now) and (r.data.tags.get(CLAIM_TAG) == HELD or _order(r) < _order(me)) for r in others):
            return False
        self.client.set_tag(run_id, CLAIM_TAG, HELD)
        if not tagged_in_time(time.monotonic() - start):
            self.client.set_tag(run_id, CLAIM_TAG, "")
            return False
        self.held_at = time.monotonic()
        return True

    def confirm(self, run_id: str) -> bool:
        """At least ``SETTLE_S`` after ``acquire``: True when ``run_id`` still holds the claim."""
        time.sleep(max(0.0, self.held_at + SETTLE_S - time.monotonic()))
        runs, now = self._runs(), time.time()
        mine = [r for r in runs if r.info.run_id == run_id]
        others = [r for r in runs if r.info.run_id != run_id]
        if not mine or mine[0].info.status != "RUNNING" or self._done(others):
            return False
        return not any(alive(r, now) and r.data.tags.get(CLAIM_TAG) == HELD and _order(r) < _order(mine[0])
                       for r in others)
