"""The quickstart's tiny-LM training on a shared CPU: torch's default threads vs the threads
the quickstart now picks (`preflight.fair_threads`: no more than the cores idle), with and
without one competing CPU-bound process, and how close the quickstart's up-front estimate
(`tiny_lm.seconds_per_step`, two steps measured at the start) comes to the steps that follow.

Each measurement runs in its own process (its own thread pool): it starts the competitor if
asked, waits for it to spin, picks the threads, measures the estimate, then times `--steps`
real training steps of the default TinyLMConfig (`tiny_lm._train_step`, the code path the
quickstart trains with). The settings alternate over `--rounds` rounds so that changes in the
machine's load spread over all of them. Prints medians and ranges and writes
benchmarks/results/threads.json.

    python benchmarks/bench_threads.py [--steps 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
SPINNER = "print('spinning', flush=True)\nwhile True:\n    pass\n"


def measure(threads: str, steps: int) -> dict:
    """In this process: threads 'default' or 'fair'; the estimate, then `steps` steps."""
    import torch

    from sae_lens_e2e.pipelines import tiny_lm
    from sae_lens_e2e.preflight import busy_cores, fair_threads

    busy = busy_cores()
    chosen, why = fair_threads() if threads == "fair" else (torch.get_num_threads(), "default")
    torch.set_num_threads(chosen)
    lm = tiny_lm.TinyLMConfig()
    corpus = tiny_lm.load_pydoc_corpus(lm.heldout_fraction, lm.corpus_bytes)
    estimate = tiny_lm.seconds_per_step(corpus, lm, "cpu")
    model = tiny_lm.HookedTransformer(tiny_lm.tiny_model_config(lm, "cpu"))
    opt = torch.optim.AdamW(model.parameters(), lr=lm.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    wall, cpu = [], []
    for _ in range(steps):
        batch = tiny_lm._random_windows(corpus, lm, gen)
        start, start_cpu = time.perf_counter(), time.process_time()
        tiny_lm._train_step(model, opt, batch)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"threads": chosen, "why": why, "busy_cores_at_start": busy, "estimate_s": estimate,
            "step_wall_s": wall, "step_cpu_s": cpu, "loadavg": os.getloadavg()}  # fmt: skip


def run(threads: str, competitor: bool, steps: int) -> dict:
    """One measurement in a fresh process, with a competing spinner if asked."""
    spinner = None
    if competitor:
        spinner = subprocess.Popen([sys.executable, "-c", SPINNER], stdout=subprocess.PIPE)
        spinner.stdout.readline()
    try:
        call = f"bench_threads.measure({threads!r}, {steps})"
        code = f"import json, bench_threads; print(json.dumps({call}))"
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=1800,
            cwd=pathlib.Path(__file__).parent, env={k: v for k, v in os.environ.items()
                                                     if k != "OMP_NUM_THREADS"},
        )  # fmt: skip
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait(timeout=60)
    if done.returncode:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = [(t, c) for c in (False, True) for t in ("default", "fair")]
    results: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for threads, competitor in settings:
            key = f"{threads} threads, {'one competing process' if competitor else 'no competitor'}"
            results.setdefault(key, []).append(run(threads, competitor, args.steps))
            print(key, json.dumps(results[key][-1]["step_wall_s"]), flush=True)
    summary = {}
    for key, runs in results.items():
        per_run = [statistics.median(r["step_wall_s"]) for r in runs]
        ratios = [statistics.mean(r["step_wall_s"]) / r["estimate_s"] for r in runs]
        summary[key] = {
            "threads": sorted({r["threads"] for r in runs}),
            "step_wall_s_median": statistics.median(per_run),
            "step_wall_s_range": [min(per_run), max(per_run)],
            "step_cpu_s_median": statistics.median(
                statistics.median(r["step_cpu_s"]) for r in runs
            ),
            "actual_over_estimate": [round(x, 2) for x in ratios],
            "loadavg_1min": [round(r["loadavg"][0], 2) for r in runs],
        }
        print(f"{key}: {json.dumps(summary[key])}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "threads.json"
    out.write_text(json.dumps({"summary": summary, "runs": results, "cpus": os.cpu_count(),
                               "steps": args.steps}, indent=2))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
