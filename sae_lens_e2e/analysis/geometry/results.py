"""Geometry results (per-latent matches, per-direction-kind summaries) and shared defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    pass


DEFAULT_CHUNK_SIZE = 1024
DEFAULT_TOP_K = 32
DEFAULT_DENSE_LIMIT_BYTES = 256 * 2**20  # float64 matrix; ~5800 x 5800, a few s of Hungarian
DEFAULT_MAX_ROUNDS = 4

Device = str | torch.device | None
Method = Literal["auto", "dense", "sparse"]


@dataclass(frozen=True)
class Matches:
    """Best partner of each alive source latent.

    ``source`` and ``target`` are indices into the full (unmasked) SAEs, so they can be used
    directly with ``W_dec``; ``target`` is -1 and ``cosine`` NaN where a latent has no
    partner (no other alive latent, or left over by a one-to-one matching of unequal sizes).
    """

    source: torch.Tensor
    target: torch.Tensor
    cosine: torch.Tensor
    exact: bool = True

    def matched(self) -> torch.Tensor:
        """Cosines of the latents that have a partner."""
        return self.cosine[~torch.isnan(self.cosine)]

    def summary(self) -> dict[str, float]:
        """Mean/median over matched latents, with counts so sizes are never implicit."""
        vals = self.matched().double().numpy()
        empty = vals.size == 0
        return {
            "mean": float("nan") if empty else float(vals.mean()),
            "median": float("nan") if empty else float(np.median(vals)),
            "n": float(len(self.cosine)),
            "unmatched": float(len(self.cosine) - vals.size),
        }


@dataclass(frozen=True)
class DirectionGeometry:
    """Within-SAE, cross (double-counting max) and one-to-one cosines of one direction kind."""

    within: Matches
    cross: Matches | None = None
    one_to_one: Matches | None = None

    def summary(self) -> dict[str, float]:
        """Flat ``"within/mean"``-style summary of the parts that were computed."""
        out: dict[str, float] = {}
        for name in ("within", "cross", "one_to_one"):
            part = getattr(self, name)
            if part is not None:
                out.update({f"{name}/{k}": v for k, v in part.summary().items()})
        return out


@dataclass(frozen=True)
class GeometryResult:
    """Geometry of SAE A (and against SAE B) for decoder and encoder directions."""

    decoder: DirectionGeometry
    encoder: DirectionGeometry

    def summary(self) -> dict[str, float]:
        """Flat ``"decoder/within/mean"``-style summary, ready for logging or JSON."""
        out = {f"decoder/{k}": v for k, v in self.decoder.summary().items()}
        out.update({f"encoder/{k}": v for k, v in self.encoder.summary().items()})
        return out
