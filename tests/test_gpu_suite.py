"""benchmarks/gpu_suite.py --smoke: the GPU proof, run end to end on CPU (interpreter).

The suite is the one command that is run when a GPU is available; this runs every section
of it at tiny shapes, so it cannot crash on its first GPU run, and checks what it wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["env", "gpu_tests", "correctness", "sae", "kl", "decode", "e2e_step"]


def test_gpu_suite_smoke_runs_every_section(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke", "--out",
           str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    data = json.loads((tmp_path / "gpu_suite-smoke.json").read_text())
    sections = data["sections"]
    assert list(sections) == SECTIONS
    assert {k: v["error"] for k, v in sections.items()} == dict.fromkeys(SECTIONS)
    res = {k: v["result"] for k, v in sections.items()}
    assert res["env"]["interpret"] == "1"
    assert res["gpu_tests"]["returncode"] == 0 and "collected" in res["gpu_tests"]["summary"]
    assert res["correctness"]["all_passed"]
    sae_rows = [r for r in res["correctness"]["rows"] if "activation" in r]
    assert len(sae_rows) == 2 * 3 * 2  # precisions x activations x branches
    assert {r["kernel"] for r in res["correctness"]["rows"] if "kernel" in r} == {"kl"}
    shapes = data["shapes"]
    assert len(res["sae"]) == len(shapes["precisions"]) * 3 * len(shapes["l0s"])
    for row in res["sae"]:
        assert row["triton"]["ms"] > 0 and row["torch"]["ms"] > 0 and row["speedup"] > 0
    assert len(res["kl"]) == 2 * len(shapes["vocabs"])
    assert all(r["GBps"] > 0 for r in res["decode"])
    step = res["e2e_step"]
    assert step["tokens_per_s"] > 0 and step["paper_run_hours"] > 0
    assert step["ours"]["ms"] > 0 and step["baseline"]["ms"] > 0
