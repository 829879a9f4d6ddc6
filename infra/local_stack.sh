#!/usr/bin/env bash
# A local development stack: an S3 endpoint (MinIO if installed, else moto's server) and an
# `mlflow server` (SQLite backend unless BACKEND_STORE_URI names another, e.g. a PostgreSQL database
# postgresql+psycopg2://user@host:port/db as in production; artifacts proxied to s3://$BUCKET/mlartifacts), on loopback.
#
#   infra/local_stack.sh start     # prints the variables to export
#   infra/local_stack.sh stop
#
# Settings (environment): STATE_DIR (~/.ssl_robust/local_stack), MLFLOW_PORT (5050: not `mlflow ui`'s
# 5000), S3_PORT (9050: not MinIO's usual 9000),
# BUCKET (ssl-robust), PYTHON (python), BACKEND_STORE_URI (sqlite:///$STATE_DIR/mlflow.db). Without AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY set,
# local dummy keys are used (the local endpoint accepts any).
set -euo pipefail

STATE_DIR="${STATE_DIR:-$HOME/.ssl_robust/local_stack}"
mkdir -p "$STATE_DIR" && STATE_DIR="$(cd "$STATE_DIR" && pwd)"
MLFLOW_PORT="${MLFLOW_PORT:-5050}"
S3_PORT="${S3_PORT:-9050}"
BUCKET="${BUCKET:-ssl-robust}"
PYTHON="${PYTHON:-python}"
BIN="$(dirname "$(command -v "$PYTHON")")"
SHOWN_SECRET="<the secret you started the stack with>"
if [[ -z "${AWS_ACCESS_KEY_ID:-}" || -z "${AWS_SECRET_ACCESS_KEY:-}" ]]; then
  export AWS_ACCESS_KEY_ID=local-dev AWS_SECRET_ACCESS_KEY=local-dev-secret  # dummy, loopback only
  SHOWN_SECRET="$AWS_SECRET_ACCESS_KEY"
fi
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
S3_URL="http://127.0.0.1:${S3_PORT}"

require_free_port() {  # port, name, variable: refuse a port another server already holds
  if ! "$PYTHON" -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))" "$1" \
    2>/dev/null; then
    echo "$2: port $1 on 127.0.0.1 is already in use (another server, e.g. \`mlflow ui\`?); set $3" >&2
    exit 1
  fi
}

wait_for() {  # url, name, pid: the process this script started must answer (another server on the
  # same port must not pass for it) and still be alive once it does
  for _ in $(seq 1 120); do
    if ! kill -0 "$3" 2>/dev/null; then
      echo "$2 exited before it answered at $1 (port taken?); see $STATE_DIR/*.log" >&2
      return 1
    fi
    if "$PYTHON" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$1" \
      >/dev/null 2>&1; then
      sleep 0.5
      if kill -0 "$3" 2>/dev/null; then return 0; fi
      echo "$2 exited after $1 answered: another server holds the port; see $STATE_DIR/*.log" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "$2 did not answer at $1; see $STATE_DIR/*.log" >&2
  return 1
}

start_s3() {
  if command -v minio >/dev/null; then
    MINIO_ROOT_USER="$AWS_ACCESS_KEY_ID" MINIO_ROOT_PASSWORD="$AWS_SECRET_ACCESS_KEY" \
      nohup minio server "$STATE_DIR/minio" --address "127.0.0.1:${S3_PORT}" \
      >"$STATE_DIR/s3.log" 2>&1 &
    echo $! >"$STATE_DIR/s3.pid"
    wait_for "$S3_URL/minio/health/live" minio "$(cat "$STATE_DIR/s3.pid")"
  else
    nohup "$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$STATE_DIR/s3.log" 2>&1 &
    echo $! >"$STATE_DIR/s3.pid"
    wait_for "$S3_URL/moto-api/" moto "$(cat "$STATE_DIR/s3.pid")"
  fi
  AWS_ENDPOINT_URL_S3="$S3_URL" "$PYTHON" - "$BUCKET" <<'PY'
import sys, boto3
s3 = boto3.client("s3")
if sys.argv[1] not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
    s3.create_bucket(Bucket=sys.argv[1])
PY
}

start_mlflow() {
  MLFLOW_S3_ENDPOINT_URL="$S3_URL" AWS_ENDPOINT_URL_S3="$S3_URL" \
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    nohup "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
      --backend-store-uri "${BACKEND_STORE_URI:-sqlite:///$STATE_DIR/mlflow.db}" \
      --artifacts-destination "s3://$BUCKET/mlartifacts" >"$STATE_DIR/mlflow.log" 2>&1 &
  echo $! >"$STATE_DIR/mlflow.pid"
  wait_for "http://127.0.0.1:${MLFLOW_PORT}/health" "mlflow server" "$(cat "$STATE_DIR/mlflow.pid")"
}

stop() {
  for name in mlflow s3; do
    if [[ -f "$STATE_DIR/$name.pid" ]]; then
      kill "$(cat "$STATE_DIR/$name.pid")" 2>/dev/null || true
      rm -f "$STATE_DIR/$name.pid"
      echo "stopped $name"
    fi
  done
}

case "${1:-start}" in
  start)
    require_free_port "$S3_PORT" "S3 endpoint" S3_PORT
    require_free_port "$MLFLOW_PORT" "mlflow server" MLFLOW_PORT
    start_s3
    start_mlflow
    cat <<EOF
# local stack up (logs and state in $STATE_DIR). Export:
export MLFLOW_TRACKING_URI=http://127.0.0.1:${MLFLOW_PORT}
# only for reading s3:// URIs directly (e.g. encoder checkpoints); MLflow needs none of these:
export AWS_ENDPOINT_URL_S3=${S3_URL}
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID}
export AWS_SECRET_ACCESS_KEY=${SHOWN_SECRET}
# MLflow UI: http://127.0.0.1:${MLFLOW_PORT}   artifacts: s3://${BUCKET}/mlartifacts
# stop: STATE_DIR=$STATE_DIR infra/local_stack.sh stop
EOF
    ;;
  stop) stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
