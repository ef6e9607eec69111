"""Our SAEs under SAELens's own `LanguageModelSAETrainingRunner` (what SAELens's CLI runs):
e2e strategies are refused before any training, `local` trains the reference's local loss."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model, make_token_dataset
from e2e_helpers import runner_config
from sae_lens import SAE, LanguageModelSAETrainingRunner
from sae_lens.saes.sae import TrainStepInput

from sae_lens_e2e import E2EStandardTrainingSAE, E2ETopKTrainingSAE, compute_loss_terms

HOOK = "blocks.1.hook_resid_pre"


def _sae_lens_runner(cfg) -> LanguageModelSAETrainingRunner:
    return LanguageModelSAETrainingRunner(
        cfg, override_dataset=make_token_dataset(), override_model=make_tiny_model()
    )


@pytest.mark.parametrize("strategy", ["e2e", "e2e_ds"])
def test_e2e_strategies_fail_before_any_training(tmp_path, strategy):
    runner = _sae_lens_runner(runner_config(tmp_path, strategy=strategy))
    before = {k: v.clone() for k, v in runner.sae.state_dict().items()}
    with pytest.raises(ValueError, match=f"strategy='{strategy}'") as err:
        runner.run()
    message = str(err.value)
    assert "E2ESAETrainingRunner" in message and "`sae-lens-e2e train" in message
    assert runner.activations_store.n_dataset_processed == 0  # no activation was read
    for name, value in runner.sae.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"grad_clip_norm": 10.0}, "grad_clip_norm=10.0"),
        ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps=2"),
        ({"additional_hook_names": ["blocks.2.hook_resid_pre"]}, "additional_hook_names"),
        ({"kl_coefficient": 0.5}, "kl_coefficient=0.5"),
    ],
)
def test_local_settings_saelens_would_ignore_are_refused(tmp_path, change, field):
    cfg = runner_config(tmp_path, strategy="local", sae=change)
    with pytest.raises(ValueError, match="SAELens's SAETrainer cannot train") as err:
        E2EStandardTrainingSAE(cfg.sae).get_coefficients()  # what SAETrainer.__init__ calls
    assert field in str(err.value) and "E2ESAETrainingRunner" in str(err.value)


@pytest.mark.parametrize("architecture", ["standard", "topk"])
def test_local_loss_under_saelens_equals_compute_loss_terms(tmp_path, architecture):
    """SAELens's trainer calls `training_forward_pass` on activations: it must give the same
    loss (and gradients) as `compute_loss_terms`'s local loss on the same tokens."""
    cfg = runner_config(
        tmp_path,
        strategy="local",
        architecture=architecture,
        sae={"init_decoder_orthogonal": False},
    )
    sae_class = E2EStandardTrainingSAE if architecture == "standard" else E2ETopKTrainingSAE
    torch.manual_seed(0)
    sae = sae_class(cfg.sae)
    with torch.no_grad():  # decoder rows far from unit norm, so the normalisation matters
        sae.W_dec.mul_(torch.rand(sae.cfg.d_sae, 1) * 3 + 0.2)
        sae.b_dec.normal_()
    model = make_tiny_model()
    tokens = torch.tensor(make_token_dataset(n_rows=6, seed=5)["tokens"])

    ours = compute_loss_terms(model, {HOOK: sae}, tokens, cfg)
    ours["loss"].backward()
    grads = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()

    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    coefficients = {k: c.value for k, c in sae.get_coefficients().items()}
    assert coefficients == ({"l1": 0.5} if architecture == "standard" else {})
    step = TrainStepInput(
        sae_in=cache[HOOK].flatten(0, 1),
        coefficients=coefficients,
        dead_neuron_mask=None,
        n_training_steps=0,
        is_logging_step=False,
    )
    out = sae.training_forward_pass(step)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(ours["loss"].item(), rel=1e-5)
    for name in ("out_to_in", "sparsity"):
        assert out.losses[name].item() == pytest.approx(ours[name].item(), rel=1e-5), name
    for name, param in sae.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], rtol=1e-4, atol=1e-7, msg=name)


def test_local_sae_trains_through_saelens_runner(tmp_path):
    """SAELens's runner, buffer, dead-latent tracking and saving, our loss."""
    cfg = runner_config(tmp_path, strategy="local", steps=10)
    sae = _sae_lens_runner(cfg).run()
    assert isinstance(sae, E2EStandardTrainingSAE)
    assert sae.cfg.metadata.num_dead_features is not None
    stock = SAE.load_from_disk(tmp_path / "out")  # saved by SAELens as a stock standard SAE
    assert stock.cfg.architecture() == "standard"
    torch.testing.assert_close(stock.W_dec.norm(dim=-1), torch.ones(stock.cfg.d_sae))
