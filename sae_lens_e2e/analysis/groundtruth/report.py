"""The ground-truth study's report: report.md (construction, table, equal-L0 comparison,
control), report.json and groundtruth.png."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_lens_e2e.analysis.groundtruth.metrics import GROUPS, MATCHED_COS, RECOVERED_COS
from sae_lens_e2e.analysis.report import REPORT_JSON, REPORT_MD, TRAINED_WEIGHTS, SAERun
from sae_lens_e2e.analysis.report.comparison import interp_log
from sae_lens_e2e.analysis.report.control import COLUMNS, controls, side_by_side
from sae_lens_e2e.analysis.report.table import markdown_table
from sae_lens_e2e.version import __version__

GROUNDTRUTH_PNG = "groundtruth.png"
REPORT_ENTRIES = {REPORT_MD, REPORT_JSON, GROUNDTRUTH_PNG, "saes", "logs"}


@dataclass
class GroundTruthReport:
    """Everything the study's report shows."""

    out: Path
    model_name: str
    hook: str
    n_eval_tokens: int
    runs: list[SAERun]
    facts: dict[str, Any]  # the construction, measured (study.construction_facts)
    timings: dict[str, float]
    config: dict[str, Any]
    setup: list[str]

    def weights(self) -> list[str]:
        return list(dict.fromkeys(r.weights for r in self.runs))


def l0(run: SAERun) -> float:
    return float(run.metrics[f"l0/{run.hook}"])


def gt(run: SAERun, key: str) -> Any:
    return run.metrics[f"gt/{key}"]


# ----------------------------------------------------------------------------- table

HEADERS = (
    "weights",
    "strategy",
    "lambda",
    "L0",
    "alive",
    "KL",
    "CE increase",
    "EV (pooled)",
    "EV (per token)",
    "dec cos imp.",
    "dec cos ign.",
    "enc cos imp.",
    "enc cos ign.",
    "recovered imp.",
    "recovered ign.",
    "MCC imp.",
    "MCC ign.",
    "prec. imp.",
    "recall imp.",
    "prec. ign.",
    "recall ign.",
    "latents on imp.",
    "latents on ign.",
    "unmatched",
)


def _f(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2g}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def table_row(run: SAERun) -> list[str]:
    m, h = run.metrics, run.hook
    cells = [
        run.weights,
        run.strategy,
        "-" if run.coefficient is None else f"{run.coefficient:g}",
        f"{l0(run):.2f}",
        f"{m[f'alive/{h}']}/{m[f'alive/{h}'] + m[f'dead/{h}']}",
        _f(m["kl"], 4),
        _f(m["ce_loss_increase"], 4),
        _f(m[f"explained_variance/{h}"]),
        _f(m[f"explained_variance_per_token/{h}"]),
    ]
    for key in ("dec_max_cos", "enc_max_cos", "recovered", "mcc"):
        cells += [_f(gt(run, f"{key}/{g}")) for g in GROUPS]
    for g in GROUPS:
        cells += [_f(gt(run, f"precision/{g}")), _f(gt(run, f"recall/{g}"))]
    cells += [str(gt(run, f"latents_on/{g}")) for g in GROUPS]
    return [*cells, str(gt(run, "latents_unmatched"))]


# ----------------------------------------------------------------------------- comparison


def equal_l0_rows(report: GroundTruthReport, weights: str = TRAINED_WEIGHTS) -> list[dict]:
    """Each e2e / e2e_ds SAE against local's curve at its L0 (interpolated in log L0 between
    the local runs bracketing it; nothing outside local's L0 range)."""
    runs = [r for r in report.runs if r.weights == weights]
    local = [r for r in runs if r.strategy == "local"]
    xs = [l0(r) for r in local]
    keys = [f"{k}/{g}" for k in ("dec_max_cos", "enc_max_cos", "latents_on") for g in GROUPS]
    rows = []
    for run in runs:
        if run.strategy == "local":
            continue
        row: dict[str, Any] = {"label": run.label, "strategy": run.strategy, "l0": l0(run)}
        for key in [*keys, "kl"]:
            ys = [float(r.metrics[key] if key == "kl" else gt(r, key)) for r in local]
            mine = run.metrics[key] if key == "kl" else gt(run, key)
            row[key] = float(mine)
            row[f"local/{key}"] = interp_log(l0(run), xs, ys) if len(local) >= 2 else None
        rows.append(row)
    return rows


def comparison_lines(report: GroundTruthReport) -> list[str]:
    lines = []
    for row in equal_l0_rows(report):
        if row["local/dec_max_cos/important"] is None:
            lines.append(
                f"- `{row['label']}` (L0 {row['l0']:.2f}): outside local's L0 range, not compared"
            )
            continue
        pairs = ", ".join(
            f"{what} {g} {row[f'{key}/{g}']:.3f} vs {row[f'local/{key}/{g}']:.3f}"
            for key, what in (("dec_max_cos", "decoder cos"), ("enc_max_cos", "encoder cos"))
            for g in GROUPS
        )
        lines.append(
            f"- `{row['label']}` (L0 {row['l0']:.2f}) vs local at that L0: {pairs}; latents on "
            f"important / ignored {row['latents_on/important']:.0f} / "
            f"{row['latents_on/ignored']:.0f} vs {row['local/latents_on/important']:.1f} / "
            f"{row['local/latents_on/ignored']:.1f}; KL {row['kl']:.4f} vs {row['local/kl']:.4f}"
        )
    return lines


# ----------------------------------------------------------------------------- control


def _gt_cell(key: str) -> Callable[[SAERun], str]:
    return lambda run: _f(gt(run, key))


CONTROL_COLUMNS = (
    *COLUMNS,
    *((f"dec cos {g[:3]}.", _gt_cell(f"dec_max_cos/{g}")) for g in GROUPS),
    *((f"enc cos {g[:3]}.", _gt_cell(f"enc_max_cos/{g}")) for g in GROUPS),
)


def _control_section(report: GroundTruthReport) -> list[str]:
    out = []
    for control in controls(report.runs):
        headers, rows = side_by_side(report.runs, control, CONTROL_COLUMNS)
        out += [
            f"## Control: {control} (each cell: trained / {control})",
            "",
            markdown_table(headers, rows),
            "",
            GT_CONTROL_NOTE,
            "",
        ]
    return out


GT_CONTROL_NOTE = (
    "The control model is the same architecture with fresh TransformerLens weights (embeddings "
    "included), on the same tokens: its residual stream no longer holds the known features, "
    "so its recovery numbers are the chance level of each metric for SAEs of this size, while "
    "L0, alive latents and explained variance are measured as for any model. What it tells: "
    "which metrics separate an SAE of a model that has the features from one that does not. "
    "What it does not: anything about features the known ones miss, or whether a randomly "
    "initialised model of a real architecture has features of its own. Its outputs are near "
    "uniform, so its KL is small in absolute terms (read it against its zero-ablation KL)."
)


# ----------------------------------------------------------------------------- markdown


def _construction_lines(f: dict[str, Any]) -> list[str]:
    return [
        f"- Measured on the held-out tokens: true L0 {f['true_l0']:.2f}; the "
        f"{f['n_important']} important features hold {f['variance_share_important']:.1%} of the "
        f"features' variance; in every run of features by variance each ignored feature has at "
        f"least {f['min_variance_ratio_in_run/codes']:.2f}x the variance of its run's important "
        f"one over the tokens (the data's exact distribution), "
        f"{f['min_variance_ratio_in_run/heldout']:.2f}x on the held-out sample.",
        f"- Superposition: {f['n_features']} directions, max |cos| {f['max_abs_cos']:.3f}, mean "
        f"|cos| {f['mean_abs_cos']:.3f}.",
        f"- Removing one feature from the residual (KL(clean || ablated), nats, mean over the "
        f"tokens holding it): important features mean {f['ablation_kl/important/mean']:.4f} "
        f"(min {f['ablation_kl/important/min']:.4f}), ignored features mean "
        f"{f['ablation_kl/ignored/mean']:.4f} (max {f['ablation_kl/ignored/max']:.4f}): the "
        "ignored ones reach the output only through interference with the important ones.",
    ]


METRICS_NOTE = (
    "dec / enc cos: mean over the group's features of the largest cosine with an alive "
    "latent's decoder / encoder row. recovered: share of the group's features with dec cos >= "
    f"{RECOVERED_COS}. MCC: SAELens's `mean_correlation_coefficient` (Hungarian one-to-one, "
    "|cos|) of the group's features against all decoder rows. prec. / recall: SAELens's "
    "`ClassificationMetricsCalculator` per latent (a latent as a detector of its best-matching "
    "feature by decoder |cos|), averaged over the alive latents whose best match is in the "
    f"group. latents on: alive latents whose best match (|cos| >= {MATCHED_COS}) is in the "
    "group; unmatched: alive latents matching no feature that well. KL and CE increase are "
    "per token against the clean model; EV pooled is SAELens's, per token the paper's."
)


def markdown_report(report: GroundTruthReport) -> str:
    runs = report.runs
    first = runs[0].metrics
    out = [
        "# sae-lens-e2e groundtruth report",
        "",
        *report.setup,
        *_construction_lines(report.facts),
        f"- SAEs at `{report.hook}`: {_sae_line(report.config)}; evaluated on "
        f"{report.n_eval_tokens:,} held-out tokens (clean CE {first['ce_loss_clean']:.4f}, "
        f"zero-ablation CE {first['ce_loss_zero_ablation']:.4f} nats/token).",
        "",
        markdown_table(HEADERS, [table_row(r) for r in runs]),
        "",
        METRICS_NOTE,
        "",
        "## e2e and e2e_ds against local at equal L0",
        "",
        *(comparison_lines(report) or ["- (needs >= 2 local runs)"]),
        "",
        f"![groundtruth]({GROUNDTRUTH_PNG})",
        "",
        *_control_section(report),
        f"SAEs are stock SAELens folders under `saes/`; full precision in `{REPORT_JSON}`.",
        "",
    ]
    return "\n".join(out)


def _sae_line(config: dict[str, Any]) -> str:
    return (
        f"d_sae {config['d_sae']}, {config['training_tokens']:,} training tokens each, lr "
        f"{config['lr']:g}, init seed = model seed + strategy index"
    )


def report_dict(report: GroundTruthReport) -> dict[str, Any]:
    return {
        "sae_lens_e2e_version": __version__,
        "model": report.model_name,
        "hook": report.hook,
        "n_eval_tokens": report.n_eval_tokens,
        "config": report.config,
        "construction": report.facts,
        "timings_seconds": report.timings,
        "runs": [
            {
                "label": r.label,
                "weights": r.weights,
                "strategy": r.strategy,
                "coefficient": r.coefficient,
                "path": r.path,
                "train_seconds": r.train_seconds,
                "train_loop_seconds": r.train_loop_seconds,
                "metrics": _jsonable(r.metrics),
            }
            for r in report.runs
        ],
        "equal_l0": equal_l0_rows(report),
    }


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float | str | list)}


def write_groundtruth_report(report: GroundTruthReport, folder: Path) -> None:
    from sae_lens_e2e.analysis.groundtruth.plot import plot_groundtruth

    (folder / REPORT_JSON).write_text(json.dumps(report_dict(report), indent=2))
    plot_groundtruth(report, folder / GROUNDTRUTH_PNG)
    (folder / REPORT_MD).write_text(markdown_report(report))


def format_summary(report: GroundTruthReport) -> str:
    """The one-screen summary printed at the end."""
    cols = ("weights", "strategy", "lambda", "L0", "KL", "dec cos imp.", "dec cos ign.",
            "latents on imp.", "latents on ign.")  # fmt: skip
    pick = [HEADERS.index(c) for c in cols]
    rows = [[table_row(r)[i] for i in pick] for r in report.runs]
    return "\n".join(
        [
            f"groundtruth finished in {report.timings['total']:.0f}s: {len(report.runs)} SAEs",
            *_aligned(cols, rows),
            "",
            *(line.removeprefix("- ") for line in comparison_lines(report)),
            "",
            f"report: {report.out / REPORT_MD} (figure: {GROUNDTRUTH_PNG})",
        ]
    )


def _aligned(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return [fmt.format(*headers), *(fmt.format(*r) for r in rows)]
