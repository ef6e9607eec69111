"""SAE forward (encode + activation + normalised decode) with a fused-kernel autograd path."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dispatch
from .reference import sae_forward_torch

_EPS = 1e-12  # F.normalize's eps


def _pad1(t: torch.Tensor) -> torch.Tensor:
    """Triton wants a real pointer even when there is nothing to read."""
    return t if t.numel() > 0 else t.new_zeros(1)


def _encode(x, W_enc, b_enc, activation, k, threshold, want_pre=False):
    """Dense acts, per-row nnz, for TopK the (cols, vals) of the selected latents and, with
    `want_pre` (JumpReLU), the pre-activations (for a trained threshold's gradient)."""
    kt = dispatch.kernel_module("sae_triton")

    cfg = kt.encode_config(x.dtype, torch.backends.cuda.matmul.allow_tf32)
    act = kt.ACTIVATIONS[activation]
    if want_pre:
        if cfg is not None:
            pre = kt.encode(x, W_enc, b_enc, None, kt.ACT_NONE, cfg)[0]
        else:
            pre = torch.addmm(b_enc, x, W_enc)
        acts = pre * (pre > threshold)
        return acts, (acts != 0).sum(1), None, pre
    if cfg is not None:
        acts, cnt = kt.encode(x, W_enc, b_enc, threshold, act, cfg)
    else:  # fp32 without TF32: cuBLAS SGEMM beats a Triton FMA GEMM; keep torch here
        acts = torch.addmm(b_enc, x, W_enc)
        if act == kt.ACT_RELU:
            acts = F.relu_(acts)
        elif act == kt.ACT_JUMPRELU:
            acts = acts.mul_(acts > threshold)
        cnt = (acts != 0).sum(1)
    if activation != "topk":
        return acts, cnt, None, None
    vals, idx = torch.topk(acts, k=k, dim=-1, sorted=False)
    vals = vals.relu()
    return torch.zeros_like(acts).scatter_(-1, idx, vals), None, (idx, vals), None


def _csr(acts, cnt, topk):
    """(rowptr, cols int32, vals, rows int64) of the active latents."""
    n, s = acts.shape
    if topk is not None:
        idx, vals = topk
        k = idx.shape[1]
        rowptr = torch.arange(n + 1, device=acts.device, dtype=torch.int64) * k
        rows = torch.arange(n, device=acts.device).repeat_interleave(k)
        return rowptr, idx.reshape(-1).to(torch.int32), vals.reshape(-1), rows
    flat = acts.reshape(-1).nonzero().squeeze(1)
    rowptr = torch.zeros(n + 1, device=acts.device, dtype=torch.int64)
    rowptr[1:] = torch.cumsum(cnt, 0)
    return rowptr, (flat % s).to(torch.int32), acts.reshape(-1)[flat], flat // s


class _SAEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, threshold, activation, k, thr_override,
                want_pre):  # fmt: skip
        kt = dispatch.kernel_module("sae_triton")

        acts, cnt, topk, pre = _encode(x, W_enc, b_enc, activation, k, threshold, want_pre)
        n, s = acts.shape
        nnz = n * k if topk is not None else int(cnt.sum())
        sparse = dispatch.use_sparse(nnz, n * s, x.dtype, thr_override)
        inv = 1.0 / W_dec.float().norm(dim=1).clamp_min(_EPS)
        if sparse:
            csr = _csr(acts, cnt, topk)
            rowptr, cols, vals, rows = csr
            out = kt.decode(rowptr, _pad1(cols), _pad1(vals), W_dec, inv, b_dec, n)
            ctx.save_for_backward(x, W_enc, W_dec, inv, rowptr, cols, vals, rows)
        else:
            out = torch.addmm(b_dec, acts, (W_dec * inv[:, None]).to(W_dec.dtype))
            ctx.save_for_backward(x, W_enc, W_dec, inv, acts)
        ctx.sparse = sparse
        ctx.set_materialize_grads(False)
        if pre is None:
            return acts, out
        ctx.mark_non_differentiable(pre)
        return acts, out, pre

    @staticmethod
    def backward(ctx, g_acts, g_out, g_pre=None):
        if g_out is None:
            g_out = torch.zeros(ctx.saved_tensors[0].shape, device=ctx.saved_tensors[0].device,
                                dtype=ctx.saved_tensors[0].dtype)  # fmt: skip
        g_out = g_out.contiguous()
        g_acts = None if g_acts is None else g_acts.contiguous()
        grads = (
            _sparse_backward(ctx, g_acts, g_out)
            if ctx.sparse
            else _dense_backward(ctx, g_acts, g_out)
        )
        return (*grads, g_out.sum(0), None, None, None, None, None)


def _sparse_backward(ctx, g_acts, g_out):
    kt = dispatch.kernel_module("sae_triton")

    x, W_enc, W_dec, inv, rowptr, cols, vals, rows = ctx.saved_tensors
    nnz = cols.numel()
    perm = torch.argsort(cols, stable=True)
    csc = (perm, rows[perm].to(torch.int32), torch.bincount(cols, minlength=W_dec.shape[0]))
    dx, dW_encT, db_enc, dW_dec = kt.backward(
        (rowptr, _pad1(cols), _pad1(vals), nnz), csc, g_out, g_acts, x,
        W_enc.t().contiguous(), W_dec, inv, _EPS,
    )  # fmt: skip
    return dx, dW_encT.t(), db_enc, dW_dec


def _dense_backward(ctx, g_acts, g_out):
    """Same maths as the sparse kernels, as dense (cuBLAS) GEMMs with an activity mask."""
    x, W_enc, W_dec, inv, acts = ctx.saved_tensors
    Wn = (W_dec * inv[:, None]).to(W_dec.dtype)
    d_acts = g_out @ Wn.t()
    if g_acts is not None:
        d_acts = d_acts + g_acts
    d_pre = d_acts.mul_(acts != 0)
    dWn = (acts.t() @ g_out).float()
    nrm = W_dec.float().norm(dim=1, keepdim=True)
    wn = Wn.float()
    proj = (wn * dWn).sum(1, keepdim=True)
    dW_dec = torch.where(nrm > _EPS, (dWn - wn * proj) * inv[:, None], dWn / _EPS)
    return d_pre @ W_enc.t(), x.t() @ d_pre, d_pre.sum(0), dW_dec.to(W_dec.dtype)


def sae_forward(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    *,
    activation: str = "relu",
    k: int | None = None,
    threshold: torch.Tensor | None = None,
    backend: str = "auto",
    density_threshold: float | None = None,
    return_pre: bool = False,
) -> tuple[torch.Tensor, ...]:
    """(feature_acts [N, d_sae], sae_out [N, d_in]); decoder rows normalised in the forward.

    backend='torch' is the literal PyTorch formula; 'triton' uses the fused kernels and picks
    sparse or dense decode/backward per call from the measured density (see dispatch.py).
    `return_pre` (JumpReLU only) also returns the pre-activations, without a gradient, for
    a caller that trains the threshold (no extra GEMM: the encoder writes them).
    """
    if return_pre and activation != "jumprelu":
        raise ValueError("return_pre is only for activation='jumprelu'")
    if activation not in ("relu", "topk", "jumprelu"):
        raise ValueError(f"unknown activation {activation!r}; expected relu, topk or jumprelu")
    if activation == "topk" and k is None:
        raise ValueError("activation='topk' needs k")
    if activation == "jumprelu" and threshold is None:
        raise ValueError("activation='jumprelu' needs threshold")
    args = (x, W_enc, b_enc, W_dec, b_dec)
    kw = {"activation": activation, "k": k, "threshold": threshold, "return_pre": return_pre}
    if dispatch.resolve_backend(backend, x.device) == "torch":
        return sae_forward_torch(*args, **kw)
    # The kernels' activity mask is acts != 0, which equals the JumpReLU gate only for thr >= 0.
    if activation == "jumprelu" and bool((threshold < 0).any()):
        return sae_forward_torch(*args, **kw)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    ts = [t.contiguous() for t in (W_enc, b_enc, W_dec, b_dec)]
    thr = None if threshold is None else threshold.detach().contiguous()
    res = _SAEFunction.apply(x2, *ts, thr, activation, k, density_threshold, return_pre)
    return tuple(t.reshape(*lead, -1) for t in res)
