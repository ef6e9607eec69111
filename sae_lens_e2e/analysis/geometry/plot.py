"""Histograms of the geometry results (within, cross, one-to-one; decoder and encoder)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from sae_lens_e2e.analysis.geometry.results import GeometryResult, Matches
from sae_lens_e2e.atomic import atomic_file

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


_PANELS = (("within", "within SAE"), ("cross", "to other SAE (max)"), ("one_to_one", "one-to-one"))


def _draw_panel(ax: Axes, parts: dict[str, Matches | None], title: str, bins: int) -> None:
    series = {label: m.matched().numpy() for label, m in parts.items() if m is not None}
    series = {label: v for label, v in series.items() if v.size}
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("max cosine similarity")
    if not series:
        ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
        return
    lo = min(0.0, *(float(v.min()) for v in series.values()))
    for i, (label, vals) in enumerate(series.items()):
        label_text = f"{label} (mean {vals.mean():.3f}, n={vals.size})"
        ax.hist(
            vals,
            bins=bins,
            range=(lo, 1.0),
            histtype="step",
            density=True,
            color=f"C{i}",
            label=label_text,
        )
    ax.legend(fontsize=7)


def plot_geometry(
    results: Mapping[str, GeometryResult], path: str | os.PathLike[str], *, bins: int = 50
) -> Path:
    """Histogram PNG: rows decoder/encoder, columns within/cross max/one-to-one, one colour
    per result label. Written atomically (temp file + rename) so readers never see half a PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(15, 8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(_PANELS), squeeze=False)
    for row, kind in enumerate(("decoder", "encoder")):
        for col, (attr, title) in enumerate(_PANELS):
            parts = {label: getattr(getattr(r, kind), attr) for label, r in results.items()}
            _draw_panel(axes[row][col], parts, f"{kind}: {title}", bins)
    return _save_atomic(fig, Path(path))


def _save_atomic(fig: Figure, path: Path) -> Path:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path
