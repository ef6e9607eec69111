"""The reference e2e_sae checkpoint format: reading, validating and splitting it per SAE.

The reference code (ApolloResearch/e2e_sae) saves `SAETransformer.saes.state_dict()`: one
`nn.ModuleDict` entry per SAE position, keyed by the hook name with '.' replaced by '-', each an
`encoder` (Linear + ReLU, so `encoder.0.*`) and a `decoder` Linear whose weight columns are
normalised inside every forward pass.

The Hugging Face files (`apollo-research/e2e-saes-gpt2`, written by the reference's upload
script, branch feature/upload_to_hf_script, `e2e_sae/scripts/upload_to_hf.py`) hold one SAE
per `<stem>.pt` as exactly four un-prefixed tensors: `encoder.weight`, `encoder.bias`,
`decoder.weight` (the SAE's `dict_elements`, already column-normalised) and `decoder.bias`;
the hook is named in the sibling `<stem>.yaml`, a copy of the run's `final_config.yaml`. Both
layouts are read here.

Checkpoints come from the internet, so they are read with `torch.load(weights_only=True)` only
and validated completely before anything is written.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from sae_lens_e2e.config_fields import StrictLoader
from sae_lens_e2e.names import check_hook_name

SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
REFERENCE_CONFIG_FILENAME = "final_config.yaml"

ENC_W, ENC_B, DEC_W, DEC_B = "encoder.0.weight", "encoder.0.bias", "decoder.weight", "decoder.bias"
REFERENCE_SUFFIXES = (ENC_W, ENC_B, DEC_W, DEC_B)
# The upload script's keys -> the reference ModuleDict's (the decoder keys are the same).
HF_UPLOAD_KEYS = {"encoder.weight": ENC_W, "encoder.bias": ENC_B, DEC_W: DEC_W, DEC_B: DEC_B}

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
NORMALIZE_EPS = 1e-12


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
            raw = yaml.load(f, Loader=StrictLoader)  # safe_load, refusing repeated keys
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
    for position in positions or []:  # parts of hook names, e.g. 'hook_resid_pre', 'blocks.6'
        check_hook_name(position.strip("."), f"{where}: saes.sae_positions", E2EConversionError)
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


def _from_upload_layout(sd: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """A Hugging Face file's four keys renamed to the un-prefixed reference keys; the tensors
    are detached (the script saved `dict_elements`, a tensor that required grad)."""
    if set(sd) != set(HF_UPLOAD_KEYS):
        return sd
    return {HF_UPLOAD_KEYS[k]: v.detach() for k, v in sd.items()}


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
            f"<hook-with-dashes>.{{{', '.join(REFERENCE_SUFFIXES)}}}, and a Hugging Face "
            f"file exactly {sorted(HF_UPLOAD_KEYS)}"
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
    """Key prefixes are hook names with '-' for '.'; un-prefixed files name it in the config.
    Either becomes a folder name, so it must have the form of a hook name."""
    if prefix:
        return check_hook_name(
            prefix.replace("-", "."), f"{where}: key prefix {prefix!r}", E2EConversionError
        )
    if positions and len(positions) == 1 and "." in positions[0]:
        return check_hook_name(positions[0], f"{where}: saes.sae_positions", E2EConversionError)
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
    """Validate a reference state dict (wandb or Hugging Face layout) against its config; one
    ReferenceSAE per hook name."""
    sd = _from_upload_layout(sd)
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


_RUN_FILE_RE = re.compile(r"(?:^|/)samples_(\d+)\.pt$")


def checkpoint_step(name: str) -> int | None:
    """N of a reference `samples_<N>.pt` file name, else None."""
    m = _RUN_FILE_RE.search(name)
    return int(m.group(1)) if m else None
