"""Local-to-e2e on the quickstart model: keep or reset Adam's moments at the switch, and what
share of full e2e's gain the cheap path buys for its wall time (issue 12's goal).

Trains, on the offline tiny model with the quickstart's defaults, `local` and `e2e` SAEs and
`local->e2e` SAEs (local for the first `--fraction` of steps) once with Adam's moments kept
at the switch and once reset, all in this one process (so they share the machine's load),
evaluates every SAE on the same held-out tokens and prints, per `local->e2e` run, the share of
full e2e's CE-increase improvement over local at its L0 (interpolated, never extrapolated)
and its training-loop wall time and FLOPs relative to the full e2e runs. Writes the numbers
to benchmarks/results/schedule-<fraction>-<grid>-grid.json.

    python benchmarks/bench_schedule.py [--fraction 0.8] [--grid e2e|local] [--training-tokens N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import tempfile

from sae_lens_e2e.analysis.report import cheap_path_comparison
from sae_lens_e2e.pipelines.quickstart.config import QuickstartConfig
from sae_lens_e2e.pipelines.quickstart.pipeline import evaluate_runs
from sae_lens_e2e.pipelines.quickstart.sweep import train_sweep
from sae_lens_e2e.pipelines.quickstart.workload import tiny_workload

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fraction", type=float, default=0.8, help="share of steps local")
    parser.add_argument("--training-tokens", type=int, default=2**18)
    parser.add_argument(
        "--grid", choices=["e2e", "local"], default="e2e", help="lambdas of the local->e2e runs"
    )
    args = parser.parse_args()
    cfg = QuickstartConfig(
        strategies=["local", "e2e", "local->e2e"],
        e2e_start_fraction=args.fraction,
        training_tokens=args.training_tokens,
        device="cpu",
        sae_overrides={"reset_optimizer_at_switch": False},  # only local->e2e runs switch
    )
    cfg.coefficients["local->e2e"] = list(cfg.coefficients[args.grid])
    work = tiny_workload(cfg, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp)
        runs = train_sweep(cfg, work, out, "cpu")
        reset_cfg = dataclasses.replace(
            cfg, strategies=["local->e2e"], sae_overrides={"reset_optimizer_at_switch": True}
        )
        (out / "reset").mkdir()
        reset_runs = train_sweep(reset_cfg, work, out / "reset", "cpu")
        evaluate_runs(work, runs, out, [], "cpu", cfg)
        evaluate_runs(work, reset_runs, out / "reset", [], "cpu", cfg)
    base = [r for r in runs if "->" not in r.strategy]
    report: dict[str, object] = {
        "fraction_local": args.fraction,
        "local_to_e2e_lambdas": args.grid,
        "training_tokens": args.training_tokens,
        "runs": {
            r.label + ("/reset" if r in reset_runs else ""): {
                "l0": r.metrics[f"l0/{r.hook}"],
                "ce_increase": r.metrics["ce_loss_increase"],
                "train_loop_seconds": r.train_loop_seconds,
                "train_flops": r.train_flops,
            }
            for r in runs + reset_runs
        },
    }
    for name, scheduled in (
        ("keep", [r for r in runs if "->" in r.strategy]),
        ("reset", reset_runs),
    ):
        rows = cheap_path_comparison(base + scheduled)
        report[name] = rows
        print(f"\nAdam moments {name} at the switch ({1 - args.fraction:.0%} of steps e2e):")
        for row in rows:
            share = row["share_of_full_improvement"]
            print(
                f"  {row['label']}: L0 {row['l0']:.1f}, CE increase {row['ce_increase']:.4f}, "
                f"local@L0 {_f(row['local_ce_increase_at_l0'])}, "
                f"e2e@L0 {_f(row['full_ce_increase_at_l0'])}, "
                f"share {'-' if share is None else f'{share:.0%}'}, "
                f"wall time {row['wall_time_vs_full']:.0%}, FLOPs {row['flops_vs_full']:.0%} of e2e"
            )
        shares = [r["share_of_full_improvement"] for r in rows if r["share_of_full_improvement"]]
        if shares:
            print(f"  median share {statistics.median(shares):.0%} over {len(shares)} comparable")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"schedule-{args.fraction:g}-{args.grid}-grid.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path}")


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    main()
