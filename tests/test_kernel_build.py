"""Every Triton kernel builds for every GPU target as the launchers launch it, on a CPU machine.

The interpreter (tests/test_kernels.py) accepts code the GPU compiler rejects and never shows
register pressure. kernels/gpu_build.py compiles, down to cubins (hsaco on AMD), the launches
the launchers plan at GPT-2 small's and a large SAE's shapes in fp32/fp16/bf16 for sm_80 and
sm_90, and at GPT-2 small's in fp32/bf16 for older NVIDIA GPUs (sm_60/70/75), Blackwell and
AMD MI200/MI300, and reads each build's registers, stack and shared memory. It runs in a child process because this one runs the
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
    assert build["targets"] == ["sm_80", "sm_90"]
    main = {(d, t) for d in ("fp32", "fp16", "bf16") for t in build["targets"]}
    compat = {(d, t) for d in ("fp32", "bf16") for t in build["compat_targets"]}
    assert {(r["dtype"], r["target"]) for r in rows} == main | compat
    assert {"sm_60", "sm_70", "sm_75", "gfx90a", "gfx942"} <= set(build["compat_targets"])
    cap = {True: 512, False: 255}  # AMD VGPRs (gfx90a/942: 512 arch + acc), NVIDIA registers
    assert all(0 < r["regs"] <= cap[r["target"].startswith("gfx")] for r in rows)
    unfit = [where(r) for r in rows if r["occupancy_warps"] == 0]
    assert not unfit, f"one block does not fit on an SM (registers or shared memory): {unfit}"


def test_launchers_pick_per_target(build):
    """No fused encoder before sm_80 (sm_60 fails to assemble it, sm_70/75 spill; cuBLAS runs)
    nor for fp32 on AMD without Triton TF32 (all but gfx942); the sparse kernels everywhere."""
    encoders = {(r["dtype"], r["target"]) for r in build["rows"] if r["kernel"].startswith("enc")}
    for target in ("sm_60", "sm_70", "sm_75"):
        assert not {e for e in encoders if e[1] == target}, target
    assert ("fp32", "gfx90a") not in encoders and ("bf16", "gfx90a") in encoders
    assert {
        ("fp32", "gfx942"),
        ("bf16", "gfx942"),
        ("fp32", "sm_80"),
        ("bf16", "sm_100"),
    } <= encoders
    sparse = {(r["dtype"], r["target"]) for r in build["rows"] if r["kernel"] == "bwd_col"}
    assert sparse == {(r["dtype"], r["target"]) for r in build["rows"]}


def test_gather_scatter_and_kl_kernels_do_not_spill(build):
    """Memory-bound kernels: a spill there adds local-memory traffic to every entry."""
    no_spill = {"decode", "bwd_row", "bwd_col", "bwd_col_finish", "sampled_dot", "kl_fwd",
                "kl_bwd"}  # fmt: skip
    assert set(build["no_spill"]) == no_spill
    rows = [r for r in build["rows"] if r["kernel"].split("[")[0] in no_spill]
    spills = [f"{where(r)}: {r['stack']} B stack, {r['local']} B local, {r['regs']} regs"
              for r in rows if r.get("stack") or r.get("local")]  # fmt: skip
    assert not spills, "\n".join(spills)
