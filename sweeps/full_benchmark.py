"""The benchmark sweep on Ray Tune, tracked in MLflow (``ssl-robust sweep`` for ``ray submit``).

    python sweeps/full_benchmark.py                                  # sweeps/full_benchmark.yaml
    python sweeps/full_benchmark.py --config sweeps/quickstart.yaml  # offline, a few minutes on CPU
    ray submit infra/cluster.yaml sweeps/full_benchmark.py -- --config sweeps/full_benchmark.yaml

All options: ``python sweeps/full_benchmark.py --help``.
"""
import sys

from ssl_robust.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
