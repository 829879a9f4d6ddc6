"""Ray for the duration of a sweep.

A local instance started here advertises loopback only and must fit one trial at once. A cluster
joined here (``--address``, ``RAY_ADDRESS`` or a running ``ray start``) may have to scale up: the
sweep asks its autoscaler for one trial's resources and waits (``--resource-timeout``), and refuses a
tracking store that is a file on this machine, which other nodes cannot share. Tune would copy the
driver's AWS keys into every trial's runtime environment, which Ray logs in plain text: that copy is
switched off, and trials use the AWS credential chain of their own node.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import sys
import time
from typing import Any, Iterator

import ray
from ray._private import services
from ray.autoscaler.sdk import request_resources

from ssl_robust.config_file import ConfigError
from ssl_robust.sweep_config import Resources
from ssl_robust.tracking.store import absolute_tracking_uri, is_local_store
from ssl_robust.tune import RESOURCE_TIMEOUT_S

PROGRESS_EVERY_S = 10.0
# Every trial's environment (Ray's job-level runtime_env): no per-trial progress bars (tqdm) and no
# MLflow artifact download bars, which Ray would forward line by line to the driver's terminal.
QUIET_TRIALS = {"TQDM_DISABLE": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
QUIET_WORKER_HOOK = "ssl_robust.tune.cluster.quiet_worker_exit"  # Ray's worker_process_setup_hook
RAY_AUTH_NOTICE = "ray._private.authentication.authentication_token_setup"  # logs "token authentication is enabled"


def quiet_worker_exit() -> None:
    """In every Ray worker of a sweep: a SIGTERM that Ray sends to a released trial actor raises
    SystemExit wherever the worker happens to be; inside a garbage-collection callback Python then
    prints it as an "Exception ignored" traceback, which Ray forwards to the driver. That one case
    is dropped; every other unraisable exception is printed as before."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, SystemExit):
            previous(unraisable)

    sys.unraisablehook = hook


class ClusterError(ConfigError):
    """The Ray cluster cannot run this sweep as configured."""


def _bundle(resources: Resources) -> dict[str, float]:
    """One trial's resources in Ray's names."""
    return {name: amount for name, amount in (("CPU", resources.cpu), ("GPU", resources.gpu)) if amount}


def _fits(bundle: dict[str, float]) -> bool:
    """Whether some live node has the resources of one trial."""
    return any(all(node["Resources"].get(k, 0) >= v for k, v in bundle.items())
               for node in ray.nodes() if node.get("Alive"))


def _check_resources(resources: Resources) -> None:
    """Fail fast when a local instance cannot host one trial."""
    have = ray.cluster_resources()
    for name, want in (("CPU", resources.cpu), ("GPU", resources.gpu)):
        if want > have.get(name, 0):
            raise ClusterError(f"resources.{name.lower()}={want} but this Ray instance has "
                               f"{have.get(name, 0)} {name}; lower it or join a cluster")


def _local_addresses() -> set[str]:
    found = {"127.0.0.1", "::1", "localhost", ray.util.get_node_ip_address()}
    with contextlib.suppress(OSError):
        found.update(socket.gethostbyname_ex(socket.gethostname())[2])
    return found


def check_tracking_store(tracking_uri: str, fits_now: bool) -> None:
    """Refuse a file store (SQLite, ``file:``) when trials may run on other machines: nodes elsewhere,
    or a cluster that must scale up before a trial fits."""
    if not is_local_store(tracking_uri):
        return
    remote = sorted({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")} - _local_addresses())
    if not remote and fits_now:
        return
    where = f"has nodes on {', '.join(remote)}" if remote else "has to scale up to run a trial"
    raise ClusterError(f"tracking URI {tracking_uri} is a file on this machine but the Ray cluster {where}: "
                       "each node would write its own store. Set MLFLOW_TRACKING_URI (or --tracking-uri) "
                       "to an MLflow server, e.g. http://mlflow.example.internal:5000")


def wait_for_resources(resources: Resources, timeout_s: float) -> None:
    """Ask the autoscaler for one trial's resources and wait until a node has them."""
    bundle = _bundle(resources)
    if _fits(bundle):
        return
    request_resources(bundles=[bundle])
    start, said = time.monotonic(), -PROGRESS_EVERY_S
    try:
        while not _fits(bundle):
            waited = time.monotonic() - start
            have = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
            if waited > timeout_s:
                raise ClusterError(f"the Ray cluster has {have or 'no CPU'} after {timeout_s:.0f} s; one trial "
                                   f"needs {bundle} on one node (resources: in the sweep). Check `ray status` "
                                   "and the autoscaler, or wait longer with --resource-timeout")
            if waited - said >= PROGRESS_EVERY_S:
                print(f"waiting for the Ray cluster to provide {bundle} for one trial (has {have or 'none'}; "
                      f"{waited:.0f}/{timeout_s:.0f} s)", file=sys.stderr, flush=True)
                said = waited
            time.sleep(1.0)
    finally:
        request_resources(bundles=[])


def _init_ray(address: str | None, num_cpus: int | None, quiet: bool = True) -> bool:
    """Start or join Ray unless already initialised; True when this call started a local instance.
    ``quiet``: Ray logs warnings only (and not its notice that token authentication is on, Ray's
    default), and the trials show no progress bars (``QUIET_TRIALS``) nor the traceback of their
    SIGTERM (``quiet_worker_exit``)."""
    if ray.is_initialized():
        return False
    env: dict[str, Any] = {"logging_level": logging.WARNING if quiet else logging.INFO}
    if quiet:
        env["runtime_env"] = {"env_vars": QUIET_TRIALS, "worker_process_setup_hook": QUIET_WORKER_HOOK}
        logging.getLogger(RAY_AUTH_NOTICE).setLevel(logging.ERROR)
    if services.canonicalize_bootstrap_address(address) is not None:
        ray.init(address=address, **env)
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "_node_ip_address": "127.0.0.1", **env}
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    ray.init(address="local", **kwargs)
    return True


@contextlib.contextmanager
def no_credentials_in_runtime_env() -> Iterator[None]:
    """Stop Tune from copying ``AWS_*`` keys into each trial actor's ``runtime_env``
    (``ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE``): Ray writes runtime environments to
    its logs (``runtime_env_agent.log``) in plain text."""
    from ray.tune.execution import class_cache

    saved = class_cache.ENV_VARS_TO_PROPAGATE
    class_cache.ENV_VARS_TO_PROPAGATE = {name for name in saved if not name.startswith("AWS_")}
    try:
        yield
    finally:
        class_cache.ENV_VARS_TO_PROPAGATE = saved


@contextlib.contextmanager
def ray_session(resources: Resources, address: str | None = None, num_cpus: int | None = None,
                tracking_uri: str | None = None, resource_timeout: float = RESOURCE_TIMEOUT_S,
                quiet: bool = True) -> Iterator[None]:
    """Ray for the duration of the block: started here (and shut down after) or joined; with
    ``tracking_uri``, a joined multi-node cluster is refused a store that is a local file;
    ``quiet``: trials print no progress bars."""
    started = _init_ray(address, num_cpus, quiet)
    try:
        if started:
            _check_resources(resources)
        elif ray.is_initialized():
            fits_now = _fits(_bundle(resources))
            if tracking_uri is not None:
                check_tracking_store(absolute_tracking_uri(tracking_uri), fits_now)
            if not fits_now:
                wait_for_resources(resources, resource_timeout)
        with no_credentials_in_runtime_env():
            yield
    finally:
        if started:
            _let_actors_exit()
            ray.shutdown()


def _let_actors_exit(timeout_s: float = 10.0) -> None:
    """Wait until the trial actors Tune has released have exited (their CPUs are free again):
    ``ray.shutdown`` sends SIGTERM to any worker still alive, which then prints a traceback."""
    deadline = time.monotonic() + timeout_s
    total = ray.cluster_resources().get("CPU", 0.0)
    while time.monotonic() < deadline and ray.available_resources().get("CPU", 0.0) < total:
        time.sleep(0.2)
