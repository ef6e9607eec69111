"""Geometry functions against brute force on small matrices."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from sae_lens_e2e.analysis import geometry as geo


def _unit64(W: torch.Tensor) -> np.ndarray:
    W = W.double().numpy()
    return W / np.linalg.norm(W, axis=1, keepdims=True)


def _cos64(W_a: torch.Tensor, W_b: torch.Tensor) -> np.ndarray:
    return _unit64(W_a) @ _unit64(W_b).T


def _mask(n: int, dead: list[int]) -> torch.Tensor:
    alive = torch.ones(n, dtype=torch.bool)
    alive[dead] = False
    return alive


def _with_duplicates(n: int, d: int, seed: int) -> torch.Tensor:
    """Random rows plus exact copies and exactly parallel (rescaled) rows."""
    W = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    W[3] = W[1] * 2.5
    W[5] = W[0]
    return W


def _assert_matches_consistent(m: geo.Matches, W_a: torch.Tensor, W_b: torch.Tensor) -> None:
    """Reported cosine is the true cosine of the reported pair."""
    ok = m.target >= 0
    cos = _cos64(W_a, W_b)[m.source[ok].numpy(), m.target[ok].numpy()]
    np.testing.assert_allclose(m.cosine[ok].numpy(), cos, atol=1e-5)


# ----------------------------------------------------------------------------- max cosine


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64])
def test_within_matches_brute_force(chunk_size: int) -> None:
    W = _with_duplicates(11, 6, seed=0)
    alive = _mask(11, [2, 9])
    m = geo.max_cosine_within(W, alive, chunk_size=chunk_size)

    idx = alive.nonzero().squeeze(1).numpy()
    S = _cos64(W, W)[np.ix_(idx, idx)]
    np.fill_diagonal(S, -np.inf)
    assert m.source.tolist() == idx.tolist()
    np.testing.assert_allclose(m.cosine.numpy(), S.max(axis=1), atol=1e-5)
    assert (m.target != m.source).all()
    assert set(m.target.tolist()) <= set(idx.tolist())
    _assert_matches_consistent(m, W, W)
    # duplicates and parallel rows are each other's best match at cosine 1
    assert m.cosine[m.source == 1].item() == pytest.approx(1.0, abs=1e-6)
    assert m.cosine[m.source == 5].item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("chunk_size", [2, 5, 100])
def test_cross_matches_brute_force(chunk_size: int) -> None:
    W_a = _with_duplicates(9, 5, seed=1)
    W_b = torch.cat([W_a[:2] * 3.0, torch.randn(11, 5, generator=torch.Generator().manual_seed(2))])
    alive_a, alive_b = _mask(9, [4]), _mask(13, [0, 7])
    m = geo.max_cosine_cross(W_a, W_b, alive_a, alive_b, chunk_size=chunk_size)

    ia, ib = alive_a.nonzero().squeeze(1).numpy(), alive_b.nonzero().squeeze(1).numpy()
    S = _cos64(W_a, W_b)[np.ix_(ia, ib)]
    np.testing.assert_allclose(m.cosine.numpy(), S.max(axis=1), atol=1e-5)
    assert set(m.target.tolist()) <= set(ib.tolist())
    _assert_matches_consistent(m, W_a, W_b)
    # row 1 of A is parallel to alive row 1 of B; row 0's twin (B row 0) is dead
    assert m.target[m.source == 1].item() == 1
    assert m.cosine[m.source == 1].item() == pytest.approx(1.0, abs=1e-6)
    assert m.target[m.source == 0].item() != 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_compute_in_fp32(dtype: torch.dtype) -> None:
    W_a, W_b = torch.randn(7, 4).to(dtype), torch.randn(10, 4).to(dtype)
    m = geo.max_cosine_cross(W_a, W_b, chunk_size=3)
    assert m.cosine.dtype == torch.float32
    np.testing.assert_allclose(m.cosine.numpy(), _cos64(W_a, W_b).max(axis=1), atol=1e-5)


def test_no_partner_gives_nan_and_minus_one() -> None:
    W = torch.randn(4, 3)
    within = geo.max_cosine_within(W, _mask(4, [0, 1, 2]))
    assert within.target.tolist() == [-1] and torch.isnan(within.cosine).all()
    cross = geo.max_cosine_cross(W, W, alive_b=torch.zeros(4, dtype=torch.bool))
    assert (cross.target == -1).all() and cross.summary()["unmatched"] == 4.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="d=3.*d=4"):
        geo.max_cosine_cross(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match="bool mask of shape"):
        geo.max_cosine_within(torch.randn(5, 3), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="2-D"):
        geo.max_cosine_within(torch.randn(5))


# ----------------------------------------------------------------------------- one-to-one


def _brute_one_to_one(S: np.ndarray) -> tuple[float, dict[int, int]]:
    """Best total over all one-to-one matchings of size min(n_a, n_b), by enumeration."""
    n_a, n_b = S.shape
    best, best_pairs = -np.inf, {}
    if n_a <= n_b:
        candidates = (dict(enumerate(p)) for p in itertools.permutations(range(n_b), n_a))
    else:
        candidates = (
            {a: b for b, a in enumerate(p)} for p in itertools.permutations(range(n_a), n_b)
        )
    for pairs in candidates:
        total = sum(S[a, b] for a, b in pairs.items())
        if total > best:
            best, best_pairs = total, pairs
    return best, best_pairs


@pytest.mark.parametrize(("n_a", "n_b"), [(5, 5), (4, 7), (7, 4)])
def test_one_to_one_dense_matches_permutations(n_a: int, n_b: int) -> None:
    gen = torch.Generator().manual_seed(n_a * 10 + n_b)
    W_a, W_b = torch.randn(n_a + 1, 4, generator=gen), torch.randn(n_b + 1, 4, generator=gen)
    alive_a, alive_b = _mask(n_a + 1, [n_a // 2]), _mask(n_b + 1, [0])
    m = geo.one_to_one_cosine(W_a, W_b, alive_a, alive_b, method="dense")

    ia, ib = alive_a.nonzero().squeeze(1).numpy(), alive_b.nonzero().squeeze(1).numpy()
    best, pairs = _brute_one_to_one(_cos64(W_a, W_b)[np.ix_(ia, ib)])
    expected = [ib[pairs[i]] if i in pairs else -1 for i in range(len(ia))]
    assert m.exact
    assert m.target.tolist() == expected
    assert np.nansum(m.cosine.numpy()) == pytest.approx(best, abs=1e-5)
    assert m.summary()["unmatched"] == max(0, n_a - n_b)
    _assert_matches_consistent(m, W_a, W_b)


def test_one_to_one_is_stricter_than_max() -> None:
    """Two A latents parallel to one B latent: max double counts it, one-to-one cannot."""
    b = torch.randn(3, 5, generator=torch.Generator().manual_seed(3))
    W_a = torch.stack([b[0], 2 * b[0]])
    cross = geo.max_cosine_cross(W_a, b)
    matched = geo.one_to_one_cosine(W_a, b)
    assert cross.target.tolist() == [0, 0]
    assert sorted(matched.target.tolist())[0] == 0 and len(set(matched.target.tolist())) == 2
    assert matched.cosine.sum() < cross.cosine.sum() - 0.1


def _optimal_partner_rank(S: np.ndarray, partner: np.ndarray) -> np.ndarray:
    """0-based rank of each row's optimal partner among that row's columns."""
    own = S[np.arange(len(S)), partner][:, None]
    return np.greater(S, own).sum(axis=1)


@pytest.mark.parametrize("chunk_size", [7, 1024])
def test_sparse_equals_exact_when_k_covers_optimum(chunk_size: int) -> None:
    gen = torch.Generator().manual_seed(4)
    W_a, W_b = torch.randn(40, 8, generator=gen), torch.randn(50, 8, generator=gen)
    exact = geo.one_to_one_cosine(W_a, W_b, method="dense")
    k = int(_optimal_partner_rank(_cos64(W_a, W_b), exact.target.numpy()).max()) + 1
    assert 1 < k < 50  # the candidate graph is a genuine subgraph

    sparse = geo.one_to_one_cosine(
        W_a, W_b, method="sparse", top_k=k, dense_limit_bytes=0, chunk_size=chunk_size
    )
    assert not sparse.exact
    assert sparse.target.tolist() == exact.target.tolist()
    torch.testing.assert_close(sparse.cosine, exact.cosine)


@pytest.mark.parametrize(("n_a", "n_b"), [(30, 30), (30, 20)])
def test_sparse_with_full_k_is_exact(n_a: int, n_b: int) -> None:
    gen = torch.Generator().manual_seed(5)
    W_a, W_b = torch.randn(n_a, 6, generator=gen), torch.randn(n_b, 6, generator=gen)
    exact = geo.one_to_one_cosine(W_a, W_b, method="dense")
    sparse = geo.one_to_one_cosine(W_a, W_b, method="sparse", top_k=max(n_a, n_b))
    assert sparse.exact
    assert sparse.target.tolist() == exact.target.tolist()


def _crowded(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All A latents near one direction so every row's top candidates collide."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 8, generator=gen)
    W_a = base + 0.05 * torch.randn(25, 8, generator=gen)
    W_b = torch.cat(
        [base + 0.05 * torch.randn(5, 8, generator=gen), torch.randn(35, 8, generator=gen)]
    )
    return W_a, W_b


@pytest.mark.parametrize(
    ("dense_limit_bytes", "max_rounds"),
    [
        (geo.DEFAULT_DENSE_LIMIT_BYTES, 4),  # leftover rows solved exactly after round 1
        (0, 3),  # doubling-k rounds only
        (0, 1),  # greedy fallback
    ],
)
def test_sparse_small_k_is_valid_one_to_one(dense_limit_bytes: int, max_rounds: int) -> None:
    W_a, W_b = _crowded(6)
    alive_b = _mask(40, [1, 39])
    exact = geo.one_to_one_cosine(W_a, W_b, alive_b=alive_b, method="dense")
    m = geo.one_to_one_cosine(
        W_a,
        W_b,
        alive_b=alive_b,
        method="sparse",
        top_k=1,
        dense_limit_bytes=dense_limit_bytes,
        max_rounds=max_rounds,
        chunk_size=4,
    )
    assert not m.exact
    assert (m.target >= 0).all(), "every A latent is matched when n_a <= n_b"
    assert len(set(m.target.tolist())) == len(m.target), "each B latent used at most once"
    assert alive_b[m.target].all()
    _assert_matches_consistent(m, W_a, W_b)
    assert m.cosine.sum().item() <= exact.cosine.sum().item() + 1e-5


def test_one_to_one_auto_picks_dense_within_budget() -> None:
    W_a, W_b = _crowded(7)
    assert geo.one_to_one_cosine(W_a, W_b).exact
    assert not geo.one_to_one_cosine(W_a, W_b, dense_limit_bytes=100, top_k=2).exact


# ----------------------------------------------------------------------------- SAE level


def _sae(d_in: int = 6, d_sae: int = 12, seed: int = 0):  # noqa: ANN202
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.normal_()
    return sae


def test_encoder_and_decoder_directions_reported_separately() -> None:
    sae = _sae()
    assert geo.decoder_directions(sae).shape == geo.encoder_directions(sae).shape == (12, 6)
    alive = _mask(12, [3])
    result = geo.compare_saes(sae, alive_a=alive)
    dec = geo.max_cosine_within(sae.W_dec, alive)
    enc = geo.max_cosine_within(sae.W_enc.T, alive)
    torch.testing.assert_close(result.decoder.within.cosine, dec.cosine)
    torch.testing.assert_close(result.encoder.within.cosine, enc.cosine)
    assert not torch.allclose(dec.cosine, enc.cosine)
    assert result.decoder.cross is None and result.encoder.one_to_one is None
    assert set(result.summary()) == {
        f"{kind}/within/{stat}"
        for kind in ("decoder", "encoder")
        for stat in ("mean", "median", "n", "unmatched")
    }


def test_permuted_copy_is_recovered_one_to_one() -> None:
    """A seed that is a relabelling of another: cosine 1 and the inverse permutation."""
    sae_a, sae_b = _sae(seed=1), _sae(seed=2)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae_b.W_dec.copy_(sae_a.W_dec[perm] * 3.0)
        sae_b.W_enc.copy_(sae_a.W_enc[:, perm])
    result = geo.compare_saes(sae_a, sae_b)
    inverse = torch.argsort(perm)
    for part in (result.decoder, result.encoder):
        assert part.one_to_one is not None and part.cross is not None
        assert part.one_to_one.target.tolist() == inverse.tolist()
        torch.testing.assert_close(part.one_to_one.cosine, torch.ones(12))
        torch.testing.assert_close(part.cross.cosine, torch.ones(12))


def test_compare_seeds_pairs() -> None:
    saes = {f"seed{i}": _sae(seed=i) for i in range(3)}
    results = geo.compare_seeds(saes, {"seed0": _mask(12, [0])}, one_to_one=False)
    assert list(results) == ["seed0 vs seed1", "seed0 vs seed2", "seed1 vs seed2"]
    assert results["seed0 vs seed1"].decoder.cross.summary()["n"] == 11
    assert results["seed1 vs seed2"].decoder.one_to_one is None


def test_d_in_mismatch_names_both_values() -> None:
    with pytest.raises(ValueError, match=r"d_in mismatch: sae_a has d_in=6, sae_b has d_in=4"):
        geo.compare_saes(_sae(d_in=6), _sae(d_in=4))


def test_alive_masks() -> None:
    freq = torch.tensor([0.0, 2e-6, 0.5, 0.0])
    log_sparsity = torch.log10(freq + 1e-10)  # SAELens' sparsity.safetensors format
    expected = [False, True, True, False]
    assert geo.alive_latents_from_sparsity(log_sparsity, log10=True).tolist() == expected
    assert geo.alive_latents_from_sparsity(freq).tolist() == expected
    assert geo.alive_latents_from_sparsity(freq, min_frequency=1e-3).tolist() == [0, 0, 1, 0]
    assert geo.alive_latents_from_counts(torch.tensor([0, 1, 7])).tolist() == [0, 1, 1]


def test_load_sae_from_disk(tmp_path) -> None:  # noqa: ANN001
    sae = _sae()
    sae.save_model(tmp_path / "sae")
    loaded = geo.load_sae(tmp_path / "sae")
    torch.testing.assert_close(geo.decoder_directions(loaded), geo.decoder_directions(sae))
    with pytest.raises(FileNotFoundError, match="no SAELens SAE folder.*sae_id"):
        geo.load_sae(tmp_path / "missing")


def test_plot_geometry_writes_png(tmp_path) -> None:  # noqa: ANN001
    sae_a, sae_b = _sae(seed=1), _sae(seed=2)
    results = {
        "a vs b": geo.compare_saes(sae_a, sae_b),
        "a alone": geo.compare_saes(sae_a, alive_a=_mask(12, [0])),
    }
    out = geo.plot_geometry(results, tmp_path / "plots" / "geometry.png")
    assert out == tmp_path / "plots" / "geometry.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["geometry.png"]  # no temp left behind


def test_plot_draws_a_symmetric_one_to_one_pairing_once() -> None:
    """`a -> b` and `b -> a` pair the same latents one-to-one: one curve `a <-> b` (two would
    lie exactly on top of each other); within an SAE only its own name is shown."""
    from sae_lens_e2e.analysis.geometry.plot import _series

    sae_a, sae_b, sae_c = _sae(seed=1), _sae(seed=2), _sae(seed=3)
    results = {
        "a -> b": geo.compare_saes(sae_a, sae_b),
        "b -> a": geo.compare_saes(sae_b, sae_a),
        "c -> a": geo.compare_saes(sae_c, sae_a),
    }
    parts = {label: r.decoder.one_to_one for label, r in results.items()}
    one_to_one = _series(parts, "one_to_one")
    assert list(one_to_one) == ["a <-> b", "c -> a"]
    assert [color for _, color in one_to_one.values()] == ["C0", "C2"]  # as in other panels
    within = _series({label: r.decoder.within for label, r in results.items()}, "within")
    assert list(within) == ["a", "b", "c"]
    cross = _series({label: r.decoder.cross for label, r in results.items()}, "cross")
    assert list(cross) == list(results)  # the max over the other SAE is not symmetric


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    W_a, W_b = _crowded(8)
    for fn in (geo.max_cosine_cross, geo.one_to_one_cosine):
        cpu, gpu = fn(W_a, W_b, device="cpu"), fn(W_a.cuda(), W_b.cuda())
        assert gpu.target.tolist() == cpu.target.tolist()
        torch.testing.assert_close(gpu.cosine, cpu.cosine)
    sparse = geo.one_to_one_cosine(W_a, W_b, method="sparse", top_k=2, device="cuda")
    assert len(set(sparse.target.tolist())) == len(W_a)
