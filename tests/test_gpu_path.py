"""The CUDA code path, run on CPU as a GPU run would take it, through the real trainer.

On a GPU the trainer uses the fused Triton kernels (kernels='auto' picks them), usually
under bf16 autocast, at densities where the sparse kernels run. Here the same code runs under
the Triton interpreter (TRITON_INTERPRET=1, set by conftest.py) with CPU bf16 autocast, which
does to ops inside autograd Functions what CUDA autocast does: e2e and e2e_ds, standard / TopK /
JumpReLU SAEs, fp32 with TF32 on and off, bf16 autocast, bf16 SAEs, two SAEs in one run, the
sparse branch taken, and the first-use self-check with its fallback. Each run is compared with
the same run on the PyTorch backend: per-step losses and final weights, to the dtype's
tolerance.
"""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import make_tiny_model, make_token_dataset
from e2e_helpers import runner_config
from sae_lens_e2e.kernels import dispatch, launch, sae_triton, selfcheck

from sae_lens_e2e import E2ESAETrainingRunner
from sae_lens_e2e.training import splice
from sae_lens_e2e.training.trainer import E2ETrainer, TokenStream

HOOK = "blocks.1.hook_resid_pre"
STEPS = 2
TOKENS = 16  # per step: one 16-token row (the interpreter runs one program per token/latent)


@pytest.fixture(autouse=True)
def fresh_verdicts():
    selfcheck.clear()
    yield
    selfcheck.clear()


@pytest.fixture
def tf32_flag():
    """Set torch's TF32 flag for a test (it is a property: monkeypatch cannot restore it)."""
    old = torch.backends.cuda.matmul.allow_tf32
    yield lambda on: setattr(torch.backends.cuda.matmul, "allow_tf32", on)
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture
def sparse_branch(monkeypatch):
    """Every SAE forward takes the sparse branch, whatever the density (a fresh ReLU SAE
    fires on ~half its latents; trained ones on ~0.1%, where the threshold sends them)."""
    monkeypatch.setattr(dispatch, "DENSITY_THRESHOLD", 1.01)


def train(tmp_path, kernels: str, *, steps=STEPS, autocast=False, sae=None, **kw):
    """(per-step loss terms, first step's gradients, final weights) of `steps` trainer steps
    on the tiny model; the gradients are read before the optimiser's first step."""
    cfg = runner_config(tmp_path / kernels, steps=steps, sae={"kernels": kernels, **(sae or {})},
                        autocast=autocast, train_batch_size_tokens=TOKENS,
                        training_tokens=TOKENS * steps, lr_warm_up_steps=steps - 1, **kw)  # fmt: skip
    runner = E2ESAETrainingRunner(
        cfg, override_model=make_tiny_model(), override_dataset=make_token_dataset()
    )
    trainer = E2ETrainer(
        runner.cfg, runner.model, runner.saes, TokenStream(runner.activations_store)
    )
    named = {f"{h}.{n}": p for h, sae in runner.saes.items() for n, p in sae.named_parameters()}
    grads: dict[str, torch.Tensor] = {}
    step = trainer.optimizer.step

    def record_then_step(*a, **k):
        if not grads:
            grads.update({n: p.grad.detach().float().clone() for n, p in named.items()})
        return step(*a, **k)

    trainer.optimizer.step = record_then_step
    losses = [trainer.train_step() for _ in range(steps)]
    return losses, grads, {n: p.detach().float().clone() for n, p in named.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


def assert_same_run(got, ref, rtol, exact=None, lr=1e-2):
    """Losses at every step within rtol. fp32 (exact None): the first step's gradients (same
    weights) within rtol, final weights within rtol of their scale. bf16: the first step's
    gradients as close to `exact` (fp32, torch) as the torch backend's own bf16 gradients
    are, and the weights within the two runs' possible Adam drift (about lr per step)."""
    (losses, grads, weights), (ref_losses, ref_grads, ref_weights) = got, ref
    for step, (a, b) in enumerate(zip(losses, ref_losses, strict=True)):
        for name in ("loss", "kl", "sparsity", "in_to_orig", "out_to_in"):
            assert a[name] == pytest.approx(b[name], rel=rtol, abs=rtol * 1e-2), (step, name)
    for name, g in grads.items():
        if exact is None:
            assert rel_err(g, ref_grads[name]) < rtol, name
        else:
            ours, theirs = rel_err(g, exact[1][name]), rel_err(ref_grads[name], exact[1][name])
            assert ours <= 2 * theirs + 1e-2, f"d {name}: {ours:.3g} vs torch's {theirs:.3g}"
    for name, w in weights.items():
        drift = (w - ref_weights[name]).abs().max().item()
        if exact is None:  # Adam's eps regime turns a 1e-10 gradient difference on a nearly
            # unused latent into up to ~1% of lr: allow that, not more
            bound = rtol * ref_weights[name].abs().max().item() + 1e-2 * lr
        else:
            bound = 2 * lr * len(losses)
        assert drift <= bound, f"{name}: weights {drift:.3g} apart (bound {bound:.3g})"


CASES = {
    # id: (strategy, architecture, precision, extra SAE config): every strategy, architecture
    # and precision at least once, two SAEs in one run; all on the sparse branch
    "e2e-standard-fp32": ("e2e", "standard", "fp32", {}),
    "e2e_ds-topk-tf32": ("e2e_ds", "topk", "tf32", {}),
    "e2e-jumprelu-tf32": ("e2e", "jumprelu", "tf32", {}),
    "e2e_ds-standard-autocast": ("e2e_ds", "standard", "autocast", {}),
    "e2e-jumprelu-autocast": ("e2e", "jumprelu", "autocast", {}),
    "e2e-topk-bf16sae": ("e2e", "topk", "bf16", {}),
    "e2e_ds-jumprelu-bf16sae": ("e2e_ds", "jumprelu", "bf16", {}),
    "two-saes-e2e_ds-autocast": (
        "e2e_ds",
        "standard",
        "autocast",
        {"additional_hook_names": ["blocks.2.hook_resid_pre"]},
    ),  # fmt: skip
}
RTOL = {"fp32": 1e-4, "tf32": 1e-4, "autocast": 3e-2, "bf16": 3e-2}


@pytest.mark.parametrize("case", list(CASES))
def test_trainer_on_the_kernel_path_equals_torch(
    case, tmp_path, sparse_branch, tf32_flag, monkeypatch
):
    strategy, architecture, precision, sae = CASES[case]
    dtypes = []  # what the spliced SAEs computed in (autocast must reach them, on CPU too)
    real = splice.sae_forward
    monkeypatch.setattr(splice, "sae_forward", lambda s, x: dtypes.append(
        (out := real(s, x))[1].dtype) or out)  # fmt: skip
    tf32_flag(precision == "tf32")  # on: the fused encoder (interpreted in fp32); off: torch's
    kw = {"strategy": strategy, "architecture": architecture, "sae": sae}
    exact = None
    if precision in ("autocast", "bf16"):
        exact = train(tmp_path / "exact", "torch", **kw)
    kw["autocast"] = precision == "autocast"
    if precision == "bf16":
        kw["sae"] = {**sae, "dtype": "bfloat16"}
    dtypes.clear()
    got = train(tmp_path, "triton", **kw)
    assert set(dtypes) == {torch.bfloat16 if precision in ("autocast", "bf16") else torch.float32}
    ref = train(tmp_path, "torch", **kw)
    assert_same_run(got, ref, RTOL[precision], exact)


def test_topk_takes_the_sparse_branch_at_its_own_density(tmp_path, monkeypatch):
    """k=2 of 256 latents is 0.8% dense: below fp32's threshold without any override."""
    calls = []
    real = sae_triton.decode
    monkeypatch.setattr(sae_triton, "decode", lambda *a: calls.append(1) or real(*a))
    kw = {"architecture": "topk", "sae": {"d_sae": 256, "k": 2}}
    got = train(tmp_path, "triton", **kw)
    assert len(calls) >= STEPS  # every training step decoded sparsely (plus the self-check)
    assert_same_run(got, train(tmp_path, "torch", **kw), 1e-4)


# -- first use: self-check, fallback, and the sparse kernels compiled at start --------------
@pytest.fixture
def auto_is_triton(monkeypatch):
    """kernels='auto' decides as on an NVIDIA GPU: here, the interpreter stands for it."""
    monkeypatch.setattr(dispatch, "auto_uses_triton", lambda device: True)


def kernel_launches(monkeypatch) -> list[str]:
    names: list[str] = []
    real = launch.Launch.__call__
    monkeypatch.setattr(launch.Launch, "__call__", lambda self: names.append(
        self.kernel.__name__) or real(self))  # fmt: skip
    return names


def test_sparse_kernels_compile_at_the_first_step(tmp_path, monkeypatch, auto_is_triton):
    """A run that starts dense (every fresh ReLU SAE does) still builds and checks the sparse
    kernels in its first step, not the first time density drops hours later."""
    monkeypatch.setattr(dispatch, "DENSITY_THRESHOLD", 0.0)  # training itself never goes sparse
    names = kernel_launches(monkeypatch)
    train(tmp_path, "auto", steps=1)
    assert {"_decode_kernel", "_bwd_row_kernel", "_bwd_col_kernel"} <= set(names)
    assert "_bwd_col_finish_kernel" in names  # the split of a long column, too
    assert "_kl_fwd_kernel" in names and "_kl_bwd_kernel" in names


@pytest.mark.parametrize("failure", ["wrong", "raises"])
def test_auto_falls_back_to_pytorch_with_one_warning(
    failure, tmp_path, monkeypatch, caplog, auto_is_triton, sparse_branch
):
    real = sae_triton.decode

    def decode(*args):
        if failure == "raises":
            raise RuntimeError("PTX assembly aborted (simulated)")
        return real(*args) * 0

    monkeypatch.setattr(sae_triton, "decode", decode)
    with caplog.at_level(logging.WARNING, logger="sae_lens_e2e.kernels"):
        got = train(tmp_path, "auto")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "_decode_kernel failed its self-check on cpu" in warnings[0]
    assert "d_in 16, relu" in warnings[0] and "using PyTorch for it" in warnings[0]
    assert ("PTX assembly aborted" if failure == "raises" else "out:") in warnings[0]
    assert "\n" not in warnings[0]
    assert_same_run(got, train(tmp_path, "torch"), 1e-4)


def test_explicit_triton_raises_instead(tmp_path, monkeypatch, sparse_branch):
    def decode(*args):
        raise RuntimeError("PTX assembly aborted (simulated)")

    monkeypatch.setattr(sae_triton, "decode", decode)
    with pytest.raises(RuntimeError, match="kernels='triton': _decode_kernel failed its self"):
        train(tmp_path, "triton", steps=1)


def test_failing_encoder_or_kl_falls_back_alone(tmp_path, monkeypatch, caplog, auto_is_triton,
                                                tf32_flag):  # fmt: skip
    """Only the failing kernel goes to PyTorch: the encoder's GEMM, the KL; the sparse
    decode/backward still run fused."""
    from sae_lens_e2e.kernels import kl_triton

    def encode(*args):
        raise RuntimeError("out of resources: shared memory (simulated)")

    def kl_forward(*args):
        raise RuntimeError("unsupported vocabulary (simulated)")

    tf32_flag(True)
    monkeypatch.setattr(sae_triton, "encode", encode)
    monkeypatch.setattr(kl_triton, "kl_forward", kl_forward)
    names = kernel_launches(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="sae_lens_e2e.kernels"):
        got = train(tmp_path, "auto", steps=2)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    assert any(w.startswith("_encode_kernel failed") for w in warnings)
    assert any(w.startswith("_kl_fwd_kernel failed") and "vocab 64" in w for w in warnings)
    assert "_bwd_col_kernel" in names
    assert_same_run(got, train(tmp_path, "torch", steps=2), 1e-4)


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_bf16_saes_can_be_built(tmp_path, architecture):
    """The orthogonal decoder init is drawn in fp32 (QR has no bf16 kernel), then cast."""
    cfg = runner_config(tmp_path, architecture=architecture, sae={"dtype": "bfloat16"})
    runner = E2ESAETrainingRunner(
        cfg, override_model=make_tiny_model(), override_dataset=make_token_dataset()
    )
    sae = runner.saes[HOOK]
    assert sae.W_dec.dtype == torch.bfloat16 and sae.W_enc.dtype == torch.bfloat16
    cols = sae.W_dec.float().T @ sae.W_dec.float()  # d_sae 64 > d_in 16: orthonormal columns
    assert torch.allclose(cols, torch.eye(16), atol=2e-2)
