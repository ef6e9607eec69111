"""Dictionary geometry of SAEs: how close each latent's direction is to other directions.

The paper (Braun et al. 2024, "Metrics the paper reports", Geometry) compares, for every
*alive* latent, the max cosine similarity of its decoder direction with

* the other directions of the same SAE (``max_cosine_within``),
* the directions of another SAE, e.g. e2e -> local or seed 0 -> seed 1
  (``max_cosine_cross``; several A latents may pick the same B latent, the reference's
  "double-counting" max),
* and, stricter, a one-to-one matching in which each B latent is used at most once
  (``one_to_one_cosine``).

``compare_saes`` reports all three for decoder directions (rows of ``W_dec``) and, beside
them, encoder directions (columns of ``W_enc``). ``compare_seeds`` runs it on every pair of
seeds and ``plot_geometry`` draws the histograms.

Memory. Directions are normalised to unit rows in float32 (fp16/bf16 inputs are upcast) on
``device`` (default: CUDA when available, else the input's device). Similarities are never
materialised as a full ``n_a x n_b`` matrix except in the dense one-to-one path, which only
runs when that matrix fits ``dense_limit_bytes``. Otherwise peak memory is
``O(n * d)`` for the normalised directions plus ``O(chunk_size * n)`` for one block of
similarities plus ``O(n * top_k)`` for matching candidates; 46080 x 46080 with the defaults
needs about 0.2 GB per block instead of 8.5 GB.

Exactness. ``max_cosine_within`` and ``max_cosine_cross`` are exact (chunked max, float32
matmul at "highest" precision, so TF32 settings do not leak in). ``one_to_one_cosine`` is
exact (Hungarian, ``scipy.optimize.linear_sum_assignment``) when the dense matrix fits the
budget or ``top_k`` covers every column; otherwise it is the optimum over each row's
``top_k`` candidates, which equals the exact optimum whenever every row's optimal partner is
among its candidates; see ``one_to_one_cosine`` for the fallback rounds. ``Matches.exact``
records which case applied.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from sae_lens_e2e.atomic import atomic_file

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from sae_lens import SAE

DEFAULT_CHUNK_SIZE = 1024
DEFAULT_TOP_K = 32
DEFAULT_DENSE_LIMIT_BYTES = 256 * 2**20  # float64 matrix; ~5800 x 5800, a few s of Hungarian
DEFAULT_MAX_ROUNDS = 4

Device = str | torch.device | None
Method = Literal["auto", "dense", "sparse"]


# ----------------------------------------------------------------------------- results


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


# ----------------------------------------------------------------------------- helpers


def _resolve_device(W: torch.Tensor, device: Device) -> torch.device:
    """Explicit device, else CUDA when present (the n^2 work is matmul-bound), else W's."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda") if torch.cuda.is_available() else W.device


def _check_matrix(W: torch.Tensor, name: str) -> None:
    if not isinstance(W, torch.Tensor) or W.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D tensor [n_latents, d], got {getattr(W, 'shape', W)}"
        )


def _check_same_dim(W_a: torch.Tensor, W_b: torch.Tensor) -> None:
    _check_matrix(W_a, "W_a")
    _check_matrix(W_b, "W_b")
    if W_a.shape[1] != W_b.shape[1]:
        raise ValueError(
            f"direction dimension mismatch: W_a has d={W_a.shape[1]}, W_b has d={W_b.shape[1]}"
        )


def _alive_index(n: int, alive: torch.Tensor | None) -> torch.Tensor:
    """Indices of alive latents (all when ``alive`` is None) as a CPU int64 tensor."""
    if alive is None:
        return torch.arange(n)
    alive = torch.as_tensor(alive)
    if alive.dtype != torch.bool or alive.shape != (n,):
        raise ValueError(
            f"alive must be a bool mask of shape ({n},), got {alive.dtype} {tuple(alive.shape)}"
        )
    return alive.cpu().nonzero().squeeze(1)


def _unit_rows(W: torch.Tensor, index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Selected rows as float32 unit vectors; zero rows stay zero (cosine 0 to everything)."""
    rows = W.detach()[index.to(W.device)]
    return F.normalize(rows.to(device=device, dtype=torch.float32), dim=1)


def _take(X: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    return X[torch.from_numpy(np.ascontiguousarray(idx)).to(X.device)]


@contextlib.contextmanager
def _highest_matmul_precision() -> Iterator[None]:
    """TF32 would cost ~1e-3 of cosine, enough to blur near-duplicates; force full fp32."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def _clamp_cos(v: torch.Tensor) -> torch.Tensor:
    """Clamp rounding overshoot to [-1, 1] but keep -inf (the excluded-self marker)."""
    return torch.where(torch.isneginf(v), v, v.clamp(-1.0, 1.0))


def _chunked_topk(
    X: torch.Tensor, Y: torch.Tensor, k: int, chunk_size: int, exclude_diagonal: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosines of each row of X against the rows of Y, one row block at a time.

    Peak extra memory is one ``chunk_size x len(Y)`` block. With ``exclude_diagonal``
    (X is Y) a row never matches itself. Returns CPU (values, indices), each [len(X), k].
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    vals, idxs = [], []
    with _highest_matmul_precision():
        for start in range(0, len(X), chunk_size):
            sims = X[start : start + chunk_size] @ Y.T
            if exclude_diagonal:
                r = torch.arange(sims.shape[0], device=sims.device)
                sims[r, r + start] = float("-inf")
            v, i = sims.topk(k, dim=1)
            vals.append(_clamp_cos(v).cpu())
            idxs.append(i.cpu())
    return torch.cat(vals), torch.cat(idxs)


def _unmatched(source: torch.Tensor, exact: bool = True) -> Matches:
    n = len(source)
    return Matches(source, torch.full((n,), -1), torch.full((n,), float("nan")), exact)


def _max_matches(
    X: torch.Tensor,
    Y: torch.Tensor,
    source: torch.Tensor,
    target_index: torch.Tensor,
    chunk_size: int,
    exclude_diagonal: bool,
) -> Matches:
    if len(X) == 0 or len(Y) <= int(exclude_diagonal):
        return _unmatched(source)
    v, i = _chunked_topk(X, Y, 1, chunk_size, exclude_diagonal)
    return Matches(source, target_index[i[:, 0]], v[:, 0])


def _rowwise_cos(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """cos(X[i], Y[i]) for paired unit rows."""
    return _clamp_cos((X * Y).sum(dim=1)).cpu()


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
    _check_matrix(W, "W")
    index = _alive_index(len(W), alive)
    X = _unit_rows(W, index, _resolve_device(W, device))
    return _max_matches(X, X, index, index, chunk_size, exclude_diagonal=True)


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
    _check_same_dim(W_a, W_b)
    dev = _resolve_device(W_a, device)
    ia, ib = _alive_index(len(W_a), alive_a), _alive_index(len(W_b), alive_b)
    X, Y = _unit_rows(W_a, ia, dev), _unit_rows(W_b, ib, dev)
    return _max_matches(X, Y, ia, ib, chunk_size, exclude_diagonal=False)


# ----------------------------------------------------------------------------- one-to-one


def _fits_dense(n_rows: int, n_cols: int, limit_bytes: int) -> bool:
    return n_rows * n_cols * 8 <= limit_bytes


def _dense_similarity(R: torch.Tensor, C: torch.Tensor, chunk_size: int) -> np.ndarray:
    """Full float64 cosine matrix, filled block by block (only called within the budget)."""
    out = np.empty((len(R), len(C)), dtype=np.float64)
    with _highest_matmul_precision():
        for start in range(0, len(R), chunk_size):
            block = R[start : start + chunk_size] @ C.T
            out[start : start + len(block)] = block.double().cpu().numpy()
    return out


def _dense_assignment(R: torch.Tensor, C: torch.Tensor, chunk_size: int) -> np.ndarray:
    """Exact max-total-cosine matching (Hungarian); len(R) <= len(C), so every row matches."""
    rows, cols = linear_sum_assignment(_dense_similarity(R, C, chunk_size), maximize=True)
    out = np.empty(len(R), dtype=np.int64)
    out[rows] = cols
    return out


def _candidate_assignment(R: torch.Tensor, C: torch.Tensor, k: int, chunk_size: int) -> np.ndarray:
    """Max-weight matching on each row's top-k candidates; -1 for rows left unmatched.

    Cost of a candidate edge is ``2 - cos`` in [1, 3]. Every row also gets a private dummy
    column of cost ``2 n + 4``: a full matching then always exists, and since one more real
    edge always saves more than any rearrangement of real edges can cost, the solver first
    maximises the number of real matches, then the total cosine among those.
    """
    vals, idx = _chunked_topk(R, C, k, chunk_size)
    n, n_c = len(R), len(C)
    rows = np.concatenate([np.repeat(np.arange(n), k), np.arange(n)])
    cols = np.concatenate([idx.numpy().ravel(), n_c + np.arange(n)])
    data = np.concatenate([2.0 - vals.double().numpy().ravel(), np.full(n, 2.0 * n + 4.0)])
    graph = csr_matrix((data, (rows, cols)), shape=(n, n_c + n))
    r, c = min_weight_full_bipartite_matching(graph)
    out = np.full(n, -1, dtype=np.int64)
    out[r] = c
    out[out >= n_c] = -1
    return out


def _greedy_fill(
    R: torch.Tensor, C: torch.Tensor, col: np.ndarray, free_rows: np.ndarray, free_cols: np.ndarray
) -> None:
    """Last resort: each leftover row takes its best still-free column, in index order."""
    Cf = _take(C, free_cols)
    taken = torch.zeros(len(free_cols), dtype=torch.bool, device=C.device)
    with _highest_matmul_precision():
        for r in free_rows:
            sims = (R[int(r)] @ Cf.T).masked_fill(taken, float("-inf"))
            j = int(sims.argmax())
            col[r] = free_cols[j]
            taken[j] = True


def _sparse_assignment(
    R: torch.Tensor,
    C: torch.Tensor,
    top_k: int,
    dense_limit_bytes: int,
    max_rounds: int,
    chunk_size: int,
) -> np.ndarray:
    """Candidate matching in rounds on the still-unmatched rows and still-free columns.

    Each round matches at least one row. After a round the remainder is solved exactly
    (Hungarian) once it fits the dense budget; otherwise the next round doubles k. Rows
    still left after ``max_rounds`` are filled greedily.
    """
    col = np.full(len(R), -1, dtype=np.int64)
    free_rows, free_cols = np.arange(len(R)), np.arange(len(C))
    k = top_k
    for _ in range(max_rounds):
        sub = _candidate_assignment(
            _take(R, free_rows), _take(C, free_cols), min(k, len(free_cols)), chunk_size
        )
        hit = sub >= 0
        col[free_rows[hit]] = free_cols[sub[hit]]
        free_rows = free_rows[~hit]
        free_cols = np.setdiff1d(free_cols, col[col >= 0], assume_unique=True)
        if len(free_rows) == 0:
            return col
        if _fits_dense(len(free_rows), len(free_cols), dense_limit_bytes):
            sub = _dense_assignment(_take(R, free_rows), _take(C, free_cols), chunk_size)
            col[free_rows] = free_cols[sub]
            return col
        k *= 2
    _greedy_fill(R, C, col, free_rows, free_cols)
    return col


def _match_rows(
    R: torch.Tensor,
    C: torch.Tensor,
    method: Method,
    top_k: int,
    dense_limit_bytes: int,
    max_rounds: int,
    chunk_size: int,
) -> tuple[np.ndarray, bool]:
    """Column for every row (len(R) <= len(C)) and whether the matching is provably optimal."""
    if method not in ("auto", "dense", "sparse"):
        raise ValueError(f"method must be 'auto', 'dense' or 'sparse', got {method!r}")
    if top_k < 1 or max_rounds < 1:
        raise ValueError(f"top_k and max_rounds must be >= 1, got {top_k} and {max_rounds}")
    dense = method == "dense" or (
        method == "auto" and _fits_dense(len(R), len(C), dense_limit_bytes)
    )
    if dense:
        return _dense_assignment(R, C, chunk_size), True
    col = _sparse_assignment(R, C, top_k, dense_limit_bytes, max_rounds, chunk_size)
    return col, top_k >= len(C)


def one_to_one_cosine(
    W_a: torch.Tensor,
    W_b: torch.Tensor,
    alive_a: torch.Tensor | None = None,
    alive_b: torch.Tensor | None = None,
    *,
    method: Method = "auto",
    top_k: int = DEFAULT_TOP_K,
    dense_limit_bytes: int = DEFAULT_DENSE_LIMIT_BYTES,
    max_rounds: int = DEFAULT_MAX_ROUNDS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: Device = None,
) -> Matches:
    """One-to-one matching of alive A latents to alive B latents maximising total cosine.

    Every latent of the smaller side is matched exactly once (``min(n_a, n_b)`` pairs);
    surplus A latents get target -1 / cosine NaN.

    * ``dense`` (``auto`` picks it when the float64 similarity matrix fits
      ``dense_limit_bytes``): exact Hungarian assignment. Cost is O(n^3) time too, which is
      why 46080 x 46080 goes the sparse way.
    * ``sparse``: keep each row's ``top_k`` most similar columns (computed chunk-wise) and
      solve the maximum-weight full matching on that graph
      (``scipy.sparse.csgraph.min_weight_full_bipartite_matching``). This is the exact
      optimum whenever every row's optimal partner is among its candidates (always when
      ``top_k >= n_cols``; then ``exact`` is True). Rows that the candidate graph cannot
      match are re-solved on the free columns: exactly once the remainder fits the dense
      budget, else with doubled k, and after ``max_rounds`` greedily. The result is always a
      valid one-to-one matching; its total is a lower bound on the optimum and the sum of
      ``max_cosine_cross`` an upper bound.
    """
    _check_same_dim(W_a, W_b)
    dev = _resolve_device(W_a, device)
    ia, ib = _alive_index(len(W_a), alive_a), _alive_index(len(W_b), alive_b)
    if len(ia) == 0 or len(ib) == 0:
        return _unmatched(ia)
    X, Y = _unit_rows(W_a, ia, dev), _unit_rows(W_b, ib, dev)
    transpose = len(X) > len(Y)  # rows must be the smaller side so all of them match
    R, C = (Y, X) if transpose else (X, Y)
    col, exact = _match_rows(R, C, method, top_k, dense_limit_bytes, max_rounds, chunk_size)
    cos = _rowwise_cos(R, _take(C, col))
    if not transpose:
        return Matches(ia, ib[torch.from_numpy(col)], cos, exact)
    target = torch.full((len(ia),), -1)
    cosine = torch.full((len(ia),), float("nan"))
    target[torch.from_numpy(col)] = ib
    cosine[torch.from_numpy(col)] = cos
    return Matches(ia, target, cosine, exact)


# ----------------------------------------------------------------------------- SAE level


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
    return SAE.load_from_disk(path, device=device)


# ----------------------------------------------------------------------------- plotting

_PANELS = (("within", "within SAE"), ("cross", "to other SAE (max)"), ("one_to_one", "one-to-one"))


def _draw_panel(ax: Axes, parts: dict[str, Matches | None], title: str, bins: int) -> None:
    series = {label: m.matched().numpy() for label, m in parts.items() if m is not None}
    series = {label: v for label, v in series.items() if v.size}
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("max cosine similarity")
    if not series:
        ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
        return
    lo = min(0.0, *(float(v.min()) for v in series.values()))
    for i, (label, vals) in enumerate(series.items()):
        label_text = f"{label} (mean {vals.mean():.3f}, n={vals.size})"
        ax.hist(
            vals,
            bins=bins,
            range=(lo, 1.0),
            histtype="step",
            density=True,
            color=f"C{i}",
            label=label_text,
        )
    ax.legend(fontsize=7)


def plot_geometry(
    results: Mapping[str, GeometryResult], path: str | os.PathLike[str], *, bins: int = 50
) -> Path:
    """Histogram PNG: rows decoder/encoder, columns within/cross max/one-to-one, one colour
    per result label. Written atomically (temp file + rename) so readers never see half a PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(15, 8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(_PANELS), squeeze=False)
    for row, kind in enumerate(("decoder", "encoder")):
        for col, (attr, title) in enumerate(_PANELS):
            parts = {label: getattr(getattr(r, kind), attr) for label, r in results.items()}
            _draw_panel(axes[row][col], parts, f"{kind}: {title}", bins)
    return _save_atomic(fig, Path(path))


def _save_atomic(fig: Figure, path: Path) -> Path:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path
