"""A tracked, resumable DeACL fine-tune: ``deacl.fine_tune`` inside its MLflow run.

Used by ``ssl-robust deacl`` and by the Tune trials of DeACL sweeps and searches. A config whose
fine-tune already FINISHED in the experiment is not run again; an unfinished one continues its own
run from the last checkpoint.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from ssl_robust.deacl_config import DeaclCfg
from ssl_robust.deacl import fine_tune
from ssl_robust.encoders import ResolvedEncoder, resolve_encoder
from ssl_robust.tracking import DeaclRun, localize


def run_deacl(cfg: DeaclCfg, tracking_uri: str | None = None, experiment: str | None = None,
              tags: dict[str, str] | None = None,
              report: Callable[[int, dict[str, float]], None] | None = None,
              resolved: ResolvedEncoder | None = None) -> tuple[str, dict[str, float]]:
    """Fine-tune (or finish fine-tuning) ``cfg``; returns (MLflow run id, last epoch's metrics).

    ``report(epoch, metrics)`` is called after every epoch (a Tune trial reports to its scheduler);
    ``resolved``: the encoder as the command resolved it (None: resolved here, before the run starts).
    """
    resolved = resolved or resolve_encoder(cfg.encoder)
    run = DeaclRun(cfg, tracking_uri, experiment, tags, report)
    done = run.finished()
    if done is not None:
        return done, {}
    local = localize(cfg, run.uri)
    with run, tempfile.TemporaryDirectory(prefix="deacl-") as work:
        metrics = fine_tune(local, Path(work), hooks=run, resolved=resolved)
    return run.run_id, metrics
