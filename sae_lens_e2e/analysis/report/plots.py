"""pareto.png: CE increase against L0, alive latents and training compute, one curve per strategy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae_lens_e2e.analysis.report.data import TRAINED_WEIGHTS, ReportData, SAERun

# ----------------------------------------------------------------------------- plots


def plot_pareto(result: ReportData, path: Path) -> Path:
    """CE increase against L0, alive latents and (for SAEs trained here) training compute,
    one curve per strategy."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = [
        ("l0", "L0 (active latents per token)"),
        ("alive", f"alive latents (over {result.n_eval_tokens:,} held-out tokens)"),
    ]
    if any(run.train_flops is not None for run in result.runs):  # SAEs trained here
        panels.append(("flops", "training compute (FLOPs, estimate)"))
    fig = Figure(figsize=(6 * len(panels), 5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels))
    groups: dict[str, list[SAERun]] = {}
    several_hooks = len({run.hook for run in result.runs}) > 1
    for run in result.runs:
        name = run.strategy if run.strategy != "loaded" else run.label
        name = f"{name} @ {run.hook}" if several_hooks else name
        groups.setdefault(
            name if run.weights == TRAINED_WEIGHTS else f"{name} ({run.weights})", []
        ).append(run)
    for ax, (key, xlabel) in zip(axes, panels, strict=True):
        labels = []
        for i, (name, runs) in enumerate(groups.items()):
            runs = [r for r in runs if key != "flops" or r.train_flops is not None]
            # key: two SAEs with the same numbers (one SAE from two sources) must not compare
            pts = sorted(
                ((_x(r, key), r.metrics["ce_loss_increase"], r) for r in runs), key=lambda p: p[:2]
            )
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            control = runs and runs[0].weights != TRAINED_WEIGHTS
            ax.plot(xs, ys, "--" if control else "-", marker="x" if control else "o",
                    color=f"C{i}", label=name)  # fmt: skip
            labels += [
                (x, y, f"λ={r.coefficient:g}", f"C{i}")
                for x, y, r in pts
                if r.coefficient is not None
            ]
        ax.set_xlabel(xlabel)
        if key == "flops":
            ax.set_xscale("log")
        ax.set_ylabel("CE loss increase (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.margins(x=0.08, y=0.1)  # room for the labels of the outermost points
        if key == "alive":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        annotate_apart(ax, labels)
    fig.suptitle(f"{result.model_name}, SAEs at {result.hook} (held-out, lower is better)")
    fig.savefig(path, dpi=120)
    return path


def annotate_apart(ax: Any, labels: list[tuple[float, float, str, str]]) -> None:
    """Label points, stacking a label above earlier ones it would overlap (SAEs that reach
    nearly the same alive count or L0 would otherwise print their lambdas on top of each
    other)."""
    ax.figure.draw_without_rendering()  # final layout, so data -> pixels is known
    line = 9 * ax.figure.dpi / 72  # one 7-pt label with spacing, in pixels
    placed: list[tuple[float, float, float]] = []  # x, y, width of labels put so far
    for x, y, text, color in sorted(labels, key=lambda label: (label[1], label[0])):
        px, py = ax.transData.transform((x, y))
        width = len(text) * 5 * ax.figure.dpi / 72
        shift = 0
        while any(
            abs(px - qx) < max(width, w) and abs(py + shift * line - qy) < line
            for qx, qy, w in placed
        ):
            shift += 1
        placed.append((px, py + shift * line, width))
        ax.annotate(
            text,
            (x, y),
            xytext=(3, 3 + shift * 9),
            textcoords="offset points",
            fontsize=7,
            color=color,
            arrowprops=dict(arrowstyle="-", color=color, lw=0.5, alpha=0.6) if shift else None,
        )


def _x(run: SAERun, key: str) -> float:
    if key == "flops":
        return float(run.train_flops or 0.0)
    return float(run.metrics[f"{key}/{run.hook}"])
