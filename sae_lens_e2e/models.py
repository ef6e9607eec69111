"""Language models by name or by folder, for `train`, `evaluate` and the quickstart.

A model is a TransformerLens model name (loaded by SAELens's `load_model`) or a local folder
holding a HookedTransformer: `model.pt` (its state dict) with `config.json` (its
HookedTransformerConfig, as `save_local_model` writes) or, as the quickstart caches its byte
LM, `info.json` with the settings of that model (`lm`). A name that is neither is one line
naming the nearest known names (TransformerLens's own error lists all of them).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

MODEL_FILE, CONFIG_FILE, INFO_FILE = "model.pt", "config.json", "info.json"
BYTE_VOCAB = 256
BYTE_LM_NAME = "quickstart-bytes-lm"


def byte_lm_config(
    n_layers: int, d_model: int, d_head: int, n_ctx: int, seed: int = 0, device: str = "cpu"
) -> Any:
    """The quickstart's byte-level causal transformer (GELU MLP of 4 x d_model, LayerNorm)."""
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        d_head=d_head,
        n_heads=d_model // d_head,
        d_mlp=4 * d_model,
        n_ctx=n_ctx,
        d_vocab=BYTE_VOCAB,
        act_fn="gelu",
        normalization_type="LN",
        model_name=BYTE_LM_NAME,
        device=device,
        seed=seed,
    )


def is_local_model(name: str | Path | None) -> bool:
    folder = Path(name) if name else None
    return (
        folder is not None
        and (folder / MODEL_FILE).is_file()
        and ((folder / CONFIG_FILE).is_file() or (folder / INFO_FILE).is_file())
    )


def _local_config(folder: Path, device: str) -> Any:
    import torch
    from transformer_lens import HookedTransformerConfig

    if (folder / CONFIG_FILE).is_file():
        fields = json.loads((folder / CONFIG_FILE).read_text())
        if isinstance(fields.get("dtype"), str):
            fields["dtype"] = getattr(torch, fields["dtype"].removeprefix("torch."))
        return HookedTransformerConfig.from_dict({**fields, "device": device})
    lm = json.loads((folder / INFO_FILE).read_text())["lm"]
    keys = ("n_layers", "d_model", "d_head", "n_ctx", "seed")
    return byte_lm_config(**{k: lm[k] for k in keys if k in lm}, device=device)


def load_local_model(folder: str | Path, device: str = "cpu") -> Any:
    """The HookedTransformer saved in `folder` (frozen, in eval mode)."""
    import torch
    from transformer_lens import HookedTransformer

    folder = Path(folder)
    try:
        model = HookedTransformer(_local_config(folder, device))
        state = torch.load(folder / MODEL_FILE, weights_only=True, map_location=device)
        model.load_state_dict(state)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        detail = " ".join(str(err).split())[:300]
        raise ValueError(f"model folder {folder}: cannot load it ({detail})") from None
    return model.requires_grad_(False).eval()


def save_local_model(model: Any, folder: str | Path) -> None:
    """`model.pt` + `config.json`, the folder `load_local_model` (and `train`) read."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, folder / MODEL_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(model.cfg.to_dict(), indent=2, default=str))


def _known_names() -> list[str]:
    from transformer_lens import loading_from_pretrained as tl

    names = list(tl.OFFICIAL_MODEL_NAMES)
    names += [alias for aliases in tl.MODEL_ALIASES.values() for alias in aliases]
    return names


def unknown_model(name: str, field: str = "model_name") -> ValueError:
    """The one-line error for a name that is neither a model folder nor known to
    TransformerLens, naming the nearest known names."""
    if Path(name).is_dir():
        return ValueError(
            f"{field}={name!r} is a folder without {MODEL_FILE} + {CONFIG_FILE} (or the "
            f"quickstart's {INFO_FILE}), not a model folder"
        )
    lowered = {n.lower(): n for n in _known_names()}
    near = difflib.get_close_matches(name.lower(), list(lowered), n=4, cutoff=0.6)
    hint = (
        f"nearest: {', '.join(lowered[n] for n in near)}"
        if near
        else "TransformerLens's names are in transformer_lens.loading.OFFICIAL_MODEL_NAMES"
    )
    return ValueError(
        f"{field}={name!r} is neither a TransformerLens model name nor a local model folder "
        f"({MODEL_FILE} + {CONFIG_FILE}); {hint}"
    )


def check_model_name(name: str, field: str = "model_name") -> None:
    """A local model folder or a name TransformerLens knows (ignoring case, as it does)."""
    if is_local_model(name):
        return
    if Path(name).is_dir() or name.lower() not in {n.lower() for n in _known_names()}:
        raise unknown_model(name, field)


def load_model(
    model_class_name: str,
    model_name: str,
    device: Any = None,
    model_from_pretrained_kwargs: dict[str, Any] | None = None,
    *,
    field: str = "model_name",
    **kwargs: Any,
) -> Any:
    """SAELens's `load_model`, or a local model folder for a HookedTransformer; `field` names
    the setting in the error for an unknown name."""
    if model_class_name == "HookedTransformer" and is_local_model(model_name):
        return load_local_model(model_name, device=str(device or "cpu"))
    from sae_lens.load_model import load_model as saelens_load_model

    try:
        return saelens_load_model(
            model_class_name,
            model_name,
            device=device,
            model_from_pretrained_kwargs=model_from_pretrained_kwargs,
            **kwargs,
        )
    except ValueError as err:  # TransformerLens lists every model it knows, in one message
        if "Valid official model names" in str(err):
            raise unknown_model(model_name, field) from None
        raise
