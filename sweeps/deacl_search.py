"""Optuna search of DeACL hyperparameters on Ray Tune, tracked in MLflow (``ssl-robust search``).

    python sweeps/deacl_search.py --config sweeps/deacl_search_quickstart.yaml   # offline, ~1 minute on 2 CPUs
    ray submit infra/cluster.yaml sweeps/deacl_search.py -- --config sweeps/deacl_search.yaml

All options: ``python sweeps/deacl_search.py --help``.
"""
import sys

from ssl_robust.cli import main

if __name__ == "__main__":
    sys.exit(main(["search", *sys.argv[1:]]))
