"""The loss terms against a straightforward two-full-pass implementation of the reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sae_lens_e2e import E2EStandardTrainingSAE, E2EStandardTrainingSAEConfig, compute_loss_terms


def _sae(d_in: int = 16, d_sae: int = 64, seed: int = 0, **kw) -> E2EStandardTrainingSAE:
    """A training SAE with a random (non-zero) decoder bias, which the output carries."""
    torch.manual_seed(seed)
    sae = E2EStandardTrainingSAE(E2EStandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, **kw))
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.5)
    return sae


def _identity_sae(d_in: int = 16) -> E2EStandardTrainingSAE:
    """ReLU(x) - ReLU(-x) = x exactly, with unit decoder rows."""
    sae = _sae(d_in, 2 * d_in, strategy="e2e")
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.b_enc.zero_()
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_dec.zero_()
    return sae


def _reference_terms(model, saes, tokens, downstream, p=1.0):
    """Two full forward passes (clean, spliced) and the reference `losses.py` formulas."""
    d_in = next(iter(saes.values())).cfg.d_in
    cache: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(tokens, names_filter=list(downstream))
    sparsity, out_to_in = 0.0, 0.0

    def splice(act, hook):
        nonlocal sparsity, out_to_in
        sae = saes[hook.name]
        c = torch.relu(act @ sae.W_enc + sae.b_enc)
        out = c @ F.normalize(sae.W_dec, dim=-1) + sae.b_dec
        sparsity = sparsity + torch.norm(c, p=p, dim=-1).mean() / d_in
        out_to_in = out_to_in + F.mse_loss(act, out)
        return out

    def keep(act, hook):
        cache[hook.name] = act

    hooks = [(h, splice) for h in saes] + [(h, keep) for h in downstream]
    new_logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    kl = F.kl_div(
        F.log_softmax(new_logits.flatten(0, 1), -1),
        F.log_softmax(clean_logits.flatten(0, 1), -1),
        log_target=True,
        reduction="batchmean",
    )
    in_to_orig = sum(F.mse_loss(cache[h], clean_cache[h]) for h in downstream) / len(downstream)
    return {"kl": kl, "sparsity": sparsity, "out_to_in": out_to_in, "in_to_orig": in_to_orig}


def test_kl_is_exactly_zero_for_identity_sae(tiny_model):
    tokens = torch.randint(0, 64, (3, 16))
    sae = _identity_sae()
    terms = compute_loss_terms(tiny_model, {"blocks.1.hook_resid_pre": sae}, tokens, sae.cfg)
    assert terms["kl"].item() == 0.0
    assert terms["in_to_orig"].item() == 0.0
    assert terms["out_to_in"].item() == 0.0


@pytest.mark.parametrize("strategy", ["local", "e2e", "e2e_ds"])
def test_terms_match_two_pass_reference(tiny_model, strategy):
    """Two SAEs with random decoder biases, and two downstream hooks after them."""
    tokens = torch.randint(0, 64, (3, 16))
    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    saes = {h: _sae(seed=i, strategy=strategy, l1_coefficient=1.5) for i, h in enumerate(hooks)}
    cfg = saes[hooks[0]].cfg
    downstream = ["blocks.2.hook_resid_pre", "blocks.3.hook_resid_pre"]
    terms = compute_loss_terms(tiny_model, saes, tokens, cfg)
    ref = _reference_terms(tiny_model, saes, tokens, downstream)
    for name in ("kl", "sparsity", "out_to_in", "in_to_orig"):
        torch.testing.assert_close(terms[name], ref[name], rtol=1e-5, atol=1e-7, msg=name)
    c = cfg.loss_coefficients()
    expected = (
        c.kl * ref["kl"]
        + 1.5 * ref["sparsity"]
        + c.out_to_in * ref["out_to_in"]
        + c.in_to_orig * ref["in_to_orig"]
    )
    torch.testing.assert_close(terms["loss"], expected, rtol=1e-5, atol=1e-7)


def test_gradients_match_two_pass_reference(tiny_model):
    tokens = torch.randint(0, 64, (2, 16))
    sae = _sae(strategy="e2e_ds", l1_coefficient=2.0)
    hook = "blocks.1.hook_resid_pre"
    downstream = ["blocks.2.hook_resid_pre", "blocks.3.hook_resid_pre"]
    compute_loss_terms(tiny_model, {hook: sae}, tokens, sae.cfg)["loss"].backward()
    ours = [p.grad.clone() for p in sae.parameters()]
    sae.zero_grad()
    ref = _reference_terms(tiny_model, {hook: sae}, tokens, downstream)
    (0.5 * ref["kl"] + 2.0 * ref["sparsity"] + 2.5 * ref["in_to_orig"]).backward()
    for mine, theirs in zip(ours, [p.grad for p in sae.parameters()], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model):
    tokens = torch.randint(0, 64, (2, 16))
    grads = []
    for flag in (False, True):
        sae = _sae(strategy="e2e_ds", gradient_checkpointing=flag)
        terms = compute_loss_terms(tiny_model, {"blocks.0.hook_resid_pre": sae}, tokens, sae.cfg)
        terms["loss"].backward()
        grads.append([p.grad for p in sae.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_local_skips_logits_off_log_steps(tiny_model):
    tokens = torch.randint(0, 64, (2, 16))
    sae = _sae(strategy="local", l1_coefficient=1.0)
    hook = {"blocks.1.hook_resid_pre": sae}
    full = compute_loss_terms(tiny_model, hook, tokens, sae.cfg)
    cheap = compute_loss_terms(tiny_model, hook, tokens, sae.cfg, all_terms=False)
    assert full["kl"] > 0 and cheap["kl"] == 0
    torch.testing.assert_close(full["loss"], cheap["loss"])
    torch.testing.assert_close(full["loss"], full["out_to_in"] + full["sparsity"])


def test_paper_coefficient_defaults():
    cfg = E2EStandardTrainingSAEConfig(d_in=16, d_sae=64, strategy="e2e_ds", l1_coefficient=50)
    c = cfg.loss_coefficients()
    assert (c.kl, c.sparsity, c.out_to_in, c.in_to_orig) == (0.5, 50, 0.0, 2.5)
    local = E2EStandardTrainingSAEConfig(d_in=16, d_sae=64, strategy="local").loss_coefficients()
    assert (local.kl, local.out_to_in, local.in_to_orig) == (0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="strategy"):
        E2EStandardTrainingSAEConfig(d_in=16, d_sae=64, strategy="global")


@pytest.mark.parametrize("strategy", ["e2e", "e2e_ds"])
def test_triton_kernels_give_the_same_terms_and_gradients(tiny_model, strategy):
    """The trainer's path through the fused kernels (interpreted on CPU) equals plain torch."""
    tokens = torch.randint(0, 64, (2, 16))
    results = []
    for backend in ("torch", "triton"):
        sae = _sae(strategy=strategy, l1_coefficient=1.5, kernels=backend)
        terms = compute_loss_terms(tiny_model, {"blocks.1.hook_resid_pre": sae}, tokens, sae.cfg)
        terms["loss"].backward()
        results.append((terms, [p.grad for p in sae.parameters()]))
    (t_terms, t_grads), (k_terms, k_grads) = results
    for name in ("kl", "sparsity", "in_to_orig", "out_to_in", "loss", "l0"):
        torch.testing.assert_close(k_terms[name], t_terms[name], rtol=1e-5, atol=1e-6, msg=name)
    for a, b in zip(k_grads, t_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_converted_paper_sae_gives_the_reference_terms(tiny_model, tmp_path):
    """Reference parity through stock SAELens: paper-format SAEs at two positions (random
    decoder biases, unnormalised decoders) converted and loaded with `SAE.load_from_disk`,
    then `compute_loss_terms` with an e2e_ds config, against the reference formulas on the
    reference state dict itself (two full passes, two downstream hooks)."""
    from sae_lens import SAE
    from test_convert import make_reference_config, make_reference_sd, write_checkpoint

    from sae_lens_e2e.loading.convert import convert_checkpoint

    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    sd = make_reference_sd(hooks, seed=5)
    ckpt, config = write_checkpoint(tmp_path, sd, make_reference_config("hook_resid_pre"))
    saes = {
        h: SAE.load_from_disk(f)
        for h, f in convert_checkpoint(ckpt, config, tmp_path / "o").items()
    }
    cfg = E2EStandardTrainingSAEConfig(d_in=16, d_sae=64, strategy="e2e_ds", l1_coefficient=2.0)
    tokens = torch.randint(0, 64, (3, 16))
    terms = compute_loss_terms(tiny_model, saes, tokens, cfg)

    downstream = ["blocks.2.hook_resid_pre", "blocks.3.hook_resid_pre"]
    with torch.no_grad():
        clean_logits, clean = tiny_model.run_with_cache(tokens, names_filter=downstream)
    acts, sparsity, out_to_in = {}, 0.0, 0.0

    def reference_sae(act, hook):  # e2e_sae's SAE.forward and its loss terms, on its weights
        nonlocal sparsity, out_to_in
        p = hook.name.replace(".", "-") + "."
        c = F.relu(F.linear(act, sd[p + "encoder.0.weight"], sd[p + "encoder.0.bias"]))
        out = F.linear(c, F.normalize(sd[p + "decoder.weight"], dim=0), sd[p + "decoder.bias"])
        sparsity = sparsity + torch.norm(c, p=1, dim=-1).mean() / 16
        out_to_in = out_to_in + F.mse_loss(out, act)
        return out

    def keep(act, hook):
        acts[hook.name] = act

    with torch.no_grad():
        new_logits = tiny_model.run_with_hooks(
            tokens, fwd_hooks=[(h, reference_sae) for h in hooks] + [(h, keep) for h in downstream]
        )
    kl = F.kl_div(F.log_softmax(new_logits.flatten(0, 1), -1),
                  F.log_softmax(clean_logits.flatten(0, 1), -1), log_target=True,
                  reduction="batchmean")  # fmt: skip
    in_to_orig = sum(F.mse_loss(acts[h], clean[h]) for h in downstream) / len(downstream)
    expected = {"kl": kl, "sparsity": sparsity, "out_to_in": out_to_in, "in_to_orig": in_to_orig}
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(terms["loss"], 0.5 * kl + 2.0 * sparsity + 2.5 * in_to_orig)
