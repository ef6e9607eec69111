"""JumpReLU for e2e training: SAELens's straight-through estimator, also around the fused kernels.

SAELens's JumpReLU training SAE (`sae_lens.saes.jumprelu_sae`) trains its threshold through
two autograd functions with a bandwidth `bw`: `JumpReLU` (acts = pre * (pre > t), with
d acts / d t = -(t / bw) * rect((pre - t) / bw)) and `Step` (the L0 penalty, with
d step / d t = -(1 / bw) * rect(...)). The PyTorch path calls `JumpReLU` itself. The fused
kernel computes acts and the normalised decode in one autograd node, so the total gradient
reaching acts (g_acts + g_out @ W_dec_normed.T) never exists outside it; `_ThresholdSTE`
wraps the kernel's outputs as identities and adds the same threshold gradient from it.
Both paths return the pre-activations for the `Step` L0 penalty.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sae_lens.saes.jumprelu_sae import JumpReLU, Step, rectangle

from sae_lens_e2e import kernels


class _ThresholdSTE(torch.autograd.Function):
    """Identity on (acts, out); backward adds SAELens's JumpReLU threshold gradient."""

    @staticmethod
    def forward(ctx: Any, acts, out, pre, threshold, W_dec, bandwidth: float):  # type: ignore[override]
        ctx.save_for_backward(pre, threshold, W_dec)
        ctx.bandwidth = bandwidth
        return acts.view_as(acts), out.view_as(out)

    @staticmethod
    def backward(ctx: Any, g_acts, g_out):  # type: ignore[override]
        pre, threshold, W_dec = ctx.saved_tensors
        total = torch.zeros_like(pre) if g_acts is None else g_acts.to(pre.dtype)
        if g_out is not None:
            total = total + g_out.to(pre.dtype) @ F.normalize(W_dec, dim=-1).to(pre.dtype).t()
        thr = threshold.to(pre.dtype)
        ste = (thr / ctx.bandwidth) * rectangle((pre - thr) / ctx.bandwidth) * total
        return g_acts, g_out, None, (-ste.sum(0)).to(threshold.dtype), None, None


def jumprelu_forward(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    threshold: torch.Tensor,
    *,
    bandwidth: float,
    ste_to_input: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(feature_acts, sae_out, pre_acts) for flat x [N, d_in]; decoder rows normalised.

    The kernel path needs threshold >= 0 (callers clamp it, as SAELens does) and has no
    `ste_to_input` (Anthropic's variant): that runs on the PyTorch path.
    """
    use_kernel = not ste_to_input and kernels.resolve_backend(backend, x.device) == "triton"
    if use_kernel and bool((threshold >= 0).all()):
        acts, out, pre = kernels.sae_forward(
            x, W_enc, b_enc, W_dec, b_dec, activation="jumprelu",
            threshold=threshold.detach().to(x.dtype), backend=backend, return_pre=True,
        )  # fmt: skip
        acts, out = _ThresholdSTE.apply(acts, out, pre, threshold, W_dec, bandwidth)
        return acts, out, pre
    pre = x @ W_enc + b_enc
    acts = JumpReLU.apply(pre, threshold.to(pre.dtype), bandwidth, ste_to_input)
    return acts, acts @ F.normalize(W_dec, dim=-1) + b_dec, pre


def l0_penalty(
    pre: torch.Tensor,
    acts: torch.Tensor,
    threshold: torch.Tensor,
    cfg: Any,
) -> torch.Tensor:
    """SAELens's JumpReLU sparsity term (without its coefficient), mean over tokens.

    "step": L0 through `Step`; "quadratic": Gemma Scope 2's 2 / target * (L0 - target)^2;
    "tanh": Anthropic's tanh(scale * acts * ||W_dec row||) with unit rows here.
    """
    mode = cfg.jumprelu_sparsity_loss_mode
    if mode == "tanh":
        return torch.tanh(cfg.jumprelu_tanh_scale * acts).sum(-1).mean()
    thr = threshold.to(pre.dtype)
    l0 = Step.apply(pre, thr, cfg.jumprelu_bandwidth, cfg.jumprelu_ste_to_input).sum(-1)
    if mode == "quadratic":
        return (2 / cfg.target_l0 * (l0 - cfg.target_l0) ** 2).mean()
    return l0.mean()
