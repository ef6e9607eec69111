"""Run a HookedTransformer with SAEs spliced in, sharing the prefix with the clean run.

Layers before the first SAE compute the same thing in the clean and the spliced run, so they
run once (`run_prefix`) and both suffixes start from that residual with TransformerLens's
`start_at_layer`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint
from transformer_lens import HookedTransformer

_BLOCK_HOOK = re.compile(r"blocks\.(\d+)\.(.+)")


def hook_layer(hook_name: str) -> int:
    """Block index of a `blocks.N.*` hook; e2e SAEs must sit inside a block."""
    match = _BLOCK_HOOK.fullmatch(hook_name)
    if match is None:
        raise ValueError(
            f"hook {hook_name!r} is not inside a transformer block (expected 'blocks.N.<hook>')"
        )
    return int(match.group(1))


@dataclass
class SplicedRun:
    """What one suffix run produced; SAE entries are empty for the clean run. A run to the
    end stops at the final residual (before ln_final): logits.py takes the logits from it a
    token chunk at a time, so the [tokens, vocab] tensor never exists."""

    resid_final: torch.Tensor | None = None
    acts: dict[str, torch.Tensor] = field(default_factory=dict)
    sae_in: dict[str, torch.Tensor] = field(default_factory=dict)
    sae_out: dict[str, torch.Tensor] = field(default_factory=dict)
    feature_acts: dict[str, torch.Tensor] = field(default_factory=dict)
    sparsity: dict[str, torch.Tensor] = field(default_factory=dict)  # e2e SAEs' own terms


def run_prefix(model: HookedTransformer, tokens: torch.Tensor, start_layer: int) -> torch.Tensor:
    """Residual stream entering block `start_layer` (no graph: the model is frozen)."""
    with torch.no_grad():
        return model(tokens, stop_at_layer=start_layer)


def run_suffix(
    model: HookedTransformer,
    resid: torch.Tensor,
    start_layer: int,
    *,
    saes: Mapping[str, Any] | None = None,
    cache_hooks: Iterable[str] = (),
    stop_layer: int | None = None,
    checkpoint_layers: Iterable[int] = (),
) -> SplicedRun:
    """Blocks `start_layer..stop_layer` (to the last block when stop_layer is None).

    SAEs replace the activation at their hook with their reconstruction; `cache_hooks` are
    recorded as they flow (with their graph, so losses can be taken on them).
    """
    run = SplicedRun()
    fwd_hooks: list[tuple[str, Any]] = [
        (name, partial(_cache_hook, store=run.acts, name=name)) for name in cache_hooks
    ]
    for name, sae in (saes or {}).items():
        fwd_hooks.append((name, partial(_sae_hook, sae=sae, run=run, name=name)))
    last = model.cfg.n_layers if stop_layer is None else stop_layer
    with model.hooks(fwd_hooks=fwd_hooks), checkpointed_blocks(model, checkpoint_layers):
        out = model(resid, start_at_layer=start_layer, stop_at_layer=last)
    if stop_layer is None:
        run.resid_final = out
    return run


def _cache_hook(act: torch.Tensor, hook: Any, *, store: dict[str, torch.Tensor], name: str) -> None:
    store[name] = act


def sae_forward(
    sae: Any, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(feature_acts, sae_out, sparsity term) for our training SAEs (`e2e_forward`), or
    (feature_acts, sae_out, None) for any SAELens SAE.

    Stock SAEs (loaded from disk, converted, pretrained) go through their own
    `encode`/`decode`, as SAELens's `get_recons_loss` does, so they can be evaluated too.
    """
    if hasattr(sae, "e2e_forward"):
        return sae.e2e_forward(x)
    feature_acts = sae.encode(x)
    return feature_acts, sae.decode(feature_acts), None


def _sae_hook(
    act: torch.Tensor, hook: Any, *, sae: Any, run: SplicedRun, name: str
) -> torch.Tensor:
    feature_acts, sae_out, sparsity = sae_forward(sae, act)
    if sparsity is not None:
        run.sparsity[name] = sparsity
    run.sae_in[name] = act
    run.sae_out[name] = sae_out
    run.feature_acts[name] = feature_acts
    return sae_out.to(act.dtype)


@contextmanager
def frozen(module: torch.nn.Module, keep: Iterable[Any] = ()) -> Iterator[None]:
    """Run `module` without recording its parameters in the autograd graph, so no gradient
    ever reaches them, even when the caller left them trainable (a freshly loaded model):
    their `requires_grad` flags are restored afterwards. Parameters of the modules in `keep`
    (SAEs attached to the model) are left alone."""
    kept = {id(p) for m in keep for p in m.parameters()}
    trainable = [p for p in module.parameters() if p.requires_grad and id(p) not in kept]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def _recomputed(block: Any, *args: Any, **kwargs: Any) -> Any:
    """A block's forward, frozen also when it is recomputed during the backward pass."""
    with frozen(block):
        return type(block).forward(block, *args, **kwargs)


@contextmanager
def checkpointed_blocks(model: HookedTransformer, layers: Iterable[int]) -> Iterator[None]:
    """Recompute these blocks in backward instead of storing their activations."""
    blocks = [model.blocks[i] for i in layers]
    for block in blocks:
        block.forward = partial(checkpoint, partial(_recomputed, block), use_reentrant=False)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward
