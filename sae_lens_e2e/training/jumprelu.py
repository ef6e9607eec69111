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
from sae_lens_e2e.kernels import dispatch, selfcheck
from sae_lens_e2e.kernels.sae import nonzero_static_2d, sampled_decoder_dot


class _ThresholdSTE(torch.autograd.Function):
    """Identity on (acts, out); backward adds SAELens's JumpReLU threshold gradient.

    That gradient lives only in the rectangle window |pre - t| < bw / 2. Where the window is
    sparse (the usual case once training has settled), the total gradient reaching acts is
    computed at the window's entries only (a sampled product through the kernels) instead of
    the dense [tokens, d_sae] product g_out @ W_dec_normed.T; the per-latent sums run in
    latent order, so the result is deterministic.
    """

    @staticmethod
    def forward(ctx: Any, acts, out, pre, threshold, W_dec, bandwidth: float, sparse_ok: bool):  # type: ignore[override]
        ctx.save_for_backward(pre, threshold, W_dec)
        ctx.bandwidth, ctx.sparse_ok = bandwidth, sparse_ok
        return acts.view_as(acts), out.view_as(out)

    @staticmethod
    def backward(ctx: Any, g_acts, g_out):  # type: ignore[override]
        pre, threshold, W_dec = ctx.saved_tensors
        if not ctx.needs_input_grad[3]:  # a frozen threshold (freeze_threshold)
            return g_acts, g_out, None, None, None, None, None
        thr = threshold.to(pre.dtype)
        window = rectangle((pre - thr).div_(ctx.bandwidth)) != 0
        n_window = int(window.sum())  # the backward's one host sync
        n, s = pre.shape
        if ctx.sparse_ok and dispatch.use_sparse(n_window, n * s, pre.dtype):
            d_thr = _window_threshold_grad(window, n_window, g_acts, g_out, thr, W_dec, ctx)
        else:
            total = torch.zeros_like(pre) if g_acts is None else g_acts.to(pre.dtype)
            if g_out is not None:
                Wn = F.normalize(W_dec, dim=-1).to(pre.dtype)
                total = total + g_out.to(pre.dtype) @ Wn.t()
            d_thr = -((thr / ctx.bandwidth) * window.to(pre.dtype) * total).sum(0)
        return g_acts, g_out, None, d_thr.to(threshold.dtype), None, None, None


def _window_threshold_grad(window, n_window, g_acts, g_out, thr, W_dec, ctx) -> torch.Tensor:
    """-sum over the window's tokens of (t / bw) * (g_acts + g_out . W_dec_normed[j]), per
    latent j, touching only the window's entries."""
    s = window.shape[1]
    tokens, latents = nonzero_static_2d(window, n_window)
    order = torch.argsort(latents, stable=True)  # latent-major, tokens ascending within
    tokens, latents = tokens[order], latents[order]
    ptr = torch.searchsorted(latents, torch.arange(s + 1, device=latents.device))
    total = torch.zeros(n_window, device=window.device, dtype=torch.float32)
    if g_out is not None:
        total += sampled_decoder_dot(g_out, W_dec, tokens, ptr)
    if g_acts is not None:
        total += g_acts[tokens, latents].float()
    ste = (thr.float()[latents] / ctx.bandwidth) * total
    sums = torch.cat([ste.new_zeros(1, dtype=torch.float64), ste.double().cumsum(0)])
    return -(sums[ptr[1:]] - sums[ptr[:-1]]).float()


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

    The kernel path has no `ste_to_input` (Anthropic's variant): that runs on PyTorch.
    """
    use_kernel = not ste_to_input and kernels.resolve_backend(backend, x.device) == "triton"
    if use_kernel:
        acts, out, pre = kernels.sae_forward(
            x, W_enc, b_enc, W_dec, b_dec, activation="jumprelu",
            threshold=threshold.detach(), backend=backend, return_pre=True,
        )  # fmt: skip
        verdict = selfcheck.sae_kernels(
            backend, x.device, pre.dtype, x.shape[-1], W_enc.shape[1], x.shape[0], "jumprelu", None
        )  # cached: sae_forward has just checked this class
        acts, out = _ThresholdSTE.apply(acts, out, pre, threshold, W_dec, bandwidth, verdict.sparse)
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
