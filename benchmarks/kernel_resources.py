"""Registers, stack (spill), shared memory and occupancy of every Triton kernel, per target.

Builds each launch the launchers plan (kernels/gpu_build.py: the same builds the test
tests/test_kernel_build.py checks) for sm_80 and sm_90 on this machine, no GPU needed, and
prints one markdown table per shape: a row per kernel x dtype, a column group per target.
Writes it to benchmarks/results/kernel_resources.md (the committed copy is the reference the
next kernel change is compared with). Without triton it says so and exits 0.

    python benchmarks/kernel_resources.py [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import subprocess
import sys

OUT = pathlib.Path(__file__).resolve().parent / "results" / "kernel_resources.md"
LAUNCH_KEYS = ("BM", "BN", "BK", "BD", "BT", "BV", "num_warps", "num_stages")
SHORT = {"num_warps": "w", "num_stages": "s"}


def launch_params(row: dict) -> str:
    return " ".join(f"{SHORT.get(k, k)}{row[k]}" for k in LAUNCH_KEYS if k in row)


def resources(row: dict | None) -> list[str]:
    if row is None:
        return ["", "", "", ""]
    if row["error"]:
        return ["build failed", "", "", ""]
    stack = row["stack"] + row["local"]
    occupancy = "" if row["occupancy_warps"] is None else str(row["occupancy_warps"])
    return [str(row["regs"]), f"**{stack}**" if stack else "0", str(row["smem"]), occupancy]


def table(rows: list[dict], shape_name: str, shape, targets: list[str]) -> list[str]:
    head = ["kernel", "dtype", "launch"]
    for t in targets:
        head += [f"{t} regs", "stack B", "smem B", "warps/SM"]
    lines = [
        f"### {shape_name}: {shape.tokens} tokens, d_in {shape.d_in}, d_sae {shape.d_sae}, "
        f"vocab {shape.vocab}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    by_key = {(r["kernel"], r["dtype"], r["target"]): r for r in rows if r["shape"] == shape_name}
    seen = dict.fromkeys((r["kernel"], r["dtype"]) for r in rows if r["shape"] == shape_name)
    for kernel, dtype in seen:
        first = next(by_key[(kernel, dtype, t)] for t in targets if (kernel, dtype, t) in by_key)
        cells = [kernel, dtype, launch_params(first)]
        for t in targets:
            cells += resources(by_key.get((kernel, dtype, t)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def report() -> str:
    import torch
    import triton
    from sae_lens_e2e.kernels import dispatch, gpu_build, sae_triton

    shapes = {**gpu_build.SHAPES, **gpu_build.RAGGED}
    rows = gpu_build.build_all(shapes)
    small = {"gpt2-small": gpu_build.SHAPES["gpt2-small"]}
    compat = gpu_build.build_all(small, gpu_build.COMPAT_TARGETS, gpu_build.COMPAT_DTYPES)
    from triton.backends.nvidia.compiler import get_ptxas  # the one triton.compile runs

    ptxas = ", ".join(
        f"{t} `{subprocess.run([get_ptxas(a).path, '--version'], capture_output=True, text=True).stdout.split(', ')[-2]}`"
        for t, a in gpu_build.TARGETS.items()
    )
    sm90 = dispatch.Target("cuda", 90, "sm_90")
    no_tf32 = sae_triton.encode_config(torch.float32, False, sm90)
    lines = [
        "# Triton kernel resources per target",
        "",
        f"`python benchmarks/kernel_resources.py`, {datetime.date.today()}: triton "
        f"{triton.__version__}, torch {torch.__version__}, ptxas {ptxas}. Built on a CPU "
        "machine with `triton.compile(ASTSource(...), target=GPUTarget('cuda', arch, 32))`; "
        "resources read from the cubin (`cuobjdump --dump-resource-usage`).",
        "",
        "- regs: registers per thread (255 is the cap). stack B: stack frame plus local memory "
        "per thread, nonzero (bold) means spills. smem B: shared memory per block (dynamic + "
        "static). warps/SM: resident warps allowed by registers, shared memory and the "
        "block/warp limits (64 max on both; A100 164 KiB, H100 228 KiB shared per SM).",
        "- Launch parameters are the launchers' own (kernels/*_triton.py `*_launches`). "
        "encode[topk|relu|jumprelu] are the encoder's three epilogues (TopK selects in torch). "
        "fp32 encode is the TF32 kernel; fp32 without TF32 runs cuBLAS "
        f"(encode_config -> {no_tf32}). bwd_row[g_acts]: the loss also uses the activations.",
        f"- {', '.join(gpu_build.NO_SPILL)} must not spill: tests/test_kernel_build.py checks "
        "that at the first two shapes. `ragged` (token count and d_sae not multiples of 16) "
        "shows the unvectorised variants triton's JIT builds there; it is not checked.",
        "",
    ]
    for name, shape in shapes.items():
        lines += table(rows, name, shape, list(gpu_build.TARGETS))
    lines += [
        "## Other GPUs",
        "",
        "What the launchers pick on older NVIDIA GPUs (no fused encoder before sm_80: cuBLAS "
        "runs it), Blackwell, and AMD MI200 (gfx90a: no TF32, so no fp32 encoder) / MI300 "
        "(gfx942), at GPT-2 small's shape. AMD: regs are VGPRs per lane (of 512), stack is "
        "scratch bytes; no occupancy model.",
        "",
    ]
    lines += table(compat, "gpt2-small", small["gpt2-small"], list(gpu_build.COMPAT_TARGETS))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    try:
        import triton  # noqa: F401
    except ImportError as e:
        print(f"triton is not installed ({e}); nothing to build")
        return 0
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the build needs triton's GPU compiler", file=sys.stderr)
        return 2
    text = report()
    print(text)
    from sae_lens_e2e.atomic import atomic_file

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(args.out) as tmp:
        tmp.write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
