"""One-to-one matching of directions: each B latent used at most once.

Exact (Hungarian, ``scipy.optimize.linear_sum_assignment``) when the dense matrix fits the
budget or ``top_k`` covers every column; otherwise the optimum over each row's ``top_k``
candidates (sparse bipartite matching), with fallback rounds for rows left unmatched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from sae_lens_e2e.analysis.geometry.results import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DENSE_LIMIT_BYTES,
    DEFAULT_MAX_ROUNDS,
    DEFAULT_TOP_K,
    Device,
    Matches,
    Method,
)
from sae_lens_e2e.analysis.geometry.similarity import (
    alive_index,
    check_same_dim,
    chunked_topk,
    highest_matmul_precision,
    resolve_device,
    rowwise_cos,
    take_rows,
    unit_rows,
    unmatched,
)

if TYPE_CHECKING:
    pass


def _fits_dense(n_rows: int, n_cols: int, limit_bytes: int) -> bool:
    return n_rows * n_cols * 8 <= limit_bytes


def _dense_similarity(R: torch.Tensor, C: torch.Tensor, chunk_size: int) -> np.ndarray:
    """Full float64 cosine matrix, filled block by block (only called within the budget)."""
    out = np.empty((len(R), len(C)), dtype=np.float64)
    with highest_matmul_precision():
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
    vals, idx = chunked_topk(R, C, k, chunk_size)
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
    Cf = take_rows(C, free_cols)
    taken = torch.zeros(len(free_cols), dtype=torch.bool, device=C.device)
    with highest_matmul_precision():
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
            take_rows(R, free_rows), take_rows(C, free_cols), min(k, len(free_cols)), chunk_size
        )
        hit = sub >= 0
        col[free_rows[hit]] = free_cols[sub[hit]]
        free_rows = free_rows[~hit]
        free_cols = np.setdiff1d(free_cols, col[col >= 0], assume_unique=True)
        if len(free_rows) == 0:
            return col
        if _fits_dense(len(free_rows), len(free_cols), dense_limit_bytes):
            sub = _dense_assignment(take_rows(R, free_rows), take_rows(C, free_cols), chunk_size)
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
    check_same_dim(W_a, W_b)
    dev = resolve_device(W_a, device)
    ia, ib = alive_index(len(W_a), alive_a), alive_index(len(W_b), alive_b)
    if len(ia) == 0 or len(ib) == 0:
        return unmatched(ia)
    X, Y = unit_rows(W_a, ia, dev), unit_rows(W_b, ib, dev)
    transpose = len(X) > len(Y)  # rows must be the smaller side so all of them match
    R, C = (Y, X) if transpose else (X, Y)
    col, exact = _match_rows(R, C, method, top_k, dense_limit_bytes, max_rounds, chunk_size)
    cos = rowwise_cos(R, take_rows(C, col))
    if not transpose:
        return Matches(ia, ib[torch.from_numpy(col)], cos, exact)
    target = torch.full((len(ia),), -1)
    cosine = torch.full((len(ia),), float("nan"))
    target[torch.from_numpy(col)] = ib
    cosine[torch.from_numpy(col)] = cos
    return Matches(ia, target, cosine, exact)
