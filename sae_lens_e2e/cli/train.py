"""`sae-lens-e2e train CONFIG.yaml`: a LanguageModelSAERunnerConfig written as YAML."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml
from sae_lens.config import LanguageModelSAERunnerConfig, LoggingConfig
from sae_lens.registry import get_sae_training_class

from sae_lens_e2e.config_fields import check_known_fields
from sae_lens_e2e.training.sae import _ARCHITECTURES, register_e2e_architectures

EXAMPLE = """\
example CONFIG.yaml, the paper's GPT-2 layer-6 e2e_ds run (every field of SAELens's
LanguageModelSAERunnerConfig may appear; examples/ has all three strategies):

  model_name: gpt2
  model_from_pretrained_kwargs:     # TransformerLens's from_pretrained defaults, as the paper
    fold_ln: true
    center_writing_weights: true
    center_unembed: true
    fold_value_biases: true
  hook_name: blocks.6.hook_resid_pre
  dataset_path: apollo-research/Skylion007-openwebtext-tokenizer-gpt2
  is_dataset_tokenized: true
  prepend_bos: false                # the rows are pre-tokenised text, no BOS
  context_size: 1024
  train_batch_size_tokens: 16384    # 16 sequences per optimiser step
  training_tokens: 409600000        # 400k samples
  lr: 5.0e-4
  lr_scheduler_name: cosineannealing
  lr_warm_up_steps: 1250            # 20k samples
  lr_end: 5.0e-5                    # min_lr_factor 0.1
  sae:
    architecture: e2e_standard      # or e2e_topk (then give k)
    d_in: 768
    d_sae: 46080
    strategy: e2e_ds                # local | e2e | e2e_ds
    l1_coefficient: 50.0            # the paper's lambda
    in_to_orig_coefficient: 2.5
    grad_clip_norm: 10.0
    gradient_accumulation_steps: 2  # batches of 8 sequences
  logger:
    log_to_wandb: false
"""


def runner_config_from_dict(
    raw: dict[str, Any], source: str = "config"
) -> LanguageModelSAERunnerConfig[Any]:
    """Build the runner config, rejecting unknown fields (typos) with the section named."""
    register_e2e_architectures()
    raw = dict(raw)
    sae = dict(raw.pop("sae", None) or {})
    architecture = sae.pop("architecture", "e2e_standard")
    if architecture not in _ARCHITECTURES:
        raise ValueError(
            f"{source}: sae.architecture={architecture!r} is not one of {sorted(_ARCHITECTURES)}"
        )
    sae_cfg_class = get_sae_training_class(architecture)[1]
    check_known_fields(f"{source}: sae", sae, sae_cfg_class)
    logger = dict(raw.pop("logger", None) or {})
    check_known_fields(f"{source}: logger", logger, LoggingConfig)
    check_known_fields(source, raw, LanguageModelSAERunnerConfig)
    if "seqpos_slice" in raw:
        raw["seqpos_slice"] = tuple(raw["seqpos_slice"])
    try:
        return LanguageModelSAERunnerConfig(
            sae=sae_cfg_class(**sae), logger=LoggingConfig(**logger), **raw
        )
    except TypeError as err:
        raise ValueError(f"{source}: {err}") from err


def load_runner_config(path: str | Path) -> LanguageModelSAERunnerConfig[Any]:
    """Read a YAML run config; errors name the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read config {path}: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"config {path} must be a YAML mapping, got {type(raw).__name__}")
    return runner_config_from_dict(raw, source=str(path))


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train e2e SAEs from a YAML config",
        description="Train SAEs end-to-end (local, e2e or e2e_ds) from a YAML run config.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML file with LanguageModelSAERunnerConfig fields")
    parser.add_argument(
        "--resume",
        metavar="CHECKPOINT",
        help="a step_* folder, or a folder holding them (e.g. checkpoint_path): the latest "
        "complete checkpoint in it; later checkpoints are written beside it",
    )
    parser.add_argument("--output", metavar="DIR", help="override output_path")
    parser.add_argument(
        "--dist-timeout",
        type=float,
        metavar="SECONDS",
        help="under torchrun: how long a collective waits for a dead or hung rank (default 600)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae_lens_e2e.training.runner import E2ESAETrainingRunner

    cfg = load_runner_config(args.config)
    if args.resume:
        cfg.resume_from_checkpoint = args.resume
    if args.output:
        cfg.output_path = args.output
    try:
        E2ESAETrainingRunner(cfg, dist_timeout=args.dist_timeout).run()
    except KeyboardInterrupt as interrupt:
        print(f"sae-lens-e2e train: {interrupted(interrupt, args)}", file=sys.stderr)
        return 130
    return 0


def interrupted(interrupt: KeyboardInterrupt, args: argparse.Namespace) -> str:
    """Ctrl-C in one line: the step reached and the command that resumes the run."""
    from sae_lens_e2e.training.checkpoints import TrainingInterrupted

    if not isinstance(interrupt, TrainingInterrupted):
        return "interrupted before training started"
    checkpoint = interrupt.last_checkpoint
    if checkpoint is None:
        return f"interrupted at step {interrupt.step}; no checkpoint was written yet to resume from"
    command = ["sae-lens-e2e", "train", args.config, "--resume", str(checkpoint.parent)]
    command += ["--output", args.output] if args.output else []
    return (
        f"interrupted at step {interrupt.step}; resume with: {shlex.join(command)} "
        f"(from {checkpoint.name})"
    )
