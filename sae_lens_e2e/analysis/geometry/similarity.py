"""Chunked cosine similarity of unit directions, and the max-cosine metrics.

``max_cosine_within`` and ``max_cosine_cross`` are exact: a chunked max over float32 matmuls at
"highest" precision (TF32 settings do not leak in), never materialising the n_a x n_b matrix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from sae_lens_e2e.analysis.geometry.results import DEFAULT_CHUNK_SIZE, Device, Matches

if TYPE_CHECKING:
    pass


# ----------------------------------------------------------------------------- helpers


def resolve_device(W: torch.Tensor, device: Device) -> torch.device:
    """Explicit device, else CUDA when present (the n^2 work is matmul-bound), else W's."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda") if torch.cuda.is_available() else W.device


def check_matrix(W: torch.Tensor, name: str) -> None:
    if not isinstance(W, torch.Tensor) or W.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D tensor [n_latents, d], got {getattr(W, 'shape', W)}"
        )


def check_same_dim(W_a: torch.Tensor, W_b: torch.Tensor) -> None:
    check_matrix(W_a, "W_a")
    check_matrix(W_b, "W_b")
    if W_a.shape[1] != W_b.shape[1]:
        raise ValueError(
            f"direction dimension mismatch: W_a has d={W_a.shape[1]}, W_b has d={W_b.shape[1]}"
        )


def alive_index(n: int, alive: torch.Tensor | None) -> torch.Tensor:
    """Indices of alive latents (all when ``alive`` is None) as a CPU int64 tensor."""
    if alive is None:
        return torch.arange(n)
    alive = torch.as_tensor(alive)
    if alive.dtype != torch.bool or alive.shape != (n,):
        raise ValueError(
            f"alive must be a bool mask of shape ({n},), got {alive.dtype} {tuple(alive.shape)}"
        )
    return alive.cpu().nonzero().squeeze(1)


def unit_rows(W: torch.Tensor, index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Selected rows as float32 unit vectors; zero rows stay zero (cosine 0 to everything)."""
    rows = W.detach()[index.to(W.device)]
    return F.normalize(rows.to(device=device, dtype=torch.float32), dim=1)


def take_rows(X: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    return X[torch.from_numpy(np.ascontiguousarray(idx)).to(X.device)]


@contextlib.contextmanager
def highest_matmul_precision() -> Iterator[None]:
    """TF32 would cost ~1e-3 of cosine, enough to blur near-duplicates; force full fp32."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def clamp_cos(v: torch.Tensor) -> torch.Tensor:
    """Clamp rounding overshoot to [-1, 1] but keep -inf (the excluded-self marker)."""
    return torch.where(torch.isneginf(v), v, v.clamp(-1.0, 1.0))


def chunked_topk(
    X: torch.Tensor, Y: torch.Tensor, k: int, chunk_size: int, exclude_diagonal: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosines of each row of X against the rows of Y, one row block at a time.

    Peak extra memory is one ``chunk_size x len(Y)`` block. With ``exclude_diagonal``
    (X is Y) a row never matches itself. Returns CPU (values, indices), each [len(X), k].
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    vals, idxs = [], []
    with highest_matmul_precision():
        for start in range(0, len(X), chunk_size):
            sims = X[start : start + chunk_size] @ Y.T
            if exclude_diagonal:
                r = torch.arange(sims.shape[0], device=sims.device)
                sims[r, r + start] = float("-inf")
            v, i = sims.topk(k, dim=1)
            vals.append(clamp_cos(v).cpu())
            idxs.append(i.cpu())
    return torch.cat(vals), torch.cat(idxs)


def unmatched(source: torch.Tensor, exact: bool = True) -> Matches:
    n = len(source)
    return Matches(source, torch.full((n,), -1), torch.full((n,), float("nan")), exact)


def max_matches(
    X: torch.Tensor,
    Y: torch.Tensor,
    source: torch.Tensor,
    target_index: torch.Tensor,
    chunk_size: int,
    exclude_diagonal: bool,
) -> Matches:
    if len(X) == 0 or len(Y) <= int(exclude_diagonal):
        return unmatched(source)
    v, i = chunked_topk(X, Y, 1, chunk_size, exclude_diagonal)
    return Matches(source, target_index[i[:, 0]], v[:, 0])


def rowwise_cos(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """cos(X[i], Y[i]) for paired unit rows."""
    return clamp_cos((X * Y).sum(dim=1)).cpu()


# ----------------------------------------------------------------------------- max cosine


def max_cosine_within(
    W: torch.Tensor,
    alive: torch.Tensor | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: Device = None,
) -> Matches:
    """For each alive latent, the max cosine to any *other* alive latent of the same SAE.

    ``W`` holds one direction per row ([n_latents, d]); dead latents (``alive`` False) are
    neither sources nor targets, as in the paper. Exact; O(chunk_size * n) memory.
    """
    check_matrix(W, "W")
    index = alive_index(len(W), alive)
    X = unit_rows(W, index, resolve_device(W, device))
    return max_matches(X, X, index, index, chunk_size, exclude_diagonal=True)


def max_cosine_cross(
    W_a: torch.Tensor,
    W_b: torch.Tensor,
    alive_a: torch.Tensor | None = None,
    alive_b: torch.Tensor | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: Device = None,
) -> Matches:
    """For each alive latent of A, the max cosine to any alive latent of B.

    Several A latents may pick the same B latent (the reference's double-counting "max");
    use ``one_to_one_cosine`` for the stricter variant. Exact; O(chunk_size * n_b) memory.
    """
    check_same_dim(W_a, W_b)
    dev = resolve_device(W_a, device)
    ia, ib = alive_index(len(W_a), alive_a), alive_index(len(W_b), alive_b)
    X, Y = unit_rows(W_a, ia, dev), unit_rows(W_b, ib, dev)
    return max_matches(X, Y, ia, ib, chunk_size, exclude_diagonal=False)
