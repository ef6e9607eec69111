"""The randomised-weights control (Heap et al. 2025, arXiv 2501.17727): the same SAEs, trained
and evaluated on the same tokens, on the model's architecture with freshly initialised weights.

Scheme: TransformerLens's own initialisation of the model's config (`init_weights` with the
config's `init_mode`; for every model here that is "gpt2": each weight matrix, embeddings and
unembedding included, drawn from N(0, initializer_range^2), initializer_range = 0.8 /
sqrt(d_model) unless the config sets it; biases 0; LayerNorm scales 1), with the given seed,
the same shapes and the same tokenizer. A model created by TransformerLens from that config
and seed (as the quickstart's tiny LM was before training) gets exactly its starting weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformer_lens import HookedTransformer

RANDOM_WEIGHTS = "random-weights"
CONTROLS = (RANDOM_WEIGHTS,)


DEFAULT_STRATEGIES = ("local", "e2e")


def control_strategies(chosen: list[str] | None, strategies: list[str]) -> list[str]:
    """The strategies trained again for the control: `chosen`, else local and e2e (the two the
    method compares) among `strategies`, else all of them. `chosen` must be among them."""
    if chosen is None:
        default = [s for s in strategies if s in DEFAULT_STRATEGIES]
        return default or list(strategies)
    if not chosen or set(chosen) - set(strategies):
        raise ValueError(
            f"control_strategies must be a non-empty subset of the strategies {strategies}, "
            f"got {chosen}"
        )
    return list(chosen)


def check_control(control: str | None) -> None:
    if control is not None and control not in CONTROLS:
        raise ValueError(f"--control must be one of {CONTROLS}, got {control!r}")


def random_weights_seed(model: HookedTransformer, fallback: int) -> int:
    """The seed the model's config was created with (a TransformerLens model initialised from
    it had exactly the control's weights), else `fallback` (pretrained models have none)."""
    return model.cfg.seed if model.cfg.seed is not None else fallback


def random_weights(model: HookedTransformer, seed: int) -> HookedTransformer:
    """A frozen copy of `model`'s architecture with TransformerLens's initialisation (seeded,
    without touching the global RNG state)."""
    cfg = copy.deepcopy(model.cfg)
    cfg.init_weights = True
    cfg.seed = seed
    with torch.random.fork_rng(devices=[]):
        fresh = HookedTransformer(cfg, tokenizer=model.tokenizer, move_to_device=True)
    return fresh.requires_grad_(False).eval()


def scheme_line(model: HookedTransformer, seed: int) -> str:
    """What the control model is, in one line for reports."""
    cfg = model.cfg
    if cfg.init_mode == "gpt2":
        how = (
            f"every weight matrix (embeddings and unembedding included) ~ N(0, {cfg.initializer_range:.4g}^2), "
            "biases 0, LayerNorm scales 1"
        )
    else:
        how = f"init_mode {cfg.init_mode!r}, initializer_range {cfg.initializer_range:.4g}"
    return (
        f"random weights: TransformerLens's initialisation of the same config ({how}), "
        f"seed {seed}, same shapes and tokens"
    )


def control_metadata(seed: int) -> dict[str, Any]:
    """Recorded in the metadata of every SAE trained on the control model, so that nobody
    takes it for an SAE of the trained model (and `evaluate` can rebuild the model)."""
    return {"model_weights": RANDOM_WEIGHTS, "random_weights_seed": seed}
