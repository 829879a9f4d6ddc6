"""The cluster path end to end with Ray's own launcher: ``ray up`` → ``ray submit … sweeps/full_benchmark.py
-- --config sweeps/quickstart.yaml`` → every cell FINISHED once → ``ray rsync-down`` of the report → ``ray
down``, on ``infra/cluster-local.yaml`` (Ray's ``local`` provider) over SSH to this machine.

The "node" is this machine seen through an ``sshd`` the test starts on a free loopback port (reached by
the YAML's ``ssh_proxy_command``), with a key it generates and the node's home in a temporary folder
(``SetEnv HOME``), so the YAML's file mounts, setup and start commands run as written without touching
the real home. The node's ``~/venv`` is made beforehand on top of this checkout's virtual environment
(a ``.pth`` to its site-packages and a ``ray`` entry point): the YAML's ``test -d ~/venv || ...`` keeps it
and its ``pip install -e ~/ssl_robust "ray[default,tune]==2.60.0"`` then installs only what is missing,
instead of downloading torch. Needs root (sshd), Debian's ``openssh-server`` and ``rsync``.
"""
from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.helpers import REPO_ROOT, free_port

pytestmark = [pytest.mark.services, pytest.mark.slow]  # Ray's cluster launcher over SSH: minutes
SSHD = "/usr/sbin/sshd"
RELAY = """import os, selectors, socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
sel = selectors.DefaultSelector()
sel.register(sock, selectors.EVENT_READ)
sel.register(0, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is sock:
            data = sock.recv(65536)
            if not data:
                sys.exit(0)
            os.write(1, data)
        else:
            data = os.read(0, 65536)
            if data:
                sock.sendall(data)
            else:
                sock.shutdown(socket.SHUT_WR)
                sel.unregister(0)
"""


def _needs(condition: bool, why: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{why} (.ci/run provides it)")
        pytest.skip(why)


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"sshd did not listen on 127.0.0.1:{port}")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[dict[str, Path | int]]:
    """An sshd on loopback whose sessions run as this user with HOME (and cwd) in ``tmp/node``."""
    _needs(os.geteuid() == 0, "the launcher test runs sshd, which needs root")
    _needs(Path(SSHD).exists() and shutil.which("ssh-keygen") is not None, "openssh-server is not installed")
    _needs(shutil.which("rsync") is not None, "rsync is not installed")
    home, keys, port = tmp_path / "node", tmp_path / "keys", free_port()
    home.mkdir(), keys.mkdir()
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    shutil.copy(keys / "client.pub", keys / "authorized_keys")
    (keys / "relay.py").write_text(RELAY)
    config = keys / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {keys / 'host'}",
        f"AuthorizedKeysFile {keys / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "StrictModes no", "UsePAM no",
        f"PidFile {keys / 'sshd.pid'}", f"SetEnv HOME={home}",
        'ForceCommand cd "$HOME" && eval "$SSH_ORIGINAL_COMMAND"', ""]))
    Path("/run/sshd").mkdir(exist_ok=True)
    sshd = subprocess.Popen([SSHD, "-D", "-f", str(config), "-E", str(keys / "sshd.log")])
    try:
        _wait_for_port(port)
        venv = home / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        (Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
         / "checkout_venv.pth").write_text(sysconfig.get_path("purelib") + "\n")
        (venv / "bin" / "ray").write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\n"
                                          "from ray.scripts.scripts import main\nsys.exit(main())\n")
        (venv / "bin" / "ray").chmod(0o755)
        yield {"home": home, "keys": keys, "port": port}
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)


def _launcher_config(node: dict, tmp_path: Path) -> Path:
    """infra/cluster-local.yaml with this test's key and port; everything else as shipped."""
    config = yaml.safe_load((REPO_ROOT / "infra" / "cluster-local.yaml").read_text())
    config["auth"]["ssh_private_key"] = str(node["keys"] / "client")
    config["auth"]["ssh_proxy_command"] = f"{sys.executable} {node['keys'] / 'relay.py'} %h {node['port']}"
    path = tmp_path / "cluster-local.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _ray(args: list[str], home: Path, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    ray = Path(sys.executable).parent / "ray"
    env = {**os.environ, "HOME": str(home)}
    start = time.monotonic()
    done = subprocess.run([str(ray), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - start


def _cells(store: Path) -> dict[str, int]:
    """Per status, the attack runs of the quickstart in the head's SQLite store, and distinct cells."""
    with sqlite3.connect(store) as db:
        rows = db.execute("select r.status, t.value from runs r join tags t on t.run_uuid = r.run_uuid "
                          "join tags p on p.run_uuid = r.run_uuid where t.key = 'cell_id' and p.key = 'phase' "
                          "and p.value = 'attack'").fetchall()
    counts: dict[str, int] = {}
    for status, _ in rows:
        counts[status] = counts.get(status, 0) + 1
    counts["distinct_finished"] = len({cell for status, cell in rows if status == "FINISHED"})
    return counts


def test_ray_up_submit_rsync_down_and_down_run_the_quickstart_on_the_local_provider(node: dict,
                                                                                   tmp_path: Path) -> None:
    config, local = _launcher_config(node, tmp_path), tmp_path / "local"
    (local / ".ssl_robust").mkdir(parents=True)
    subprocess.run([str(REPO_ROOT / "infra" / "cluster_env.sh")], env={**os.environ, "HOME": str(local)},
                   check=True, capture_output=True)
    times = {}
    try:
        up, times["ray up"] = _ray(["up", "-y", "--no-config-cache", str(config)], local, 900)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        submit, times["ray submit"] = _ray(["submit", str(config), "sweeps/full_benchmark.py", "--",
                                            "--config", "sweeps/quickstart.yaml"], local, 1500)
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        out = submit.stdout + submit.stderr
        assert "72 cells, 72 FINISHED" in out and "tracked as MLflow run" in out
        assert _cells(node["home"] / "mlflow.db") == {"FINISHED": 72, "distinct_finished": 72}
        fetched = tmp_path / "fetched"
        down, times["ray rsync-down"] = _ray(["rsync-down", str(config), "~/dashboards/quickstart/", f"{fetched}/"],
                                             local, 300)
        assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
        assert (fetched / "index.html").is_file() and (fetched / "worst_case.csv").is_file()
    finally:
        _, times["ray down"] = _ray(["down", "-y", str(config)], local, 300)
        print("launcher steps (s):", {k: round(v, 1) for k, v in times.items()})
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", 6379)) != 0, "the head's GCS still listens after ray down"
    left = subprocess.run(["pgrep", "-f", str(node["home"])], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes of the node left behind: {left}"
