"""Comparisons at equal L0: e2e vs local (interpolated in log L0), and what share of full e2e's
gain the cheap local->e2e path buys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sae_lens_e2e.analysis.report.control import trained
from sae_lens_e2e.analysis.report.data import ReportData, SAERun

# ----------------------------------------------------------------------------- comparison


def interp_log(x: float, xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Linear interpolation in log(x); None outside the curve's range (no extrapolation)."""
    pts = sorted(zip(xs, ys, strict=True))
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1 and x0 > 0:
            t = 0.0 if x1 == x0 else (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return None


def equal_l0_comparison(result: ReportData) -> list[dict[str, Any]]:
    """For each e2e / e2e_ds SAE: local's CE increase at the same L0, interpolated between
    local runs (only inside the local runs' L0 range; nothing is extrapolated). Trained
    model's runs only (a control's runs are compared in the control section)."""
    runs = trained(result.runs)
    local = [r for r in runs if r.strategy == "local"]
    xs = [r.metrics[f"l0/{r.hook}"] for r in local]
    ys = [r.metrics["ce_loss_increase"] for r in local]
    rows = []
    for run in runs:
        if run.strategy not in ("e2e", "e2e_ds") or len(local) < 2:
            continue
        l0 = run.metrics[f"l0/{run.hook}"]
        rows.append(
            {
                "label": run.label,
                "l0": l0,
                "ce_increase": run.metrics["ce_loss_increase"],
                "local_ce_increase_at_l0": interp_log(l0, xs, ys),
            }
        )
    return rows


INTERPOLATION_NOTE = (
    "Local's CE increase at an e2e SAE's L0 is interpolated linearly in log L0 between the two "
    "local runs whose L0 bracket it; outside the local runs' L0 range nothing is compared "
    "(no extrapolation)."
)


def _curve(runs: Sequence[SAERun], strategy: str) -> tuple[list[float], list[float]]:
    runs = [r for r in runs if r.strategy == strategy]
    return [r.metrics[f"l0/{r.hook}"] for r in runs], [r.metrics["ce_loss_increase"] for r in runs]


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def cheap_path_comparison(runs: Sequence[SAERun]) -> list[dict[str, Any]]:
    """For each `local->S` SAE: local's and S's CE increase at its L0 (interpolated, never
    extrapolated), the share of S's improvement over local it reaches, and its training
    wall time and FLOPs relative to the mean of the full S runs (trained model's runs)."""
    runs = trained(runs)
    rows = []
    for run in runs:
        if "->" not in run.strategy:
            continue
        final = run.strategy.split("->")[1]
        l0 = run.metrics[f"l0/{run.hook}"]
        local, full = interp_log(l0, *_curve(runs, "local")), interp_log(l0, *_curve(runs, final))
        ce = run.metrics["ce_loss_increase"]
        gap = None if local is None or full is None else local - full
        fulls = [r for r in runs if r.strategy == final]
        time_full = _mean([r.train_loop_seconds for r in fulls])
        flops_full = _mean([r.train_flops for r in fulls])
        rows.append(
            {
                "label": run.label,
                "l0": l0,
                "ce_increase": ce,
                "local_ce_increase_at_l0": local,
                "full_ce_increase_at_l0": full,
                "share_of_full_improvement": None if not gap or gap <= 0 else (local - ce) / gap,
                "wall_time_vs_full": _ratio(run.train_loop_seconds, time_full),
                "flops_vs_full": _ratio(run.train_flops, flops_full),
            }
        )
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def cheap_path_lines(result: ReportData) -> list[str]:
    lines = []
    for row in cheap_path_comparison(result.runs):
        share = row["share_of_full_improvement"]
        where = (
            "outside the L0 range of the local or full runs (or no improvement to share)"
            if share is None
            else f"{share:.0%} of the full run's CE-increase improvement over local at this L0 "
            f"(local {row['local_ce_increase_at_l0']:.4f}, full {row['full_ce_increase_at_l0']:.4f})"
        )
        cost = ", ".join(
            f"{name} {row[key]:.0%} of the full runs'"
            for name, key in (("wall time", "wall_time_vs_full"), ("FLOPs", "flops_vs_full"))
            if row[key] is not None
        )
        lines.append(
            f"{row['label']}: L0 {row['l0']:.1f}, CE increase {row['ce_increase']:.4f}: {where}"
            + (f"; {cost}" if cost else "")
        )
    return lines


def comparison_lines(result: ReportData) -> list[str]:
    lines = []
    for row in equal_l0_comparison(result):
        local = row["local_ce_increase_at_l0"]
        if local is None:
            lines.append(
                f"{row['label']}: L0 {row['l0']:.1f}, CE increase {row['ce_increase']:.4f} "
                "(outside the local runs' L0 range; no comparison)"
            )
            continue
        verdict = "lower" if row["ce_increase"] < local else "higher"
        lines.append(
            f"{row['label']}: L0 {row['l0']:.1f}, CE increase {row['ce_increase']:.4f} vs "
            f"local {local:.4f} at the same L0 (interpolated in log L0; {verdict})"
        )
    return lines
