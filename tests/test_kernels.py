"""Kernel tests: every forward and gradient of the fused path against the PyTorch reference.

On CPU the Triton kernels run under TRITON_INTERPRET=1 at small shapes; on a CUDA machine the
GPU tests below also run at GPT-2-small shapes. TRITON_INTERPRET must be set before triton is
first imported (sae_lens imports it), so tests/conftest.py sets it; the line below only covers
running this file with the conftest disabled.
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from sae_lens_e2e.kernels import (  # noqa: E402
    dispatch,
    kl_div,
    kl_div_torch,
    resolve_backend,
    sae_forward,
    sae_forward_torch,
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
KERNELS_DIR = pathlib.Path(__file__).resolve().parents[1] / "kernels"
ACTS = {"relu": {}, "topk": {"k": 8}, "jumprelu": {"threshold": None}}
SPARSE, DENSE = 2.0, 0.0  # density thresholds that force each path


def make_params(n, d, s, dtype, device=DEV, b_enc_shift=-0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)
    x = r(n, d)
    W_enc = r(d, s) / d**0.5
    b_enc = r(s) * 0.5 + b_enc_shift
    W_dec = r(s, d) * (1 + torch.rand(s, 1, generator=g))  # rows NOT unit norm
    b_dec = r(d)
    thr = torch.rand(s, generator=g) * 0.5
    ps = [
        t.to(device=device, dtype=dtype).requires_grad_() for t in (x, W_enc, b_enc, W_dec, b_dec)
    ]
    return ps, thr.to(device=device, dtype=dtype)


def run(ps, backend, activation, thr, density_threshold=None, use_acts=True, use_out=True, **kw):
    """Forward, then backward of a random linear functional of (acts, out); returns all."""
    ps = [p.detach().clone().requires_grad_() for p in ps]
    if activation == "jumprelu":
        kw["threshold"] = thr
    fwd_kw = {} if backend == "torch" else {"density_threshold": density_threshold}
    acts, out = sae_forward(*ps, activation=activation, backend=backend, **kw, **fwd_kw)
    g = torch.Generator().manual_seed(1)
    ga = torch.randn(acts.shape, generator=g).to(acts)
    go = torch.randn(out.shape, generator=g).to(out)
    loss = (acts * ga).sum() * use_acts + (out * go).sum() * use_out
    loss.backward()
    return [acts.detach(), out.detach()] + [p.grad for p in ps]


NAMES = ["acts", "out", "dx", "dW_enc", "db_enc", "dW_dec", "db_dec"]


def assert_close(got, ref, rtol):
    """Max error relative to the reference's scale (robust for near-zero entries)."""
    for name, a, b in zip(NAMES, got, ref, strict=True):
        assert a.shape == b.shape, name
        scale = b.float().abs().max().clamp_min(1e-6)
        err = (a.float() - b.float()).abs().max() / scale
        assert err < rtol, f"{name}: rel err {err:.2e}"


def masked_reference(ps, mask, use_acts=True, use_out=True):
    """ReLU restricted to a given support: TopK's maths once the selection is fixed."""
    ps = [p.detach().float().requires_grad_() for p in ps]
    x, W_enc, b_enc, W_dec, b_dec = ps
    acts = torch.relu(x @ W_enc + b_enc) * mask
    out = acts @ torch.nn.functional.normalize(W_dec, dim=-1) + b_dec
    g = torch.Generator().manual_seed(1)
    ga, go = torch.randn(acts.shape, generator=g), torch.randn(out.shape, generator=g)
    ((acts * ga).sum() * use_acts + (out * go).sum() * use_out).backward()
    return [acts.detach(), out.detach()] + [p.grad for p in ps], (x @ W_enc + b_enc).detach()


def compare(ps, thr, activation, dtype, dth, rtol=None, **kw):
    kw = {**ACTS[activation], **kw}
    kw.pop("threshold", None)
    ref_ps = [p.detach().float() for p in ps]
    got = run(ps, "triton", activation, thr, density_threshold=dth, **kw)
    if activation == "topk" and dtype != torch.float32:
        # Rounding pre-activations to fp16 creates near-ties at the k-th value, and any tie
        # order is a correct TopK: check the kernel's selection is a valid top-k, then
        # compare everything against the reference restricted to that selection.
        k = kw.pop("k")
        ref, pre = masked_reference(ref_ps, (got[0] != 0).float(), **kw)
        kth = pre.topk(k, dim=-1).values[:, -1:]
        assert ((got[0] == 0) | (pre >= kth - 2e-2 * pre.abs().max())).all()
    else:
        ref = run(ref_ps, "torch", activation, thr.float(), **kw)
    assert_close(got, ref, rtol or (1e-4 if dtype == torch.float32 else 2e-2))
    return got


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("activation", list(ACTS))
@pytest.mark.parametrize("dth", [SPARSE, DENSE], ids=["sparse", "dense"])
def test_sae_matches_reference(activation, dtype, dth):
    ps, thr = make_params(64, 64, 256, dtype)
    compare(ps, thr, activation, dtype, dth)


@pytest.mark.parametrize(
    "case,n,s,shift",
    [
        ("all_dead", 16, 200, -100.0),
        ("all_active", 16, 200, 100.0),
        ("ragged_d_sae", 16, 203, -0.5),
        ("one_token", 1, 256, -0.5),
    ],
)
@pytest.mark.parametrize("dth", [SPARSE, DENSE], ids=["sparse", "dense"])
def test_sae_edge_cases(case, n, s, shift, dth):
    ps, thr = make_params(n, 48, s, torch.float32, b_enc_shift=shift)
    got = compare(ps, thr, "relu", torch.float32, dth)
    if case == "all_dead":
        assert got[0].count_nonzero() == 0 and got[3].abs().max() == 0
    if case == "all_active":
        assert got[0].count_nonzero() == got[0].numel()


@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_encoder_nnz_count_ignores_tile_padding(activation):
    """The encoder counts nonzeros per row without a mask: every latent active, with rows and
    columns past the last tile's edge (33 tokens, 203 latents), the sparse path's CSR (built
    from the count) must still hold exactly the active entries."""
    ps, thr = make_params(33, 48, 203, torch.float32, b_enc_shift=100.0)
    got = compare(ps, thr, activation, torch.float32, SPARSE)
    assert got[0].count_nonzero() == got[0].numel()


@pytest.mark.parametrize("dth", [SPARSE, DENSE], ids=["sparse", "dense"])
def test_sae_one_latent_active(dth):
    ps, thr = make_params(16, 48, 130, torch.float32, b_enc_shift=-100.0)
    with torch.no_grad():
        ps[2][77] = 100.0
    got = compare(ps, thr, "relu", torch.float32, dth)
    assert got[0].count_nonzero() == 16 and (got[0][:, 77] != 0).all()


@pytest.mark.parametrize("activation", ["relu", "topk"])
@pytest.mark.parametrize("use", ["acts_only", "out_only"])
def test_sae_partial_gradients(activation, use):
    """Only one output in the loss: the other gradient arrives as None."""
    ps, thr = make_params(16, 48, 128, torch.float32)
    kw = {"use_acts": use == "acts_only", "use_out": use == "out_only"}
    compare(ps, thr, activation, torch.float32, SPARSE, **kw)


@pytest.mark.parametrize("activation", list(ACTS))
def test_sae_multi_chunk_loops(activation, monkeypatch):
    """Tiny gather tiles so every row/column loop in the sparse kernels runs several chunks."""
    from sae_lens_e2e.kernels import sae_triton

    monkeypatch.setattr(sae_triton, "ROW_TILE", 128)
    ps, thr = make_params(16, 40, 80, torch.float32, b_enc_shift=0.0)
    compare(ps, thr, activation, torch.float32, SPARSE)


def test_topk_k1_and_3d_input():
    ps, thr = make_params(12, 32, 96, torch.float32)
    compare(ps, thr, "topk", torch.float32, SPARSE, k=1)
    x3 = ps[0].detach().reshape(3, 4, 32)
    a, o = sae_forward(x3, *ps[1:], backend="triton")
    ra, ro = sae_forward_torch(x3, *ps[1:])
    assert a.shape == (3, 4, 96) and torch.allclose(o, ro, atol=1e-5)


def test_jumprelu_negative_threshold_falls_back():
    ps, thr = make_params(8, 32, 64, torch.float32)
    thr = thr - 0.3
    a, o = sae_forward(*ps, activation="jumprelu", threshold=thr, backend="triton")
    ra, ro = sae_forward_torch(*ps, activation="jumprelu", threshold=thr)
    assert torch.equal(a, ra) and torch.equal(o, ro)


@pytest.mark.parametrize("dth", [SPARSE, DENSE])
def test_jumprelu_return_pre_gives_the_pre_activations(dth):
    ps, thr = make_params(16, 32, 64, torch.float32)
    kw = {"activation": "jumprelu", "threshold": thr, "return_pre": True}
    a, o, pre = sae_forward(*ps, backend="triton", density_threshold=dth, **kw)
    ra, ro, rpre = sae_forward_torch(*ps, **kw)
    assert not pre.requires_grad
    torch.testing.assert_close(pre, rpre, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, ra, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o, ro, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="return_pre is only for activation='jumprelu'"):
        sae_forward(*ps, return_pre=True)


def test_torch_backend_is_the_plain_formula():
    ps, _ = make_params(8, 32, 64, torch.float64, device="cpu")
    x, W_enc, b_enc, W_dec, b_dec = ps
    acts, out = sae_forward(*ps, backend="torch")
    ref_acts = torch.relu(x @ W_enc + b_enc)
    ref_out = ref_acts @ (W_dec / W_dec.norm(dim=1, keepdim=True)) + b_dec
    assert torch.allclose(acts, ref_acts) and torch.allclose(out, ref_out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(16, 1000), (1, 3000), (2, 3, 517)])
def test_kl_matches_reference(shape, dtype):
    g = torch.Generator().manual_seed(0)
    new = (torch.randn(*shape, generator=g) * 3).to(DEV, dtype).requires_grad_()
    orig = (torch.randn(*shape, generator=g) * 3).to(DEV, dtype).requires_grad_()
    ref_new = new.detach().float().requires_grad_()
    ref = kl_div_torch(ref_new, orig.detach().float())
    ref.backward()
    got = kl_div(new, orig, backend="triton")
    got.backward()
    tol = 1e-5 if dtype == torch.float32 else 3e-3
    assert got.shape == () and abs(got.item() - ref.item()) < tol * max(1.0, ref.item())
    err = (new.grad.float() - ref_new.grad).abs().max() / ref_new.grad.abs().max()
    assert err < tol * 10 and orig.grad is None


def test_kl_torch_backend_matches_f_kl_div():
    new, orig = torch.randn(4, 50), torch.randn(4, 50)
    ref = torch.nn.functional.kl_div(
        new.log_softmax(-1), orig.log_softmax(-1), log_target=True, reduction="batchmean"
    )
    assert torch.equal(kl_div(new, orig, backend="torch"), ref)


def test_resolve_backend(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_backend("torch", cpu) == "torch"
    assert resolve_backend("auto", cpu) == "torch"
    with pytest.raises(ValueError, match="'cuda_please'.*auto"):
        resolve_backend("cuda_please", cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", cpu) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA"):
        resolve_backend("triton", cpu)


def test_density_threshold(monkeypatch):
    assert dispatch.use_sparse(1, 1000, torch.bfloat16)  # 0.1% -> sparse
    assert not dispatch.use_sparse(500, 1000, torch.bfloat16)  # 50% -> dense
    assert not dispatch.use_sparse(0, 1000, torch.float32, override=0.0)
    monkeypatch.setattr(dispatch, "DENSITY_THRESHOLD", 0.9)
    assert dispatch.use_sparse(500, 1000, torch.float32)


def test_kernels_never_import_sae_lens():
    for f in KERNELS_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = (
                [a.name for a in getattr(node, "names", [])] if isinstance(node, ast.Import) else []
            )
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            assert not any(n.split(".")[0] in ("sae_lens", "sae_lens_e2e") for n in names), f


def test_import_and_torch_backend_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, sae_lens_e2e.kernels as k\n"
        "assert k.resolve_backend('auto', torch.device('cpu')) == 'torch'\n"
        "x = torch.randn(3, 4)\n"
        "k.sae_forward(x, torch.randn(4, 8), torch.zeros(8), torch.randn(8, 4), torch.zeros(4))\n"
        "try:\n    k.resolve_backend('triton', torch.device('cpu'))\n"
        "except ValueError as e:\n    assert 'triton is not importable' in str(e)\n"
        "else:\n    raise SystemExit('no error')\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ---- full GPT-2-small shapes on a CUDA GPU (skipped without one) -------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def assert_mostly_close(got, ref, rtol, max_bad=1e-4):
    """Rare mask/top-k flips at fp rounding boundaries move single latents; allow a tiny
    fraction of elements off, and require the rest within rtol of the reference's scale."""
    for name, a, b in zip(NAMES, got, ref, strict=True):
        scale = b.float().abs().max().clamp_min(1e-6)
        bad = ((a.float() - b.float()).abs() > rtol * scale).float().mean().item()
        assert bad <= max_bad, f"{name}: {bad:.2e} of elements off by > {rtol} x max"


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", ["relu", "topk", "jumprelu"])
@pytest.mark.parametrize("dth", [SPARSE, DENSE], ids=["sparse", "dense"])
def test_gpu_full_shapes(activation, dtype, dth):
    ps, thr = make_params(4096, 768, 46080, dtype, device="cuda", b_enc_shift=-1.0)
    kw = {"k": 64} if activation == "topk" else {}
    ref_ps = [p.detach().float() for p in ps]
    ref = run(ref_ps, "torch", activation, thr.float(), **kw)
    got = run(ps, "triton", activation, thr, density_threshold=dth, **kw)
    assert_mostly_close(got, ref, 1e-3 if dtype == torch.float32 else 3e-2)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_kl_full_vocab(dtype):
    new = (torch.randn(2048, 50257, device="cuda") * 3).to(dtype).requires_grad_()
    orig = (torch.randn(2048, 50257, device="cuda") * 3).to(dtype)
    ref_new = new.detach().float().requires_grad_()
    ref = kl_div_torch(ref_new, orig.float())
    ref.backward()
    got = kl_div(new, orig, backend="triton")
    got.backward()
    assert abs(got.float().item() - ref.item()) < 1e-2 * ref.item()
    err = (new.grad.float() - ref_new.grad).abs().max() / ref_new.grad.abs().max()
    assert err < (1e-4 if dtype == torch.float32 else 2e-2)
