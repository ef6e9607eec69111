"""Build every Triton kernel for real GPU targets on a machine without a GPU, and read what
the cubins use (registers, stack, shared memory).

The interpreter runs any kernel the GPU compiler may reject and never shows register pressure,
so this compiles, down to a cubin, exactly the launches the launchers plan (their `*_launches`
functions called on meta tensors: same constexprs, num_warps, num_stages, argument dtypes and
triton's own argument specialisation). Needs TRITON_INTERPRET unset: the kernels must be
JITFunctions and the launchers must pick their GPU parameters.

    python -m sae_lens_e2e.kernels.gpu_build   # JSON rows, one per kernel x shape x dtype x target

benchmarks/kernel_resources.py prints them as tables; tests/test_kernel_build.py checks them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from . import dispatch, kl_triton, sae_triton
from .launch import Launch


@dataclass(frozen=True)
class Shape:
    tokens: int
    d_in: int
    d_sae: int
    vocab: int
    l0: int  # active latents per token: sizes the sparse entries (not a kernel parameter)


SHAPES = {
    "gpt2-small": Shape(tokens=8192, d_in=768, d_sae=46080, vocab=50257, l0=64),
    "large": Shape(tokens=8192, d_in=4096, d_sae=131072, vocab=256000, l0=64),
}
#: Token count and d_sae not multiples of 16: triton's JIT then builds other, unvectorised
#: variants (it specialises on 16-divisibility), with very different register use.
RAGGED = {"ragged": Shape(tokens=8191, d_in=768, d_sae=46081, vocab=50257, l0=64)}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TARGETS = {"sm_80": 80, "sm_90": 90}
#: Memory-bound gather/scatter and KL kernels: a spill there costs bandwidth on every entry.
NO_SPILL = ("decode", "bwd_row", "bwd_col", "kl_fwd", "kl_bwd")
# Per SM: register file, max resident warps, max resident blocks, shared memory per SM and per
# block (bytes; A100 164/163 KiB, H100 228/227 KiB); the runtime reserves 1 KiB per block.
_SM = {80: (65536, 64, 32, 167936, 166912), 90: (65536, 64, 32, 233472, 232448)}
_RESERVED_SMEM = 1024


def planned_launches(shape: Shape, dtype: torch.dtype) -> dict[str, Launch]:
    """Every launch of one fused training step (SAE fwd/bwd, KL fwd/bwd), planned by the
    launchers on meta tensors. fp32 encode is planned with TF32 on: without it the launchers
    run cuBLAS (encode_config returns None), so there is no other fp32 encoder to build."""
    n, d, s, v = shape.tokens, shape.d_in, shape.d_sae, shape.vocab
    nnz = n * shape.l0

    def t(*size, dt=dtype):
        return torch.empty(*size, dtype=dt, device="meta")

    x, W_enc, b, W_dec, inv = t(n, d), t(d, s), t(s), t(s, d), t(s, dt=torch.float32)
    plans = {}
    for activation, act in sae_triton.ACTIVATIONS.items():
        cfg = sae_triton.encode_config(dtype, tf32=True)
        [plans[f"encode[{activation}]"]], _ = sae_triton.encode_launches(x, W_enc, b, b, act, cfg)
    # dtypes as sae.py builds them: int64 rowptr/perm/counts, int32 cols/rows, fp32 inv-norm.
    rowptr, cols, vals = t(n + 1, dt=torch.int64), t(nnz, dt=torch.int32), t(nnz)
    [plans["decode"]], _ = sae_triton.decode_launches(rowptr, cols, vals, W_dec, inv, t(d), n)
    csr, csc = (rowptr, cols, vals, nnz), (t(nnz, dt=torch.int64), cols, t(s, dt=torch.int64))
    for g_acts, suffix in ((t(n, s), "[g_acts]"), (None, "")):
        bwd = (csr, csc, x, g_acts, x, t(s, d), W_dec, inv, 1e-12)  # eps: F.normalize's, as sae.py
        launches, _ = sae_triton.backward_launches(*bwd)
        plans[f"bwd_row{suffix}"], plans["bwd_col"] = launches
    logits, lse = t(n, v), t(n, dt=torch.float32)
    [plans["kl_fwd"]], _ = kl_triton.kl_forward_launches(logits, logits)
    [plans["kl_bwd"]], _ = kl_triton.kl_backward_launches(logits, logits, lse, lse, t(()))
    return plans


def all_kernels() -> set[str]:
    """Names of every @triton.jit kernel in the kernel modules (the build must cover them)."""
    mods = (sae_triton, kl_triton)
    return {k.__name__ for m in mods for k in vars(m).values() if isinstance(k, JITFunction)}


def _source(launch: Launch, target: GPUTarget) -> tuple[ASTSource, str]:
    """The ASTSource triton's JIT would build for this launch (its own argument binder and
    specialisation: pointer dtypes, 16-divisibility of pointers and ints) and a dedup key."""
    k, backend = launch.kernel, make_backend(target)
    kw = {**launch.constexprs, **launch.options}
    binder = create_function_from_signature(k.signature, k.params, backend)
    bound, spec, opts = binder(*launch.args, **kw)
    _, signature, constexprs, attrs = k._pack_args(backend, kw, bound, spec, opts)
    key = repr((k.__name__, signature, constexprs, attrs, launch.options, target))
    return ASTSource(k, signature, constexprs, attrs), key


def _cuobjdump(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED (static), LOCAL of the cubin's one function."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([triton.knobs.nvidia.cuobjdump.path, "--dump-resource-usage",
                              f.name], capture_output=True, text=True, check=True).stdout  # fmt: skip
    line = next(ln for ln in out.splitlines() if "REG:" in ln)
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)}


def occupancy_warps(regs: int, smem: int, num_warps: int, arch: int) -> int:
    """Resident warps per SM allowed by registers (256-per-warp granules), shared memory,
    the warp and the block limits; 0 if one block does not fit."""
    reg_file, max_warps, max_blocks, smem_sm, smem_block = _SM[arch]
    regs_per_warp = -(-max(regs, 1) * 32 // 256) * 256
    by_regs = reg_file // (regs_per_warp * num_warps)
    by_smem = smem_sm // (smem + _RESERVED_SMEM) if smem <= smem_block else 0
    return min(by_regs, by_smem, max_warps // num_warps, max_blocks) * num_warps


def _compile(src: ASTSource, arch: int, options: dict) -> dict:
    """Build to a cubin and read its resources; a build error is reported, not raised."""
    try:
        ck = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as e:
        return {"error": f"{type(e).__name__}: {str(e).strip()[-600:]}"}
    res = _cuobjdump(ck.asm["cubin"])
    smem = ck.metadata.shared + res["SHARED"]
    occ = occupancy_warps(res["REG"], smem, options["num_warps"], arch)
    return {"error": None, "regs": res["REG"], "stack": res["STACK"], "local": res["LOCAL"],
            "smem": smem, "occupancy_warps": occ}  # fmt: skip


def build_all(shapes: dict[str, Shape] = SHAPES, workers: int = 2) -> list[dict]:
    """One row per kernel x shape x dtype x target: launch parameters and resources. Each
    distinct build (shapes often share one) is compiled once."""
    if dispatch.interpret_mode():
        raise RuntimeError("unset TRITON_INTERPRET: the GPU build needs JIT kernels")
    rows, builds = [], {}
    for shape_name, shape in shapes.items():
        for dtype_name, dtype in DTYPES.items():
            for name, launch in planned_launches(shape, dtype).items():
                for target, arch in TARGETS.items():
                    src, key = _source(launch, GPUTarget("cuda", arch, 32))
                    builds.setdefault(key, (src, arch, launch.options))
                    rows.append({"kernel": name, "shape": shape_name, "dtype": dtype_name,
                                 "target": target, "kernel_fn": launch.kernel.__name__,
                                 **launch.options, "build": key,
                                 **{k: str(v) for k, v in launch.constexprs.items()}})  # fmt: skip
    with ThreadPoolExecutor(workers) as pool:
        done = dict(zip(builds, pool.map(lambda b: _compile(*b), builds.values()), strict=True))
    return [{**row, **done[row["build"]]} for row in rows]


def main() -> None:
    print(json.dumps({"kernels": sorted(all_kernels()), "rows": build_all(), "no_spill": NO_SPILL,
                      "shapes": {k: asdict(v) for k, v in SHAPES.items()}}))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
