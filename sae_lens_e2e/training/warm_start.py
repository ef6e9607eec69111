"""Warm start: any `standard`, `topk` or `jumprelu` SAELens SAE as an e2e SAE's exact start.

Sources: an SAE object, a saved SAE folder (`from_pretrained_path`) or a SAELens release +
SAE id (`warm_start_release` / `warm_start_sae_id`, read by `SAE.from_pretrained`, e.g. a
Gemma Scope release). The e2e SAE computes the same function before its first step: the
input shift `apply_b_dec_to_input` folds into b_enc, and decoder row norms move into the
encoder (and the JumpReLU threshold), because the e2e forward normalises decoder rows.
What cannot be expressed exactly is refused before any work, naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sae_lens.saes.sae import SAE

from sae_lens_e2e.sae_files import load_sae_folder
from sae_lens_e2e.training.config import E2ETrainingMixin

# Source architecture -> the e2e architecture that represents it exactly.
E2E_ARCHITECTURE = {"standard": "e2e_standard", "topk": "e2e_topk", "jumprelu": "e2e_jumprelu"}


def _name(sae: SAE[Any]) -> str:
    return sae.cfg.metadata.hook_name or sae.cfg.architecture()


def _architecture(sae: SAE[Any]) -> str:
    """The stock architecture whose function `sae` computes (an e2e SAE: what it saves as)."""
    if isinstance(sae.cfg, E2ETrainingMixin):
        return sae.cfg.get_inference_config_class().architecture()
    return sae.cfg.architecture()


def check_representable(source: SAE[Any], target_cfg: Any, what: str = "warm-start SAE") -> None:
    """Raise ValueError naming the first field that keeps `source` from being `target_cfg`."""
    arch = _architecture(source)
    if E2E_ARCHITECTURE.get(arch) != target_cfg.architecture():
        supported = ", ".join(f"{s} -> {t}" for s, t in E2E_ARCHITECTURE.items())
        raise ValueError(
            f"{what}: architecture={arch!r} cannot start a {target_cfg.architecture()} SAE "
            f"(supported: {supported})"
        )
    fields = ["d_in", "d_sae"] + (["k"] if arch == "topk" else [])
    for field in fields:
        if getattr(source.cfg, field) != getattr(target_cfg, field):
            raise ValueError(
                f"{what}: {field}={getattr(source.cfg, field)}, but the config says "
                f"{field}={getattr(target_cfg, field)}"
            )
    for field in ("normalize_activations", "reshape_activations"):
        if getattr(source.cfg, field) != "none":
            raise ValueError(
                f"{what}: {field}={getattr(source.cfg, field)!r} cannot be folded into the "
                "weights (expected 'none')"
            )
    unit_decoder_weights(source, what)


@torch.no_grad()
def unit_decoder_weights(sae: SAE[Any], what: str | None = None) -> dict[str, torch.Tensor]:
    """The same function with unit decoder rows and no input shift, computed in float64.

    ReLU and JumpReLU commute with a positive per-latent scale s: relu(s*p) * (s*p > s*t) =
    s * relu(p) * (p > t); so do TopK on rescaled acts. A negative JumpReLU threshold acts as
    0 (stock JumpReLU applies ReLU first), which the e2e forward needs.
    """
    cfg = sae.cfg
    what = what or f"SAE at {_name(sae)}"
    if cfg.normalize_activations != "none" or cfg.reshape_activations != "none":
        raise ValueError(f"{what}: activation normalisation/reshaping cannot be folded")
    W_enc, b_enc, W_dec, b_dec = (
        getattr(sae, n).detach().double() for n in ("W_enc", "b_enc", "W_dec", "b_dec")
    )
    if isinstance(cfg, E2ETrainingMixin):  # an e2e SAE normalises its rows in the forward
        W_dec = F.normalize(W_dec, dim=-1)
    if cfg.apply_b_dec_to_input:
        b_enc = b_enc - b_dec @ W_enc
    norms = W_dec.norm(dim=1)
    scale = torch.where(norms > 0, norms, torch.ones_like(norms))
    # Without rescaling, moving norms into the encoder would change which latents TopK picks.
    topk_unscaled = _architecture(sae) == "topk" and not getattr(
        cfg, "rescale_acts_by_decoder_norm", False
    )
    if topk_unscaled and not torch.allclose(scale, torch.ones_like(scale), atol=1e-4):
        raise ValueError(
            f"{what}: rescale_acts_by_decoder_norm=False with decoder rows that are not unit "
            "norm; TopK would pick other latents after folding, so it is not exact"
        )
    weights = {
        "W_enc": W_enc * scale,
        "b_enc": b_enc * scale,
        "W_dec": W_dec / scale[:, None],
        "b_dec": b_dec,
    }
    if _architecture(sae) == "jumprelu":
        weights["threshold"] = sae.threshold.detach().double().clamp_min(0) * scale
    return weights


def load_sources(
    runner_cfg: Any, override_sae: SAE[Any] | dict[str, SAE[Any]] | None, device: str
) -> dict[str, SAE[Any]]:
    """Hook name -> source SAE, from `override_sae`, the folder or the release; checked."""
    sae_cfg = runner_cfg.sae
    release, sae_id = sae_cfg.warm_start_release, sae_cfg.warm_start_sae_id
    if release is not None and runner_cfg.from_pretrained_path is not None:
        raise ValueError(
            "give one warm start: from_pretrained_path or sae.warm_start_release, not both"
        )
    if isinstance(override_sae, dict):
        sources = dict(override_sae)
    elif override_sae is not None:
        sources = {runner_cfg.hook_name: override_sae}
    elif runner_cfg.from_pretrained_path is not None:
        path = Path(runner_cfg.from_pretrained_path)
        if not path.exists():
            raise FileNotFoundError(f"from_pretrained_path {path} does not exist")
        sources = {runner_cfg.hook_name: load_sae_folder(path, device=device)}
    elif release is not None:
        sources = {runner_cfg.hook_name: SAE.from_pretrained(release, sae_id, device=device)}
    else:
        return {}
    for hook, source in sources.items():
        check_representable(source, sae_cfg, what=f"warm-start SAE for {hook}")
    return sources


@torch.no_grad()
def copy_into(target: Any, source: SAE[Any]) -> None:
    """Set `target`'s parameters to `source`'s function (see `unit_decoder_weights`)."""
    check_representable(source, target.cfg)
    for name, value in unit_decoder_weights(source).items():
        param = getattr(target, name)
        param.data.copy_(value.to(param.dtype))
