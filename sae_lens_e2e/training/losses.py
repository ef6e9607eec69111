"""The e2e loss terms (Braun et al. 2024), one small function each, and the one batch loss.

`compute_loss_terms` is the single definition used by the trainer, the evaluation and the
tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from sae_lens_e2e import kernels
from sae_lens_e2e.training.config import E2ETrainingMixin, LossCoefficients
from sae_lens_e2e.training.logits import residual_kl
from sae_lens_e2e.training.splice import (
    SplicedRun,
    frozen,
    hook_layer,
    run_prefix,
    run_suffix,
)


def logits_kl(
    new_logits: torch.Tensor, orig_logits: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """Per-token mean of KL(P_orig || P_new) over flattened [tokens, vocab] logits: the
    reference's logits_kl on materialised logits. The loss itself takes the same KL from the
    final residuals chunk by chunk (logits.residual_kl); this is its oracle.

    The fused kernel accumulates in fp32 itself; the PyTorch path gets fp32 copies.
    """
    if kernels.resolve_backend(backend, new_logits.device) == "torch":
        new_logits, orig_logits = new_logits.float(), orig_logits.float()
    return kernels.kl_div(new_logits, orig_logits.detach(), backend=backend).float()


def sparsity_loss(feature_acts: torch.Tensor, p: float, d_in: int) -> torch.Tensor:
    """Lp norm of the codes (not raised to p), mean over tokens, divided by d_in."""
    return feature_acts.float().norm(p=p, dim=-1).mean() / d_in


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over every element (batch, pos and d_model), as the reference."""
    return F.mse_loss(prediction.float(), target.float())


def l0(feature_acts: torch.Tensor) -> torch.Tensor:
    return (feature_acts != 0).float().sum(-1).mean()


@dataclass(frozen=True)
class SplicePlan:
    """Where the SAEs sit, where the loss looks downstream, and what each term weighs."""

    sae_hooks: tuple[str, ...]
    first_layer: int
    last_layer: int
    downstream_hooks: tuple[str, ...]
    coefficients: LossCoefficients

    @classmethod
    def build(
        cls, model: HookedTransformer, saes: Mapping[str, Any], cfg: E2ETrainingMixin
    ) -> SplicePlan:
        sae_hooks = tuple(sorted(saes, key=hook_layer))
        layers = [hook_layer(h) for h in sae_hooks]
        return cls(
            sae_hooks=sae_hooks,
            first_layer=min(layers),
            last_layer=max(layers),
            downstream_hooks=tuple(downstream_hooks(model, sae_hooks, cfg)),
            coefficients=cfg.loss_coefficients(),
        )


def downstream_hooks(
    model: HookedTransformer, sae_hooks: Iterable[str], cfg: E2ETrainingMixin
) -> list[str]:
    """The configured downstream hooks, else every later block's hook_resid_pre."""
    if cfg.downstream_hooks is not None:
        return list(cfg.downstream_hooks)
    last = max(hook_layer(h) for h in sae_hooks)
    return [f"blocks.{i}.hook_resid_pre" for i in range(last + 1, model.cfg.n_layers)]


def as_e2e_config(cfg: Any) -> E2ETrainingMixin:
    """Accept the e2e SAE config or a runner config holding one in `.sae`."""
    sae_cfg = getattr(cfg, "sae", cfg)
    if not isinstance(sae_cfg, E2ETrainingMixin):
        raise TypeError(f"expected an e2e training SAE config, got {type(sae_cfg).__name__}")
    return sae_cfg


def compute_loss_terms(
    model: HookedTransformer,
    saes: Mapping[str, Any],
    tokens: torch.Tensor,
    cfg: Any,
    *,
    all_terms: bool = True,
) -> dict[str, torch.Tensor]:
    """Loss terms of one batch of tokens [batch, pos] with `saes` (hook name -> SAE) spliced in.

    Returns `kl`, `sparsity`, `in_to_orig`, `out_to_in`, `loss`, `l0` and per-hook `l0/<hook>`
    (and `kl_alpha` with kl_balance='per_step').
    With `all_terms=False`, terms whose weight is zero and that would need extra model
    compute (KL and in_to_orig for `local`) are skipped, as the trainer does off log steps.
    """
    with frozen(model, keep=saes.values()):  # no gradient reaches the model
        return _loss_terms(model, saes, tokens, as_e2e_config(cfg), all_terms)


def _loss_terms(
    model: HookedTransformer,
    saes: Mapping[str, Any],
    tokens: torch.Tensor,
    e2e_cfg: E2ETrainingMixin,
    all_terms: bool,
) -> dict[str, torch.Tensor]:
    plan = SplicePlan.build(model, saes, e2e_cfg)
    coeffs = plan.coefficients
    need_logits = all_terms or coeffs.kl > 0
    need_downstream = bool(plan.downstream_hooks) and (all_terms or coeffs.in_to_orig > 0)
    full_run = need_logits or need_downstream

    resid = run_prefix(model, tokens, plan.first_layer)
    clean = None
    if full_run:
        with torch.no_grad():
            clean = run_suffix(model, resid, plan.first_layer, cache_hooks=plan.downstream_hooks)
    checkpoint_layers = (
        range(plan.last_layer + 1, model.cfg.n_layers) if e2e_cfg.gradient_checkpointing else ()
    )
    spliced = run_suffix(
        model,
        resid,
        plan.first_layer,
        saes=saes,
        cache_hooks=plan.downstream_hooks if need_downstream else (),
        stop_layer=None if full_run else plan.last_layer + 1,
        checkpoint_layers=checkpoint_layers if full_run else (),
    )

    zero = torch.zeros((), device=tokens.device)
    stock_sparsity(saes, spliced, float(getattr(e2e_cfg, "lp_norm", 1.0)))
    terms = {"kl": zero, "in_to_orig": zero, **local_terms(saes, spliced, coeffs)}
    if clean is not None and need_logits:
        with _graph_if(coeffs.kl):
            terms["kl"] = residual_kl(
                model, spliced.resid_final, clean.resid_final, backend=e2e_cfg.kernels,
                chunk=e2e_cfg.logits_chunk_tokens,
            )  # fmt: skip
    if coeffs.kl_balance == "per_step" and clean is not None and need_logits:
        terms["kl_alpha"] = (terms["out_to_in"] / terms["kl"].clamp_min(1e-12)).detach()
    if clean is not None and need_downstream:
        with _graph_if(coeffs.in_to_orig):
            in_to_orig = [mse(spliced.acts[h], clean.acts[h]) for h in plan.downstream_hooks]
            terms["in_to_orig"] = torch.stack(in_to_orig).mean()
    terms["loss"] = weighted_loss(terms, coeffs)
    for h in plan.sae_hooks:
        terms[f"l0/{h}"] = l0(spliced.feature_acts[h]).detach()
    terms["l0"] = sum((terms[f"l0/{h}"] for h in plan.sae_hooks), zero)
    return terms


def stock_sparsity(saes: Mapping[str, Any], run: SplicedRun, p: float) -> None:
    """The configured Lp sparsity term for SAEs that do not compute their own (stock SAELens
    SAEs: loaded, converted, pretrained), from the codes of their own forward."""
    for h, sae in saes.items():
        if h not in run.sparsity:
            run.sparsity[h] = sparsity_loss(run.feature_acts[h], p, sae.cfg.d_in)


def local_terms(
    saes: Mapping[str, Any], run: SplicedRun, coeffs: LossCoefficients
) -> dict[str, torch.Tensor]:
    """`sparsity` and `out_to_in`, each summed over the SAEs: the terms that need only each
    SAE's own input, codes and output (all of `local`'s loss; also SAELens's trainer's).
    Each SAE computes its own sparsity term in its forward (Lp norm, JumpReLU L0, none)."""
    zero = torch.zeros((), device=next(iter(run.sae_in.values())).device)
    sparsity = sum((run.sparsity[h].float() for h in saes), zero)
    with _graph_if(coeffs.out_to_in):
        out_to_in = sum((mse(run.sae_out[h], run.sae_in[h]) for h in saes), zero)
    return {"sparsity": sparsity if coeffs.sparsity else sparsity.detach(), "out_to_in": out_to_in}


def _graph_if(weight: float) -> torch.autograd.grad_mode.set_grad_enabled:
    """Zero-weight terms are only logged: compute them without building a graph."""
    return torch.set_grad_enabled(torch.is_grad_enabled() and weight != 0)


def weighted_loss(terms: Mapping[str, torch.Tensor], coeffs: LossCoefficients) -> torch.Tensor:
    """Only terms with a non-zero weight enter the loss (and its graph)."""
    weights = {
        "kl": coeffs.kl,
        "sparsity": coeffs.sparsity,
        "out_to_in": coeffs.out_to_in,
        "in_to_orig": coeffs.in_to_orig,
    }
    scale = {"kl": terms["kl_alpha"]} if "kl_alpha" in terms else {}
    weighted = [w * scale.get(name, 1.0) * terms[name] for name, w in weights.items() if w != 0]
    return torch.stack(weighted).sum() if weighted else torch.zeros_like(terms["sparsity"])
