"""Vocab-chunked fused log-softmax + KL(P_orig || P_new) in Triton (imported lazily).

One program per token row streams the vocabulary in chunks with an online log-sum-exp for
both distributions, so no [tokens, vocab] fp32 tensor is ever written: the forward keeps
three floats per row (KL, lse_new, lse_orig) and the backward writes only d logits_new.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dispatch import interpret_mode
from .launch import Launch, run

INTERPRETED = interpret_mode()  # how the @triton.jit below were built


@triton.jit
def _kl_fwd_kernel(new_ptr, orig_ptr, kl_ptr, lse_n_ptr, lse_o_ptr, V, BV: tl.constexpr):
    """KL_i = sum_v p_o (o - n) - lse_o + lse_n, with sum_v e^(o-m_o)(o-n) rescaled online.

    Running maxima start at a finite -1e30 so exp(m_old - m_new) never sees inf - inf.
    """
    i = tl.program_id(0).to(tl.int64)
    m_o = -1e30
    m_n = -1e30
    z_o = 0.0
    z_n = 0.0
    acc = 0.0
    for v0 in range(0, V, BV):
        rv = v0 + tl.arange(0, BV)
        mv = rv < V
        o = tl.load(orig_ptr + i * V + rv, mask=mv, other=0.0).to(tl.float32)
        n = tl.load(new_ptr + i * V + rv, mask=mv, other=0.0).to(tl.float32)
        o = tl.where(mv, o, -1e30)  # after the cast: -1e30 is not a finite fp16
        n = tl.where(mv, n, -1e30)
        mo_new = tl.maximum(m_o, tl.max(o, axis=0))
        mn_new = tl.maximum(m_n, tl.max(n, axis=0))
        so = tl.exp(m_o - mo_new)
        eo = tl.where(mv, tl.exp(o - mo_new), 0.0)
        z_o = z_o * so + tl.sum(eo, axis=0)
        acc = acc * so + tl.sum(eo * tl.where(mv, o - n, 0.0), axis=0)
        z_n = z_n * tl.exp(m_n - mn_new) + tl.sum(tl.where(mv, tl.exp(n - mn_new), 0.0), axis=0)
        m_o = mo_new
        m_n = mn_new
    lse_o = m_o + tl.log(z_o)
    lse_n = m_n + tl.log(z_n)
    tl.store(kl_ptr + i, acc / z_o - lse_o + lse_n)
    tl.store(lse_n_ptr + i, lse_n)
    tl.store(lse_o_ptr + i, lse_o)


@triton.jit
def _kl_bwd_kernel(new_ptr, orig_ptr, lse_n_ptr, lse_o_ptr, g_ptr, out_ptr, V, scale,
                   BV: tl.constexpr):  # fmt: skip
    """d KL_mean / d n_v = g * (softmax(n)_v - softmax(o)_v) / N."""
    i = tl.program_id(0).to(tl.int64)
    c = tl.load(g_ptr).to(tl.float32) * scale
    lse_n = tl.load(lse_n_ptr + i)
    lse_o = tl.load(lse_o_ptr + i)
    for v0 in range(0, V, BV):
        rv = v0 + tl.arange(0, BV)
        mv = rv < V
        o = tl.load(orig_ptr + i * V + rv, mask=mv, other=0.0).to(tl.float32)
        n = tl.load(new_ptr + i * V + rv, mask=mv, other=0.0).to(tl.float32)
        g = c * (tl.exp(n - lse_n) - tl.exp(o - lse_o))
        tl.store(out_ptr + i * V + rv, g.to(out_ptr.dtype.element_ty), mask=mv)


def _blocks(v: int, backward: bool = False) -> tuple[int, int]:
    """(BV, num_warps): vocabulary chunk per loop step (smaller under the slow interpreter).

    The backward streams 2048 (8 values per thread): 4096 made ptxas 13 spill in fp16 on sm_90
    at an unaligned vocabulary (50257); see benchmarks/kernel_resources.py. Its values are
    independent per element, so the chunk does not change results.
    """
    if interpret_mode():
        return min(triton.next_power_of_2(v), 1024), 4
    return min(triton.next_power_of_2(v), 2048 if backward else 4096), 8


def kl_forward_launches(new: torch.Tensor, orig: torch.Tensor):
    """([launch], (per-row KL, lse_new, lse_orig)), all fp32 [N]."""
    n, v = new.shape
    kl, lse_n, lse_o = (torch.empty(n, device=new.device, dtype=torch.float32) for _ in range(3))
    bv, warps = _blocks(v)
    launch = Launch(_kl_fwd_kernel, (n,), (new, orig, kl, lse_n, lse_o, v), {"BV": bv}, warps)
    return [launch], (kl, lse_n, lse_o)


def kl_forward(new: torch.Tensor, orig: torch.Tensor):
    """Per-row KL and the two log-sum-exps (all fp32, [N])."""
    return run(*kl_forward_launches(new, orig))


def kl_backward_launches(new, orig, lse_n, lse_o, g: torch.Tensor):
    n, v = new.shape
    out = torch.empty_like(new)
    bv, warps = _blocks(v, backward=True)
    g32 = g.reshape(1).to(torch.float32)
    launch = Launch(_kl_bwd_kernel, (n,), (new, orig, lse_n, lse_o, g32, out, v, 1.0 / n),
                    {"BV": bv}, warps)  # fmt: skip
    return [launch], out


def kl_backward(new, orig, lse_n, lse_o, g: torch.Tensor) -> torch.Tensor:
    return run(*kl_backward_launches(new, orig, lse_n, lse_o, g))
