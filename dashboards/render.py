"""Render a sweep's report from its MLflow runs: the poster's tables with 95 % intervals and the worst
case over attacks, robustness-vs-eps curves, checks across cells, the DeACL figure, the Pareto front
of a search and the poster's numbers side by side (one offline HTML page, PNG, CSV, Markdown).

    python dashboards/render.py quickstart --out dashboards/quickstart
    (same as: ssl-robust report quickstart --out dashboards/quickstart; see docs/report.md)
"""
import sys

from ssl_robust.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
