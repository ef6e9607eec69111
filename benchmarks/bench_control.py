"""What the randomised-weights control adds to the quickstart's time.

Runs the real command, `sae-lens-e2e quickstart` (offline, default settings, tiny LM from the
cache, which is filled first unless --no-warm), with and without `--control random-weights`,
alternating, each in a fresh process with one torch thread, `--repeats` times. Measures each
process's wall time and CPU time (user + system: much less sensitive than wall time to other
jobs waiting for the cores), and, inside each control run, the wall time of the control phase
against the rest of the same run (same load for both). Prints medians and spread and writes
them to benchmarks/results/control-cost.json.

    python benchmarks/bench_control.py [--repeats 2] [--no-warm]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
TIMEOUT_S = 3600


def run_once(out: pathlib.Path, control: bool) -> dict[str, float]:
    """One quickstart in a child process: wall seconds and the child's CPU seconds."""
    argv = [sys.executable, "-m", "sae_lens_e2e", "quickstart", "--quiet", "--out", str(out)]
    argv += ["--control", "random-weights"] if control else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, timeout=TIMEOUT_S, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report = json.loads((out / "report.json").read_text())
    return {"wall_s": wall, "cpu_s": cpu, "timings": report["timings_seconds"]}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-warm", action="store_true", help="the tiny LM is cached already")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"quickstart": [], "with_control": []}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_warm:
            run_once(pathlib.Path(tmp) / "warm", control=False)  # fills the tiny-LM cache
        for i in range(args.repeats):
            for name, control in (("quickstart", False), ("with_control", True)):
                result = run_once(pathlib.Path(tmp) / f"{name}{i}", control)
                runs[name].append(result)
                print(
                    name, i, f"wall {result['wall_s']:.0f}s cpu {result['cpu_s']:.0f}s", flush=True
                )
    stats = {
        name: {k: summary([r[k] for r in rs]) for k in ("wall_s", "cpu_s")}
        for name, rs in runs.items()
    }
    ratio = {
        k: stats["with_control"][k]["median"] / stats["quickstart"][k]["median"] - 1
        for k in ("wall_s", "cpu_s")
    }
    within = [
        r["timings"]["control"] / (r["timings"]["total"] - r["timings"]["control"])
        for r in runs["with_control"]
    ]
    result = {
        "what": "sae-lens-e2e quickstart (tiny LM cached) vs + --control random-weights",
        "repeats": args.repeats,
        "load_average_at_end": os.getloadavg(),
        "stats": stats,
        "added_fraction": ratio,
        "added_fraction_within_control_runs": summary(within),
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "control-cost.json").write_text(json.dumps(result, indent=2))
    for k in ("wall_s", "cpu_s"):
        q, c = stats["quickstart"][k], stats["with_control"][k]
        print(
            f"{k}: quickstart {q['median']:.0f} ({q['min']:.0f}-{q['max']:.0f}), with control "
            f"{c['median']:.0f} ({c['min']:.0f}-{c['max']:.0f}): +{ratio[k]:.0%}"
        )
    print(f"within the control runs: control phase / the rest = {summary(within)}")


if __name__ == "__main__":
    main()
