"""SAELens SAEs -> a reference e2e_sae checkpoint (`.pt` + `final_config.yaml`), for the
reference code's own analysis scripts.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sae_lens
import torch
import yaml

from sae_lens_e2e.atomic import atomic_file
from sae_lens_e2e.loading.reference_format import (
    REFERENCE_CONFIG_FILENAME,
    REFERENCE_SUFFIXES,
    TLENS_DEFAULT_PROCESSING,
    E2EConversionError,
    ReferenceSAE,
)
from sae_lens_e2e.names import check_hook_name
from sae_lens_e2e.sae_files import describe_non_finite, non_finite_weights
from sae_lens_e2e.training.warm_start import unit_decoder_weights
from sae_lens_e2e.version import __version__


def _check_representable(sae: Any) -> None:
    """Refuse what the reference SAE (Linear+ReLU, normalised Linear decoder) cannot express."""
    name = sae.cfg.metadata.hook_name or "<no hook_name>"
    arch = sae.cfg.architecture()
    if arch != "standard":
        raise E2EConversionError(
            f"SAE at {name}: architecture '{arch}' cannot be exported; the reference SAE is "
            "ReLU(x W_enc + b_enc) with a normalised linear decoder ('standard' only)"
        )
    if sae.cfg.normalize_activations != "none":
        raise E2EConversionError(
            f"SAE at {name}: normalize_activations='{sae.cfg.normalize_activations}' has no "
            "reference equivalent (expected 'none')"
        )
    if sae.cfg.reshape_activations != "none" or sae.cfg.metadata.hook_head_index is not None:
        raise E2EConversionError(f"SAE at {name}: per-head (hook_z) SAEs cannot be exported")
    if sae.cfg.metadata.hook_name is None:
        raise E2EConversionError("SAE has no metadata.hook_name; the reference keys need it")
    # The key prefix is the hook with '.' -> '-', read back as a folder name by converters.
    check_hook_name(sae.cfg.metadata.hook_name, "SAE metadata.hook_name", E2EConversionError)
    extra = sorted(set(sae.state_dict()) - {"W_enc", "b_enc", "W_dec", "b_dec"})
    if extra:
        raise E2EConversionError(f"SAE at {name}: parameters {extra} have no reference equivalent")


def sae_to_reference(sae: Any) -> ReferenceSAE:
    """Express a standard SAELens SAE exactly in reference form.

    `apply_b_dec_to_input` is folded into the encoder bias (b_enc - b_dec W_enc), and decoder
    row norms are moved into the encoder (ReLU commutes with positive scaling), so the
    reference's per-forward decoder normalisation changes nothing.
    """
    _check_representable(sae)
    bad = non_finite_weights(sae)
    if bad:  # the reference format (and our convert) cannot hold them
        raise E2EConversionError(
            f"SAE at {sae.cfg.metadata.hook_name}: {describe_non_finite(bad)}; not exporting it"
        )
    w = unit_decoder_weights(sae)
    return ReferenceSAE(
        hook_name=sae.cfg.metadata.hook_name,
        encoder_weight=w["W_enc"].T.float().contiguous(),
        encoder_bias=w["b_enc"].float().contiguous(),
        decoder_weight=w["W_dec"].T.float().contiguous(),
        decoder_bias=w["b_dec"].float().contiguous(),
    )


def reference_state_dict(saes: Sequence[ReferenceSAE]) -> dict[str, torch.Tensor]:
    """Key the SAEs as the reference ModuleDict does ('.' -> '-' in hook names)."""
    out: dict[str, torch.Tensor] = {}
    for s in saes:
        prefix = s.hook_name.replace(".", "-")
        tensors = (s.encoder_weight, s.encoder_bias, s.decoder_weight, s.decoder_bias)
        for suffix, t in zip(REFERENCE_SUFFIXES, tensors, strict=True):
            out[f"{prefix}.{suffix}"] = t
    return out


def _warn_on_model_processing(sae: Any) -> None:
    """The reference loads the model with TransformerLens defaults; other activations differ."""
    kwargs = sae.cfg.metadata.model_from_pretrained_kwargs or {}
    wanted = {k: kwargs.get(k, False) for k in TLENS_DEFAULT_PROCESSING}
    if wanted != TLENS_DEFAULT_PROCESSING:
        warnings.warn(
            f"the SAE at {sae.cfg.metadata.hook_name} was trained on a model loaded with "
            f"from_pretrained_no_processing(**{kwargs}), but the reference code loads its model "
            f"with HookedTransformer.from_pretrained's defaults ({TLENS_DEFAULT_PROCESSING}); "
            "there the activations at this hook differ (e.g. centred writing weights), so the "
            "exported SAE will not reconstruct them as it did here",
            stacklevel=3,
        )


def reference_config_dict(saes: Sequence[Any]) -> dict[str, Any]:
    """The keys of final_config.yaml that the reference's `from_local_path` reads."""
    models = {s.cfg.metadata.model_name for s in saes}
    ratios = {s.cfg.d_sae / s.cfg.d_in for s in saes}
    if len(models) != 1 or len(ratios) != 1:
        raise E2EConversionError(
            f"one reference checkpoint needs one model and one dict_size_to_input_ratio; "
            f"got models {sorted(map(str, models))} and ratios {sorted(ratios)}"
        )
    ratio = ratios.pop()
    for s in saes:
        if int(ratio * s.cfg.d_in) != s.cfg.d_sae:
            raise E2EConversionError(
                f"SAE at {s.cfg.metadata.hook_name}: d_sae={s.cfg.d_sae} is not int(ratio * "
                f"d_in) for any float ratio the reference can store (ratio={ratio})"
            )
    return {
        "tlens_model_name": models.pop(),
        "tlens_model_path": None,
        "saes": {
            "sae_positions": [s.cfg.metadata.hook_name for s in saes],
            "dict_size_to_input_ratio": ratio,
            "pretrained_sae_paths": None,
            "retrain_saes": False,
        },
    }


def saelens_to_reference(saes: Any | Sequence[Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """SAELens SAE(s) -> (reference state dict, final_config.yaml-like dict)."""
    saes = list(saes) if isinstance(saes, Sequence) else [saes]
    if not saes:
        raise E2EConversionError("no SAEs to export")
    hooks = [s.cfg.metadata.hook_name for s in saes]
    if len(set(hooks)) != len(hooks):
        raise E2EConversionError(f"two SAEs share a hook name: {hooks}")
    refs = [sae_to_reference(s) for s in saes]
    config = reference_config_dict(saes)
    for s in saes:
        _warn_on_model_processing(s)
    return reference_state_dict(refs), config


def export_reference_checkpoint(
    saes: Any | Sequence[Any],
    out_path: str | Path,
    config_path: str | Path | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write a reference `.pt` and its `final_config.yaml` (default: next to the .pt)."""
    sd, config = saelens_to_reference(saes)
    out_path = Path(out_path)
    config_path = Path(config_path) if config_path else out_path.parent / REFERENCE_CONFIG_FILENAME
    for p in (out_path, config_path):
        if p.exists() and not overwrite:
            raise E2EConversionError(f"{p}: file exists (pass --overwrite / overwrite=True)")
    header = f"# exported by sae_lens_e2e {__version__} from SAELens {sae_lens.__version__}\n"
    with atomic_file(out_path) as tmp:
        torch.save(sd, tmp)
    with atomic_file(config_path) as tmp:
        tmp.write_text(header + yaml.safe_dump(config))
    return out_path, config_path
