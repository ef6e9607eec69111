"""The logits never materialised (training/logits.py): chunked KL and CE from final residuals
equal the unfused computation, in the loss, its gradients and the evaluation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_tiny_model

from sae_lens_e2e import E2EJumpReLUTrainingSAEConfig, E2EStandardTrainingSAEConfig
from sae_lens_e2e.training import logits as logits_mod
from sae_lens_e2e.training.losses import compute_loss_terms, logits_kl
from sae_lens_e2e.training.sae import E2EJumpReLUTrainingSAE, E2EStandardTrainingSAE

HOOK = "blocks.1.hook_resid_pre"


def model_with(vocab: int = 67, normalization: str = "LN", softcap: float = -1.0, seed: int = 0):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(
        n_layers=3, d_model=16, n_ctx=16, d_head=4, n_heads=4, d_vocab=vocab, act_fn="gelu",
        normalization_type=normalization, output_logits_soft_cap=softcap,
    )  # fmt: skip
    model = HookedTransformer(cfg).requires_grad_(False).eval()
    if normalization == "LN":  # weights that are not 1/0, so ln_final shapes the gradient
        model.ln_final.w.data.uniform_(0.5, 1.5)
        model.ln_final.b.data.normal_(0, 0.1)
    return model


def assert_rel(got: torch.Tensor, ref: torch.Tensor, tol: float, what: str = "") -> None:
    """Max error relative to the reference's scale."""
    err = ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    assert err <= tol, f"{what}: {err:.2e} > {tol:g}"


def unfused_kl(model, new, orig):
    """Today's unfused path: full logits through the model's own head, then logits_kl."""
    head = lambda r: model(r, start_at_layer=model.cfg.n_layers)  # noqa: E731 - ln_final+unembed
    return logits_kl(head(new), head(orig).detach(), backend="torch")


@pytest.mark.parametrize(
    "normalization,softcap",
    [("LN", -1.0), ("LNPre", -1.0), ("RMS", 30.0)],
    ids=["LN", "LNPre", "RMS-softcap"],
)
@pytest.mark.parametrize("chunk", [1, 7, 24, None])  # 7 does not divide 3 x 8 tokens
def test_residual_kl_equals_the_unfused_kl(normalization, softcap, chunk):
    model = model_with(vocab=1003, normalization=normalization, softcap=softcap)
    g = torch.Generator().manual_seed(1)
    orig = torch.randn(3, 8, 16, generator=g) * 2
    new = (orig + 3 * torch.randn(3, 8, 16, generator=g)).requires_grad_()
    ref_new = new.detach().clone().requires_grad_()
    ref = unfused_kl(model, ref_new, orig)
    ref.backward()
    got = logits_mod.residual_kl(model, new, orig, backend="torch", chunk=chunk)
    got.backward()
    assert got.dtype == torch.float32 and got.shape == () and ref.item() > 0.2
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    # The gradient: 2e-6 of its scale. Both are that close to the fp64 result (measured:
    # unfused 4e-7, chunked up to 1.3e-6); the unembed GEMM's rounding depends on its rows.
    assert_rel(new.grad, ref_new.grad, 2e-6, "d new")


def test_residual_kl_without_grad_computes_no_gradient(monkeypatch):
    model = model_with()
    calls = []
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1))
    new = torch.randn(10, 16, requires_grad=True)
    with torch.no_grad():
        logits_mod.residual_kl(model, new, torch.randn(10, 16), chunk=3)
    assert calls == []


def test_no_tensor_of_tokens_by_vocab_is_ever_made():
    """The point of it: during the KL's forward and backward no tensor with a vocabulary-sized
    dimension has more than a chunk of rows (checked on every op's output; the unembed's own
    [d_model, vocab] weight and its views are the only other ones)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    model, vocab, chunk = model_with(vocab=4096), 4096, 5
    rows: list[int] = []

    class VocabRows(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and vocab in t.shape and t.numel() != 16 * vocab:
                    rows.append(t.numel() // vocab)
            return out

    new = torch.randn(64, 16, requires_grad=True)
    with VocabRows():
        logits_mod.residual_kl(model, new, torch.randn(64, 16), chunk=chunk).backward()
    assert rows and max(rows) == chunk  # the chunk's logits, nothing of 64 x vocab


def test_chunk_size_from_budget_and_override():
    cpu = torch.device("cpu")
    assert logits_mod.chunk_tokens(1000, 50257, cpu, override=7) == 7
    assert logits_mod.chunk_tokens(5, 50257, cpu, override=70) == 5
    budget = logits_mod.BUDGET_BYTES["cpu"]
    assert logits_mod.chunk_tokens(10**6, 262144, cpu) == budget // (4 * 4 * 262144)
    assert logits_mod.chunk_tokens(10**6, 10**9, cpu) == 1
    # never buffers of more than 0.3 of the whole logits (0.3 * tokens / 4 rows), unless
    # that is under 16 MiB (GEMMs too small to pay)
    assert logits_mod.chunk_tokens(512, 50257, cpu) == 38
    assert logits_mod.chunk_tokens(512, 8192, cpu) == (16 << 20) // (4 * 4 * 8192)
    cuda = torch.device("cuda")
    big = logits_mod.BUDGET_BYTES["cuda"] // (4 * 4 * 256000)  # Gemma's vocab: the budget
    assert logits_mod.chunk_tokens(16 * 1024, 256000, cuda) == big
    assert logits_mod.chunk_tokens(16 * 1024, 50257, cuda) == 1228  # GPT-2's: the share


def test_next_token_ce_sum_equals_transformer_lens_loss():
    model = model_with(vocab=101, softcap=20.0, normalization="RMS")
    tokens = torch.randint(0, 101, (3, 12))
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)
    ref = model.loss_fn(model(tokens), tokens, per_token=True).sum().item()
    for chunk in (1, 5, None):
        got = logits_mod.next_token_ce_sum(model, resid, tokens, chunk=chunk)
        assert got == pytest.approx(ref, rel=1e-6)


def _sae(**kw):
    cfg = E2EStandardTrainingSAEConfig(d_in=16, d_sae=48, l1_coefficient=1.5, kernels="torch", **kw)
    torch.manual_seed(3)
    return E2EStandardTrainingSAE(cfg)


@pytest.mark.parametrize(
    "strategy,hooks,checkpointing",
    [
        ("e2e", [HOOK], False),
        ("e2e_ds", [HOOK], True),
        ("e2e", [HOOK, "blocks.2.hook_resid_pre"], False),
    ],
    ids=["e2e", "e2e_ds-checkpointed", "two-saes"],
)
def test_loss_terms_and_gradients_equal_the_unfused_path(
    strategy, hooks, checkpointing, monkeypatch
):
    """compute_loss_terms with the chunked KL vs the same function with the unfused KL
    (materialised logits, logits_kl), at several chunk sizes: terms and SAE gradients."""
    model = make_tiny_model(d_vocab=97)
    tokens = torch.randint(0, 97, (3, 10))
    results = {}
    for chunk in ("unfused", 1, 7, None):
        saes = {h: _sae(strategy=strategy, gradient_checkpointing=checkpointing) for h in hooks}
        cfg = next(iter(saes.values())).cfg
        if chunk != "unfused":
            cfg = dataclasses.replace(cfg, logits_chunk_tokens=chunk)
            terms = compute_loss_terms(model, saes, tokens, cfg)
        else:
            with monkeypatch.context() as m:
                m.setattr("sae_lens_e2e.training.losses.residual_kl",
                          lambda model, new, orig, **kw: unfused_kl(model, new, orig))  # fmt: skip
                terms = compute_loss_terms(model, saes, tokens, cfg)
        terms["loss"].backward()
        grads = {
            f"{h}.{n}": p.grad.clone() for h, s in saes.items() for n, p in s.named_parameters()
        }
        results[chunk] = ({k: v.item() for k, v in terms.items()}, grads)
    ref_terms, ref_grads = results.pop("unfused")
    assert ref_terms["kl"] > 0
    for terms, grads in results.values():
        for name, value in ref_terms.items():
            assert terms[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
        for name, grad in ref_grads.items():
            assert_rel(grads[name], grad, 1e-6, name)


def test_bf16_autocast_chunked_equals_unfused():
    model = model_with(vocab=509)
    g = torch.Generator().manual_seed(2)
    orig = torch.randn(24, 16, generator=g)
    new = (orig + 0.5 * torch.randn(24, 16, generator=g)).requires_grad_()
    out = {}
    for name in ("chunked", "unfused"):
        x = new.detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if name == "chunked":
                kl = logits_mod.residual_kl(model, x, orig, chunk=5)
            else:
                kl = unfused_kl(model, x, orig)
        kl.backward()
        out[name] = (kl.item(), x.grad)
    assert out["chunked"][0] == pytest.approx(out["unfused"][0], rel=2e-2)
    assert_rel(out["chunked"][1], out["unfused"][1], 3e-2, "d new")


def test_triton_kl_per_chunk_equals_torch():
    """On CUDA the fused KL runs per chunk (here under the interpreter)."""
    pytest.importorskip("triton")
    model = model_with(vocab=1003)
    orig = torch.randn(20, 16)
    grads = {}
    shift = torch.randn(20, 16, generator=torch.Generator().manual_seed(5))
    for backend in ("triton", "torch"):
        x = (orig + shift).requires_grad_()
        kl = logits_mod.residual_kl(model, x, orig, backend=backend, chunk=6)
        kl.backward()
        grads[backend] = (kl.item(), x.grad)
    assert grads["triton"][0] == pytest.approx(grads["torch"][0], rel=1e-5)
    assert_rel(grads["triton"][1], grads["torch"][1], 1e-5, "d new")


# -- the published KL fine-tune recipe ------------------------------------------------------
def test_per_step_kl_balance_weighs_kl_and_mse_equally():
    model = make_tiny_model()
    tokens = torch.randint(0, 64, (2, 10))
    sae = _sae(strategy="e2e", kl_balance="per_step")
    terms = compute_loss_terms(model, {HOOK: sae}, tokens, sae.cfg)
    alpha = terms["out_to_in"] / terms["kl"]
    assert terms["kl_alpha"].item() == pytest.approx(alpha.item(), rel=1e-6)
    expected = 0.5 * (alpha * terms["kl"] + terms["out_to_in"]) + 1.5 * terms["sparsity"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert not terms["kl_alpha"].requires_grad  # alpha is a detached weight
    for bad in ({"kl_coefficient": 1.0}, {"strategy": "local"}, {"kl_balance": "sometimes"}):
        with pytest.raises(ValueError, match="kl_balance"):
            _sae(**{"kl_balance": "per_step", **bad})


def test_freeze_threshold_keeps_the_threshold():
    cfg = E2EJumpReLUTrainingSAEConfig(d_in=16, d_sae=48, freeze_threshold=True, kernels="torch",
                                       kl_balance="per_step")  # fmt: skip
    sae = E2EJumpReLUTrainingSAE(cfg)
    before = sae.threshold.detach().clone()
    terms = compute_loss_terms(make_tiny_model(), {HOOK: sae}, torch.randint(0, 64, (2, 10)), cfg)
    terms["loss"].backward()
    assert not sae.threshold.requires_grad and sae.threshold.grad is None
    assert sae.W_enc.grad is not None and torch.equal(sae.threshold, before)
