"""Which run a resume continues: the training config each checkpoint records, the changes a
resume refuses, and which run folder `--resume <folder>` means.

Every checkpoint records the fields that decide what its run trains (`training_config`: the
model, hook and data, the token budget and batch, the optimiser and LR schedule, the seed and
every loss / SAE field) in `training_config.json`. A resume with other values is refused,
naming each field, so that a run never silently continues as a different one. Only
`training_tokens` may change, and only when asked (`--allow-change training_tokens`): it
trains the same run for more (or fewer) steps, with the LR schedule recomputed for the new
total. Paths, logging, devices, evaluation and how a step is computed (kernels, gradient
checkpointing, autocast) are not recorded: changing them continues the same run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sae_lens_e2e.version import __version__

CONFIG_FILENAME = "training_config.json"
ALLOWED_CHANGES = ("training_tokens",)

# Runner fields that decide which tokens each step sees and what it optimises.
_RUNNER_FIELDS = """model_name model_class_name model_from_pretrained_kwargs hook_name
    hook_head_index dataset_path is_dataset_tokenized context_size prepend_bos seqpos_slice
    sequence_separator_token disable_concat_sequences exclude_special_tokens training_tokens
    train_batch_size_tokens lr lr_scheduler_name lr_warm_up_steps lr_end lr_decay_steps
    n_restart_cycles adam_beta1 adam_beta2 seed"""
RUNNER_FIELDS = _RUNNER_FIELDS.split()
# SAE config fields that do not change what is trained: where and how a step is computed, and
# warm-start sources (a resumed run's weights come from its checkpoint).
SAE_FIELDS_NOT_RECORDED = {
    "metadata", "device", "kernels", "gradient_checkpointing", "warm_start_release",
    "warm_start_sae_id",
}  # fmt: skip


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples as lists, anything odd as text), for comparison."""
    return json.loads(json.dumps(value, default=str))


def training_config(cfg: Any) -> dict[str, Any]:
    """The fields of runner config `cfg` that decide what its run trains, flat ('sae.x')."""
    record = {name: _plain(getattr(cfg, name, None)) for name in RUNNER_FIELDS}
    sae = cfg.sae.to_dict()
    record |= {
        f"sae.{k}": _plain(v) for k, v in sorted(sae.items()) if k not in SAE_FIELDS_NOT_RECORDED
    }
    return record


def write_config(folder: Path, cfg: Any) -> None:
    """Record `cfg`'s training config in a checkpoint folder being written."""
    record = {"sae_lens_e2e_version": __version__, "config": training_config(cfg)}
    (folder / CONFIG_FILENAME).write_text(json.dumps(record, indent=2, sort_keys=True))


def read_config(checkpoint: Path) -> dict[str, Any] | None:
    """The training config a checkpoint recorded; None for one written before it was recorded."""
    path = checkpoint / CONFIG_FILENAME
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text())["config"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a readable training config ({err})") from None


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple]:
    """Field -> (saved, current) for every field both record with different values."""
    return {k: (saved[k], current[k]) for k in saved if k in current and saved[k] != current[k]}


def _describe(diffs: Mapping[str, tuple]) -> str:
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in diffs.items())


def check_allowed(allowed: Iterable[str]) -> tuple[str, ...]:
    """The fields a resume is asked to let change: only those in ALLOWED_CHANGES can."""
    allowed = tuple(allowed)
    other = [name for name in allowed if name not in ALLOWED_CHANGES]
    if other:
        raise ValueError(
            f"--allow-change {', '.join(other)}: only {', '.join(ALLOWED_CHANGES)} may change "
            "when resuming (the same run, trained for more or fewer steps); other fields change "
            "what the run trains: start a new run, e.g. warm-started from the checkpoint's SAE "
            "(from_pretrained_path=<checkpoint>/saes/<hook>)"
        )
    return allowed


def check_resume(checkpoint: Path, cfg: Any, allowed: Iterable[str] = ()) -> None:
    """Refuse to resume `checkpoint` with a config that trains something else, naming fields."""
    allowed = check_allowed(allowed)
    saved = read_config(checkpoint)
    if saved is None:
        print(
            f"note: {checkpoint} records no training config (written by an older sae-lens-e2e); "
            "resuming without checking that this config is the one that wrote it",
            file=sys.stderr,
        )
        return
    diffs = differences(saved, training_config(cfg))
    refused = {k: v for k, v in diffs.items() if k not in allowed}
    if not refused:
        return
    fixable = [k for k in refused if k in ALLOWED_CHANGES]
    hint = (
        f"; to train the same run for another number of steps pass --allow-change "
        f"{','.join(fixable)} (Python: resume_allow_changes={fixable})"
        if fixable and len(fixable) == len(refused)
        else "; resume with the config that wrote it, or start a new run"
    )
    raise ValueError(
        f"checkpoint {checkpoint} was written with other training settings: "
        f"{_describe(refused)}{hint}"
    )


def total_steps_changed(checkpoint: Path, cfg: Any) -> bool:
    """Whether `cfg` trains the checkpoint's run for another number of tokens (allowed)."""
    saved = read_config(checkpoint) or {}
    return "training_tokens" in saved and saved["training_tokens"] != cfg.training_tokens


def pick_run(
    root: Path, latest: Mapping[Path, Path], cfg: Any, allowed: Iterable[str] = ()
) -> Path:
    """The latest checkpoint of the one run in `root` that `cfg` continues.

    `latest` maps each run folder to its latest complete checkpoint. A run matches when its
    recorded config differs from `cfg` only in `allowed` fields (or records none: written by
    an older version). Several runs, or none, that match are refused, naming them.
    """
    if len(latest) == 1:
        return next(iter(latest.values()))  # its config is checked when it is loaded
    current, allowed = training_config(cfg), set(allowed)
    matching, other = [], {}
    for run, checkpoint in sorted(latest.items()):
        saved = read_config(checkpoint)
        diffs = {} if saved is None else differences(saved, current)
        refused = {k: v for k, v in diffs.items() if k not in allowed}
        if refused:
            other[run.name] = refused
        else:
            matching.append(run)
    if len(matching) == 1:
        return latest[matching[0]]
    if matching:
        runs = ", ".join(f"{run.name} (at {latest[run].name})" for run in matching)
        raise ValueError(
            f"{root} holds {len(matching)} runs of this config: {runs}; resume one of them by "
            f"its folder, e.g. --resume {matching[-1]}"
        )
    runs = "; ".join(f"{name}: {_describe(diffs)}" for name, diffs in other.items())
    raise ValueError(f"no run in {root} was trained with this config ({runs})")
