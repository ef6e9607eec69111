"""SAE forward (encode + activation + normalised decode) with a fused-kernel autograd path.

Under autocast the fused path computes in the autocast dtype (as torch's own GEMMs would) and
returns that dtype; the autograd node itself runs with autocast off, so forward and backward
see one dtype. A forward makes at most one host sync (ReLU/JumpReLU: the number of active
latents, which sizes the sparse entries and picks sparse or dense; TopK: none), the backward
none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dispatch, selfcheck
from .reference import sae_forward_torch

_EPS = 1e-12  # F.normalize's eps


def _pad1(t: torch.Tensor) -> torch.Tensor:
    """Triton wants a real pointer even when there is nothing to read."""
    return t if t.numel() > 0 else t.new_zeros(1)


def _encode(x, W_enc, b_enc, activation, k, threshold, want_pre, cfg):
    """Dense acts, per-row nnz, for TopK the (cols, vals) of the selected latents and, with
    `want_pre` (JumpReLU), the pre-activations. cfg None: torch's GEMM (see encode_config)."""
    kt = dispatch.kernel_module("sae_triton")

    act = kt.ACTIVATIONS[activation]
    if want_pre:
        pre = _pre_activations(x, W_enc, b_enc, cfg)
        acts = pre * (pre > threshold)
        return acts, (acts != 0).sum(1), None, pre
    if cfg is not None:
        acts, cnt = kt.encode(x, W_enc, b_enc, threshold, act, cfg)
    else:
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


def _pre_activations(x, W_enc, b_enc, cfg):
    kt = dispatch.kernel_module("sae_triton")
    if cfg is None:
        return torch.addmm(b_enc, x, W_enc)
    return kt.encode(x, W_enc, b_enc, None, kt.ACT_NONE, cfg)[0]


def _count(cnt, activation, threshold) -> tuple[int, bool]:
    """(active entries, any negative JumpReLU threshold) in one host read."""
    packed = cnt.sum(dtype=torch.int64) * 2
    if activation == "jumprelu":
        packed = packed + (threshold < 0).any()
    value = int(packed.item())  # the forward's one host sync
    return value // 2, bool(value % 2)


def _csr(acts, cnt, topk, nnz: int):
    """(rowptr, cols int32, vals, rows int64) of the active latents; nnz is known, so the
    entries are found without another host sync."""
    kt = dispatch.kernel_module("sae_triton")
    n, s = acts.shape
    if topk is not None:
        idx, vals = topk
        k = idx.shape[1]
        rowptr = torch.arange(n + 1, device=acts.device, dtype=torch.int64) * k
        rows = torch.arange(n, device=acts.device).repeat_interleave(k)
        return rowptr, idx.reshape(-1).to(torch.int32), vals.reshape(-1), rows
    flat = kt._nonzero_static(acts.reshape(-1) != 0, nnz)
    rowptr = torch.zeros(n + 1, device=acts.device, dtype=torch.int64)
    rowptr[1:] = torch.cumsum(cnt, 0)
    return rowptr, (flat % s).to(torch.int32), acts.reshape(-1)[flat], flat // s


class _SAEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, threshold, activation, k, thr_override,
                want_pre, cfg, allow_sparse, segment):  # fmt: skip
        kt = dispatch.kernel_module("sae_triton")

        acts, cnt, topk, pre = _encode(x, W_enc, b_enc, activation, k, threshold, want_pre, cfg)
        n, s = acts.shape
        nnz, negative = (n * k, False) if topk is not None else _count(cnt, activation, threshold)
        # The kernels' activity mask is acts != 0: the JumpReLU gate for a threshold >= 0.
        # Below 0 a pre-activation of exactly 0 passes the gate with acts 0: keep the gate.
        gate = None
        if negative:
            pre = pre if pre is not None else _pre_activations(x, W_enc, b_enc, cfg)
            gate = pre > threshold
        sparse = (
            allow_sparse and gate is None and dispatch.use_sparse(nnz, n * s, x.dtype, thr_override)
        )
        inv = 1.0 / W_dec.float().norm(dim=1).clamp_min(_EPS)
        if sparse:
            rowptr, cols, vals, rows = _csr(acts, cnt, topk, nnz)
            out = kt.decode(rowptr, _pad1(cols), _pad1(vals), W_dec, inv, b_dec, n)
            ctx.save_for_backward(x, W_enc, W_dec, inv, rowptr, cols, vals, rows)
        else:
            out = torch.addmm(b_dec, acts, (W_dec * inv[:, None]).to(W_dec.dtype))
            ctx.save_for_backward(x, W_enc, W_dec, inv, acts, gate)
        ctx.sparse, ctx.segment = sparse, segment
        ctx.set_materialize_grads(False)
        if not want_pre:
            return acts, out
        ctx.mark_non_differentiable(pre)
        return acts, out, pre

    @staticmethod
    def backward(ctx, g_acts, g_out, g_pre=None):
        x = ctx.saved_tensors[0]
        if g_out is None:
            g_out = torch.zeros(x.shape, device=x.device, dtype=x.dtype)
        g_out = g_out.contiguous()
        g_acts = None if g_acts is None else g_acts.contiguous()
        want_dx = ctx.needs_input_grad[0]  # False for the first SAE: its input has no grad
        backward = _sparse_backward if ctx.sparse else _dense_backward
        grads = backward(ctx, g_acts, g_out, want_dx)
        return (*grads, g_out.sum(0), *([None] * 8))


def _sparse_backward(ctx, g_acts, g_out, want_dx: bool):
    kt = dispatch.kernel_module("sae_triton")

    x, W_enc, W_dec, inv, rowptr, cols, vals, rows = ctx.saved_tensors
    cc = kt.columns(cols, rows, W_dec.shape[0], ctx.segment)
    W_encT = W_enc.t().contiguous() if want_dx else None
    dx, dW_encT, db_enc, dW_dec = kt.backward(
        (rowptr, _pad1(cols), _pad1(vals), cols.numel()), cc, g_out, g_acts, x, W_encT, W_dec,
        inv, _EPS,
    )  # fmt: skip
    return dx, dW_encT.t(), db_enc, dW_dec


def _dense_backward(ctx, g_acts, g_out, want_dx: bool):
    """Same maths as the sparse kernels, as dense (cuBLAS) GEMMs with an activity mask."""
    x, W_enc, W_dec, inv, acts, gate = ctx.saved_tensors
    Wn = (W_dec * inv[:, None]).to(W_dec.dtype)
    d_acts = g_out @ Wn.t()
    if g_acts is not None:
        d_acts = d_acts + g_acts
    d_pre = d_acts.mul_(acts != 0 if gate is None else gate)
    dWn = (acts.t() @ g_out).float()
    nrm = W_dec.float().norm(dim=1, keepdim=True)
    wn = Wn.float()
    proj = (wn * dWn).sum(1, keepdim=True)
    dW_dec = torch.where(nrm > _EPS, (dWn - wn * proj) * inv[:, None], dWn / _EPS)
    dx = d_pre @ W_enc.t() if want_dx else None
    return dx, x.t() @ d_pre, d_pre.sum(0), dW_dec.to(W_dec.dtype)


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the fused path computes in: autocast's where it is on (as torch's GEMMs
    would), else the weights'."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return weight.dtype


def run_fused(x, W_enc, b_enc, W_dec, b_dec, threshold, *, activation, k, density_threshold,
              return_pre, verdict, segment=None):  # fmt: skip
    """The fused autograd node on flat, same-dtype, contiguous inputs, autocast off, with the
    kernels `verdict` allows (a selfcheck.SAEVerdict)."""
    kt = dispatch.kernel_module("sae_triton")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    cfg = kt.encode_config(x.dtype, tf32, dispatch.target_of(x.device)) if verdict.encoder else None
    with torch.autocast(x.device.type, enabled=False):
        return _SAEFunction.apply(x, W_enc, b_enc, W_dec, b_dec, threshold, activation, k,
                                  density_threshold, return_pre, cfg, verdict.sparse, segment)  # fmt: skip


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
    'auto' uses them on NVIDIA GPUs once they pass their first-use self-check (selfcheck.py),
    PyTorch for any that do not. `return_pre` (JumpReLU only) also returns the
    pre-activations, without a gradient, for a caller that trains the threshold (no extra
    GEMM: the encoder writes them).
    """
    if return_pre and activation != "jumprelu":
        raise ValueError("return_pre is only for activation='jumprelu'")
    if activation not in ("relu", "topk", "jumprelu"):
        raise ValueError(f"unknown activation {activation!r}; expected relu, topk or jumprelu")
    if activation == "topk" and k is None:
        raise ValueError("activation='topk' needs k")
    if activation == "jumprelu" and threshold is None:
        raise ValueError("activation='jumprelu' needs threshold")
    kw = {"activation": activation, "k": k, "threshold": threshold, "return_pre": return_pre}
    if dispatch.resolve_backend(backend, x.device) == "torch":
        return sae_forward_torch(x, W_enc, b_enc, W_dec, b_dec, **kw)
    lead = x.shape[:-1]
    dtype = compute_dtype(x, W_enc)
    flat = x.reshape(-1, x.shape[-1])
    ts = [t.to(dtype).contiguous() for t in (flat, W_enc, b_enc, W_dec, b_dec)]
    thr = None if threshold is None else threshold.detach().to(dtype).contiguous()
    verdict = selfcheck.sae_kernels(
        backend, x.device, dtype, W_enc.shape[0], W_enc.shape[1], flat.shape[0], activation, k
    )
    res = run_fused(*ts, thr, activation=activation, k=k, density_threshold=density_threshold,
                    return_pre=return_pre, verdict=verdict)  # fmt: skip
    return tuple(t.reshape(*lead, -1) for t in res)


def nonzero_static_2d(mask: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) indices of a 2-d mask's `count` True entries, in row-major order, with
    no host sync (count is known)."""
    kt = dispatch.kernel_module("sae_triton")
    flat = kt._nonzero_static(mask.reshape(-1), count)
    return flat // mask.shape[1], flat % mask.shape[1]


def sampled_decoder_dot(g_out, W_dec, tokens, ptr) -> torch.Tensor:
    """For each latent j and each token t among its entries (tokens[ptr[j]:ptr[j+1]]),
    g_out[t] . normalize(W_dec)[j], in fp32, without the dense [N, S] product g_out @ W_dec.T
    (a JumpReLU threshold's gradient needs it only near the threshold)."""
    kt = dispatch.kernel_module("sae_triton")
    ones = torch.ones(g_out.shape[0], device=g_out.device, dtype=torch.float32)
    inv = 1.0 / W_dec.float().norm(dim=1).clamp_min(_EPS)
    dots = kt.sampled_dot(ptr, tokens.to(torch.int32), W_dec.contiguous(), g_out.contiguous(), ones)
    return dots * inv.repeat_interleave(ptr.diff(), output_size=tokens.numel())
