"""Fused kernels for the SAE hot path and the logits KL (pure tensor functions, no SAELens).

Triton is optional: without it (or off CUDA) everything runs the plain-PyTorch reference.
The Triton kernel modules are imported lazily, on the first call that uses them, because
TRITON_INTERPRET is read when @triton.jit decorates (tests set it before that first call).
"""

from .dispatch import Backend, density_threshold, resolve_backend
from .kl import kl_div
from .reference import kl_div_torch, sae_forward_torch
from .sae import sae_forward

__all__ = [
    "Backend",
    "density_threshold",
    "kl_div",
    "kl_div_torch",
    "resolve_backend",
    "sae_forward",
    "sae_forward_torch",
]
