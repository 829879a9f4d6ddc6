"""Bad inputs end in one line naming the field, file or URI, exit code 2, no traceback, nothing written.

One table of bad inputs, each run through ``ssl_robust.cli.main`` from an empty working directory;
``--debug`` (checked in a subprocess) shows the traceback instead.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml
from botocore.exceptions import ClientError
from mlflow import MlflowClient

from ssl_robust import cli
from ssl_robust.tracking import artifacts

from tests.helpers import REPO_ROOT, sqlite_uri, tiny_sweep, write_sweep

TINY = str(REPO_ROOT / "configs" / "tiny.yaml")
DEACL_TINY = str(REPO_ROOT / "configs" / "deacl_tiny.yaml")


class _System:
    """Unpickling it would run ``touch marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _FakeS3:
    """An S3 client whose downloads fail with ``code``; ``head_bucket`` fails with ``bucket_code``."""

    meta = type("Meta", (), {"endpoint_url": "http://s3.test"})()

    def __init__(self, code: str, bucket_code: str | None = None) -> None:
        self.code, self.bucket_code = code, bucket_code

    def download_file(self, bucket: str, key: str, filename: str) -> None:
        raise ClientError({"Error": {"Code": self.code, "Message": "denied or missing"}}, "HeadObject")

    def head_bucket(self, Bucket: str) -> dict:
        if self.bucket_code:
            raise ClientError({"Error": {"Code": self.bucket_code, "Message": ""}}, "HeadBucket")
        return {}


def _file(name: str, text: str) -> Callable[[Path], str]:
    def make(tmp: Path) -> str:
        (tmp / name).write_text(text)
        return str(tmp / name)
    return make


def _store(tmp: Path) -> str:
    """An existing (empty) SQLite tracking store."""
    uri = sqlite_uri(tmp / "store.db")
    MlflowClient(uri).search_experiments()
    return uri


def _sweep(tmp: Path, **fields: Any) -> str:
    return str(write_sweep(tmp / "sweep.yaml", tiny_sweep("errors", **fields)))


def _deacl_sweep(tmp: Path) -> str:
    data = {"name": "errors", "deacl": {**yaml.safe_load(Path(DEACL_TINY).read_text()),
                                       "data": {"name": "cifar10", "root": str(tmp / "nowhere")}},
            "benchmark": {"epochs": [0], "datasets": ["synthetic"], "attacks": ["pgd"], "eps": [0]}}
    data["deacl"].pop("name", None)
    (tmp / "deacl_sweep.yaml").write_text(yaml.safe_dump(data))
    return str(tmp / "deacl_sweep.yaml")


def _search(tmp: Path) -> str:
    data = yaml.safe_load((REPO_ROOT / "sweeps" / "deacl_search_quickstart.yaml").read_text())
    data["deacl"]["data"] = {"name": "cifar100", "root": str(tmp / "nowhere")}
    (tmp / "search.yaml").write_text(yaml.safe_dump(data))
    return str(tmp / "search.yaml")


def _pickled_checkpoint(tmp: Path) -> str:
    torch.save({"blocks.0.weight": _System(tmp / "marker")}, tmp / "evil.pth")
    return str(tmp / "evil.pth")


# (id, argv builder from the tmp folder, substrings stderr must name, setup(tmp, monkeypatch))
CASES: list[tuple[str, Callable[[Path], list[str]], list[str], Callable[..., None] | None]] = [
    ("cifar10 root", lambda t: ["run", TINY, "data.name=cifar10", f"data.root={t}/nowhere"],
     ["'cifar10'", "nowhere", "data.download=true"], None),
    ("ade20k root", lambda t: ["run", TINY, "data.name=ade20k", "attack.name=segpgd", "data.task=segmentation",
                               f"data.root={t}/nowhere"], ["'ade20k'", "nowhere"], None),
    ("nyuv2 root", lambda t: ["run", TINY, "data.name=nyuv2", "data.task=depth", "attack.name=depthpgd",
                              f"data.root={t}/nowhere"], ["'nyuv2'", "nyu_depth_v2_labeled.mat"], None),
    ("sweep data root", lambda t: [
        "sweep", _sweep(t, datasets=[{"name": "cifar10", "root": str(t / "nowhere")}], attacks=["pgd"]),
        "--tracking-uri", sqlite_uri(t / "sweep.db")], ["'cifar10'", "nowhere"], None),
    ("deacl-sweep data root", lambda t: ["deacl-sweep", _deacl_sweep(t), "--tracking-uri", sqlite_uri(t / "d.db")],
     ["'cifar10'", "nowhere"], None),
    ("search data root", lambda t: ["search", _search(t), "--tracking-uri", sqlite_uri(t / "s.db")],
     ["'cifar100'", "nowhere"], None),
    ("deacl data root", lambda t: ["deacl", DEACL_TINY, "data.name=stl10", f"data.root={t}/nowhere",
                                   "--tracking-uri", sqlite_uri(t / "deacl.db")], ["'stl10'", "nowhere"], None),
    ("deacl without classes", lambda t: ["deacl", DEACL_TINY, "data={name: nyuv2}"], ["data.name", "nyuv2"], None),
    ("missing checkpoint", lambda t: ["run", TINY, f"encoder.checkpoint={t}/missing.pth"], ["missing.pth"], None),
    ("corrupt checkpoint", lambda t: ["run", TINY, f"encoder.checkpoint={_file('bad.pth', 'garbage')(t)}"],
     ["bad.pth", "not a safetensors file or a weights-only torch checkpoint"], None),
    ("corrupt safetensors", lambda t: ["run", TINY, f"encoder.checkpoint={_file('w.safetensors', 'x')(t)}"],
     ["w.safetensors", "not a safetensors file"], None),
    ("pickled code in checkpoint", lambda t: ["run", TINY, f"encoder.checkpoint={_pickled_checkpoint(t)}"],
     ["evil.pth", "weights-only"], None),
    ("s3 without credentials", lambda t: ["run", TINY, "encoder.checkpoint=s3://ckpts/enc.safetensors"],
     ["s3://ckpts/enc.safetensors", "AWS_ACCESS_KEY_ID"], None),
    ("s3 403", lambda t: ["run", TINY, "encoder.checkpoint=s3://ckpts/enc.safetensors"],
     ["s3://ckpts/enc.safetensors", "access denied", "'ckpts'"],
     lambda t, mp: mp.setattr(artifacts, "s3_client", lambda: _FakeS3("403"))),
    ("s3 missing key", lambda t: ["run", TINY, "encoder.checkpoint=s3://ckpts/enc.safetensors"],
     ["s3://ckpts/enc.safetensors", "key 'enc.safetensors' does not exist in bucket 'ckpts'"],
     lambda t, mp: mp.setattr(artifacts, "s3_client", lambda: _FakeS3("404"))),
    ("s3 missing bucket", lambda t: ["run", TINY, "encoder.checkpoint=s3://ckpts/enc.safetensors"],
     ["s3://ckpts/enc.safetensors", "bucket 'ckpts' does not exist"],
     lambda t, mp: mp.setattr(artifacts, "s3_client", lambda: _FakeS3("404", "404"))),
    ("runs:/ without a store", lambda t: ["run", TINY, "encoder.checkpoint=runs:/0123abcd/enc.safetensors"],
     ["runs:/0123abcd/enc.safetensors", "no MLflow tracking store"], None),
    ("runs:/ bad id", lambda t: ["run", TINY, "encoder.checkpoint=runs:/0123abcd/enc.safetensors",
                                 "--tracking-uri", _store(t)], ["runs:/0123abcd/enc.safetensors", "0123abcd"], None),
    ("cuda without a GPU", lambda t: ["run", TINY, "device=cuda"], ["device='cuda'", "no CUDA device"],
     lambda t, mp: mp.setattr(torch.cuda, "is_available", lambda: False)),
    ("not a device", lambda t: ["run", TINY, "device=gpu"], ["device", "'gpu'"], None),
    ("broken YAML", lambda t: ["run", _file("broken.yaml", "encoder: {name: tiny_dinov2\ndata: [\n")(t)],
     ["broken.yaml:2:", "invalid YAML", "opened at line 1"], None),
    ("empty YAML", lambda t: ["run", _file("x.yaml", "# nothing\n")(t)], ["x.yaml is empty"], None),
    ("missing YAML", lambda t: ["run", f"{t}/missing.yaml"], ["missing.yaml"], None),
    ("report --eps abc", lambda t: ["report", "exp", "--eps", "abc", "--tracking-uri", _store(t)],
     ["--eps", "'abc'"], None),
    ("report without a store", lambda t: ["report", "nope"], ["no MLflow tracking store", "'nope'"], None),
    ("steps bound", lambda t: ["run", TINY, "attack.steps=1000000000"], ["attack.steps", "10000"], None),
    ("restarts bound", lambda t: ["run", TINY, "attack.restarts=1000"], ["attack.restarts", "100"], None),
    ("deacl steps bound", lambda t: ["deacl", DEACL_TINY, "attack.steps=100000"], ["attack.steps"], None),
    ("image_size vs patch", lambda t: ["run", TINY, "encoder.image_size=30"],
     ["encoder.image_size=30", "patch size 14", "28 or 42"], None),
    ("unknown option", lambda t: ["run", TINY, "--bogus"], ["unrecognized arguments: --bogus"], None),
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, no tracking server, no AWS credentials, caches under tmp_path."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for name in ("MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.parametrize("build, named, setup", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_two_and_writes_nothing(workdir: Path, build: Callable[[Path], list[str]],
                                                           named: list[str], setup: Callable[..., None] | None,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    argv = build(workdir)
    if setup is not None:
        setup(workdir, monkeypatch)
    before = {p for p in workdir.rglob("*")}
    capsys.readouterr()  # what building the inputs printed
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    for text in named:
        assert text in err
    assert "Traceback" not in err and "weights_only=False" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not any((workdir / "cwd").iterdir()), "wrote into the working directory"
    written = [p for p in set(workdir.rglob("*")) - before if p.is_file() and "cache" in p.parts]
    assert not written and not (workdir / "marker").exists()


@pytest.mark.slow
@pytest.mark.parametrize("debug", [False, True])
def test_debug_shows_the_traceback(tmp_path: Path, debug: bool) -> None:
    empty = tmp_path / "x.yaml"
    empty.write_text("")
    argv = [sys.executable, "-m", "ssl_robust.cli", *(["--debug"] if debug else []), "run", str(empty)]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert "x.yaml is empty" in done.stderr
    assert ("Traceback" in done.stderr) == debug
    assert done.returncode == (1 if debug else 2)


def test_an_unreachable_tracking_server_fails_fast_in_one_line(capsys: pytest.CaptureFixture) -> None:
    import socket
    import time

    from ssl_robust.cli import main

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    assert main(["report", "nope", "--tracking-uri", f"http://127.0.0.1:{port}"]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "connection refused" in err and "Traceback" not in err
