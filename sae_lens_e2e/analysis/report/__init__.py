"""The report of evaluated SAEs: `report.md` (table), `report.json`, `pareto.png`,
`geometry.png` and the one-screen summary printed at the end.

It takes plain data of its own (`ReportData`, `SAERun`), so any pipeline (the quickstart,
the evaluation of published SAEs) can fill it without the report knowing that pipeline.
`data` holds those types, `table` the table, `comparison` the equal-L0 comparisons,
`plots` pareto.png and `write` the files and the summary.
"""

from sae_lens_e2e.analysis.report.comparison import cheap_path_comparison, equal_l0_comparison
from sae_lens_e2e.analysis.report.data import (
    GEOMETRY_PNG,
    PARETO_PNG,
    REPORT_JSON,
    REPORT_MD,
    TRAINED_WEIGHTS,
    ReportData,
    SAERun,
)
from sae_lens_e2e.analysis.report.table import EV_KINDS, parse_markdown_table
from sae_lens_e2e.analysis.report.write import format_summary, report_dict, write_report

__all__ = [
    "EV_KINDS",
    "GEOMETRY_PNG",
    "PARETO_PNG",
    "REPORT_JSON",
    "REPORT_MD",
    "ReportData",
    "SAERun",
    "TRAINED_WEIGHTS",
    "cheap_path_comparison",
    "equal_l0_comparison",
    "format_summary",
    "parse_markdown_table",
    "report_dict",
    "write_report",
]
