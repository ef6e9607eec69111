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
    launch,
    resolve_backend,
    sae_forward,
    sae_forward_torch,
    selfcheck,
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
KERNELS_DIR = pathlib.Path(__file__).resolve().parents[1] / "kernels"
ACTS = {"relu": {}, "topk": {"k": 8}, "jumprelu": {"threshold": None}}
SPARSE, DENSE = 2.0, 0.0  # density thresholds that force each path


@pytest.fixture(autouse=True)
def unchecked(monkeypatch):
    """These tests are the kernels' comparison with the reference, class by class: the
    first-use self-check (tests/test_gpu_path.py covers it) would repeat each one first."""
    monkeypatch.setattr(selfcheck, "_check_sae", lambda *a: selfcheck.SAEVerdict())
    monkeypatch.setattr(selfcheck, "_check_kl", lambda *a: True)
    selfcheck.clear()
    yield
    selfcheck.clear()


def set_tf32(on: bool):
    """Set torch's TF32 flag until the test ends (monkeypatch cannot: it is a property)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = on
    return old


@pytest.fixture
def tf32():
    """fp32 with TF32 allowed: the GPU path then runs the fused encoder (without it, torch's
    GEMM), and so does the interpreter, computing in fp32."""
    old = set_tf32(True)
    yield
    set_tf32(old)


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
    assert_close(got, ref, rtol or {torch.float32: 1e-4, torch.float16: 2e-2}.get(dtype, 4e-2))
    return got


@pytest.mark.parametrize(
    "dtype,allow_tf32",
    [
        (torch.float32, False),
        (torch.float32, True),
        (torch.float16, False),
        (torch.bfloat16, False),
    ],
    ids=["fp32", "fp32-tf32", "fp16", "bf16"],
)
@pytest.mark.parametrize("activation", list(ACTS))
@pytest.mark.parametrize("dth", [SPARSE, DENSE], ids=["sparse", "dense"])
def test_sae_matches_reference(activation, dtype, allow_tf32, dth):
    old = set_tf32(allow_tf32)
    try:
        ps, thr = make_params(32, 64, 128, dtype)
        compare(ps, thr, activation, dtype, dth)
    finally:
        set_tf32(old)


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
def test_sae_edge_cases(case, n, s, shift, dth, tf32):
    ps, thr = make_params(n, 48, s, torch.float32, b_enc_shift=shift)
    got = compare(ps, thr, "relu", torch.float32, dth)
    if case == "all_dead":
        assert got[0].count_nonzero() == 0 and got[3].abs().max() == 0
    if case == "all_active":
        assert got[0].count_nonzero() == got[0].numel()


@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_encoder_nnz_count_ignores_tile_padding(activation, tf32):
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


@pytest.mark.parametrize("dth", [SPARSE, DENSE], ids=["sparse", "dense"])
def test_jumprelu_negative_threshold_keeps_the_gate(dth, tf32):
    """Below a threshold < 0, a pre-activation of exactly 0 passes the gate with acts 0: its
    gradient must still flow (the activity mask acts != 0 would drop it)."""
    ps, thr = make_params(8, 32, 64, torch.float32)
    thr = thr - 0.3
    j = int(thr.argmin())
    with torch.no_grad():
        ps[0][3] = 0.0  # token 3: pre = b_enc exactly
        ps[2][j] = 0.0  # latent j: pre[3, j] == 0 > thr[j]
    assert thr[j] < 0
    got = run(ps, "triton", "jumprelu", thr, density_threshold=dth)
    ref = run([p.detach() for p in ps], "torch", "jumprelu", thr)
    assert_close(got, ref, 1e-4)
    assert got[0][3, j] == 0 and ref[4][j] != 0  # d b_enc[j] includes token 3's gradient


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


@pytest.fixture
def launched(monkeypatch):
    """Every kernel launch, as (kernel name, constexprs)."""
    calls = []
    real = launch.Launch.__call__

    def record(self):
        calls.append((self.kernel.__name__, dict(self.constexprs)))
        real(self)

    monkeypatch.setattr(launch.Launch, "__call__", record)
    return calls


@pytest.mark.parametrize("activation", list(ACTS))
def test_long_columns_split_across_programs(activation, monkeypatch, launched, tf32):
    """Latents that fire on every token, cut into 4-entry segments: their column sums come
    from per-segment partials added by the finish kernel, and equal the reference."""
    from sae_lens_e2e.kernels import sae_triton

    monkeypatch.setattr(sae_triton, "COL_SEGMENT", 4)
    ps, thr = make_params(18, 40, 96, torch.float32)
    with torch.no_grad():
        ps[2][[0, 7, 50]] = 100.0  # three latents active on all 18 tokens: 5 segments each
    compare(ps, thr, activation, torch.float32, SPARSE)
    assert "_bwd_col_finish_kernel" in [name for name, _ in launched]


@pytest.mark.parametrize("dth", [SPARSE, DENSE], ids=["sparse", "dense"])
def test_dx_skipped_when_the_input_needs_no_gradient(dth, launched, tf32):
    """The first SAE's input comes from a no-grad prefix: no dx GEMM, no W_enc.T copy."""
    ps, thr = make_params(16, 32, 96, torch.float32)
    x = ps[0].detach()
    params = [p.detach().clone().requires_grad_() for p in ps[1:]]
    counted = []

    class CountMatmuls(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
                counted.append(tuple(args[-1].shape))
            return func(*args, **(kwargs or {}))

    acts, out = sae_forward(x, *params, backend="triton", density_threshold=dth)
    with CountMatmuls():
        (acts.sum() + out.square().sum()).backward()
    assert x.grad is None and all(p.grad is not None for p in params)
    assert (96, 32) not in counted  # d_pre @ W_enc.T
    if dth == DENSE:  # and the same backward with x requiring grad does run it
        counted.clear()
        x_ = x.clone().requires_grad_()
        acts, out = sae_forward(x_, *params, backend="triton", density_threshold=dth)
        with CountMatmuls():
            (acts.sum() + out.square().sum()).backward()
        assert (96, 32) in counted
    if dth == SPARSE:
        rows = [c for name, c in launched if name == "_bwd_row_kernel"]
        assert rows and not rows[-1]["WANT_DX"]
    with_dx = run(ps, "triton", "relu", thr, density_threshold=dth)
    ref = run([p.detach() for p in ps], "torch", "relu", thr)
    assert_close(with_dx, ref, 1e-4)  # and with x requiring grad, dx is right


@pytest.mark.parametrize("activation", list(ACTS))
@pytest.mark.parametrize("dth", [SPARSE, DENSE], ids=["sparse", "dense"])
def test_bf16_autocast_forward_and_backward(activation, dth):
    """fp32 weights under bf16 autocast (the README's GPU recipe): the node computes in bf16
    like torch's own GEMMs (this crashed in backward with mixed dtypes), gradients reach the
    fp32 parameters, and they are as close to fp32 as the torch backend's under autocast."""
    ps, thr = make_params(32, 64, 128, torch.float32)
    kw = {**ACTS[activation], "threshold": thr if activation == "jumprelu" else None}

    def grads(backend, autocast):
        params = [p.detach().clone().requires_grad_() for p in ps]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            extra = {"density_threshold": dth} if backend == "triton" else {}
            acts, out = sae_forward(*params, activation=activation, backend=backend, **kw, **extra)
            loss = (acts.float() * 0.1).sum() + out.float().square().mean()
        loss.backward()
        assert all(p.grad.dtype == torch.float32 for p in params)
        return [acts.float(), out.float()] + [p.grad for p in params]

    exact, fused, torch_bf16 = grads("torch", False), grads("triton", True), grads("torch", True)
    if activation == "topk":  # bf16 near-ties pick other latents: check the selection
        assert ((fused[0] != 0) == (torch_bf16[0] != 0)).float().mean() > 0.99
        return
    for name, a, b, e in zip(NAMES, fused, torch_bf16, exact, strict=True):
        scale = e.abs().max()
        err, err_torch = (a - e).abs().max() / scale, (b - e).abs().max() / scale
        assert err <= 2 * err_torch + 1e-2, f"{name}: {err:.3g} vs torch's {err_torch:.3g}"


def test_negative_threshold_and_nnz_in_one_host_sync(tf32):
    """At most one host read per forward (the active count, with the threshold's sign for
    JumpReLU), none for TopK, none in the backward: GPU runs do not stall per call."""
    reads = {"forward": 0, "backward": 0}
    phase = ["forward"]
    syncing = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
               torch.ops.aten.bincount.default, torch.ops.aten.unique_dim.default,
               torch.ops.aten._unique2.default, torch.ops.aten.masked_select.default}  # fmt: skip

    class CountReads(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in syncing:
                reads[phase[0]] += 1
            return func(*args, **(kwargs or {}))

    for activation, expected in (("relu", 1), ("jumprelu", 1), ("topk", 0)):
        for dth in (SPARSE, DENSE):
            ps, thr = make_params(32, 32, 96, torch.float32)
            reads.update(forward=0, backward=0)
            phase[0] = "forward"
            kw = {**ACTS[activation], "threshold": thr if activation == "jumprelu" else None}
            with CountReads():
                acts, out = sae_forward(*ps, activation=activation, backend="triton",
                                        density_threshold=dth, **kw)  # fmt: skip
                phase[0] = "backward"
                (acts.sum() + out.square().sum()).backward()
            assert reads == {"forward": expected, "backward": 0}, (activation, dth, reads)


def test_launches_run_on_the_tensors_device(monkeypatch):
    """Triton launches on torch's current device: every run makes the tensors' device
    current (a process on cuda:0 training on cuda:1 would otherwise launch on the wrong GPU)."""
    guard = launch.on_device(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    seen = []
    real = launch.on_device
    monkeypatch.setattr(launch, "on_device", lambda d: seen.append(d) or real(d))
    ps, thr = make_params(16, 32, 64, torch.float32)
    run(ps, "triton", "relu", thr, density_threshold=SPARSE)
    kl_div(torch.randn(4, 100, device=DEV), torch.randn(4, 100, device=DEV), backend="triton")
    assert len(seen) == 3 and all(d == ps[0].device for d in seen)  # decode, backward, KL


def test_encode_config_per_target():
    """The fused encoder only where it builds and wins: sm_80+, not sm_60/70/75 (cuBLAS);
    fp32 only with TF32 (NVIDIA; AMD's Triton has it on gfx942 alone); halves always pass
    input_precision 'ieee', which AMD accepts (it applies to fp32 operands only)."""
    from sae_lens_e2e.kernels import sae_triton as kt

    T = dispatch.Target
    bf16, fp32 = torch.bfloat16, torch.float32
    assert kt.encode_config(bf16, True, T("cuda", 75, "T4")) is None
    assert kt.encode_config(bf16, False, T("cuda", 90, "H100"))["PREC"] == "ieee"
    assert kt.encode_config(fp32, True, T("cuda", 80, "A100"))["PREC"] == "tf32"
    assert kt.encode_config(fp32, False, T("cuda", 90, "H100")) is None
    assert kt.encode_config(fp32, True, T("hip", "gfx90a", "MI250")) is None
    assert kt.encode_config(bf16, True, T("hip", "gfx90a", "MI250"))["PREC"] == "ieee"
    assert kt.encode_config(fp32, True, T("hip", "gfx942", "MI300X"))["PREC"] == "tf32"
    interp = T("interpreter", 0, "cpu")
    assert kt.encode_config(fp32, False, interp) is None  # as on a GPU: torch's GEMM
    assert kt.encode_config(fp32, True, interp)["UPCAST"]


def test_auto_keeps_rocm_on_pytorch(monkeypatch):
    """ROCm reports device type 'cuda': auto stays on PyTorch there, 'triton' opts in."""
    monkeypatch.setattr(torch.version, "hip", "6.2.0")
    monkeypatch.setattr(dispatch, "triton_import_error", lambda: None)
    assert resolve_backend("auto", torch.device("cuda", 0)) == "torch"
    assert resolve_backend("triton", torch.device("cuda", 0)) == "triton"
    monkeypatch.setattr(torch.version, "hip", None)
    assert resolve_backend("auto", torch.device("cuda", 0)) == "triton"


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
