"""Render a sweep's poster tables and robustness curves from its MLflow runs.

    python dashboards/render.py --experiment quickstart --out dashboards/quickstart
    (same as: ssl-robust report quickstart --out dashboards/quickstart)
"""
import sys

from ssl_robust.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
