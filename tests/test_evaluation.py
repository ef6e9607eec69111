"""`evaluate` on stock SAELens SAEs, cross-checked against SAELens's own `get_recons_loss`."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model, make_token_dataset
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.evals import get_recons_loss
from sae_lens.training.activation_scaler import ActivationScaler

from sae_lens_e2e import evaluate, evaluate_many
from sae_lens_e2e.training.evaluation import explained_variance_per_token

HOOK = "blocks.1.hook_resid_pre"


def _stock_sae(seed: int = 0, apply_b_dec_to_input: bool = True) -> StandardSAE:
    """A stock SAELens SAE (no `e2e_forward`) with random, non-trivial weights."""
    torch.manual_seed(seed)
    cfg = StandardSAEConfig(d_in=16, d_sae=48, apply_b_dec_to_input=apply_b_dec_to_input)
    cfg.metadata.hook_name = HOOK
    sae = StandardSAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return sae


def _tokens(n_rows: int = 12) -> torch.Tensor:
    return torch.tensor(make_token_dataset(n_rows=n_rows, seed=7)["tokens"])


def test_stock_sae_matches_saelens_get_recons_loss():
    model, sae, tokens = make_tiny_model(), _stock_sae(), _tokens()
    assert not hasattr(sae, "e2e_forward")
    ours = evaluate(model, {HOOK: sae}, tokens, batch_size=5)
    ref = get_recons_loss(
        sae, model, ActivationScaler(), tokens, compute_kl=True, compute_ce_loss=True
    )
    assert ours["ce_loss_clean"] == pytest.approx(
        ref["ce_loss_without_sae"].mean().item(), rel=1e-5
    )
    assert ours["ce_loss_with_sae"] == pytest.approx(
        ref["ce_loss_with_sae"].mean().item(), rel=1e-5
    )
    assert ours["ce_loss_zero_ablation"] == pytest.approx(
        ref["ce_loss_with_ablation"].mean().item(), rel=1e-5
    )
    assert ours["kl"] == pytest.approx(ref["kl_div_with_sae"].mean().item(), rel=1e-4, abs=1e-6)
    # The SAE must actually change the output, or the comparison proves nothing.
    assert abs(ours["ce_loss_increase"]) > 1e-3


def test_stock_sae_l0_and_alive_match_encode():
    model, sae, tokens = make_tiny_model(), _stock_sae(seed=1), _tokens(6)
    ours = evaluate(model, {HOOK: sae}, tokens)
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    acts = sae.encode(cache[HOOK]).flatten(0, 1)
    assert ours[f"l0/{HOOK}"] == pytest.approx((acts > 0).float().sum(-1).mean().item())
    assert ours[f"alive/{HOOK}"] == int(((acts > 0).sum(0) > 0).sum())


def test_evaluate_many_mixes_stock_and_training_saes_consistently():
    model, tokens = make_tiny_model(), _tokens(8)
    sets = {"a": {HOOK: _stock_sae(0)}, "b": {HOOK: _stock_sae(1, apply_b_dec_to_input=False)}}
    many = evaluate_many(model, sets, tokens, batch_size=3)
    for label, saes in sets.items():
        single = evaluate(model, saes, tokens, batch_size=8)
        for key in ("ce_loss_clean", "ce_loss_with_sae", "ce_loss_zero_ablation", "kl", "l0"):
            assert many[label][key] == pytest.approx(single[key], rel=1e-5), (label, key)
        m = many[label]
        assert m["ce_loss_increase"] == pytest.approx(m["ce_loss_with_sae"] - m["ce_loss_clean"])
        assert m["ce_loss_recovered"] == pytest.approx(
            (m["ce_loss_zero_ablation"] - m["ce_loss_with_sae"])
            / (m["ce_loss_zero_ablation"] - m["ce_loss_clean"])
        )


@pytest.mark.parametrize(
    ("hook", "d_in", "message"),
    [
        (HOOK, 12, rf"SAE 'bad' at '{HOOK}' has d_in=12, but hook '{HOOK}' .* has width 16"),
        ("blocks.1.hook_nope", 16, r"SAE 'bad' at 'blocks.1.hook_nope': hook .* does not exist"),
    ],
)
def test_evaluate_many_refuses_an_sae_that_does_not_fit_its_hook(hook, d_in, message):
    model, tokens = make_tiny_model(), _tokens(4)
    bad = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=8))
    with pytest.raises(ValueError, match=message):
        evaluate_many(model, {"good": {HOOK: _stock_sae()}, "bad": {hook: bad}}, tokens)


def test_explained_variance_of_an_sae_on_a_resid_post_hook():
    """The SAE's own hook must report SAE output vs input, not a cached copy of its input."""
    model = make_tiny_model()
    hook = "blocks.0.hook_resid_post"
    torch.manual_seed(3)
    sae = StandardSAE(StandardSAEConfig(d_in=16, d_sae=32))
    tokens = torch.randint(0, 64, (4, 16))
    metrics = evaluate(model, {hook: sae}, tokens)
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    x = cache[hook].flatten(0, 1)
    with torch.no_grad():
        y = sae(x)
    expected = 1 - (x - y).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert metrics[f"explained_variance/{hook}"] == pytest.approx(expected.item(), rel=1e-4)


def _spliced_and_clean(model, sae, hook, tokens):
    """Activations by plain TransformerLens runs: the SAE's input and output, and every later
    hook_resid_post with the SAE spliced in and without it."""
    posts = [f"blocks.{i}.hook_resid_post" for i in range(1, model.cfg.n_layers)]
    seen = {}

    def splice(act, hook):
        seen["in"], seen["out"] = act, sae(act)
        return seen["out"]

    with torch.no_grad():
        _, clean = model.run_with_cache(tokens, names_filter=posts)
        with model.hooks(fwd_hooks=[(hook, splice)]):
            _, spliced = model.run_with_cache(tokens, names_filter=posts)
    pairs = {hook: (seen["in"], seen["out"])}
    pairs.update({p: (spliced[p], clean[p]) for p in posts})
    return pairs


def _pooled_ev(prediction, target):
    """SAELens's pooled explained variance over every token, by brute force (float64)."""
    x, y = target.flatten(0, 1).double(), prediction.flatten(0, 1).double()
    mean = x.mean(0)
    residual = sum(((x[t] - y[t]) ** 2).sum() for t in range(len(x)))
    variance = sum(((x[t] - mean) ** 2).sum() for t in range(len(x)))
    return (1 - residual / variance).item()


def _per_token_ev(prediction, target, batch_size):
    """The paper's: per token, 1 - ||pred - target||^2 / ||target - batch mean||^2, target mean
    over the batch's tokens (reference calc_explained_variance), then the mean over tokens."""
    values = []
    for pred, tgt in zip(prediction.split(batch_size), target.split(batch_size), strict=True):
        pred, tgt = pred.flatten(0, 1).double(), tgt.flatten(0, 1).double()
        mean = tgt.mean(0)
        for t in range(len(tgt)):
            values.append(1 - ((pred[t] - tgt[t]) ** 2).sum() / ((tgt[t] - mean) ** 2).sum())
    return torch.stack(values).mean().item()


def test_explained_variance_pooled_and_per_token_match_brute_force():
    model, sae, tokens = make_tiny_model(), _stock_sae(seed=2), _tokens(12)
    batch_size = 5  # uneven last batch: the per-token mean weighs every token equally
    metrics = evaluate(model, {HOOK: sae}, tokens, batch_size=batch_size)
    pairs = _spliced_and_clean(model, sae, HOOK, tokens)
    assert len(pairs) == 4
    sae_in, sae_out = pairs.pop(HOOK)
    # At the SAE: pooled as SAELens (output vs input), per token as the reference (which
    # passes the SAE input as prediction and the SAE output as target).
    assert metrics[f"explained_variance/{HOOK}"] == pytest.approx(
        _pooled_ev(sae_out, sae_in), rel=1e-4
    )
    assert metrics[f"explained_variance_per_token/{HOOK}"] == pytest.approx(
        _per_token_ev(sae_in, sae_out, batch_size), rel=1e-4
    )
    for post, (spliced, clean) in pairs.items():
        assert metrics[f"explained_variance/{post}"] == pytest.approx(
            _pooled_ev(spliced, clean), rel=1e-4
        ), post
        assert metrics[f"explained_variance_per_token/{post}"] == pytest.approx(
            _per_token_ev(spliced, clean, batch_size), rel=1e-4
        ), post
    # Different quantities (else the test above could not tell the names apart).
    assert (
        abs(metrics[f"explained_variance/{HOOK}"] - metrics[f"explained_variance_per_token/{HOOK}"])
        > 1e-3
    )


def test_per_token_explained_variance_is_not_dominated_by_one_large_token():
    """GPT-2's first position has a huge norm: pooled EV is all about it, per token is not."""
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(2, 64, 8, generator=gen)
    target[:, 0] *= 100.0
    prediction = target.clone()
    prediction[:, 1:] += 2 * torch.randn(2, 63, 8, generator=gen)  # small tokens are missed
    per_token = explained_variance_per_token(prediction, target)
    assert per_token.shape == (2, 64)
    assert per_token.mean().item() < 0
    assert _pooled_ev(prediction, target) > 0.95
