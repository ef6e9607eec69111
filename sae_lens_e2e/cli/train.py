"""`sae-lens-e2e train CONFIG.yaml`: a LanguageModelSAERunnerConfig written as YAML."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

from sae_lens_e2e.compat import keep_null_checkpoint_path
from sae_lens_e2e.config_fields import build_config, read_yaml_mapping
from sae_lens_e2e.locks import check_free, folder_lock
from sae_lens_e2e.preflight import check_writable, go_offline_if_hub_unreachable
from sae_lens_e2e.training.resume import check_allowed

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
    architecture: e2e_standard      # or e2e_topk (then give k), e2e_jumprelu
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


def runner_config_from_dict(raw: dict[str, Any], source: str = "config") -> Any:
    """Build the runner config; every field (runner, `sae`, `logger`) is checked against its
    dataclass annotation and range first, so mistakes are one-line errors naming the field."""
    from sae_lens.config import LanguageModelSAERunnerConfig
    from sae_lens.registry import get_sae_training_class

    from sae_lens_e2e.training.sae import _ARCHITECTURES, register_e2e_architectures
    from sae_lens_e2e.training.validation import sae_hook_names

    register_e2e_architectures()
    raw = dict(raw)
    sae = raw.pop("sae", None)
    sae = {} if sae is None else sae
    if not isinstance(sae, dict):
        raise ValueError(f"{source}: sae: expected a mapping of SAE config fields, got {sae!r}")
    sae = dict(sae)
    architecture = sae.pop("architecture", "e2e_standard")
    if not isinstance(architecture, str) or architecture not in _ARCHITECTURES:
        raise ValueError(
            f"{source}: sae.architecture={architecture!r} is not one of {sorted(_ARCHITECTURES)}"
        )
    sae_cfg = build_config(source, sae, get_sae_training_class(architecture)[1], "sae")
    # SAELens asks `datasets` to trust remote code by default, which current `datasets` no
    # longer supports and answers with a notice on every run; off unless asked for.
    raw.setdefault("dataset_trust_remote_code", False)
    cfg = build_config(source, raw, LanguageModelSAERunnerConfig, sae=sae_cfg)
    try:  # hook names become folder names: checked here, naming the file
        sae_hook_names(cfg)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    return keep_null_checkpoint_path(cfg, raw)


def load_runner_config(path: str | Path) -> Any:
    """Read a YAML run config; errors name the file."""
    return runner_config_from_dict(read_yaml_mapping(path), source=str(path))


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
        help="a step_* folder, a run folder (its latest checkpoint) or a folder of run folders "
        "(e.g. checkpoint_path: the latest checkpoint of the one run there that this config "
        "continues); later checkpoints are written beside it. A checkpoint written with other "
        "training settings is refused, naming them",
    )
    parser.add_argument(
        "--allow-change",
        action="append",
        default=[],
        metavar="FIELD",
        help="with --resume: let FIELD differ from the config that wrote the checkpoint; only "
        "training_tokens (the same run for more or fewer steps, on that total's LR schedule). "
        "Any other change is refused, naming the fields",
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
    from sae_lens_e2e.training.validation import check_run_environment

    cfg = load_runner_config(args.config)
    if args.resume:
        cfg.resume_from_checkpoint = args.resume
    allow = check_allowed(f.strip() for text in args.allow_change for f in text.split(","))
    if allow and cfg.resume_from_checkpoint is None:
        raise ValueError("--allow-change only applies when resuming (--resume CHECKPOINT)")
    if args.output:
        cfg.output_path = args.output
    check_run_environment(cfg)
    check_outputs(cfg)
    if not (Path(cfg.model_name).exists() and Path(cfg.dataset_path).exists()):
        note_offline(go_offline_if_hub_unreachable())
    try:
        with warnings.catch_warnings(), _output_lock(cfg):
            # SAELens's store builds token tensors from tensors on its pre-tokenised path
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            runner = E2ESAETrainingRunner(
                cfg, dist_timeout=args.dist_timeout, resume_allow_changes=allow
            )
            runner.run()
    except KeyboardInterrupt as interrupt:
        print(f"sae-lens-e2e train: {interrupted(interrupt, args)}", file=sys.stderr)
        return 130
    return 0


def _output_lock(cfg: Any) -> contextlib.AbstractContextManager[Any]:
    """output_path locked from before the model loads (the runner's own lock, re-entrant,
    would only take it once model and data are loaded); under torchrun rank 0 holds it."""
    if not cfg.output_path or not _rank_0():
        return contextlib.nullcontext()
    return folder_lock(cfg.output_path, "output_path")


def _rank_0() -> bool:
    """This process is rank 0 of a torchrun job, or not under torchrun."""
    return os.environ.get("RANK", "0") == "0"


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
    command += [f"--allow-change={field}" for field in args.allow_change]
    return (
        f"interrupted at step {interrupt.step}; resume with: {shlex.join(command)} "
        f"(from {checkpoint.name})"
    )


def check_outputs(cfg: Any) -> None:
    """The folders the run will write to are writable and no other run is writing there,
    before the model is even loaded."""
    if cfg.output_path:
        check_writable(cfg.output_path, "output_path", "pass --output DIR somewhere writable")
        if _rank_0():  # under torchrun rank 0 holds the lock for the job
            check_free(cfg.output_path, "output_path")
    if cfg.checkpoint_path and (cfg.n_checkpoints > 0 or cfg.save_final_checkpoint):
        check_writable(cfg.checkpoint_path, "checkpoint_path", "set it to a writable folder")


def note_offline(reason: str | None) -> None:
    if reason:
        print(
            f"note: {reason}; working offline (HF_HUB_OFFLINE=1): only models and datasets "
            "already in the Hugging Face cache can be used",
            file=sys.stderr,
        )
