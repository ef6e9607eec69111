"""What a report shows: its own plain data (`ReportData`, `SAERun`) and its file names."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_lens_e2e.analysis.geometry import GeometryResult

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
PARETO_PNG = "pareto.png"
GEOMETRY_PNG = "geometry.png"

SCALAR_TYPES = (int, float)
# The model's weights an SAE was trained and evaluated on: these, or a control's name
# (`random-weights`: the same architecture freshly initialised).
TRAINED_WEIGHTS = "trained"


@dataclass
class SAERun:
    """One trained (or loaded) SAE and its held-out evaluation."""

    label: str
    strategy: str  # local / e2e / e2e_ds, or "loaded" for SAEs evaluated beside them
    coefficient: float | None
    hook: str
    path: str  # SAELens folder, relative to the report folder when trained here
    metrics: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0  # the whole run: setup, training, evaluation, saving
    train_loop_seconds: float | None = None  # the training loop alone (the runner's)
    train_flops: float | None = None  # the runner's estimate (training/cost.py)
    paper: dict[str, Any] | None = None  # the paper's Table 2 numbers, shown beside ours
    weights: str = TRAINED_WEIGHTS  # the model's weights: trained, or a control's

    def scalar_metrics(self) -> dict[str, Any]:
        return {k: v for k, v in self.metrics.items() if isinstance(v, SCALAR_TYPES)}


@dataclass
class ReportData:
    """Everything the report shows; `out` is the report folder's final path."""

    out: Path
    model_name: str
    dataset_name: str
    hook: str
    d_in: int
    n_eval_tokens: int
    runs: list[SAERun]
    geometry: dict[str, GeometryResult]
    model_info: dict[str, Any]
    timings: dict[str, float]
    config: dict[str, Any]  # recorded as is in report.json
    setup: list[str]  # markdown bullet lines: how the SAEs were trained
    name: str = "quickstart"  # the command, in the title and the summary
    saes_dir: str | None = "saes"  # where the SAEs were written in the folder, if they were
    control_setup: list[str] = field(default_factory=list)  # what the control model is


# Explained variance, two ways (see training/evaluation.py): SAELens's pooled ratio of sums
# and the paper's per-token mean. Each EV column comes as this pair.
