"""groundtruth.png: what each strategy's SAEs recovered, against L0, at a glance."""

from __future__ import annotations

from pathlib import Path
from statistics import mean

from sae_lens_e2e.analysis.groundtruth.report import GroundTruthReport, gt, l0
from sae_lens_e2e.analysis.report import TRAINED_WEIGHTS, SAERun

PANELS = (
    ("dec_max_cos", "decoder: mean max cosine\nwith the group's features"),
    ("enc_max_cos", "encoder: mean max cosine\nwith the group's features"),
    ("latents_on", "alive latents whose best match\nis in the group"),
)


def _curves(runs: list[SAERun]) -> dict[str, list[SAERun]]:
    curves: dict[str, list[SAERun]] = {}
    for run in runs:
        if l0(run) > 0:  # a dead SAE has no place on a log L0 axis
            curves.setdefault(run.strategy, []).append(run)
    return {k: sorted(v, key=l0) for k, v in curves.items()}


def plot_groundtruth(report: GroundTruthReport, path: Path) -> Path:
    """Recovery by decoder and encoder rows and latents spent, important features solid,
    ignored dashed, and KL, against L0, one colour per strategy (trained model). A control's
    SAEs appear as the grey chance level of the recovery panels (their mean over features
    of both groups and over the control's SAEs that kept latents alive)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(21, 5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    trained = [r for r in report.runs if r.weights == TRAINED_WEIGHTS]
    strategies = list(dict.fromkeys(r.strategy for r in trained))
    for strategy, runs in _curves(trained).items():
        color = f"C{strategies.index(strategy)}"
        xs = [l0(r) for r in runs]
        for ax, (key, _) in zip(axes, PANELS, strict=False):
            for group, line in (("important", "-"), ("ignored", "--")):
                ax.plot(xs, [gt(r, f"{key}/{group}") for r in runs], line, marker="o", color=color)
        axes[3].plot(xs, [r.metrics["kl"] for r in runs], "-", marker="o", color=color)
    handles = [Line2D([], [], color=f"C{i}", marker="o", label=s) for i, s in enumerate(strategies)]
    handles += [
        Line2D([], [], color="k", ls="-", label="important features"),
        Line2D([], [], color="k", ls="--", label="ignored features"),
    ]
    for control in [w for w in report.weights() if w != TRAINED_WEIGHTS]:
        alive = [r for r in report.runs if r.weights == control and l0(r) > 0]
        for ax, (key, _) in zip(axes[:2], PANELS, strict=False):
            if alive:
                level = mean(
                    mean(gt(r, f"{key}/{g}") for g in ("important", "ignored")) for r in alive
                )
                ax.axhline(level, color="grey", ls=":", lw=1.5)
        handles.append(Line2D([], [], color="grey", ls=":", label=f"{control} control (chance)"))
    for ax, (_, ylabel) in zip(axes, PANELS, strict=False):
        ax.set_ylabel(ylabel)
    axes[3].set_ylabel("KL(clean || SAE spliced) per token")
    axes[3].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("L0 (active latents per token)")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    fig.suptitle(
        f"{report.model_name}: SAEs at {report.hook} against the known features "
        f"({report.n_eval_tokens:,} held-out tokens)"
    )
    fig.savefig(path, dpi=100)
    return path
