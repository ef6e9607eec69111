"""Geometry at the SAE level: decoder/encoder directions, alive latents, SAE and seed comparisons."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sae_lens_e2e.analysis.geometry.one_to_one import one_to_one_cosine
from sae_lens_e2e.analysis.geometry.results import (
    DEFAULT_CHUNK_SIZE,
    Device,
    DirectionGeometry,
    GeometryResult,
)
from sae_lens_e2e.analysis.geometry.similarity import max_cosine_cross, max_cosine_within
from sae_lens_e2e.sae_files import load_sae_folder

if TYPE_CHECKING:
    from sae_lens import SAE


def decoder_directions(sae: SAE) -> torch.Tensor:
    """Rows of ``W_dec`` [d_sae, d_in]: the direction each latent writes."""
    return sae.W_dec.detach()


def encoder_directions(sae: SAE) -> torch.Tensor:
    """Columns of ``W_enc`` as rows [d_sae, d_in]: the direction each latent reads."""
    return sae.W_enc.detach().T


def alive_latents_from_counts(counts: torch.Tensor, min_count: int = 1) -> torch.Tensor:
    """Alive mask from firing counts; the paper's alive = fires >= once in 500k tokens."""
    return torch.as_tensor(counts) >= min_count


def alive_latents_from_sparsity(
    sparsity: torch.Tensor,
    *,
    log10: bool = False,
    min_frequency: float = 0.0,
    eps: float = 1e-10,
) -> torch.Tensor:
    """Alive mask from firing frequencies (fraction of tokens a latent is non-zero).

    With ``log10=True`` the input is SAELens' ``sparsity.safetensors`` format,
    ``log10(freq + eps)``, where never-firing latents sit at ``log10(eps)`` = -10; the small
    margin keeps float32 rounding of that floor from counting as alive.
    """
    s = torch.as_tensor(sparsity).double()
    if log10:
        return s > float(np.log10(min_frequency + eps)) + 1e-4
    return s > min_frequency


def _d_in(sae: SAE) -> tuple[int, int]:
    return int(decoder_directions(sae).shape[1]), int(encoder_directions(sae).shape[1])


def _check_d_in(sae_a: SAE, sae_b: SAE) -> None:
    (dec_a, enc_a), (dec_b, enc_b) = _d_in(sae_a), _d_in(sae_b)
    if (dec_a, enc_a) != (dec_b, enc_b):
        a = dec_a if dec_a == enc_a else f"{enc_a} (encoder) / {dec_a} (decoder)"
        b = dec_b if dec_b == enc_b else f"{enc_b} (encoder) / {dec_b} (decoder)"
        raise ValueError(
            f"d_in mismatch: sae_a has d_in={a}, sae_b has d_in={b}; "
            "directions can only be compared in the same activation space"
        )


def compare_directions(
    W_a: torch.Tensor,
    W_b: torch.Tensor | None = None,
    alive_a: torch.Tensor | None = None,
    alive_b: torch.Tensor | None = None,
    *,
    one_to_one: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: Device = None,
    **matching: Any,
) -> DirectionGeometry:
    """Within-A max cosine, and with B: cross max and (optionally) one-to-one cosine.

    ``matching`` is forwarded to ``one_to_one_cosine`` (method, top_k, dense_limit_bytes,
    max_rounds).
    """
    common = {"chunk_size": chunk_size, "device": device}
    within = max_cosine_within(W_a, alive_a, **common)
    if W_b is None:
        return DirectionGeometry(within)
    cross = max_cosine_cross(W_a, W_b, alive_a, alive_b, **common)
    if not one_to_one:
        return DirectionGeometry(within, cross)
    return DirectionGeometry(
        within, cross, one_to_one_cosine(W_a, W_b, alive_a, alive_b, **common, **matching)
    )


def compare_saes(
    sae_a: SAE,
    sae_b: SAE | None = None,
    alive_a: torch.Tensor | None = None,
    alive_b: torch.Tensor | None = None,
    *,
    one_to_one: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: Device = None,
    **matching: Any,
) -> GeometryResult:
    """Geometry of any SAELens SAE, and against ``sae_b`` when given, for both direction kinds.

    Within-SAE numbers are for A only (call again with B first for B's). Alive masks are
    shared by decoder and encoder, so both describe the same latents. Cross-type (e2e ->
    local) and cross-seed comparisons are this call on the two SAEs; see ``compare_seeds``.
    """
    if sae_b is not None:
        _check_d_in(sae_a, sae_b)
    kwargs = {"one_to_one": one_to_one, "chunk_size": chunk_size, "device": device, **matching}

    def part(directions: Callable[[SAE], torch.Tensor]) -> DirectionGeometry:
        W_b = None if sae_b is None else directions(sae_b)
        return compare_directions(directions(sae_a), W_b, alive_a, alive_b, **kwargs)

    return GeometryResult(decoder=part(decoder_directions), encoder=part(encoder_directions))


def compare_seeds(
    saes: Mapping[str, SAE],
    alive: Mapping[str, torch.Tensor] | None = None,
    **kwargs: Any,
) -> dict[str, GeometryResult]:
    """Cross-seed comparison: ``compare_saes`` on every pair, keyed ``"<a> vs <b>"``.

    Pass SAEs of the same type, layer and hyperparameters differing only in seed. The
    paper's finding is that e2e SAEs are less consistent across seeds than local ones.
    """
    alive = alive or {}
    return {
        f"{a} vs {b}": compare_saes(saes[a], saes[b], alive.get(a), alive.get(b), **kwargs)
        for a, b in itertools.combinations(saes, 2)
    }


def load_sae(
    path_or_release: str | os.PathLike[str], sae_id: str | None = None, *, device: str = "cpu"
) -> SAE:
    """Load any SAELens SAE: a local folder (``SAE.load_from_disk``, e.g. a converted paper
    checkpoint) or, with ``sae_id``, a pretrained release (``SAE.from_pretrained``)."""
    from sae_lens import SAE

    if sae_id is not None:
        return SAE.from_pretrained(str(path_or_release), sae_id, device=device)
    path = Path(path_or_release)
    if not (path / "cfg.json").is_file():
        raise FileNotFoundError(
            f"no SAELens SAE folder at {path} (expected {path / 'cfg.json'}); "
            "to load from a SAELens release pass sae_id=..."
        )
    return load_sae_folder(path, device=device)
