"""Every Triton kernel builds for sm_80 and sm_90 as the launchers launch it, on a CPU machine.

The interpreter (tests/test_kernels.py) accepts code the GPU compiler rejects and never shows
register pressure. kernels/gpu_build.py compiles, down to cubins, the launches the launchers
plan at GPT-2 small's and a large SAE's shapes in fp32/fp16/bf16, and reads each cubin's
registers, stack and shared memory. It runs in a child process because this one runs the
interpreter (TRITON_INTERPRET=1, read once when triton is imported). The build is shared by
the tests below; triton's on-disk cache makes re-runs fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="triton is not installed: nothing to build")

BUILD_TIMEOUT_S = 600  # a hang guard: a cold build takes ~30 s of CPU


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> dict:
    """The build, in a child without TRITON_INTERPRET, run as a user runs it (`python -m
    sae_lens_e2e.kernels.gpu_build`) from a folder other than the repo root, so it cannot
    depend on the root being on sys.path. sae_lens_e2e imports nothing heavy until asked."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "sae_lens_e2e.kernels.gpu_build"]
    cwd = tmp_path_factory.mktemp("build")
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def where(row: dict) -> str:
    return f"{row['kernel']} {row['shape']} {row['dtype']} {row['target']}"


def test_every_kernel_builds_for_every_target(build):
    rows = build["rows"]
    failed = [f"{where(r)}: {r['error']}" for r in rows if r["error"]]
    assert not failed, "\n".join(failed)
    built = {r["kernel_fn"] for r in rows}
    assert built == set(build["kernels"]), "kernels without a planned launch"
    shapes = {(s["d_in"], s["d_sae"], s["vocab"]) for s in build["shapes"].values()}
    assert shapes == {(768, 46080, 50257), (4096, 131072, 256000)}
    assert {(r["dtype"], r["target"]) for r in rows} == {
        (d, t) for d in ("fp32", "fp16", "bf16") for t in ("sm_80", "sm_90")
    }
    assert all(0 < r["regs"] <= 255 for r in rows)
    unfit = [where(r) for r in rows if r["occupancy_warps"] == 0]
    assert not unfit, f"one block does not fit on an SM (registers or shared memory): {unfit}"


def test_gather_scatter_and_kl_kernels_do_not_spill(build):
    """Memory-bound kernels: a spill there adds local-memory traffic to every entry."""
    no_spill = {"decode", "bwd_row", "bwd_col", "kl_fwd", "kl_bwd"}
    assert set(build["no_spill"]) == no_spill
    rows = [r for r in build["rows"] if r["kernel"].split("[")[0] in no_spill]
    spills = [f"{where(r)}: {r['stack']} B stack, {r['local']} B local, {r['regs']} regs"
              for r in rows if r.get("stack") or r.get("local")]  # fmt: skip
    assert not spills, "\n".join(spills)
