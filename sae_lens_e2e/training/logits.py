"""The logits, never materialised: the e2e KL and the next-token CE from final residuals.

At Gemma's vocabulary one [tokens, vocab] fp32 tensor of the paper's batch (16 x 1024 tokens)
is 16.8 GB, and the unfused KL holds about seven of them (both logits, two log-softmaxes, the
KL's elementwise terms, their gradients). Here the clean and the spliced runs stop at the
final residual stream, and the KL is taken a token chunk at a time:

  for each chunk:  orig = unembed(ln_final(clean[chunk]))          (no graph)
                   new  = unembed(ln_final(spliced[chunk]))        (graph of this chunk only)
                   KL rows, and g = softmax(new) - softmax(orig)    (d sum KL / d new)
                   d spliced[chunk] = backprop g through this chunk's unembed and ln_final

then the chunk's logits are dropped. Only the gradient with respect to the spliced residual,
[tokens, d_model], outlives the forward, and backward just scales it. Cost: the same GEMMs as
the unfused path (clean unembed, spliced unembed, the input gradient of the latter), nothing
recomputed, no unembed weight gradient (the model is frozen); in exchange the gradient is
computed in the forward, which a forward without grad (evaluation) skips. Memory: four
[chunk, vocab] fp32 buffers at most (Gemma's soft-cap adds a transient one) plus the
[tokens, d_model] gradient. ln_final runs inside the
chunk's graph, so its weights (where the model has them) shape the gradient.

The KL of a chunk is PyTorch on every device; on CUDA the fused Triton KL runs per chunk
(kernels.selfcheck checks it first; 'auto' falls back to PyTorch where it fails).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from sae_lens_e2e import kernels
from sae_lens_e2e.kernels import dispatch, selfcheck

#: Bytes the chunk buffers may take (four [chunk, vocab] fp32 arrays at most). Every chunk
#: reads the whole unembed three times (two logits GEMMs and the input gradient's), so a
#: chunk of c rows does about c FLOPs per byte of W_U read in bf16: on a GPU it takes
#: ~300 rows for the GEMMs to be compute-bound (H100: 989 TFLOP/s / 3.35 TB/s), i.e.
#: 4 GiB at a 256k vocabulary (1048 rows) and still a fraction of the 16.8 GB one fp32
#: copy of such logits takes at the paper's batch. On CPU the budget stays small (tests,
#: tiny models). They also never take more than `MAX_SHARE` of what the whole logits would
#: (tokens x vocab x 4 bytes), leaving room under the 0.5 the step aims at for its other
#: memory (benchmarks/bench_memory.py).
BUDGET_BYTES = {"cuda": 4 << 30, "cpu": 64 << 20}
MAX_SHARE = 0.3
#: ... but never less than this: below it the GEMMs get too small to be worth the memory.
MIN_BYTES = 16 << 20
_BUFFERS = 4


def chunk_tokens(
    n_tokens: int, vocab: int, device: torch.device, override: int | None = None
) -> int:
    """Tokens per chunk: `override`, else what fits the device's budget (at least one)."""
    if override is not None:
        return max(1, min(override, n_tokens))
    budget = BUDGET_BYTES.get(torch.device(device).type, BUDGET_BYTES["cpu"])
    budget = min(budget, max(MIN_BYTES, MAX_SHARE * n_tokens * vocab * 4))
    return max(1, min(n_tokens, int(budget // (_BUFFERS * 4 * vocab))))


def final_logits(model: Any, resid: torch.Tensor) -> torch.Tensor:
    """Logits of final residual streams [..., d_model], as HookedTransformer.forward makes
    them after its last block: ln_final (if the model has one), the unembed, and Gemma's
    logit soft-cap (cap * tanh(logits / cap)) where the config sets one."""
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    # The unembed's product, not its module: TransformerLens 3 copies W_U.T to a contiguous
    # [vocab, d_model] tensor on every call (a weight-sized copy per chunk); the transposed
    # view multiplies without one.
    logits = F.linear(resid, model.unembed.W_U.t(), model.unembed.b_U)
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    if cap is not None and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


def _kl_rows_torch(new: torch.Tensor, orig_logits: Callable[[], torch.Tensor], want_grad: bool):
    """Per-row KL(softmax(orig) || softmax(new)) and d(sum of rows)/d new, fp32, in the
    reference's elementwise form p_o (log p_o - log p_n) and its exact derivative
    softmax(new) * sum(p_o) - p_o (sum(p_o) is 1 up to rounding). The original logits are
    made here and dropped once normalised: four [chunk, vocab] buffers at most."""
    log_orig = orig_logits().float().log_softmax(-1)
    log_new = new.float().log_softmax(-1)
    p_orig = log_orig.exp()
    rows = log_orig.sub_(log_new).mul_(p_orig).sum(-1)
    del log_orig
    if not want_grad:
        return rows, None
    return rows, log_new.exp_().mul_(p_orig.sum(-1, keepdim=True)).sub_(p_orig)


def _kl_rows_triton(new: torch.Tensor, orig_logits: Callable[[], torch.Tensor], want_grad: bool):
    kl_triton = dispatch.kernel_module("kl_triton")
    new, orig = new.contiguous(), orig_logits().contiguous().to(new.dtype)
    rows, lse_n, lse_o = kl_triton.kl_forward(new, orig)
    grad = None
    if want_grad:  # the kernel scales by g / rows: g = rows gives d(sum of rows)/d new
        g = torch.full((), float(new.shape[0]), device=new.device)
        grad = kl_triton.kl_backward(new, orig, lse_n, lse_o, g)
    return rows, grad


def _kl_rows_fn(backend: str, device: torch.device, dtype: torch.dtype, vocab: int):
    if kernels.resolve_backend(backend, device) == "torch":
        return _kl_rows_torch
    return (
        _kl_rows_triton if selfcheck.kl_kernels(backend, device, dtype, vocab) else _kl_rows_torch
    )


class _ResidualKL(torch.autograd.Function):
    """Mean over tokens of KL(P_orig || P_new) from flat final residuals [tokens, d_model];
    the gradient reaches `new` only."""

    @staticmethod
    def forward(ctx, new, orig, model, backend: str, chunk: int, want_grad: bool):  # type: ignore[override]
        n = new.shape[0]
        grad = torch.empty_like(new) if want_grad else None
        total = torch.zeros((), dtype=torch.float64, device=new.device)
        rows_fn = None
        for s in range(0, n, chunk):
            with torch.enable_grad():
                x = new[s : s + chunk].detach().requires_grad_(want_grad)
                logits_new = final_logits(model, x)
            if rows_fn is None:
                rows_fn = _kl_rows_fn(backend, new.device, logits_new.dtype, logits_new.shape[-1])
            orig_logits = functools.partial(final_logits, model, orig[s : s + chunk])
            rows, g = rows_fn(logits_new.detach(), orig_logits, want_grad)
            total += rows.sum(dtype=torch.float64)
            if want_grad:
                grad[s : s + chunk] = torch.autograd.grad(logits_new, x, g.to(logits_new.dtype))[0]
            del logits_new, g
        ctx.save_for_backward(grad)
        ctx.n = n
        return (total / n).float()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * (g / ctx.n).to(grad.dtype), None, None, None, None, None


def residual_kl(
    model: Any,
    new: torch.Tensor,
    orig: torch.Tensor,
    *,
    backend: str = "auto",
    chunk: int | None = None,
) -> torch.Tensor:
    """Per-token mean of KL(P_orig || P_new), the logits of each being
    unembed(ln_final(residual)), from final residuals [..., d_model]; fp32 scalar. Equals
    `losses.logits_kl` on the full logits without ever holding them."""
    d = new.shape[-1]
    flat_new, flat_orig = new.reshape(-1, d), orig.detach().reshape(-1, d)
    size = chunk_tokens(flat_new.shape[0], model.cfg.d_vocab_out, new.device, chunk)
    want_grad = torch.is_grad_enabled() and new.requires_grad  # the forward cannot tell
    return _ResidualKL.apply(flat_new, flat_orig, model, backend, size, want_grad)


@torch.no_grad()
def next_token_ce_sum(
    model: Any, resid: torch.Tensor, tokens: torch.Tensor, chunk: int | None = None
) -> float:
    """Sum over every predicted position of -log p(next token) from final residuals
    [batch, pos, d_model]: TransformerLens's loss_fn(per_token=True).sum(), chunked."""
    x = resid[:, :-1].reshape(-1, resid.shape[-1])
    targets = tokens[:, 1:].reshape(-1)
    size = chunk_tokens(x.shape[0], model.cfg.d_vocab_out, resid.device, chunk)
    total = torch.zeros((), dtype=torch.float64, device=resid.device)
    for s in range(0, x.shape[0], size):
        logits = final_logits(model, x[s : s + size]).float()
        picked = logits.gather(-1, targets[s : s + size, None]).squeeze(-1)
        total += (logits.logsumexp(-1) - picked).sum(dtype=torch.float64)
    return total.item()
