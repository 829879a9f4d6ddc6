"""The only MLflow/boto3 code: experiments, one run per cell (``cells``) or fine-tune (``deacl``),
artifacts and URI -> local file (``artifacts``).

Local default: ``sqlite:///<abs cwd>/mlflow.db`` with artifacts beside it. Production:
``MLFLOW_TRACKING_URI`` names a server whose artifact store is S3 (``MLFLOW_S3_ENDPOINT_URL`` or
``AWS_ENDPOINT_URL_S3`` for MinIO or any endpoint). Credentials come only from the standard AWS
environment and are never logged.
"""
from ssl_robust.tracking.artifacts import local_path, localize, s3_client
from ssl_robust.tracking.cells import (HEAD_ARTIFACT, PHASES, CellRun, cell_params, fail_stale_runs, finished_cells,
                                       finished_runs, run_results)
from ssl_robust.tracking.deacl import DeaclRun, deacl_runs, deacl_students, student_encoder
from ssl_robust.tracking.preflight import PreflightError, fail_fast_env, preflight
from ssl_robust.tracking.sweeps import REPORT_ARTIFACT, SUMMARY_ARTIFACT, log_sweep_run
from ssl_robust.tracking.store import (UI_PORT, absolute_tracking_uri, code_version, default_tracking_uri,
                                       ensure_experiment, experiment_names, flatten, runs_page)

__all__ = ["HEAD_ARTIFACT", "PHASES", "CellRun", "DeaclRun", "deacl_runs", "deacl_students", "student_encoder", "absolute_tracking_uri", "cell_params", "code_version",
           "default_tracking_uri", "ensure_experiment", "experiment_names", "fail_stale_runs", "finished_cells", "finished_runs",
           "flatten", "local_path", "localize", "log_sweep_run", "REPORT_ARTIFACT", "SUMMARY_ARTIFACT", "run_results", "s3_client", "PreflightError", "fail_fast_env", "preflight",
           "UI_PORT", "runs_page"]
