"""JumpReLU e2e SAE: the fused-kernel path trains the threshold exactly as SAELens's STE does."""

from __future__ import annotations

import pytest
import torch
from sae_lens.saes.jumprelu_sae import JumpReLU
from sae_lens_e2e.kernels import dispatch

from sae_lens_e2e import E2EJumpReLUTrainingSAE, E2EJumpReLUTrainingSAEConfig
from sae_lens_e2e.training.jumprelu import jumprelu_forward, l0_penalty

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or dispatch.interpret_mode())
    or dispatch.triton_import_error() is not None,
    reason="needs CUDA or TRITON_INTERPRET=1 with triton",
)
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _params(n: int = 32, d: int = 16, s: int = 64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(n, d, generator=gen),
        torch.randn(d, s, generator=gen) * 0.3,
        torch.randn(s, generator=gen) * 0.1 - 0.2,
        torch.randn(s, d, generator=gen) * (torch.rand(s, 1, generator=gen) + 0.5),
        torch.randn(d, generator=gen),
        torch.rand(s, generator=gen) * 0.5,
    ]
    return [t.to(DEV).requires_grad_(i > 0) for i, t in enumerate(tensors)]


@pytest.mark.parametrize("mode", ["step", "quadratic", "tanh"])
@pytest.mark.parametrize("density_threshold", [2.0, 0.0])  # sparse, dense kernel path
def test_kernel_path_gradients_equal_saelens_ste(mode, density_threshold, monkeypatch):
    monkeypatch.setattr(dispatch, "DENSITY_THRESHOLD", density_threshold)
    cfg = E2EJumpReLUTrainingSAEConfig(
        d_in=16, d_sae=64, jumprelu_bandwidth=0.5, jumprelu_sparsity_loss_mode=mode,
        target_l0=20.0 if mode == "quadratic" else None,
    )  # fmt: skip
    x, *params = _params()
    results = []
    for backend in ("torch", "triton"):
        acts, out, pre = jumprelu_forward(x, *params, bandwidth=0.5, backend=backend)
        loss = (out - x).pow(2).mean() + 0.01 * l0_penalty(pre, acts, params[-1], cfg)
        results.append((acts, out, torch.autograd.grad(loss, params)))
    (ref_acts, ref_out, ref_grads), (acts, out, grads) = results
    torch.testing.assert_close(acts, ref_acts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert ref_grads[-1].abs().max() > 0  # the threshold does get a gradient
    for got, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


def test_torch_path_is_saelens_jumprelu_with_normalised_decoder():
    x, W_enc, b_enc, W_dec, b_dec, thr = _params()
    acts, out, pre = jumprelu_forward(
        x, W_enc, b_enc, W_dec, b_dec, thr, bandwidth=0.5, backend="torch"
    )
    expected = JumpReLU.apply(x @ W_enc + b_enc, thr, 0.5, False)
    torch.testing.assert_close(acts, expected)
    torch.testing.assert_close(out, expected @ (W_dec / W_dec.norm(dim=1, keepdim=True)) + b_dec)


def test_sae_clamps_threshold_and_uses_l0_coefficient_as_lambda():
    cfg = E2EJumpReLUTrainingSAEConfig(d_in=8, d_sae=16, l0_coefficient=0.25, kernels="torch")
    sae = E2EJumpReLUTrainingSAE(cfg)
    assert sae.threshold.dtype == torch.float32
    with torch.no_grad():
        sae.threshold.fill_(-1.0)
    acts, _, sparsity = sae.e2e_forward(torch.randn(4, 3, 8))
    assert (sae.threshold == 0).all() and acts.shape == (4, 3, 16)
    assert sparsity.item() == pytest.approx((acts != 0).float().sum(-1).mean().item())
    assert cfg.loss_coefficients().sparsity == 0.25


@pytest.mark.parametrize(
    ("field", "value"), [("l0_warm_up_steps", 10), ("pre_act_loss_coefficient", 3e-6)]
)
def test_unsupported_saelens_fields_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        E2EJumpReLUTrainingSAEConfig(d_in=8, d_sae=16, **{field: value})
