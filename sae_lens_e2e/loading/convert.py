"""Convert between the reference e2e_sae checkpoint format and SAELens SAE folders.

The reference code (ApolloResearch/e2e_sae) saves `SAETransformer.saes.state_dict()`: one
`nn.ModuleDict` entry per SAE position, keyed by the hook name with '.' replaced by '-', each an
`encoder` (Linear + ReLU, so `encoder.0.*`) and a `decoder` Linear whose weight columns are
normalised inside every forward pass. SAELens's `standard` SAE computes the same function once
the decoder is stored normalised and `apply_b_dec_to_input` is False.

Checkpoints come from the internet, so they are read with `torch.load(weights_only=True)` only,
validated completely before anything is written, and written atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sae_lens
import torch
import yaml
from safetensors.torch import save_file

from sae_lens_e2e.atomic import atomic_directory, atomic_file
from sae_lens_e2e.training.sae import unit_decoder_weights

SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
REFERENCE_CONFIG_FILENAME = "final_config.yaml"

ENC_W, ENC_B, DEC_W, DEC_B = "encoder.0.weight", "encoder.0.bias", "decoder.weight", "decoder.bias"
REFERENCE_SUFFIXES = (ENC_W, ENC_B, DEC_W, DEC_B)

# The reference loads its model with `HookedTransformer.from_pretrained(name)`, i.e. with these
# TransformerLens defaults. SAELens loads models with `from_pretrained_no_processing(name,
# **model_from_pretrained_kwargs)`, so they must be spelled out for the activations to match.
TLENS_DEFAULT_PROCESSING: dict[str, bool] = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
}

# F.normalize's default eps: columns with smaller norm are divided by eps instead.
_NORMALIZE_EPS = 1e-12


class E2EConversionError(ValueError):
    """A checkpoint, config or SAE cannot be converted; the message names file, key and shape."""


class UnsafeCheckpointError(E2EConversionError):
    """The file is not a plain tensor state dict (e.g. a pickle that would run code)."""


@dataclass(frozen=True)
class ReferenceSAE:
    """One SAE in reference layout: encoder weight [d_sae, d_in], decoder weight [d_in, d_sae]."""

    hook_name: str
    encoder_weight: torch.Tensor
    encoder_bias: torch.Tensor
    decoder_weight: torch.Tensor
    decoder_bias: torch.Tensor

    @property
    def d_in(self) -> int:
        return int(self.encoder_weight.shape[1])

    @property
    def d_sae(self) -> int:
        return int(self.encoder_weight.shape[0])


@dataclass(frozen=True)
class ReferenceConfig:
    """The parts of a reference `final_config.yaml` the conversion needs (extra keys ignored)."""

    model_name: str | None
    sae_positions: list[str] | None
    dict_size_to_input_ratio: float | None
    raw: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    """Hash of a checkpoint, recorded as its provenance when it has no run path."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_reference_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a `.pt` state dict without ever executing pickled code (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise E2EConversionError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path}: refused to load: the file is not a plain tensor state dict and "
            f"torch.load(weights_only=True) rejected it, so nothing in it was executed ({e})"
        ) from e
    except Exception as e:  # zip/format errors: truncated or not a torch file at all
        raise E2EConversionError(f"{path}: not a readable torch checkpoint ({e})") from e
    if not isinstance(obj, Mapping):
        raise E2EConversionError(
            f"{path}: expected a state dict (mapping of key -> tensor), got {type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise E2EConversionError(f"{path}: entries that are not str -> tensor: {bad[:5]}")
    return dict(obj)


def load_reference_config(path: str | Path) -> ReferenceConfig:
    """Read `final_config.yaml`; tolerate keys of older runs (type_of_sparsifier, k, ...)."""
    path = Path(path)
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise E2EConversionError(f"{path}: cannot read the config yaml ({e})") from e
    if not isinstance(raw, dict):
        raise E2EConversionError(f"{path}: expected a yaml mapping, got {type(raw).__name__}")
    return parse_reference_config(raw, str(path))


def parse_reference_config(raw: dict[str, Any], where: str = "config") -> ReferenceConfig:
    """Pull model name, SAE positions and dictionary ratio out of a reference config dict."""
    saes = raw.get("saes") or {}
    if not isinstance(saes, dict):
        raise E2EConversionError(f"{where}: 'saes' must be a mapping, got {saes!r}")
    positions = saes.get("sae_positions")
    if isinstance(positions, str):
        positions = [positions]
    if positions is not None and (
        not isinstance(positions, list) or not all(isinstance(p, str) and p for p in positions)
    ):
        raise E2EConversionError(f"{where}: saes.sae_positions must be a name or list of names")
    ratio = saes.get("dict_size_to_input_ratio")
    if ratio is not None and (
        isinstance(ratio, bool)
        or not isinstance(ratio, int | float)
        or not math.isfinite(ratio)
        or ratio <= 0
    ):
        raise E2EConversionError(f"{where}: saes.dict_size_to_input_ratio must be > 0: {ratio!r}")
    model_name = raw.get("tlens_model_name")
    return ReferenceConfig(
        model_name=str(model_name) if model_name is not None else None,
        sae_positions=positions,
        dict_size_to_input_ratio=float(ratio) if ratio is not None else None,
        raw=raw,
    )


# ---------------------------------------------------------------------------------------------
# Validation: state dict -> ReferenceSAE per position
# ---------------------------------------------------------------------------------------------


def _split_key(key: str) -> tuple[str, str] | None:
    """'blocks-6-hook_resid_pre.decoder.weight' -> ('blocks-6-hook_resid_pre', 'decoder.weight')."""
    for suffix in REFERENCE_SUFFIXES:
        if key == suffix:
            return "", suffix
        if key.endswith("." + suffix):
            prefix = key[: -len(suffix) - 1]
            return prefix.removeprefix("saes."), suffix
    return None


def _group_keys(sd: Mapping[str, torch.Tensor], where: str) -> dict[str, dict[str, str]]:
    """Group keys by SAE prefix; refuse keys the reference SAE does not have."""
    groups: dict[str, dict[str, str]] = {}
    unexpected = []
    for key in sd:
        split = _split_key(key)
        if split is None:
            unexpected.append(key)
            continue
        groups.setdefault(split[0], {})[split[1]] = key
    if unexpected:
        raise E2EConversionError(
            f"{where}: unexpected key(s) {unexpected[:5]}; a reference SAE has only "
            f"<hook-with-dashes>.{{{', '.join(REFERENCE_SUFFIXES)}}}"
        )
    if not groups:
        raise E2EConversionError(f"{where}: the state dict is empty")
    for prefix, keys in groups.items():
        missing = [s for s in REFERENCE_SUFFIXES if s not in keys]
        if missing:
            names = [f"{prefix}.{s}" if prefix else s for s in missing]
            raise E2EConversionError(f"{where}: missing key(s) {names} for SAE '{prefix}'")
    return groups


def _hook_for_prefix(prefix: str, positions: list[str] | None, where: str) -> str:
    """Key prefixes are hook names with '-' for '.'; un-prefixed files name it in the config."""
    if prefix:
        return prefix.replace("-", ".")
    if positions and len(positions) == 1 and "." in positions[0]:
        return positions[0]
    raise E2EConversionError(
        f"{where}: keys carry no hook-name prefix and the config's saes.sae_positions "
        f"({positions}) does not name exactly one full hook, so the SAE position is unknown"
    )


def _check_positions(hooks: list[str], positions: list[str] | None, where: str) -> None:
    """Match sae_positions as substrings of hook names, as the reference does."""
    if positions is None:
        return
    for position in positions:
        if not any(position in hook for hook in hooks):
            raise E2EConversionError(
                f"{where}: config saes.sae_positions entry '{position}' matches no key "
                f"(SAE positions in the state dict: {hooks})"
            )
    extra = [hook for hook in hooks if not any(p in hook for p in positions)]
    if extra:
        raise E2EConversionError(
            f"{where}: extra key(s) for SAE position(s) {extra} that the config's "
            f"saes.sae_positions {positions} does not select"
        )


def _check_tensor(where: str, key: str, t: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(t.shape) != expected:
        raise E2EConversionError(
            f"{where}: key '{key}' has shape {tuple(t.shape)}, expected {expected}"
        )
    if not t.is_floating_point():
        raise E2EConversionError(f"{where}: key '{key}' has dtype {t.dtype}, expected a float")
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise E2EConversionError(f"{where}: key '{key}' has {bad} NaN/Inf value(s)")


def _build_reference_sae(
    sd: Mapping[str, torch.Tensor], keys: dict[str, str], hook: str, where: str
) -> ReferenceSAE:
    """Check shapes (encoder [d_sae, d_in] defines both sizes) and finiteness of one SAE."""
    enc_w = sd[keys[ENC_W]]
    if enc_w.ndim != 2:
        raise E2EConversionError(
            f"{where}: key '{keys[ENC_W]}' has shape {tuple(enc_w.shape)}, expected (d_sae, d_in)"
        )
    d_sae, d_in = enc_w.shape
    expected = {ENC_W: (d_sae, d_in), ENC_B: (d_sae,), DEC_W: (d_in, d_sae), DEC_B: (d_in,)}
    for suffix, shape in expected.items():
        _check_tensor(where, keys[suffix], sd[keys[suffix]], shape)
    return ReferenceSAE(
        hook_name=hook,
        encoder_weight=enc_w,
        encoder_bias=sd[keys[ENC_B]],
        decoder_weight=sd[keys[DEC_W]],
        decoder_bias=sd[keys[DEC_B]],
    )


def _check_ratio(sae: ReferenceSAE, ratio: float | None, where: str) -> None:
    """The reference builds n_dict = int(ratio * d_in); a mismatch would not load there either."""
    if ratio is not None and int(ratio * sae.d_in) != sae.d_sae:
        raise E2EConversionError(
            f"{where}: SAE '{sae.hook_name}' has d_sae={sae.d_sae} but the config's "
            f"dict_size_to_input_ratio={ratio} gives int({ratio} * {sae.d_in}) = "
            f"{int(ratio * sae.d_in)}"
        )


def split_reference_state_dict(
    sd: Mapping[str, torch.Tensor], config: ReferenceConfig, where: str = "checkpoint"
) -> dict[str, ReferenceSAE]:
    """Validate a reference state dict against its config; one ReferenceSAE per hook name."""
    groups = _group_keys(sd, where)
    hooks = {_hook_for_prefix(p, config.sae_positions, where): p for p in groups}
    if len(hooks) != len(groups):
        raise E2EConversionError(f"{where}: key prefixes {sorted(groups)} name one hook twice")
    _check_positions(list(hooks), config.sae_positions, where)
    out = {}
    for hook, prefix in hooks.items():
        out[hook] = _build_reference_sae(sd, groups[prefix], hook, where)
        _check_ratio(out[hook], config.dict_size_to_input_ratio, where)
    return out


# ---------------------------------------------------------------------------------------------
# Reference -> SAELens
# ---------------------------------------------------------------------------------------------


def normalized_decoder(decoder_weight: torch.Tensor) -> torch.Tensor:
    """Unit columns of the [d_in, d_sae] decoder, exactly as the reference's forward uses them."""
    w = decoder_weight.double()
    return w / w.norm(dim=0, keepdim=True).clamp_min(_NORMALIZE_EPS)


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


def _check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise E2EConversionError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise E2EConversionError(f"{out}: directory exists and is not empty (use overwrite)")


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
    _check_destination(Path(out).absolute(), overwrite)
    with atomic_directory(out) as tmp:
        for hook, (cfg, sd) in converted.items():
            save_saelens_folder(tmp / hook, cfg, sd)
    return {hook: out / hook for hook in converted}


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


# ---------------------------------------------------------------------------------------------
# SAELens -> reference
# ---------------------------------------------------------------------------------------------


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
            f"SAE at {sae.cfg.metadata.hook_name} was made for a model loaded with "
            f"from_pretrained_no_processing(**{kwargs}); the reference code loads "
            f"HookedTransformer.from_pretrained defaults ({TLENS_DEFAULT_PROCESSING}), so its "
            "activations (centred writing weights) differ",
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
            raise E2EConversionError(f"{p}: file exists (use overwrite)")
    header = f"# exported by sae_lens_e2e from SAELens {sae_lens.__version__}\n"
    with atomic_file(out_path) as tmp:
        torch.save(sd, tmp)
    with atomic_file(config_path) as tmp:
        tmp.write_text(header + yaml.safe_dump(config))
    return out_path, config_path


_RUN_FILE_RE = re.compile(r"(?:^|/)samples_(\d+)\.pt$")


def checkpoint_step(name: str) -> int | None:
    """N of a reference `samples_<N>.pt` file name, else None."""
    m = _RUN_FILE_RE.search(name)
    return int(m.group(1)) if m else None
