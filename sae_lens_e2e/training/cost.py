"""What a run costs: an estimate of its training FLOPs (model and SAEs), per step and phase.

Counted as 2 FLOPs per multiply-add of every matmul a training step runs (the log-step extras
and evaluation are not counted):
- model forward, per token and block: 2 * (its W_* parameters) + attention scores and
  mixing 4 * n_ctx * n_heads * d_head; the unembed 2 * d_model * d_vocab;
- model backward: the model is frozen, so only input gradients: one forward's worth, from
  the first SAE's block to the logits (e2e / e2e_ds), none for `local`;
- `local` runs the blocks up to the last SAE's once; e2e runs them once (shared prefix), and
  the blocks from the first SAE's on twice (clean and spliced), plus a recomputation of the
  blocks after the last SAE under gradient checkpointing;
- each SAE: the dense count 6 GEMMs of 2 * d_in * d_sae (encode, decode and four in
  backward); the fused kernels' sparse path does less, so this is an upper bound on CUDA.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformer_lens import HookedTransformer

from sae_lens_e2e.training.splice import hook_layer


def block_flops_per_token(model: HookedTransformer, layer: int, n_ctx: int) -> float:
    """Forward FLOPs of one block per token: its weight matrices and its attention."""
    block = model.blocks[layer]
    weights = sum(p.numel() for n, p in block.named_parameters() if n.split(".")[-1][:2] == "W_")
    attention = 4 * n_ctx * model.cfg.n_heads * model.cfg.d_head
    return 2.0 * weights + attention


def step_flops_per_token(
    model: HookedTransformer, saes: Mapping[str, Any], strategy: str, n_ctx: int,
    gradient_checkpointing: bool = False,
) -> float:  # fmt: skip
    """Training FLOPs per token of one step of `strategy` (see the module docstring)."""
    layers = [hook_layer(h) for h in saes]
    first, last = min(layers), max(layers)
    blocks = [block_flops_per_token(model, i, n_ctx) for i in range(model.cfg.n_layers)]
    sae = sum(12.0 * s.cfg.d_in * s.cfg.d_sae for s in saes.values())
    if strategy == "local":
        return sum(blocks[: last + 1]) + sae
    suffix = sum(blocks[first:]) + 2.0 * model.cfg.d_model * model.cfg.d_vocab
    recompute = sum(blocks[last + 1 :]) if gradient_checkpointing else 0.0
    return sum(blocks[:first]) + 3 * suffix + recompute + sae


def run_flops(
    model: HookedTransformer, saes: Mapping[str, Any], schedule: Any, total_steps: int,
    tokens_per_step: int, n_ctx: int,
) -> float:  # fmt: skip
    """Training FLOPs of a whole run under a `PhaseSchedule` (local steps, then the rest)."""
    checkpointing = bool(getattr(schedule.cfg, "gradient_checkpointing", False))
    local = step_flops_per_token(model, saes, "local", n_ctx)
    final = step_flops_per_token(model, saes, schedule.cfg.strategy, n_ctx, checkpointing)
    n_local = schedule.switch
    return tokens_per_step * (n_local * local + (total_steps - n_local) * final)
