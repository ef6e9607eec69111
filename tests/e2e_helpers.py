"""Builders shared by the training tests (offline, tiny, CPU)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig, StandardSAE, StandardSAEConfig

from sae_lens_e2e import (
    E2EJumpReLUTrainingSAEConfig,
    E2EStandardTrainingSAEConfig,
    E2ETopKTrainingSAEConfig,
)


def runner_config(
    tmp_path: Path,
    *,
    strategy: str = "e2e",
    architecture: str = "standard",
    hook_name: str = "blocks.1.hook_resid_pre",
    d_in: int = 16,
    steps: int = 20,
    sae: dict[str, Any] | None = None,
    run_id: bool = False,
    **overrides: Any,
) -> LanguageModelSAERunnerConfig[Any]:
    sae_kwargs: dict[str, Any] = {"d_in": d_in, "d_sae": 64, "strategy": strategy, **(sae or {})}
    if architecture == "standard":
        sae_kwargs.setdefault("l1_coefficient", 0.5)
        sae_cfg: Any = E2EStandardTrainingSAEConfig(**sae_kwargs)
    elif architecture == "jumprelu":
        sae_cfg = E2EJumpReLUTrainingSAEConfig(**sae_kwargs)
    else:
        sae_kwargs.setdefault("k", 8)
        sae_cfg = E2ETopKTrainingSAEConfig(**sae_kwargs)
    fields: dict[str, Any] = dict(
        model_name="tiny-test-model",
        hook_name=hook_name,
        dataset_path="",
        is_dataset_tokenized=True,
        prepend_bos=False,
        streaming=False,
        context_size=16,
        train_batch_size_tokens=64,
        training_tokens=64 * steps,
        store_batch_size_prompts=4,
        n_eval_batches=2,
        lr=1e-2,
        lr_scheduler_name="cosineannealing",
        lr_warm_up_steps=2,
        logger=LoggingConfig(log_to_wandb=False),
        output_path=str(tmp_path / "out"),
        checkpoint_path=str(tmp_path / "ckpt"),
        verbose=False,
        device="cpu",
        seed=0,
    )
    fields.update(overrides)
    cfg = LanguageModelSAERunnerConfig(sae=sae_cfg, **fields)
    if not run_id:  # SAELens appends a random run id to checkpoint_path; pin it
        cfg.checkpoint_path = fields["checkpoint_path"]
    return cfg


# Loads atomic.py alone (not the package, which imports torch) so the writer starts fast.
KILLED_WRITER = """
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("atomic", sys.argv[1])
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
with atomic.atomic_directory(sys.argv[2]) as tmp:
    (tmp / "half-written").write_text("x")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_while_writing(target: Path) -> Path:
    """Leave what a run SIGKILLed while atomically writing folder `target` leaves: its temp."""
    from sae_lens_e2e import atomic

    before = set(target.parent.glob(".*")) if target.parent.is_dir() else set()
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, atomic.__file__, str(target)],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    (left,) = set(target.parent.glob(".*")) - before
    assert not target.exists() and (left / "half-written").is_file()
    return left


def stock_sae_folder(
    path: Path, d_in: int, hook: str, *, seed: int = 3, scale: float = 0.2, d_sae: int = 48
) -> Path:
    """A stock SAELens standard SAE with random non-trivial weights, saved as a folder."""
    torch.manual_seed(seed)
    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False)
    cfg.metadata.hook_name = hook
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.normal_(0, scale)
        sae.W_dec.normal_(0, scale)
    sae.save_model(path)
    return path
