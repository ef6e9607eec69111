"""Reference checkpoint -> SAELens `standard` SAE folders.

SAELens's `standard` SAE computes the reference SAE's function once the decoder is stored
normalised and `apply_b_dec_to_input` is False. Folders are written atomically: all or none.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sae_lens
import torch
from safetensors.torch import save_file

from sae_lens_e2e.atomic import atomic_directory, unexpected_entries
from sae_lens_e2e.loading.reference_format import (
    NORMALIZE_EPS,
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    TLENS_DEFAULT_PROCESSING,
    E2EConversionError,
    ReferenceConfig,
    ReferenceSAE,
    file_sha256,
    load_reference_config,
    load_reference_state_dict,
    split_reference_state_dict,
)
from sae_lens_e2e.names import check_hook_name, inside
from sae_lens_e2e.version import __version__

# ---------------------------------------------------------------------------------------------
# Reference -> SAELens
# ---------------------------------------------------------------------------------------------


def normalized_decoder(decoder_weight: torch.Tensor) -> torch.Tensor:
    """Unit columns of the [d_in, d_sae] decoder, exactly as the reference's forward uses them."""
    w = decoder_weight.double()
    return w / w.norm(dim=0, keepdim=True).clamp_min(NORMALIZE_EPS)


def reference_to_saelens_state_dict(sae: ReferenceSAE) -> dict[str, torch.Tensor]:
    """SAELens standard weights (fp32): W_enc [d_in, d_sae], W_dec [d_sae, d_in] normalised."""
    return {
        "W_enc": sae.encoder_weight.float().T.contiguous(),
        "b_enc": sae.encoder_bias.float().contiguous(),
        "W_dec": normalized_decoder(sae.decoder_weight).T.float().contiguous(),
        "b_dec": sae.decoder_bias.float().contiguous(),
    }


def _train_data_metadata(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Dataset and context size of the run; the reference trains without a BOS token."""
    data = raw.get("train_data")
    if not isinstance(data, dict):
        return {}
    out: dict[str, Any] = {}
    if data.get("dataset_name") is not None:
        out["dataset_path"] = data["dataset_name"]
    if isinstance(data.get("n_ctx"), int):
        out["context_size"] = data["n_ctx"]
    return out


def _json_safe(value: Any) -> Any:
    """Round-trip through json so odd yaml scalars (dates, ...) become strings."""
    return json.loads(json.dumps(value, default=str))


def saelens_cfg_dict(
    sae: ReferenceSAE,
    config: ReferenceConfig,
    source: Mapping[str, Any],
    model_name: str | None = None,
) -> dict[str, Any]:
    """A plain SAELens 6.x `standard` cfg dict that stock `SAE.load_from_disk` accepts."""
    metadata: dict[str, Any] = {
        "sae_lens_version": sae_lens.__version__,
        "sae_lens_training_version": None,
        "sae_lens_e2e_version": __version__,
        "model_name": model_name or config.model_name,
        "model_class_name": "HookedTransformer",
        "model_from_pretrained_kwargs": dict(TLENS_DEFAULT_PROCESSING),
        "hook_name": sae.hook_name,
        "hook_head_index": None,
        "prepend_bos": False,
        "neuronpedia_id": None,
        **_train_data_metadata(config.raw),
        "e2e_source": _json_safe(dict(source)),
        "e2e_loss": _json_safe(config.raw.get("loss")),
        "e2e_n_samples": _json_safe(config.raw.get("n_samples")),
    }
    return {
        "architecture": "standard",
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }


ConvertedSAE = tuple[dict[str, Any], dict[str, torch.Tensor]]


def convert_reference_checkpoint(
    checkpoint: str | Path,
    config: str | Path,
    *,
    source: Mapping[str, Any] | None = None,
    model_name: str | None = None,
) -> dict[str, ConvertedSAE]:
    """Load, validate and convert every SAE in a reference checkpoint, in memory."""
    cfg = load_reference_config(config)
    sd = load_reference_state_dict(checkpoint)
    saes = split_reference_state_dict(sd, cfg, where=str(checkpoint))
    if (model_name or cfg.model_name) is None:
        warnings.warn(f"{config}: no tlens_model_name; metadata.model_name is empty", stacklevel=2)
    src = {"file": Path(checkpoint).name, "sha256": file_sha256(checkpoint), **(source or {})}
    return {
        hook: (saelens_cfg_dict(s, cfg, src, model_name), reference_to_saelens_state_dict(s))
        for hook, s in saes.items()
    }


# ---------------------------------------------------------------------------------------------
# Atomic writing
# ---------------------------------------------------------------------------------------------


def check_destination(out: Path, overwrite: bool) -> None:
    """`out` may be new or empty or, to be replaced, hold only SAE folders a conversion wrote."""
    if out.exists() and not out.is_dir():
        raise E2EConversionError(f"{out}: exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    foreign = _not_converted(out)
    if foreign:
        raise E2EConversionError(
            f"{out}: holds {', '.join(foreign)}, which no conversion wrote; not replacing it "
            "(choose another --out / out_dir, or move them)"
        )
    if not overwrite:
        raise E2EConversionError(
            f"{out}: already holds converted SAEs (pass --overwrite / overwrite=True to replace)"
        )


def _identity(source: Any) -> set[tuple[str, Any]]:
    """What identifies a conversion's source: its file's content, and where it came from."""
    if not isinstance(source, Mapping):
        return set()
    keys = [("sha256",), ("path",), ("hf_repo", "hf_file"), ("wandb_run",)]
    return {
        (str(k), tuple(source.get(x) for x in k)) for k in keys if all(source.get(x) for x in k)
    }


def _check_same_source(out: Path, source: Any) -> None:
    """--overwrite replaces a conversion of the same source only, never another run's SAEs
    that happen to share the folder name."""
    mine = _identity(source)
    for cfg_json in sorted(out.glob(f"*/{SAE_CFG_FILENAME}")) if out.is_dir() else []:
        try:
            theirs = json.loads(cfg_json.read_text()).get("metadata", {}).get("e2e_source")
        except (OSError, ValueError):
            theirs = None
        if mine and theirs and not mine & _identity(theirs):
            where = theirs.get("path") or theirs.get("wandb_run") or theirs.get("hf_file")
            raise E2EConversionError(
                f"{out}: holds SAEs converted from another source ({where}); not replacing "
                "them (pass --name NAME to convert into another folder)"
            )


def _not_converted(out: Path) -> list[str]:
    """What in `out` a conversion did not write: anything but folders of cfg.json + weights."""
    found = []
    for entry in sorted(out.iterdir()):
        if entry.is_dir() and (entry / SAE_CFG_FILENAME).is_file():
            expected = {SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME}
            found += [f"{entry.name}/{name}" for name in unexpected_entries(entry, expected)]
        else:
            found.append(f"{entry.name}/" if entry.is_dir() else entry.name)
    return found


def save_saelens_folder(
    folder: Path, cfg: Mapping[str, Any], sd: Mapping[str, torch.Tensor]
) -> None:
    """Write cfg.json + sae_weights.safetensors, the layout `SAE.load_from_disk` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in sd.items()}, folder / SAE_WEIGHTS_FILENAME
    )
    with open(folder / SAE_CFG_FILENAME, "w") as f:
        json.dump(cfg, f, indent=2)


def write_saelens_folders(
    converted: Mapping[str, ConvertedSAE], out_dir: str | Path, overwrite: bool = False
) -> dict[str, Path]:
    """Write `out_dir/<hook_name>/` for each SAE, atomically: all folders or none."""
    if not converted:
        raise E2EConversionError("nothing to write: no SAEs were converted")
    out = Path(out_dir).absolute()
    for hook in converted:  # each becomes a folder: a hook name, inside `out`
        check_hook_name(hook, "SAE position", E2EConversionError)
    _check_same_source(out, next(iter(converted.values()))[0]["metadata"].get("e2e_source"))
    check_destination(out, overwrite)
    with atomic_directory(out) as tmp:
        for hook, (cfg, sd) in converted.items():
            save_saelens_folder(inside(tmp, hook, error=E2EConversionError), cfg, sd)
    return {hook: inside(out, hook) for hook in converted}


def convert_checkpoint(
    checkpoint: str | Path,
    config: str | Path,
    out_dir: str | Path,
    *,
    source: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Convert a reference `.pt` + yaml into one SAELens folder per SAE position."""
    converted = convert_reference_checkpoint(
        checkpoint, config, source=source, model_name=model_name
    )
    return write_saelens_folders(converted, out_dir, overwrite=overwrite)
