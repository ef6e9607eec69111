"""Training checkpoints: writing them, finding the one to resume, refusing ones that cannot be.

A checkpoint is `<run folder>/step_<n>/` holding `saes/<hook>/` (SAELens `save_model` folders)
and `trainer_state.pt` (step, data position, optimiser, schedule). It is written atomically, so
a `step_*` folder with `trainer_state.pt` is complete, and never with a NaN/Inf in it. SAELens
appends a run id to the configured `checkpoint_path`, so the configured folder holds run
folders holding `step_*` folders: any of the three can be resumed from, and the resumed run
keeps writing into the run folder it resumed from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from sae_lens.constants import SAE_WEIGHTS_FILENAME

from sae_lens_e2e.atomic import atomic_directory, remove_stale_temporaries
from sae_lens_e2e.names import inside
from sae_lens_e2e.sae_files import read_safetensors
from sae_lens_e2e.training import resume

TRAINER_STATE_FILENAME = "trainer_state.pt"
CHECKPOINT_PREFIX = "step_"
_STEP_NAME = rf"{CHECKPOINT_PREFIX}\d+"

Tensors = Iterable[tuple[str, torch.Tensor]]


class NonFiniteLossError(RuntimeError):
    """A NaN/Inf loss, gradient norm or SAE weight stopped training.

    A bad loss or gradient stops before the update; a bad weight is found right after it.
    No checkpoint with a non-finite value is ever written; the message names the last good one.
    """


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, carrying the step reached and the last checkpoint written."""

    def __init__(self, step: int, last_checkpoint: Path | None) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step, self.last_checkpoint = step, last_checkpoint


def non_finite(tensors: Tensors) -> list[str]:
    """Names of the floating-point tensors holding a NaN or Inf.

    One total norm first: a single cheap pass (far cheaper than `isfinite` on every element),
    finite in the usual case; only a NaN/Inf (or overflowing) norm checks tensor by tensor.
    """
    named = [(name, t) for name, t in tensors if t.is_floating_point()]
    if not named or math.isfinite(torch.nn.utils.get_total_norm([t for _, t in named]).item()):
        return []
    return [name for name, t in named if not torch.isfinite(t).all()]


def sae_tensors(saes: Mapping[str, Any]) -> Tensors:
    return ((f"{hook} {k}", v) for hook, sae in saes.items() for k, v in sae.state_dict().items())


def _optimizer_tensors(state: Mapping[str, Any]) -> Tensors:
    for i, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                yield f"optimizer {key} of parameter {i}", value


def write_checkpoint(
    run_folder: Path,
    step: int,
    saes: Mapping[str, Any],
    trainer_state: dict[str, Any],
    cfg: Any | None = None,
) -> Path:
    """Write `step_<step>/` atomically, refusing if any weight or optimiser value is non-finite;
    with the training config of runner config `cfg` recorded (resume.py)."""
    bad = non_finite([*sae_tensors(saes), *_optimizer_tensors(trainer_state["optimizer"])])
    if bad:
        raise NonFiniteLossError(
            f"not writing the checkpoint at step {step}: non-finite values in {', '.join(bad)}"
        )
    final = run_folder / f"{CHECKPOINT_PREFIX}{step:09d}"
    with atomic_directory(final) as tmp:
        for hook, sae in saes.items():
            sae.save_model(inside(tmp / "saes", hook))
        if cfg is not None:
            resume.write_config(tmp, cfg)
        torch.save(trainer_state, tmp / TRAINER_STATE_FILENAME)
    return final


def remove_stale_checkpoint_temporaries(run_folder: Path) -> list[Path]:
    """Half-written `step_*` folders that killed runs left in this run folder or its siblings."""
    folders = [run_folder, *(p for p in run_folder.parent.glob("*/") if p != run_folder)]
    return [p for folder in folders for p in remove_stale_temporaries(folder, _STEP_NAME)]


def _complete(folder: Path) -> list[Path]:
    return [
        p
        for p in folder.glob(f"{CHECKPOINT_PREFIX}*")
        if re.fullmatch(_STEP_NAME, p.name) and (p / TRAINER_STATE_FILENAME).is_file()
    ]


def resolve_checkpoint(
    path: str | Path, cfg: Any | None = None, allowed: Iterable[str] = ()
) -> Path:
    """A `step_*` folder, the latest complete one of a run folder, or of the one run in a
    folder of run folders (the configured checkpoint_path) that runner config `cfg` continues
    (resume.pick_run: several runs of this config, or none, are refused, naming them).

    Without `cfg`: the most recently written checkpoint of any run.
    """
    path = Path(path)
    if (path / TRAINER_STATE_FILENAME).is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if _complete(path):
        return max(_complete(path), key=lambda p: p.name)  # zero-padded: the highest step
    latest = {run: max(found, key=lambda p: p.name)
              for run in sorted(path.glob("*/")) if (found := _complete(run))}  # fmt: skip
    if not latest:
        raise FileNotFoundError(
            f"no complete checkpoint (a {CHECKPOINT_PREFIX}* folder with "
            f"{TRAINER_STATE_FILENAME}) in {path} or the run folders in it"
        )
    if cfg is not None:
        return resume.pick_run(path, latest, cfg, allowed)
    return max(latest.values(), key=lambda p: (p / TRAINER_STATE_FILENAME).stat().st_mtime)


def load_trainer_state(path: Path, device: torch.device, total_steps: int) -> dict[str, Any]:
    """The trainer state of checkpoint `path`, refused if it is past this run's last step."""
    state = torch.load(path / TRAINER_STATE_FILENAME, weights_only=True, map_location=device)
    if int(state["step"]) > total_steps:
        raise ValueError(
            f"checkpoint {path} is at step {state['step']}, past the {total_steps} steps this "
            "config trains (training_tokens / train_batch_size_tokens); raise training_tokens "
            "to train it further"
        )
    return state


def load_sae_weights(path: Path, saes: Mapping[str, Any]) -> None:
    """Load every SAE from checkpoint `path`, once all are checked to fit this config."""
    folder = path / "saes"
    hooks = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if hooks != sorted(saes):
        raise ValueError(
            f"checkpoint {path} holds SAEs at {hooks}; this config trains {sorted(saes)}"
        )
    weights = {}
    for hook, sae in saes.items():
        sd = read_safetensors(folder / hook / SAE_WEIGHTS_FILENAME, device=str(sae.W_enc.device))
        _check_fits(path, hook, sd, sae)
        bad = non_finite(sd.items())
        if bad:
            raise ValueError(
                f"checkpoint {path} has non-finite weights ({hook} {', '.join(bad)}); "
                "resume from an earlier checkpoint"
            )
        weights[hook] = sd
    for hook, sd in weights.items():
        saes[hook].load_state_dict(sd)


def _check_fits(path: Path, hook: str, sd: Mapping[str, torch.Tensor], sae: Any) -> None:
    expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in sd.items()}
    if found == expected:
        return
    if "W_enc" in found and found.get("W_enc") != expected["W_enc"]:
        (d_in, d_sae), (cfg_d_in, cfg_d_sae) = found["W_enc"], expected["W_enc"]
        detail = f"d_in={d_in}, d_sae={d_sae}; this config has d_in={cfg_d_in}, d_sae={cfg_d_sae}"
    else:
        detail = f"tensors {found}; this config's SAE has {expected}"
    raise ValueError(f"checkpoint {path}: the SAE at {hook} has {detail}")
