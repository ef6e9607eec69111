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
#: The GPUs we tune for: every shape, resources checked (tests/test_kernel_build.py).
TARGETS = {"sm_80": 80, "sm_90": 90}
#: Other GPUs a user may have (older NVIDIA, Blackwell, AMD MI200/MI300): at GPT-2 small's
#: shape in bf16 and fp32 every launch the launchers pick there must build without spills
#: (they pick no encoder before sm_80 and no TF32 on AMD but MI300). sm_86/89 share sm_80's.
COMPAT_TARGETS = {"sm_60": 60, "sm_70": 70, "sm_75": 75, "sm_100": 100, "sm_120": 120,
                  "gfx90a": "gfx90a", "gfx942": "gfx942"}  # fmt: skip
COMPAT_DTYPES = ("fp32", "bf16")
#: Memory-bound gather/scatter and KL kernels: a spill there costs bandwidth on every entry.
NO_SPILL = ("decode", "bwd_row", "bwd_col", "bwd_col_finish", "sampled_dot", "kl_fwd", "kl_bwd")
# Per SM: register file, max resident warps, max resident blocks, shared memory per SM and per
# block (bytes; A100 164/163 KiB, H100 228/227 KiB); the runtime reserves 1 KiB per block.
_SM = {80: (65536, 64, 32, 167936, 166912), 90: (65536, 64, 32, 233472, 232448)}
_RESERVED_SMEM = 1024


def gpu_target(arch: int | str) -> GPUTarget:
    return GPUTarget("hip", arch, 64) if isinstance(arch, str) else GPUTarget("cuda", arch, 32)


def planned_launches(shape: Shape, dtype: torch.dtype, arch: int | str = 90) -> dict[str, Launch]:
    """Every launch of one fused training step (SAE fwd/bwd, KL fwd/bwd) on `arch`, planned by
    the launchers on meta tensors. fp32 encode is planned with TF32 on: without it the
    launchers run cuBLAS (encode_config returns None), so there is no other fp32 encoder to
    build; where encode_config returns None for the target, no encoder is planned."""
    n, d, s, v = shape.tokens, shape.d_in, shape.d_sae, shape.vocab
    nnz = n * shape.l0
    target = dispatch.Target(gpu_target(arch).backend, arch, str(arch))

    def t(*size, dt=dtype):
        return torch.empty(*size, dtype=dt, device="meta")

    x, W_enc, b, W_dec, inv = t(n, d), t(d, s), t(s), t(s, d), t(s, dt=torch.float32)
    plans = {}
    cfg = sae_triton.encode_config(dtype, True, target)
    for activation, act in sae_triton.ACTIVATIONS.items() if cfg else ():
        [plans[f"encode[{activation}]"]], _ = sae_triton.encode_launches(x, W_enc, b, b, act, cfg)
    # dtypes as sae.py builds them: int64 rowptr/perm/colptr, int32 cols/rows, fp32 inv-norm;
    # the column plan as sae_triton.columns builds it, with some latents split in segments.
    i64, i32 = torch.int64, torch.int32
    rowptr, cols, vals = t(n + 1, dt=i64), t(nnz, dt=i32), t(nnz)
    [plans["decode"]], _ = sae_triton.decode_launches(rowptr, cols, vals, W_dec, inv, t(d), n)
    seg = sae_triton.COL_SEGMENT
    n_seg, n_long = s + nnz // seg, nnz // (seg + 1)
    cc = sae_triton.Columns(t(nnz, dt=i64), t(nnz, dt=i32), t(s + 1, dt=i64), t(n_seg, dt=i64),
                            t(n_seg, dt=i64), t(s, dt=i64), t(n_long, dt=i64),
                            2 * nnz // seg + 1, seg)  # fmt: skip
    csr = (rowptr, cols, vals, nnz)
    for g_acts, W_encT, suffix in ((t(n, s), t(s, d), "[g_acts]"), (None, t(s, d), ""),
                                   (None, None, "[no dx]")):  # fmt: skip
        bwd = (csr, cc, x, g_acts, x, W_encT, W_dec, inv, 1e-12)  # eps: F.normalize's, as sae.py
        launches, _ = sae_triton.backward_launches(*bwd)
        plans[f"bwd_row{suffix}"], plans["bwd_col"], plans["bwd_col_finish"] = launches
    # JumpReLU's threshold gradient near the threshold: latents x their window's tokens.
    [plans["sampled_dot"]], _ = sae_triton.sampled_dot_launches(
        t(s + 1, dt=i64), t(nnz, dt=i32), W_dec, x, t(n, dt=torch.float32)
    )
    logits, lse = t(n, v), t(n, dt=torch.float32)
    [plans["kl_fwd"]], _ = kl_triton.kl_forward_launches(logits, logits)
    [plans["kl_bwd"]], _ = kl_triton.kl_backward_launches(logits, logits, lse, lse, t(()))
    return plans


def all_kernels() -> set[str]:
    """Names of every @triton.jit kernel in the kernel modules (the build must cover them);
    `_kernel` names the launched ones, the rest are helpers they call."""
    mods = (sae_triton, kl_triton)
    jit = (k for m in mods for k in vars(m).values() if isinstance(k, JITFunction))
    return {k.__name__ for k in jit if k.__name__.endswith("_kernel")}


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


def _amdgcn_resources(asm: str) -> dict[str, int]:
    """Registers (VGPRs) and scratch (spills) from the AMD assembly's own summary."""
    found = dict(re.findall(r"; (TotalNumVgprs|ScratchSize|Occupancy): (\d+)", asm))
    return {"REG": int(found["TotalNumVgprs"]), "STACK": int(found["ScratchSize"]), "LOCAL": 0,
            "SHARED": 0}  # fmt: skip


def _compile(src: ASTSource, arch: int | str, options: dict) -> dict:
    """Build to a cubin (hsaco on AMD) and read its resources; a build error is reported,
    not raised."""
    try:
        ck = triton.compile(src, target=gpu_target(arch), options=options)
    except Exception as e:
        return {"error": f"{type(e).__name__}: {str(e).strip()[-600:]}"}
    if isinstance(arch, str):
        res = _amdgcn_resources(ck.asm["amdgcn"])
    else:
        res = _cuobjdump(ck.asm["cubin"])
    smem = ck.metadata.shared + res["SHARED"]
    occ = occupancy_warps(res["REG"], smem, options["num_warps"], arch) if arch in _SM else None
    return {"error": None, "regs": res["REG"], "stack": res["STACK"], "local": res["LOCAL"],
            "smem": smem, "occupancy_warps": occ}  # fmt: skip


def build_all(
    shapes: dict[str, Shape] = SHAPES,
    targets: dict[str, int | str] = TARGETS,
    dtypes: tuple[str, ...] = tuple(DTYPES),
    workers: int = 2,
) -> list[dict]:
    """One row per kernel x shape x dtype x target: launch parameters and resources. Each
    distinct build (shapes often share one) is compiled once."""
    if dispatch.interpret_mode():
        raise RuntimeError("unset TRITON_INTERPRET: the GPU build needs JIT kernels")
    rows, builds = [], {}
    for shape_name, shape in shapes.items():
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            for target, arch in targets.items():
                for name, launch in planned_launches(shape, dtype, arch).items():
                    src, key = _source(launch, gpu_target(arch))
                    builds.setdefault(key, (src, arch, launch.options))
                    rows.append({"kernel": name, "shape": shape_name, "dtype": dtype_name,
                                 "target": target, "kernel_fn": launch.kernel.__name__,
                                 **launch.options, "build": key,
                                 **{k: str(v) for k, v in launch.constexprs.items()}})  # fmt: skip
    with ThreadPoolExecutor(workers) as pool:
        done = dict(zip(builds, pool.map(lambda b: _compile(*b), builds.values()), strict=True))
    return [{**row, **done[row["build"]]} for row in rows]


def main() -> None:
    compat = build_all({"gpt2-small": SHAPES["gpt2-small"]}, COMPAT_TARGETS, COMPAT_DTYPES)
    rows = build_all() + compat
    print(json.dumps({"kernels": sorted(all_kernels()), "rows": rows, "no_spill": NO_SPILL,
                      "shapes": {k: asdict(v) for k, v in SHAPES.items()},
                      "targets": list(TARGETS), "compat_targets": list(COMPAT_TARGETS)}))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
