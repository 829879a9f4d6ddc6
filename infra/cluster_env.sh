#!/usr/bin/env bash
# Write ~/.ssl_robust/cluster.env from the launching user's environment, for infra/cluster.yaml
# (it is synced to every node and exported before Ray starts). Only tracking/endpoint settings by
# default; AWS keys only with --with-credentials (e.g. MinIO), and never into the repository.
#
#   export MLFLOW_TRACKING_URI=http://mlflow.internal:5000
#   infra/cluster_env.sh [--with-credentials]
set -euo pipefail

out="${HOME}/.ssl_robust/cluster.env"
names=(MLFLOW_TRACKING_URI MLFLOW_S3_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_DEFAULT_REGION
       MLFLOW_EXPERIMENT_NAME SSL_ROBUST_DATA_S3 HF_HUB_OFFLINE)
if [[ "${1:-}" == "--with-credentials" ]]; then
  names+=(AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN MLFLOW_TRACKING_USERNAME
          MLFLOW_TRACKING_PASSWORD)
fi

mkdir -p "$(dirname "$out")"
umask 077
: > "$out"
for name in "${names[@]}"; do
  if [[ -n "${!name:-}" ]]; then
    printf '%s=%q\n' "$name" "${!name}" >> "$out"
    echo "cluster.env: $name"
  fi
done
echo "wrote $out"
