"""URI -> local file (``ssl_robust.tracking.artifacts``): ``runs:/`` URIs, ``file://`` and plain
paths resolved on the embedded SQLite store, a cell's checkpoint URIs localized with the sweep's
tracking URI, and S3 clients that read the environment's credentials at each call."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ssl_robust import tracking
from ssl_robust.config import CellCfg
from tests.helpers import experiment_name


def test_local_path_resolves_runs_file_and_plain_paths(store: tuple[str, str], cells: list[CellCfg],
                                                          tmp_path: Path, request: pytest.FixtureRequest) -> None:
    uri, exp_id = store
    name = experiment_name(request)
    src = tmp_path / "head.safetensors"
    src.write_bytes(b"weights")
    with tracking.CellRun(cells[0], "head", exp_id, uri) as run:
        run.log_file(src, "head")
    got = tracking.local_path(f"runs:/{run.run_id}/head/head.safetensors", tmp_path / "dl", uri)
    assert got.read_bytes() == b"weights"
    config = tracking.local_path(run.uri("config.yaml"), tmp_path / "dl2", uri)
    assert CellCfg.model_validate(yaml.safe_load(config.read_text())) == cells[0]
    assert tracking.local_path(src.as_uri()) == src
    assert tracking.local_path(str(src)) == src
    assert tracking.finished_runs(name, "head", uri) == {cells[0].head_id: run.run_id}
    with pytest.raises(FileNotFoundError):
        tracking.local_path(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="unsupported artifact URI"):
        tracking.local_path("gs://bucket/key")


def test_trials_localize_checkpoint_uris_with_the_sweeps_tracking_uri(store: tuple[str, str],
                                                                     cells: list[CellCfg],
                                                                     tmp_path: Path) -> None:
    uri, exp_id = store
    for name in ("encoder.safetensors", "head.safetensors"):
        (tmp_path / name).write_bytes(name.encode())
    with tracking.CellRun(cells[0], "head", exp_id, uri) as run:
        run.log_file(tmp_path / "encoder.safetensors", "ckpt")
        run.log_file(tmp_path / "head.safetensors", "ckpt")
    cfg = cells[0].model_copy(update={
        "encoder": cells[0].encoder.model_copy(update={"checkpoint": run.uri("ckpt/encoder.safetensors")}),
        "head": cells[0].head.model_copy(update={"checkpoint": run.uri("ckpt/head.safetensors")}),
    })
    local = tracking.localize(cfg, uri)
    assert Path(local.encoder.checkpoint).read_bytes() == b"encoder.safetensors"
    assert Path(local.head.checkpoint).read_bytes() == b"head.safetensors"
    assert local.data == cfg.data and local.attack == cfg.attack


def test_s3_client_reads_the_credentials_of_the_environment_at_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that once had credentials must not keep using them (boto3's default session caches them)."""
    from ssl_robust.tracking.artifacts import s3_client

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert s3_client()._request_signer._credentials.access_key == "key"
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert s3_client()._request_signer._credentials is None
