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

from sae_lens_e2e.analysis.geometry.one_to_one import one_to_one_cosine
from sae_lens_e2e.analysis.geometry.plot import plot_geometry
from sae_lens_e2e.analysis.geometry.results import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DENSE_LIMIT_BYTES,
    DEFAULT_MAX_ROUNDS,
    DEFAULT_TOP_K,
    DirectionGeometry,
    GeometryResult,
    Matches,
)
from sae_lens_e2e.analysis.geometry.saes import (
    alive_latents_from_counts,
    alive_latents_from_sparsity,
    compare_directions,
    compare_saes,
    compare_seeds,
    decoder_directions,
    encoder_directions,
    load_sae,
)
from sae_lens_e2e.analysis.geometry.similarity import max_cosine_cross, max_cosine_within

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_DENSE_LIMIT_BYTES",
    "DEFAULT_MAX_ROUNDS",
    "DEFAULT_TOP_K",
    "DirectionGeometry",
    "GeometryResult",
    "Matches",
    "alive_latents_from_counts",
    "alive_latents_from_sparsity",
    "compare_directions",
    "compare_saes",
    "compare_seeds",
    "decoder_directions",
    "encoder_directions",
    "load_sae",
    "max_cosine_cross",
    "max_cosine_within",
    "one_to_one_cosine",
    "plot_geometry",
]
