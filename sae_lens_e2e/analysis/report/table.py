"""The report's table: one row per SAE, pooled and per-token explained variance, paper columns.

Every number comes from one held-out evaluation of the SAEs as saved (stock SAELens folders).
CE increase = CE with SAE - clean CE; CE recovered = (zero-ablation CE - CE with SAE) /
(zero-ablation CE - clean CE).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from sae_lens_e2e.analysis.report.control import controls
from sae_lens_e2e.analysis.report.data import ReportData, SAERun
from sae_lens_e2e.training.evaluation import alive_tokens_note

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
SUMMARY_COLUMNS = {
    **{h: h for h in ("strategy", "lambda", "L0", "alive", "CE increase", "CE recovered", "KL")},
    **{f"EV at SAE ({kind})": f"EV {kind}" for kind in EV_KINDS},
}
# The paper's numbers beside ours, when some run has them: (header, key in SAERun.paper).
PAPER_COLUMNS = (
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
    paper = has_paper(result)
    weights = bool(controls(result.runs))
    return [
        ([run.weights] if weights else []) + _row(run, posts) + (_paper_cells(run) if paper else [])
        for run in result.runs
    ]


def has_paper(result: ReportData) -> bool:
    return any(run.paper for run in result.runs)


def _paper_cells(run: SAERun) -> list[str]:
    return [str((run.paper or {}).get(key, "-")) for _, key in PAPER_COLUMNS]


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
    paper = [h for h, _ in PAPER_COLUMNS] if has_paper(result) else []
    weights = ["weights"] if controls(result.runs) else []  # only beside a control's runs
    evs = (f"EV {hook} ({kind})" for hook in posts for kind in EV_KINDS)
    return [*weights, *_COLUMNS, *evs, *paper]


def alive_note(result: ReportData) -> str:
    """The warning of `alive_tokens_note` for the fewest tokens any SAE was evaluated on."""
    return alive_tokens_note(min(run.metrics["n_tokens"] for run in result.runs))


def parse_markdown_table(text: str) -> list[dict[str, str]]:
    """Rows of the first table in report.md as header -> cell (for tests and scripts)."""
    lines = list(itertools.takewhile(lambda ln: ln.startswith("|"), itertools.dropwhile(
        lambda ln: not ln.startswith("|"), text.splitlines()
    )))  # fmt: skip
    headers = [c.strip() for c in lines[0].strip("|").split("|")]
    return [
        dict(zip(headers, (c.strip() for c in ln.strip("|").split("|")), strict=True))
        for ln in lines[2:]
    ]
