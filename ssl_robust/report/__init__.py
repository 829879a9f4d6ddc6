"""The report of a sweep's finished cells: the poster's tables with intervals, the worst case over
attacks and check flags, robustness-vs-eps curves, the DeACL figure, the Pareto front of a search,
the poster's numbers side by side, as one self-contained HTML page plus PNG, CSV and Markdown files.

Every module works on plain rows and local files (no tracking server); ``fetch`` is the edge that
downloads a run's artifacts for ``ssl-robust report``. See docs/report.md.
"""
from ssl_robust.report.artifacts import CellArtifacts
from ssl_robust.report.checks import failed_checks
from ssl_robust.report.labels import encoder_label
from ssl_robust.report.frame import (config_fields, configuration_lines, reference_eps, results_frame,
                                     summary_table)
from ssl_robust.report.tables import curves, poster_table
from ssl_robust.report.write import write_report

__all__ = ["CellArtifacts", "config_fields", "configuration_lines", "curves", "encoder_label", "failed_checks",
           "poster_table", "reference_eps", "results_frame", "summary_table", "write_report"]
