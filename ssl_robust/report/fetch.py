"""The edge of the report: what ``ssl-robust report`` fetches from MLflow (cells' ``results``
artifacts, DeACL runs, a search's trials) and hands to ``write_report`` as local files and frames.
The other report modules never talk to a server."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from mlflow import MlflowClient

from ssl_robust import tracking
from ssl_robust.deacl_names import STUDENT_URI
from ssl_robust.tracking.search import PARENT_TAG
from ssl_robust.uris import redact

RESULTS = "results"
TRIALS = "pareto/trials.csv"
OUTCOME_STATE = {"complete": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}


def cell_results(rows: Iterable[dict[str, Any]], tracking_uri: str | None) -> dict[str, Path]:
    """``{run_id: local results folder}`` of the cells that logged one (finished runs: cached)."""
    found, missing = {}, 0
    for run_id in sorted({str(r["run_id"]) for r in rows if r.get("run_id")}):
        try:
            found[run_id] = tracking.local_path(f"runs:/{run_id}/{RESULTS}", tracking_uri=tracking_uri)
        except Exception:  # noqa: BLE001  (a cell logged before per-sample results existed)
            missing += 1
    if missing:
        print(f"report: {missing} cells without a {RESULTS}/ artifact (no worst case or bootstrap for them)",
              file=sys.stderr)
    return found


def deacl_params(experiment: str, tracking_uri: str | None) -> list[dict[str, Any]]:
    """Every DeACL run of the experiment: id, status, params, last metrics and tags."""
    return [{"run_id": r.info.run_id, "status": r.info.status, "start_time": r.info.start_time, **r.data.params,
             "metrics": dict(r.data.metrics), "tags": dict(r.data.tags)}
            for r in tracking.deacl_runs(experiment, tracking_uri)]


def _trials_from_runs(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """A search's trials from its DeACL runs' last probe metrics (when its trials.csv is missing)."""
    rows = [{"number": k, "state": OUTCOME_STATE.get(r["tags"].get("search_outcome", ""), r["status"]),
             **{k: r["metrics"].get(k) for k in ("probe/clean_acc", "probe/embed_acc")},
             "gamma": r.get("gamma"), "dense_weight": r.get("dense_weight"), "run_id": r["run_id"]}
            for k, r in enumerate(sorted(runs, key=lambda r: r.get("start_time") or 0))]
    return pd.DataFrame(rows)


def searches(runs: list[dict[str, Any]], tracking_uri: str | None) -> dict[str, pd.DataFrame]:
    """``{search name: trials}`` of the searches the DeACL runs belong to (their parent run's
    ``pareto/trials.csv``, fetched afresh: a rerun search rewrites it)."""
    parents: dict[str, str] = {}
    for run in runs:
        if run["tags"].get("search") and run["tags"].get(PARENT_TAG):
            parents.setdefault(run["tags"]["search"], run["tags"][PARENT_TAG])
    out = {}
    for name, parent in sorted(parents.items()):
        try:
            with tempfile.TemporaryDirectory(prefix="report-search-") as tmp:
                out[name] = pd.read_csv(tracking.local_path(f"runs:/{parent}/{TRIALS}", Path(tmp), tracking_uri))
        except Exception:  # noqa: BLE001  (the search has not ended yet)
            out[name] = _trials_from_runs([r for r in runs if r["tags"].get("search") == name])
    return out


def source_line(experiment: str, tracking_uri: str | None) -> str:
    """``MLflow experiment 'x' at <uri>`` with any credentials in the URI hidden."""
    return f"MLflow experiment {experiment!r} at {redact(tracking.absolute_tracking_uri(tracking_uri))}"


def referenced_deacl_runs(rows: Iterable[dict[str, Any]], known: Iterable[str],
                          tracking_uri: str | None) -> list[dict[str, Any]]:
    """The DeACL runs whose students the rows evaluate (``runs:/<run>/checkpoints/...``) that are not
    in ``known``: a benchmark of another experiment's students (e.g. ``sweeps/poster.yaml``'s DeACL rows)."""
    client = MlflowClient(tracking.absolute_tracking_uri(tracking_uri))
    wanted = {m["run"] for row in rows if (m := STUDENT_URI.match(str(row.get("encoder.checkpoint") or "")))}
    out = []
    for run_id in sorted(wanted - set(known)):
        run = client.get_run(run_id)
        out.append({"run_id": run_id, "status": run.info.status, "start_time": run.info.start_time,
                    **run.data.params, "metrics": dict(run.data.metrics), "tags": dict(run.data.tags)})
    return out


def report_inputs(experiment: str, tracking_uri: str | None, rows: list[dict[str, Any]],
                  search_experiments: Iterable[str] = ()) -> dict[str, Any]:
    """The keyword arguments of ``write_report`` beyond the rows."""
    deacl = deacl_params(experiment, tracking_uri)
    deacl += referenced_deacl_runs(rows, [r["run_id"] for r in deacl], tracking_uri)
    others = [run for name in search_experiments for run in deacl_params(name, tracking_uri)]
    return {"artifacts": cell_results(rows, tracking_uri), "deacl_runs": deacl,
            "searches": searches(deacl + others, tracking_uri), "source": source_line(experiment, tracking_uri)}
