"""Histograms of the geometry results (within, cross, one-to-one; decoder and encoder)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sae_lens_e2e.analysis.geometry.results import GeometryResult, Matches
from sae_lens_e2e.atomic import atomic_file

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


_PANELS = (
    ("within", "within SAE", "max cosine similarity"),
    ("cross", "to other SAE (max)", "max cosine similarity"),
    ("one_to_one", "one-to-one", "cosine similarity to its partner"),
)
TITLE = (
    "Alive latents' directions: each latent's highest cosine similarity to another latent of "
    "its SAE (within), to the other SAE's latents (max), or to its partner in the best "
    "one-to-one pairing"
)


def _series(parts: dict[str, Matches | None], attr: str) -> dict[str, tuple[np.ndarray, str]]:
    """Label -> (matched cosines, colour), a result's colour the same in every panel. Within
    an SAE only the first SAE of an `A -> B` label is measured, so it is labelled `A`; a
    one-to-one pairing is the same both ways, so `A -> B` and `B -> A` are drawn once, as
    `A <-> B` (else one curve would hide exactly under the other)."""
    out: dict[str, tuple[np.ndarray, str]] = {}
    for i, (label, matches) in enumerate(parts.items()):
        values = np.sort(matches.matched().numpy()) if matches is not None else np.empty(0)
        if not values.size:
            continue
        source, _, target = label.partition(" -> ")
        twin = f"{target} -> {source}"
        if attr == "one_to_one" and twin in out and np.array_equal(out[twin][0], values):
            both = f"{target} <-> {source}"
            out = {both if k == twin else k: v for k, v in out.items()}
            continue
        out[source if attr == "within" else label] = (values, f"C{i}")
    return out


def _draw_panel(
    ax: Axes, series: dict[str, tuple[np.ndarray, str]], title: str, xlabel: str, bins: int
) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density (histogram)")
    if not series:
        ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
        return
    lo = min(0.0, *(float(v.min()) for v, _ in series.values()))
    for label, (vals, color) in series.items():
        label_text = f"{label} (mean {vals.mean():.3f}, n={vals.size})"
        ax.hist(
            vals,
            bins=bins,
            range=(lo, 1.0),
            histtype="step",
            density=True,
            color=color,
            label=label_text,
        )
    # Below the axes, so that it never covers a peak.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)


def plot_geometry(
    results: Mapping[str, GeometryResult], path: str | os.PathLike[str], *, bins: int = 50
) -> Path:
    """Histogram PNG: rows decoder/encoder, columns within/cross max/one-to-one, one colour
    per result label (`A -> B` for SAE A compared with SAE B). Written atomically (temp file
    + rename) so readers never see half a PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(15, 9.5), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(TITLE, fontsize=11, wrap=True)
    axes = fig.subplots(2, len(_PANELS), squeeze=False)
    for row, kind in enumerate(("decoder", "encoder")):
        for col, (attr, title, xlabel) in enumerate(_PANELS):
            parts = {label: getattr(getattr(r, kind), attr) for label, r in results.items()}
            _draw_panel(axes[row][col], _series(parts, attr), f"{kind}: {title}", xlabel, bins)
    return _save_atomic(fig, Path(path))


def _save_atomic(fig: Figure, path: Path) -> Path:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path
