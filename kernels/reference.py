"""Plain-PyTorch reference of the SAE forward and the logits KL.

This is both the CPU fallback (backend='torch') and the oracle the kernel tests compare
against, so it is written as the literal formula with no tricks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def activate(
    pre: torch.Tensor, activation: str, k: int | None, threshold: torch.Tensor | None
) -> torch.Tensor:
    """ReLU, TopK-then-ReLU (as SAELens TopK) or JumpReLU on pre-activations."""
    if activation == "relu":
        return F.relu(pre)
    if activation == "topk":
        if k is None:
            raise ValueError("activation='topk' needs k")
        vals, idx = torch.topk(pre, k=k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    if activation == "jumprelu":
        if threshold is None:
            raise ValueError("activation='jumprelu' needs threshold")
        return pre * (pre > threshold)
    raise ValueError(f"unknown activation {activation!r}; expected relu, topk or jumprelu")


def sae_forward_torch(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    *,
    activation: str = "relu",
    k: int | None = None,
    threshold: torch.Tensor | None = None,
    return_pre: bool = False,
) -> tuple[torch.Tensor, ...]:
    """(feature_acts, sae_out[, pre-activations]) with the decoder rows normalised in the
    forward (e2e SAE)."""
    pre = x @ W_enc + b_enc
    acts = activate(pre, activation, k, threshold)
    out = acts @ F.normalize(W_dec, dim=-1) + b_dec
    return (acts, out, pre.detach()) if return_pre else (acts, out)


def kl_div_torch(logits_new: torch.Tensor, logits_orig: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(P_orig || P_new), the e2e paper's logits_kl term."""
    v = logits_new.shape[-1]
    new = logits_new.reshape(-1, v)
    orig = logits_orig.detach().reshape(-1, v)
    return F.kl_div(
        F.log_softmax(new, dim=-1),
        F.log_softmax(orig, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
