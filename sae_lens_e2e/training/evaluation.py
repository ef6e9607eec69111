"""Evaluation of spliced SAEs: CE clean / with SAEs / zero-ablated, KL, L0, alive, variance.

Several SAE sets are evaluated on the same tokens with one shared prefix and clean run per
batch. Explained variance comes two ways, under two names:

- `explained_variance/<hook>`: SAELens's pooled ratio of sums over every token
  (`ExplainedVarianceCalculator`), 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2.
- `explained_variance_per_token/<hook>`: the paper's (reference `calc_explained_variance`),
  1 - ||pred - target||^2 / ||target - batch mean||^2 for each token, then the mean over tokens.
  Tokens with a large norm (GPT-2's first position) weigh no more than others here, so the
  two can differ a lot. The batch mean is over the evaluation batch's tokens, as the reference
  (whose GPT-2 evaluation batch is 8 x 1024 tokens, this function's default batch size).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from sae_lens.evals import ExplainedVarianceCalculator
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from sae_lens_e2e.paper_settings import ALIVE_TOKENS
from sae_lens_e2e.training.logits import next_token_ce_sum, residual_kl
from sae_lens_e2e.training.losses import l0
from sae_lens_e2e.training.splice import hook_layer, run_prefix, run_suffix
from sae_lens_e2e.training.validation import check_sae_fits

SAESet = Mapping[str, Any]
Reduce = Callable[[Mapping[Any, Any]], dict[Any, Any]]


@dataclass
class _Mean:
    """Mean of per-token values over every token added."""

    total: float = 0.0
    count: int = 0

    def add(self, values: torch.Tensor) -> None:
        self.total += values.double().sum().item()
        self.count += values.numel()

    def compute(self) -> float:
        return self.total / self.count


def explained_variance_per_token(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The reference's `calc_explained_variance`, one value per token: 1 - ||pred - target||^2 /
    ||target - mean||^2, with the target's mean over every token of the batch. [..., d] -> [...]"""
    prediction, target = prediction.float(), target.float()
    batch_mean = target.flatten(0, -2).mean(0)
    return 1 - (prediction - target).pow(2).sum(-1) / (target - batch_mean).pow(2).sum(-1)


@dataclass
class _Accumulator:
    """Running sums for one SAE set."""

    d_sae: dict[str, int]
    ce_sae: float = 0.0
    ce_zero: float = 0.0
    kl: float = 0.0
    l0: dict[str, float] = field(default_factory=dict)
    fired: dict[str, torch.Tensor] = field(default_factory=dict)
    ev: dict[str, ExplainedVarianceCalculator] = field(default_factory=dict)
    ev_per_token: dict[str, _Mean] = field(default_factory=dict)


def _zero_hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
    return torch.zeros_like(act)


def _downstream_posts(model: HookedTransformer, saes: SAESet) -> list[str]:
    first = min(hook_layer(h) for h in saes)
    return [f"blocks.{i}.hook_resid_post" for i in range(first, model.cfg.n_layers)]


@torch.no_grad()
def _add_batch(
    model: HookedTransformer,
    tokens: torch.Tensor,
    sae_sets: Mapping[str, SAESet],
    accs: Mapping[str, _Accumulator],
) -> float:
    """Accumulate one batch for every set; returns the clean CE sum."""
    start = min(hook_layer(h) for saes in sae_sets.values() for h in saes)
    posts = sorted({h for saes in sae_sets.values() for h in _downstream_posts(model, saes)})
    resid = run_prefix(model, tokens, start)
    clean = run_suffix(model, resid, start, cache_hooks=posts)
    ce_clean = next_token_ce_sum(model, clean.resid_final, tokens)
    n_tokens = tokens.numel()
    for label, saes in sae_sets.items():
        acc = accs[label]
        # A post hook that is itself an SAE position would cache the SAE's input there.
        posts_after = [p for p in _downstream_posts(model, saes) if p not in saes]
        spliced = run_suffix(model, resid, start, saes=saes, cache_hooks=posts_after)
        with model.hooks(fwd_hooks=[(h, _zero_hook) for h in saes]):
            zero = model(resid, start_at_layer=start, stop_at_layer=model.cfg.n_layers)
        acc.ce_sae += next_token_ce_sum(model, spliced.resid_final, tokens)
        acc.ce_zero += next_token_ce_sum(model, zero, tokens)
        acc.kl += residual_kl(model, spliced.resid_final, clean.resid_final).item() * n_tokens
        for h in saes:
            acts = spliced.feature_acts[h].flatten(0, -2)
            acc.l0[h] = acc.l0.get(h, 0.0) + l0(acts).item() * n_tokens
            fired = (acts > 0).sum(0)
            acc.fired[h] = acc.fired[h] + fired if h in acc.fired else fired
            _ev(acc, h, spliced.sae_out[h], spliced.sae_in[h])
            # The reference's per-token EV at an SAE takes the SAE *output* as the target
            # (its out_to_in term calls calc_explained_variance(input, output)).
            _ev_per_token(acc, h, spliced.sae_in[h], spliced.sae_out[h])
        for h in spliced.acts:
            _ev(acc, h, spliced.acts[h], clean.acts[h])
            _ev_per_token(acc, h, spliced.acts[h], clean.acts[h])
    return ce_clean


def _ev(acc: _Accumulator, key: str, prediction: torch.Tensor, target: torch.Tensor) -> None:
    calc = acc.ev.setdefault(key, ExplainedVarianceCalculator())
    calc.add_batch(prediction.flatten(0, -2).float(), target.flatten(0, -2).float())


def _ev_per_token(
    acc: _Accumulator, key: str, prediction: torch.Tensor, target: torch.Tensor
) -> None:
    acc.ev_per_token.setdefault(key, _Mean()).add(explained_variance_per_token(prediction, target))


def evaluate_many(
    model: HookedTransformer,
    sae_sets: Mapping[str, SAESet],
    tokens: torch.Tensor,
    *,
    batch_size: int = 8,
    progress: bool = False,
    reduce: Reduce | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate each labelled set of SAEs (hook name -> SAE, spliced together) on `tokens`.

    `tokens` is [n_sequences, context]; held-out text is the caller's responsibility. Each
    SAE is first checked against the hook it is given under (the model has it, and its width
    is the SAE's d_in), so a mismatch fails with a clear error before any work. `reduce`
    sums the running sums over data-parallel ranks (each evaluating its own `tokens`), so
    the metrics are token-weighted over all of them.
    """
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise ValueError(
            f"tokens must be a non-empty [n_sequences, context] tensor, got {tuple(tokens.shape)}"
        )
    for label, saes in sae_sets.items():
        for hook, sae in saes.items():
            check_sae_fits(model, sae, where=f"SAE {label!r} at {hook!r}", hook=hook)
    accs = {
        label: _Accumulator({h: s.cfg.d_sae for h, s in saes.items()})
        for label, saes in sae_sets.items()
    }
    ce_clean = 0.0
    batches = tokens.split(batch_size)
    with tqdm(batches, desc="evaluating", disable=not progress, leave=False) as bar:
        for batch in bar:
            ce_clean += _add_batch(model, batch.to(model.cfg.device), sae_sets, accs)
    n_sequences = tokens.shape[0]
    if reduce is not None:
        ce_clean, n_sequences = _sum_over_ranks(reduce, accs, ce_clean, n_sequences)
    n_tokens = n_sequences * tokens.shape[1]
    n_predicted = n_sequences * (tokens.shape[1] - 1)
    return {
        label: _summarise(acc, ce_clean / n_predicted, n_predicted, n_tokens)
        for label, acc in accs.items()
    }


def _sum_over_ranks(
    reduce: Reduce, accs: Mapping[str, _Accumulator], ce_clean: float, n_sequences: int
) -> tuple[float, int]:
    """Replace every running sum by its total over ranks (one `reduce` call)."""
    sums: dict[tuple[str, ...], Any] = {("ce_clean",): ce_clean, ("n_sequences",): n_sequences}
    for label, acc in accs.items():
        sums |= {(label, *key): value for key, value in _running_sums(acc).items()}
    totals = reduce(sums)
    for (label, *key), value in totals.items():
        if label in accs:
            _set_running_sum(accs[label], tuple(key), value)
    return totals[("ce_clean",)], totals[("n_sequences",)]


def _running_sums(acc: _Accumulator) -> dict[tuple[str, ...], Any]:
    """Every sum `acc` holds; SAELens's EV calculator and `_Mean` keep plain sums, so they add."""
    sums: dict[tuple[str, ...], Any] = {(n,): getattr(acc, n) for n in ("ce_sae", "ce_zero", "kl")}
    sums |= {("l0", h): v for h, v in acc.l0.items()}
    sums |= {("fired", h): v for h, v in acc.fired.items()}
    for group in ("ev", "ev_per_token"):
        for key, calc in getattr(acc, group).items():
            sums |= {(group, key, name): v for name, v in vars(calc).items()}
    return sums


def _set_running_sum(acc: _Accumulator, key: tuple[str, ...], value: Any) -> None:
    if len(key) == 3:  # (group, hook, field) of a calculator
        setattr(getattr(acc, key[0])[key[1]], key[2], value)
    elif len(key) == 2:
        getattr(acc, key[0])[key[1]] = value
    else:
        setattr(acc, key[0], value)


def evaluate(
    model: HookedTransformer, saes: SAESet, tokens: torch.Tensor, **kwargs: Any
) -> dict[str, Any]:
    """Evaluate one set of SAEs spliced in together; see `evaluate_many`."""
    return evaluate_many(model, {"saes": saes}, tokens, **kwargs)["saes"]


def _summarise(
    acc: _Accumulator, ce_clean: float, n_predicted: int, n_tokens: int
) -> dict[str, Any]:
    ce_sae, ce_zero = acc.ce_sae / n_predicted, acc.ce_zero / n_predicted
    denom = ce_zero - ce_clean
    metrics: dict[str, Any] = {
        "ce_loss_clean": ce_clean,
        "ce_loss_with_sae": ce_sae,
        "ce_loss_zero_ablation": ce_zero,
        "ce_loss_increase": ce_sae - ce_clean,
        "ce_loss_recovered": (ce_zero - ce_sae) / denom if denom != 0 else math.nan,
        "kl": acc.kl / n_tokens,
        "n_tokens": n_tokens,
    }
    for h, d_sae in acc.d_sae.items():
        metrics[f"l0/{h}"] = acc.l0[h] / n_tokens
        metrics[f"alive/{h}"] = int((acc.fired[h] > 0).sum().item())
        metrics[f"dead/{h}"] = d_sae - metrics[f"alive/{h}"]
        metrics[f"log10_feature_density/{h}"] = torch.log10(acc.fired[h].float() / n_tokens + 1e-10)
    for key, calc in acc.ev.items():
        metrics[f"explained_variance/{key}"] = calc.compute()
    for key, mean in acc.ev_per_token.items():
        metrics[f"explained_variance_per_token/{key}"] = mean.compute()
    metrics["l0"] = sum(metrics[f"l0/{h}"] for h in acc.d_sae)
    return metrics


def alive_tokens_note(n_tokens: int) -> str:
    """Empty when alive latents were counted over at least the paper's 500k tokens; else a
    warning that rarely firing latents count as dead here."""
    if n_tokens >= ALIVE_TOKENS:
        return ""
    return (
        f"alive latents were counted over {n_tokens:,} tokens, fewer than the {ALIVE_TOKENS:,} "
        "the paper counts over: latents that fire more rarely count as dead here"
    )


def dead_latent_warnings(
    metrics: Mapping[str, Any], most: float = 0.5, label: str | None = None
) -> list[str]:
    """One loud line per SAE of which more than `most` of the latents never fired on the
    tokens `metrics` were evaluated on (so it agrees with their alive count), saying how many.

    A run that diverged (lr too high) can end with finite weights but a dead SAE; the loss
    alone does not say so.
    """
    lines = []
    for hook in (k.removeprefix("dead/") for k in metrics if k.startswith("dead/")):
        dead, alive = metrics[f"dead/{hook}"], metrics[f"alive/{hook}"]
        if dead > most * (dead + alive):
            who = f"run {label}: " if label else ""
            lines.append(
                f"WARNING: {who}{dead} of {dead + alive} latents of the SAE at {hook} never "
                f"fired on {metrics['n_tokens']:,} held-out tokens (L0 "
                f"{metrics[f'l0/{hook}']:.3g}): the SAE is mostly dead; try a lower lr or "
                "sparsity coefficient"
            )
    return lines
