"""One MLflow run per sweep session (tag ``phase=sweep``): the sweep's summary and its report as
artifacts, so that they reach the artifact store (S3 in production) and can be read from anywhere,
not only on the machine that ran the driver. Cells and heads are never mixed with it: every search
of theirs filters on their own phase."""
from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from ssl_robust.tracking.store import absolute_tracking_uri, code_version, ensure_experiment

SUMMARY_ARTIFACT = "summary.txt"
REPORT_ARTIFACT = "report"


def log_sweep_run(experiment: str, session: str, summary: list[str], report_dir: Path | None,
                  ok: bool, tracking_uri: str | None = None) -> str:
    """Log the summary lines and (if written) the report folder of one sweep session; FINISHED
    when every cell of the grid finished, else FAILED. Returns the run id."""
    uri = absolute_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    tags = {"phase": "sweep", "sweep": experiment, "session": session, "code_version": code_version()}
    run = client.create_run(ensure_experiment(experiment, uri), tags=tags, run_name=f"sweep {experiment} {session}")
    run_id = run.info.run_id
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / SUMMARY_ARTIFACT
            path.write_text("\n".join(summary) + "\n")
            client.log_artifact(run_id, str(path))
        if report_dir is not None and Path(report_dir).is_dir():
            client.log_artifacts(run_id, str(report_dir), REPORT_ARTIFACT)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED" if ok else "FAILED")
    return run_id
