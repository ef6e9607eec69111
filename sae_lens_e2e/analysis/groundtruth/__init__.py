"""Scoring SAEs against known features (split into the features a model's output uses and the
ones it ignores) with SAELens's synthetic-data metrics, and the ground-truth study's report."""

from sae_lens_e2e.analysis.groundtruth.metrics import GROUPS, GroundTruthScorer, max_cosine
from sae_lens_e2e.analysis.groundtruth.report import (
    GROUNDTRUTH_PNG,
    REPORT_ENTRIES,
    GroundTruthReport,
    format_summary,
    write_groundtruth_report,
)

__all__ = [
    "GROUNDTRUTH_PNG",
    "GROUPS",
    "REPORT_ENTRIES",
    "GroundTruthReport",
    "GroundTruthScorer",
    "format_summary",
    "max_cosine",
    "write_groundtruth_report",
]
