"""Trained beside control: the same SAE (strategy and lambda) on the trained model and on a
control model (`random-weights`: the same architecture freshly initialised), side by side."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sae_lens_e2e.analysis.report.data import TRAINED_WEIGHTS, SAERun

Column = tuple[str, Callable[[SAERun], str]]


def _l0(run: SAERun) -> str:
    return f"{run.metrics[f'l0/{run.hook}']:.2f}"


def _alive(run: SAERun) -> str:
    return str(run.metrics[f"alive/{run.hook}"])


def _metric(key: str, digits: int) -> Callable[[SAERun], str]:
    def cell(run: SAERun) -> str:
        value = run.metrics.get(key.format(hook=run.hook))
        return "-" if value is None else f"{value:.{digits}f}"

    return cell


COLUMNS: tuple[Column, ...] = (
    ("L0", _l0),
    ("CE increase", _metric("ce_loss_increase", 4)),
    ("KL", _metric("kl", 4)),
    ("alive", _alive),
    ("EV pooled", _metric("explained_variance/{hook}", 3)),
    ("EV per token", _metric("explained_variance_per_token/{hook}", 3)),
)


def controls(runs: Sequence[SAERun]) -> list[str]:
    """The control weights present, in order of appearance."""
    return list(dict.fromkeys(r.weights for r in runs if r.weights != TRAINED_WEIGHTS))


def trained(runs: Sequence[SAERun]) -> list[SAERun]:
    return [r for r in runs if r.weights == TRAINED_WEIGHTS]


def side_by_side(
    runs: Sequence[SAERun], control: str, columns: Sequence[Column] = COLUMNS
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: one row per control run that has a trained twin (same strategy,
    lambda and hook), each cell `trained / control`."""
    twins = {(r.strategy, r.coefficient, r.hook): r for r in trained(runs)}
    headers = ["strategy", "lambda", *(name for name, _ in columns)]
    rows = []
    for run in runs:
        twin = twins.get((run.strategy, run.coefficient, run.hook))
        if run.weights != control or twin is None:
            continue
        lam = "-" if run.coefficient is None else f"{run.coefficient:g}"
        rows.append([run.strategy, lam, *(f"{cell(twin)} / {cell(run)}" for _, cell in columns)])
    return headers, rows


CONTROL_NOTE = (
    "What the comparison tells: whether a metric depends on what the model learned. A metric "
    "that comes out as good on the randomly initialised model (Heap et al. 2025 found this for "
    "reconstruction and auto-interpretability) cannot by itself show that an SAE found the "
    "model's features. What it does not tell: whether any single latent is meaningful, or how "
    "either model behaves at another scale. Read the control's KL, not its CE increase: a "
    "randomly initialised model can predict worse than uniform (compare its clean and "
    "zero-ablation CE above), so an SAE that degrades it can lower its CE. L0 at equal lambda "
    "is not comparable between the two (the residual norms differ): compare at equal L0."
)
