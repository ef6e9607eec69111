"""Checks run before any training work starts, each failing with the offending field/value.

Also the model/SAE fit checks shared by the quickstart and `evaluate_many`: `probe_hooks`,
`hook_width` and `check_sae_fits`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.util import str_to_dtype
from transformer_lens import HookedTransformer

from sae_lens_e2e.kernels import resolve_backend
from sae_lens_e2e.names import check_hook_name
from sae_lens_e2e.preflight import available_memory, check_device
from sae_lens_e2e.training.config import E2ETrainingMixin
from sae_lens_e2e.training.splice import hook_layer


def sae_hook_names(cfg: LanguageModelSAERunnerConfig[Any]) -> list[str]:
    """The run's SAE positions: `hook_name` plus the e2e config's additional ones."""
    e2e: E2ETrainingMixin = cfg.sae  # type: ignore[assignment]
    names = [cfg.hook_name, *e2e.additional_hook_names]
    fields = [("hook_name", [cfg.hook_name]), ("sae.additional_hook_names", names[1:]),
              ("sae.downstream_hooks", e2e.downstream_hooks or [])]  # fmt: skip
    for field, values in fields:  # SAE hooks become output and checkpoint folder names
        for name in values:
            check_hook_name(name, field)
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"SAE hook names listed twice: {sorted(duplicates)}")
    return names


def check_run_environment(cfg: LanguageModelSAERunnerConfig[Any]) -> None:
    """The devices the config names exist here and its kernels backend can run on them
    (checked before the model is loaded, not when the first step runs)."""
    for option in ("device", "llm_device", "act_store_device"):
        check_device(getattr(cfg, option), option)
    e2e: E2ETrainingMixin = cfg.sae  # type: ignore[assignment]
    resolve_backend(e2e.kernels, torch.device(cfg.device))
    check_memory(cfg)


def sae_memory(cfg: LanguageModelSAERunnerConfig[Any]) -> tuple[int, int, int]:
    """(parameters, bytes of weights + gradients + Adam's two moments, bytes of one
    micro-batch's codes): a lower bound of what training the run's SAEs needs."""
    sae = cfg.sae
    n_saes = len(sae_hook_names(cfg))
    thresholds = "jumprelu" in sae.architecture()  # a threshold per latent
    per_sae = 2 * sae.d_in * sae.d_sae + sae.d_sae * (2 if thresholds else 1)
    params = n_saes * (per_sae + sae.d_in)
    itemsize = torch.empty((), dtype=str_to_dtype(sae.dtype)).element_size()
    e2e: E2ETrainingMixin = cfg.sae  # type: ignore[assignment]
    tokens = cfg.train_batch_size_tokens // max(1, e2e.gradient_accumulation_steps)
    return params, 4 * params * itemsize, n_saes * tokens * sae.d_sae * 4


def check_memory(cfg: LanguageModelSAERunnerConfig[Any]) -> None:
    """Refuse SAEs that cannot fit the device's memory, before the model is loaded."""
    available = available_memory(cfg.device)
    if available is None:
        return
    free, what = available
    params, state, codes = sae_memory(cfg)
    if state + codes <= free:
        return
    raise ValueError(
        f"sae.d_sae={cfg.sae.d_sae} (sae.d_in={cfg.sae.d_in}, {len(sae_hook_names(cfg))} SAE(s)): "
        f"training needs at least {(state + codes) / 1e9:,.1f} GB ({state:,} bytes for "
        f"{params:,} parameters x 4 copies: weights, gradients, Adam's two moments; {codes:,} "
        f"bytes for one micro-batch's codes), more than the {free / 1e9:,.1f} GB of {what}; "
        "lower sae.d_sae or train_batch_size_tokens"
    )


def validate_run(
    cfg: LanguageModelSAERunnerConfig[Any], model: Any, downstream_hooks: Sequence[str]
) -> None:
    """Everything that can be checked from the config and the model, before any data."""
    check_run_environment(cfg)
    e2e: E2ETrainingMixin = cfg.sae  # type: ignore[assignment]
    if not isinstance(model, HookedTransformer):
        raise TypeError(
            f"e2e training needs a TransformerLens HookedTransformer (start_at_layer); "
            f"got {type(model).__name__}"
        )
    if e2e.strategy != "local" and (
        getattr(model, "unembed", None) is None or getattr(model.cfg, "d_vocab_out", 0) <= 0
    ):
        raise ValueError(
            f"strategy={e2e.strategy!r} needs a model that produces logits; "
            f"{model.cfg.model_name!r} has no unembedding"
        )
    if model.cfg.positional_embedding_type == "shortformer":
        raise ValueError("shortformer positional embeddings cannot start mid-model; unsupported")
    if cfg.context_size > model.cfg.n_ctx:
        raise ValueError(
            f"context_size={cfg.context_size} exceeds the model's n_ctx={model.cfg.n_ctx}"
        )
    _validate_batching(cfg, e2e)
    hooks = sae_hook_names(cfg)
    for name in [*hooks, *downstream_hooks]:
        if name not in model.hook_dict:
            raise ValueError(f"unknown hook name {name!r} for model {model.cfg.model_name!r}")
        hook_layer(name)
    if e2e.strategy == "e2e_ds" and not downstream_hooks:
        raise ValueError(
            "strategy='e2e_ds' needs downstream hooks, but the last SAE is in the last block; "
            "set downstream_hooks or use strategy='e2e'"
        )
    _validate_shapes_and_order(cfg, model, hooks, list(downstream_hooks))


def _validate_batching(cfg: LanguageModelSAERunnerConfig[Any], e2e: E2ETrainingMixin) -> None:
    prompts, rest = divmod(cfg.train_batch_size_tokens, cfg.context_size)
    if rest or prompts == 0:
        raise ValueError(
            f"train_batch_size_tokens={cfg.train_batch_size_tokens} must be a positive multiple "
            f"of context_size={cfg.context_size} (e2e trains on whole sequences)"
        )
    if prompts % e2e.gradient_accumulation_steps:
        raise ValueError(
            f"{prompts} sequences per step cannot be split into "
            f"gradient_accumulation_steps={e2e.gradient_accumulation_steps} equal micro-batches"
        )
    if cfg.total_training_steps < 1:
        raise ValueError(
            f"training_tokens={cfg.training_tokens} is less than one step of "
            f"train_batch_size_tokens={cfg.train_batch_size_tokens}"
        )


@torch.no_grad()
def probe_hooks(model: HookedTransformer, hooks: Iterable[str]) -> tuple[list[str], dict[str, int]]:
    """A 2-token probe run: the order `hooks` fire in, and each one's activation width (the
    last dimension of [batch, pos, d] activations, else minus the number of dimensions)."""
    order: list[str] = []
    widths: dict[str, int] = {}

    def record(act: torch.Tensor, hook: Any) -> None:
        order.append(hook.name)
        widths[hook.name] = act.shape[-1] if act.ndim == 3 else -act.ndim

    probe = torch.zeros((1, 2), dtype=torch.long, device=model.cfg.device)
    model.run_with_hooks(probe, fwd_hooks=[(h, record) for h in set(hooks)])
    return order, widths


def default_hook(model: HookedTransformer) -> str:
    """The middle layer's residual stream input (the paper uses hook_resid_pre)."""
    return f"blocks.{model.cfg.n_layers // 2}.hook_resid_pre"


def hook_width(model: HookedTransformer, hook: str) -> int:
    """Activation width at `hook`, with a clear error for a hook the model lacks."""
    if hook not in model.hook_dict:
        raise ValueError(
            f"hook {hook!r} does not exist in model {model.cfg.model_name!r} "
            f"(e.g. {default_hook(model)!r})"
        )
    hook_layer(hook)
    width = probe_hooks(model, [hook])[1][hook]
    if width < 0:
        raise ValueError(f"hook {hook!r} has {-width}-D activations; need [batch, pos, d]")
    return width


def check_sae_fits(
    model: HookedTransformer, sae: Any, where: str = "SAE", hook: str | None = None
) -> str:
    """The SAE's hook (`hook`, else its cfg.json metadata's `hook_name`), after checking the
    model has it and its width is the SAE's d_in."""
    if hook is None:
        hook = getattr(sae.cfg.metadata, "hook_name", None)
        if not hook:
            raise ValueError(f"{where} records no hook_name in its cfg.json metadata")
    try:
        width = hook_width(model, hook)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    if width != sae.cfg.d_in:
        raise ValueError(
            f"{where} has d_in={sae.cfg.d_in}, but hook {hook!r} of model "
            f"{model.cfg.model_name!r} has width {width}"
        )
    return hook


def _validate_shapes_and_order(
    cfg: LanguageModelSAERunnerConfig[Any],
    model: HookedTransformer,
    hooks: list[str],
    downstream: list[str],
) -> None:
    """A probe run (`probe_hooks`) gives each hook's width and the order hooks fire in."""
    order, widths = probe_hooks(model, [*hooks, *downstream])
    d_in = cfg.sae.d_in
    for h in hooks:
        if widths[h] != d_in:
            shape = f"width {widths[h]}" if widths[h] > 0 else f"{-widths[h]}-D activations"
            raise ValueError(f"d_in={d_in} does not match hook {h!r}, which has {shape}")
    last_sae = max(order.index(h) for h in hooks)
    for h in downstream:
        if order.index(h) <= last_sae:
            raise ValueError(
                f"downstream hook {h!r} is not after the last SAE hook {order[last_sae]!r}"
            )
