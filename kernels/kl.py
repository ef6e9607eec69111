"""Mean-over-tokens KL(P_orig || P_new) on logits, with a vocab-chunked Triton path."""

from __future__ import annotations

import torch

from . import dispatch, selfcheck
from .reference import kl_div_torch


class _KLFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, new, orig):
        kl_triton = dispatch.kernel_module("kl_triton")

        kl, lse_n, lse_o = kl_triton.kl_forward(new, orig)
        ctx.save_for_backward(new, orig, lse_n, lse_o)
        return kl.sum() / new.shape[0]  # fp32: a bf16 scalar would quantise the logged KL

    @staticmethod
    def backward(ctx, g):
        kl_triton = dispatch.kernel_module("kl_triton")

        new, orig, lse_n, lse_o = ctx.saved_tensors
        return kl_triton.kl_backward(new, orig, lse_n, lse_o, g), None


def kl_div(
    logits_new: torch.Tensor, logits_orig: torch.Tensor, *, backend: str = "auto"
) -> torch.Tensor:
    """Scalar mean over rows of KL(softmax(orig) || softmax(new)); grad only to logits_new.

    Equals F.kl_div(log_softmax(new), log_softmax(orig), log_target=True,
    reduction='batchmean') on the inputs flattened to [N, vocab].
    """
    if logits_new.shape != logits_orig.shape:
        raise ValueError(f"shape mismatch: {tuple(logits_new.shape)} vs {tuple(logits_orig.shape)}")
    if dispatch.resolve_backend(backend, logits_new.device) == "torch":
        return kl_div_torch(logits_new, logits_orig)
    v = logits_new.shape[-1]
    if not selfcheck.kl_kernels(backend, logits_new.device, logits_new.dtype, v):
        return kl_div_torch(logits_new.float(), logits_orig.float())
    return kl_fused(logits_new, logits_orig)


def kl_fused(logits_new: torch.Tensor, logits_orig: torch.Tensor) -> torch.Tensor:
    """The Triton KL on [..., vocab] logits (no backend choice, no self-check)."""
    v = logits_new.shape[-1]
    new = logits_new.reshape(-1, v).contiguous()
    orig = logits_orig.detach().reshape(-1, v).contiguous().to(new.dtype)
    return _KLFunction.apply(new, orig)
