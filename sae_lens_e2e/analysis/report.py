"""The report of evaluated SAEs: `report.md` (table), `report.json`, `pareto.png`,
`geometry.png` and the one-screen summary printed at the end.

It takes plain data of its own (`ReportData`, `SAERun`), so any pipeline (the quickstart,
an evaluation of published SAEs) can fill it without the report knowing that pipeline.

Every number in the table comes from one held-out evaluation of the SAEs as saved (stock
SAELens folders). CE increase = CE with SAE - clean CE; CE recovered =
(zero-ablation CE - CE with SAE) / (zero-ablation CE - clean CE).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_lens_e2e.analysis.evaluation import alive_tokens_note
from sae_lens_e2e.analysis.geometry import GeometryResult, plot_geometry

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
PARETO_PNG = "pareto.png"
GEOMETRY_PNG = "geometry.png"

SCALAR_TYPES = (int, float)


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


# Explained variance, two ways (see analysis/evaluation.py): SAELens's pooled ratio of sums
# and the paper's per-token mean. Each EV column comes as this pair.
EV_KINDS = {"pooled": "explained_variance", "per token": "explained_variance_per_token"}
# Fixed columns of the table; downstream EV columns follow (see `downstream_keys`).
_COLUMNS = (
    "strategy",
    "lambda",
    "L0",
    "alive",
    "alive tokens",
    "CE clean",
    "CE with SAE",
    "CE zero-abl.",
    "CE increase",
    "CE recovered",
    "KL",
    *(f"EV at SAE ({kind})" for kind in EV_KINDS),
)
# The one-screen summary's columns: table header -> its shorter header there.
_SUMMARY_COLUMNS = {
    **{h: h for h in ("strategy", "lambda", "L0", "alive", "CE increase", "CE recovered", "KL")},
    **{f"EV at SAE ({kind})": f"EV {kind}" for kind in EV_KINDS},
}
# The paper's numbers beside ours, when some run has them: (header, key in SAERun.paper).
_PAPER_COLUMNS = (
    ("paper L0", "l0"),
    ("paper alive", "alive"),
    ("paper CE increase", "ce_increase"),
)


def downstream_keys(result: ReportData) -> list[str]:
    """Hooks of the next and the last block after the SAE with EV columns (every hook's EV
    is in report.json)."""
    keys = sorted(
        {
            k.removeprefix("explained_variance/")
            for run in result.runs
            for k in run.metrics
            if k.startswith("explained_variance/")
        }
        - {run.hook for run in result.runs},
        key=_block_index,
    )
    return keys if len(keys) <= 2 else [keys[0], keys[-1]]


def _block_index(key: str) -> int:
    parts = key.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else -1


def table_rows(result: ReportData) -> list[list[str]]:
    """One row per SAE, in the order they were trained."""
    posts = downstream_keys(result)
    paper = _has_paper(result)
    return [_row(run, posts) + (_paper_cells(run) if paper else []) for run in result.runs]


def _has_paper(result: ReportData) -> bool:
    return any(run.paper for run in result.runs)


def _paper_cells(run: SAERun) -> list[str]:
    return [str((run.paper or {}).get(key, "-")) for _, key in _PAPER_COLUMNS]


def _row(run: SAERun, posts: Sequence[str]) -> list[str]:
    m = run.metrics
    d_sae = m[f"alive/{run.hook}"] + m[f"dead/{run.hook}"]
    cells = [
        run.strategy if run.strategy != "loaded" else run.label,
        "-" if run.coefficient is None else f"{run.coefficient:g}",
        f"{m[f'l0/{run.hook}']:.2f}",
        f"{m[f'alive/{run.hook}']}/{d_sae}",
        f"{m['n_tokens']:,}",
        f"{m['ce_loss_clean']:.4f}",
        f"{m['ce_loss_with_sae']:.4f}",
        f"{m['ce_loss_zero_ablation']:.4f}",
        f"{m['ce_loss_increase']:.4f}",
        f"{m['ce_loss_recovered']:.4f}",
        f"{m['kl']:.4f}",
    ]
    return cells + [
        _fmt(m.get(f"{key}/{hook}")) for hook in (run.hook, *posts) for key in EV_KINDS.values()
    ]


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def table_headers(result: ReportData) -> list[str]:
    posts = downstream_keys(result)
    paper = [h for h, _ in _PAPER_COLUMNS] if _has_paper(result) else []
    return [*_COLUMNS, *(f"EV {hook} ({kind})" for hook in posts for kind in EV_KINDS), *paper]


def alive_note(result: ReportData) -> str:
    """The warning of `alive_tokens_note` for the fewest tokens any SAE was evaluated on."""
    return alive_tokens_note(min(run.metrics["n_tokens"] for run in result.runs))


# ----------------------------------------------------------------------------- comparison


def _interp(x: float, xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Linear interpolation in log(x); None outside the curve's range (no extrapolation)."""
    pts = sorted(zip(xs, ys, strict=True))
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1 and x0 > 0:
            t = 0.0 if x1 == x0 else (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return None


def equal_l0_comparison(result: ReportData) -> list[dict[str, Any]]:
    """For each e2e / e2e_ds SAE: local's CE increase at the same L0, interpolated between
    local runs (only inside the local runs' L0 range; nothing is extrapolated)."""
    local = [r for r in result.runs if r.strategy == "local"]
    xs = [r.metrics[f"l0/{r.hook}"] for r in local]
    ys = [r.metrics["ce_loss_increase"] for r in local]
    rows = []
    for run in result.runs:
        if run.strategy not in ("e2e", "e2e_ds") or len(local) < 2:
            continue
        l0 = run.metrics[f"l0/{run.hook}"]
        rows.append(
            {
                "label": run.label,
                "l0": l0,
                "ce_increase": run.metrics["ce_loss_increase"],
                "local_ce_increase_at_l0": _interp(l0, xs, ys),
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
    wall time and FLOPs relative to the mean of the full S runs."""
    rows = []
    for run in runs:
        if "->" not in run.strategy:
            continue
        final = run.strategy.split("->")[1]
        l0 = run.metrics[f"l0/{run.hook}"]
        local, full = _interp(l0, *_curve(runs, "local")), _interp(l0, *_curve(runs, final))
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
        groups.setdefault(f"{name} @ {run.hook}" if several_hooks else name, []).append(run)
    for ax, (key, xlabel) in zip(axes, panels, strict=True):
        labels = []
        for i, (name, runs) in enumerate(groups.items()):
            runs = [r for r in runs if key != "flops" or r.train_flops is not None]
            # key: two SAEs with the same numbers (one SAE from two sources) must not compare
            pts = sorted(
                ((_x(r, key), r.metrics["ce_loss_increase"], r) for r in runs), key=lambda p: p[:2]
            )
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(xs, ys, marker="o", color=f"C{i}", label=name)
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
        _annotate_apart(ax, labels)
    fig.suptitle(f"{result.model_name}, SAEs at {result.hook} (held-out, lower is better)")
    fig.savefig(path, dpi=120)
    return path


def _annotate_apart(ax: Any, labels: list[tuple[float, float, str, str]]) -> None:
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


# ----------------------------------------------------------------------------- writing


def report_dict(result: ReportData) -> dict[str, Any]:
    """Everything in report.md, at full precision, for scripts and tests."""
    return {
        "model": result.model_name,
        "dataset": result.dataset_name,
        "hook": result.hook,
        "d_in": result.d_in,
        "n_eval_tokens": result.n_eval_tokens,
        "model_info": result.model_info,
        "config": result.config,
        "timings_seconds": result.timings,
        "runs": [
            {
                "label": r.label,
                "strategy": r.strategy,
                "coefficient": r.coefficient,
                "hook": r.hook,
                "path": r.path,
                "train_seconds": r.train_seconds,
                "train_loop_seconds": r.train_loop_seconds,
                "train_flops": r.train_flops,
                "metrics": r.scalar_metrics(),
                "paper": r.paper,
            }
            for r in result.runs
        ],
        "equal_l0_comparison": equal_l0_comparison(result),
        "cheap_path_comparison": cheap_path_comparison(result.runs),
        "geometry": {label: geometry_summary(g) for label, g in result.geometry.items()},
    }


def _model_lines(result: ReportData) -> list[str]:
    info = result.model_info
    if "unigram_ce" not in info:
        return [f"- Model: `{result.model_name}`; dataset `{result.dataset_name}`."]
    lm = info["lm"]
    return [
        f"- Model: tiny byte-level transformer ({lm['n_layers']} layers, d_model "
        f"{lm['d_model']}, {info['n_params']:,} parameters) trained on {info['train_bytes']:,} "
        f"bytes of `{result.dataset_name}`.",
        f"- Its held-out loss: {info['heldout_loss']:.3f} nats/byte (unigram baseline "
        f"{info['unigram_ce']:.3f}); held-out documents are never trained on.",
    ]


def same_index_fraction(geometry: GeometryResult) -> float | None:
    """Share of decoder cross matches that pick the same latent index in the other SAE.

    Near 1 means the two SAEs barely moved from a shared initialisation, so their cross
    similarity says nothing about what they learned; the quickstart avoids this by seeding
    each strategy differently (see `quickstart.sweep.sae_seed`).
    """
    cross = geometry.decoder.cross
    if cross is None:
        return None
    ok = cross.target >= 0
    return float((cross.target[ok] == cross.source[ok]).float().mean()) if ok.any() else None


def geometry_summary(geometry: GeometryResult) -> dict[str, float]:
    same = same_index_fraction(geometry)
    extra = {} if same is None else {"decoder/cross/same_index_fraction": same}
    return geometry.summary() | extra


def _geometry_lines(result: ReportData) -> list[str]:
    lines = []
    for label, g in result.geometry.items():
        s = geometry_summary(g)
        parts = [f"within {s['decoder/within/mean']:.3f}"]
        if "decoder/cross/mean" in s:
            parts.append(f"cross max {s['decoder/cross/mean']:.3f}")
        if "decoder/one_to_one/mean" in s:
            parts.append(f"one-to-one {s['decoder/one_to_one/mean']:.3f}")
        lines.append(f"- `{label}`: decoder mean max cosine " + ", ".join(parts))
    if result.geometry:
        lines += [
            "",
            "Each strategy's SAEs start from their own initialisation (seed + strategy index; "
            "the data order is the same for all), so cross similarity is not inherited from a "
            "shared start. `decoder/cross/same_index_fraction` in report.json checks this.",
        ]
    return lines


def markdown_report(result: ReportData) -> str:
    out = [
        f"# sae-lens-e2e {result.name} report",
        "",
        *_model_lines(result),
        *result.setup,
        f"- Evaluated on {result.n_eval_tokens:,} held-out tokens; CE in nats/token.",
        "",
        "CE increase = CE with SAE - CE clean. CE recovered = (CE zero-abl. - CE with SAE) / "
        "(CE zero-abl. - CE clean). EV = explained variance (at the SAE: SAE output vs input; "
        "downstream: residual stream with the SAE spliced in vs the clean run), two ways: "
        "*pooled* is SAELens's, 1 - Σ‖x - x̂‖² / Σ‖x - mean‖² over all tokens; *per token* is "
        "the paper's (reference `calc_explained_variance`), 1 - ‖x - x̂‖² / ‖x - batch mean‖² "
        "per token, averaged, with the SAE output as x at the SAE as the reference has it. "
        "Large-norm tokens (GPT-2's first position) dominate the pooled one only. "
        "alive = latents that fired at least once on the held-out tokens (alive tokens: how "
        "many; the paper counts over at least 500k).",
        "",
        markdown_table(table_headers(result), table_rows(result)),
        "",
        *([f"**Note:** {alive_note(result)}.", ""] if alive_note(result) else []),
        "## e2e vs local at equal L0",
        "",
        INTERPOLATION_NOTE,
        "",
        *(f"- {line}" for line in comparison_lines(result) or ["(needs >= 2 local runs)"]),
        "",
        *_cheap_path_section(result),
        f"![pareto]({PARETO_PNG})",
        "",
        *_geometry_section(result),
        *_saes_note(result),
        f"Full-precision numbers are in `{REPORT_JSON}`.",
        "",
    ]
    return "\n".join(out)


def _geometry_section(result: ReportData) -> list[str]:
    if not result.geometry and result.saes_dir is None:
        return []  # nothing trained here, nothing compared
    return [
        "## Geometry (alive latents, SAEs matched by CE increase)",
        "",
        *(_geometry_lines(result) or ["- (no trained SAEs)"]),
        "",
        f"![geometry]({GEOMETRY_PNG})",
        "",
    ]


def _saes_note(result: ReportData) -> list[str]:
    if result.saes_dir is None:
        return []
    return [f"SAEs are stock SAELens folders under `{result.saes_dir}/` (`SAE.load_from_disk`)."]


def _cheap_path_section(result: ReportData) -> list[str]:
    lines = cheap_path_lines(result)
    if not lines:
        return []
    return [
        "## The cheap path: local first, then e2e, at equal L0",
        "",
        *(f"- {line}" for line in lines),
        "",
        "Wall time is the training loop's, measured on this machine (noisy if it is shared); "
        "FLOPs are the runner's estimate (`train_flops` in each run's eval_results.json).",
        "",
    ]


def write_report(result: ReportData, folder: Path) -> None:
    """report.md, report.json, pareto.png, geometry.png into `folder`."""
    (folder / REPORT_JSON).write_text(json.dumps(report_dict(result), indent=2, default=str))
    plot_pareto(result, folder / PARETO_PNG)
    if result.geometry:
        plot_geometry(result.geometry, folder / GEOMETRY_PNG)
    (folder / REPORT_MD).write_text(markdown_report(result))


def format_summary(result: ReportData) -> str:
    """The one-screen summary printed at the end."""
    paper = [h for h, _ in _PAPER_COLUMNS] if _has_paper(result) else []
    columns = {**_SUMMARY_COLUMNS, **{h: h for h in paper}}  # table header -> summary header
    headers = list(columns.values())
    pick = [table_headers(result).index(h) for h in columns]
    rows = [[row[i] for i in pick] for row in table_rows(result)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    first = result.runs[0].metrics
    lines = [
        f"{result.name} finished in {_duration(result.timings['total'])}: {len(result.runs)} SAEs "
        f"at {result.hook} of {result.model_name}",
        *[line.removeprefix("- ") for line in _model_lines(result)],
        f"held-out: {result.n_eval_tokens:,} tokens, CE clean {first['ce_loss_clean']:.4f}, "
        f"zero-ablation {first['ce_loss_zero_ablation']:.4f}",
        "",
        fmt.format(*headers),
        *(fmt.format(*r) for r in rows),
        *([f"note: {alive_note(result)}"] if alive_note(result) else []),
        "",
        *comparison_lines(result),
        *cheap_path_lines(result),
        "",
        f"report: {result.out / REPORT_MD}  (plots: {_plots(result)}"
        + (f"; SAEs: {result.saes_dir}/)" if result.saes_dir else ")"),
    ]
    return "\n".join(lines)


def _plots(result: ReportData) -> str:
    return f"{PARETO_PNG}, {GEOMETRY_PNG}" if result.geometry else PARETO_PNG


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def parse_markdown_table(text: str) -> list[dict[str, str]]:
    """Rows of the first table in report.md as header -> cell (for tests and scripts)."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    headers = [c.strip() for c in lines[0].strip("|").split("|")]
    return [
        dict(zip(headers, (c.strip() for c in ln.strip("|").split("|")), strict=True))
        for ln in lines[2:]
    ]
