"""Writing the report: report.md, report.json, the plots, and the one-screen summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sae_lens_e2e.analysis.geometry import GeometryResult, plot_geometry
from sae_lens_e2e.analysis.report.comparison import (
    INTERPOLATION_NOTE,
    cheap_path_comparison,
    cheap_path_lines,
    comparison_lines,
    equal_l0_comparison,
)
from sae_lens_e2e.analysis.report.control import CONTROL_NOTE, controls, side_by_side
from sae_lens_e2e.analysis.report.data import (
    GEOMETRY_PNG,
    PARETO_PNG,
    REPORT_JSON,
    REPORT_MD,
    ReportData,
)
from sae_lens_e2e.analysis.report.plots import plot_pareto
from sae_lens_e2e.analysis.report.table import (
    PAPER_COLUMNS,
    SUMMARY_COLUMNS,
    alive_note,
    has_paper,
    markdown_table,
    table_headers,
    table_rows,
)
from sae_lens_e2e.version import __version__

# ----------------------------------------------------------------------------- writing


def report_dict(result: ReportData) -> dict[str, Any]:
    """Everything in report.md, at full precision, for scripts and tests."""
    return {
        "sae_lens_e2e_version": __version__,
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
                "weights": r.weights,
            }
            for r in result.runs
        ],
        "equal_l0_comparison": equal_l0_comparison(result),
        "cheap_path_comparison": cheap_path_comparison(result.runs),
        "control": {c: side_by_side(result.runs, c)[1] for c in controls(result.runs)},
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
    each strategy differently (see `pipelines.quickstart.runner_config.sae_seed`).
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
        *_control_section(result),
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


def _control_section(result: ReportData) -> list[str]:
    lines = []
    for control in controls(result.runs):
        headers, rows = side_by_side(result.runs, control)
        first = next(r for r in result.runs if r.weights == control).metrics
        lines += [
            f"## Control: {control} (each cell: trained / {control})",
            "",
            *(f"- {line}" for line in result.control_setup),
            f"- The {control} model: CE clean {first['ce_loss_clean']:.4f}, zero-ablation CE "
            f"{first['ce_loss_zero_ablation']:.4f} nats/token on the same held-out tokens.",
            "",
            markdown_table(headers, rows),
            "",
            CONTROL_NOTE,
            "",
        ]
    return lines


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
    paper = [h for h, _ in PAPER_COLUMNS] if has_paper(result) else []
    weights = {"weights": "weights"} if controls(result.runs) else {}
    columns = {**weights, **SUMMARY_COLUMNS, **{h: h for h in paper}}  # table -> summary header
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
