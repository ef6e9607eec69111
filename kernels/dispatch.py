"""Backend resolution and the sparse/dense decision.

Cost model (see docs in the issue / kernels-notes.md). Per training step the dense path runs
five GEMMs besides the encoder (decode, d(acts), dW_enc, dx, dW_dec), 2*N*d*n FLOPs each. The
sparse path replaces them with about five gathers/scatters of a d-long row per active latent,
i.e. ~5*nnz*d*s bytes (s = bytes per element), with nnz = rho*N*n. Sparse wins when

    rho * s * d*N*n * 5 / BW  <  5 * 2*N*d*n / FLOPS   <=>   rho < 2 * BW / (s * FLOPS).

H100, bf16: BW ~ 2-3 TB/s achieved on gathers (W_dec rows are reused from L2), FLOPS ~ 600-790
TFLOP/s achieved on tensor cores -> rho* ~ 0.3-0.5%. fp32 without TF32 the GEMMs run on CUDA
cores (~50 TFLOP/s) and s doubles -> rho* ~ 2-3%. We pick the low end (sparse only where it
clearly wins): trained e2e SAEs (rho 0.06-0.15%) run sparse, early dense training runs on
cuBLAS. Override with DENSITY_THRESHOLD (module-level) or the density_threshold kwarg; the
benchmark prints both paths at every L0 so the threshold can be re-derived on a new GPU.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import torch

Backend = Literal["auto", "triton", "torch"]
BACKENDS = ("auto", "triton", "torch")

#: Global override of the sparse/dense density threshold (fraction of active latents);
#: None means "use the cost-model default for the dtype".
DENSITY_THRESHOLD: float | None = None

_DEFAULT_THRESHOLD = {torch.float16: 0.004, torch.bfloat16: 0.004, torch.float32: 0.02}
_TF32_THRESHOLD = 0.005


def interpret_mode() -> bool:
    """Triton's CPU interpreter is on (it is read when kernels are first defined)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def kernel_module(name: str) -> ModuleType:
    """Import a Triton kernel module ('sae_triton' or 'kl_triton') lazily.

    @triton.jit (ours and triton.language's own helpers) reads TRITON_INTERPRET when it
    decorates, i.e. when triton is first imported (sae_lens imports it): set it before that.
    """
    mod = importlib.import_module(f"{__package__}.{name}")
    if interpret_mode() != mod.INTERPRETED:
        raise RuntimeError(
            "TRITON_INTERPRET changed after the Triton kernels were built; set it before "
            "triton (or sae_lens, which imports it) is first imported"
        )
    return mod


@functools.lru_cache(maxsize=1)
def triton_import_error() -> str | None:
    """None if triton imports, else the reason it does not."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the environment
        return f"triton is not importable ({type(e).__name__}: {e})"
    return None


@dataclass(frozen=True)
class Target:
    """What the Triton kernels are built for: backend 'cuda' (arch = compute capability as
    an int, 90 for sm_90), 'hip' (arch = the gfx name, e.g. 'gfx90a') or 'interpreter'
    (TRITON_INTERPRET=1 on CPU tensors); `name` is the device's, for messages."""

    backend: str
    arch: int | str
    name: str


def target_of(device: torch.device) -> Target:
    device = torch.device(device)
    if device.type != "cuda":
        return Target("interpreter", 0, f"{device.type} (Triton interpreter)")
    props = torch.cuda.get_device_properties(device)
    if torch.version.hip is not None:
        return Target("hip", props.gcnArchName.split(":")[0], props.name)
    return Target(
        "cuda", props.major * 10 + props.minor, f"{props.name} (sm_{props.major}{props.minor})"
    )


def auto_uses_triton(device: torch.device) -> bool:
    """kernels='auto': an NVIDIA GPU with triton importable (off CUDA, triton is not even
    imported). Tests replace this to run 'auto' on the interpreter as on a GPU."""
    nvidia = device.type == "cuda" and torch.version.hip is None
    return nvidia and triton_import_error() is None


def resolve_backend(requested: str, device: torch.device) -> Literal["triton", "torch"]:
    """auto -> 'triton' iff device is an NVIDIA GPU and triton imports, else 'torch'.

    ROCm also reports device.type 'cuda'; auto keeps it on PyTorch (the kernels are built
    for AMD targets but have never run on one), and kernels='triton' opts in. 'triton' where
    it cannot run raises ValueError with the reason; under TRITON_INTERPRET=1 Triton runs on
    CPU tensors (for tests), so it is accepted there.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown kernels backend {requested!r}; expected one of {BACKENDS}")
    if requested == "torch":
        return "torch"
    device = torch.device(device)
    if requested == "auto":
        return "triton" if auto_uses_triton(device) else "torch"
    err = triton_import_error()
    if err is not None:
        raise ValueError(f"kernels='triton' requested but {err}")
    if device.type != "cuda" and not interpret_mode():
        raise ValueError(
            f"kernels='triton' needs a CUDA device (got {device}) or TRITON_INTERPRET=1"
        )
    return "triton"


def density_threshold(dtype: torch.dtype, override: float | None = None) -> float:
    """Active fraction below which the sparse decode/backward is used."""
    if override is not None:
        return override
    if DENSITY_THRESHOLD is not None:
        return DENSITY_THRESHOLD
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return _TF32_THRESHOLD
    return _DEFAULT_THRESHOLD.get(dtype, 0.004)


def use_sparse(nnz: int, numel: int, dtype: torch.dtype, override: float | None = None) -> bool:
    """Sparse path iff measured density is below the threshold (strictly)."""
    return numel > 0 and nnz / numel < density_threshold(dtype, override)
