"""DeACL fine-tunes over a grid on Ray Tune, then the benchmark of their checkpoints (``ssl-robust deacl-sweep``).

    python sweeps/deacl_sweep.py --config sweeps/deacl_quickstart.yaml   # offline, a few minutes on CPU
    ray submit infra/cluster.yaml sweeps/deacl_sweep.py -- --config sweeps/deacl.yaml

All options: ``python sweeps/deacl_sweep.py --help``.
"""
import sys

from ssl_robust.cli import main

if __name__ == "__main__":
    sys.exit(main(["deacl-sweep", *sys.argv[1:]]))
