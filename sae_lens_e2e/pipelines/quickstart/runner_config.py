"""The SAELens runner config of one quickstart run: only strategy and lambda vary across runs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sae_lens_e2e.pipelines.quickstart.config import (
    RUN_KINDS,
    QuickstartConfig,
    eval_batch_size,
    runner_eval_sequences,
)
from sae_lens_e2e.pipelines.tiny_lm import TINY_MODEL_NAME


def run_label(strategy: str, coefficient: float) -> str:
    """Also a folder name: `local->e2e` becomes `local_to_e2e`."""
    return f"{strategy.replace('->', '_to_')}_lambda{coefficient:g}"


def sae_seed(seed: int, strategy: str) -> int:
    """SAE init seed: `seed` plus the strategy's index. The runner's seed only sets the
    initialisation (the data order is fixed), so every run sees the same tokens, the runs of
    one strategy share an init, and different strategies do not: otherwise their decoders
    stay close to one shared start and the cross-strategy geometry measures only that."""
    return seed + RUN_KINDS.index(strategy)


def build_runner_config(
    cfg: QuickstartConfig,
    hook: str,
    d_in: int,
    strategy: str,
    coefficient: float,
    output_path: Path | None,
    device: str,
    tiny: bool = False,
    verbose: bool = False,
    model_name: str | None = None,
) -> Any:
    """One SAELens runner config of the sweep; only strategy and lambda vary across runs.
    The fields the sweep sets here are those `SWEEP_*_FIELDS` keep out of the overrides.
    `model_name` names an in-memory model other than the quickstart's tiny LM."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    from sae_lens_e2e.compat import keep_null_checkpoint_path
    from sae_lens_e2e.training.config import E2EStandardTrainingSAEConfig

    final = strategy.split("->")[-1]  # `local->e2e` trains e2e after a local phase
    sae_kwargs: dict[str, Any] = dict(
        d_in=d_in, d_sae=cfg.d_sae or 8 * d_in, strategy=final, l1_coefficient=coefficient
    )
    if final != strategy:
        sae_kwargs["e2e_start_fraction"] = cfg.e2e_start_fraction
    if final == "e2e_ds" and cfg.in_to_orig_coefficient is not None:
        sae_kwargs["in_to_orig_coefficient"] = cfg.in_to_orig_coefficient
    sae_kwargs.update(cfg.sae_overrides)
    batch = eval_batch_size(cfg)
    fields: dict[str, Any] = dict(
        model_name=model_name or (TINY_MODEL_NAME if tiny else cfg.model),
        hook_name=hook,
        dataset_path="" if tiny else cfg.dataset,
        is_dataset_tokenized=True,
        dataset_trust_remote_code=False,  # else `datasets` prints a notice on every run
        prepend_bos=False if tiny else cfg.prepend_bos is not False,
        streaming=not tiny,
        context_size=cfg.context_size,
        train_batch_size_tokens=cfg.train_batch_size_tokens,
        training_tokens=cfg.training_tokens,
        store_batch_size_prompts=batch,
        eval_batch_size_prompts=batch,
        n_eval_batches=runner_eval_sequences(cfg, tiny) // batch,
        lr=cfg.lr,
        lr_scheduler_name="cosineannealing",
        # Never the whole run: SAELens's cosine schedule needs steps after the warmup.
        lr_warm_up_steps=min(
            cfg.lr_warm_up_steps, cfg.training_tokens // cfg.train_batch_size_tokens // 2
        ),
        logger=LoggingConfig(log_to_wandb=False),
        output_path=None if output_path is None else str(output_path),
        checkpoint_path=None,
        n_checkpoints=0,
        save_final_checkpoint=False,
        verbose=verbose,  # the trainer's progress bar
        device=device,
        act_store_device=device,
        seed=sae_seed(cfg.seed, strategy),
        model_from_pretrained_kwargs=cfg.model_from_pretrained_kwargs or {},
    )
    overrides = dict(cfg.runner_overrides)
    if isinstance(overrides.get("logger"), Mapping):  # from YAML
        overrides["logger"] = LoggingConfig(**{"log_to_wandb": False, **overrides["logger"]})
    fields.update(overrides)
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=E2EStandardTrainingSAEConfig(**sae_kwargs), **fields
    )
    return keep_null_checkpoint_path(runner_cfg, fields)
