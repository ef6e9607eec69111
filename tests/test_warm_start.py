"""Warm start from standard / topk / jumprelu SAELens SAEs: exact, from every source, or refused.

Sources: an SAE object, a saved folder (`from_pretrained_path`) and a release + SAE id read by
`SAE.from_pretrained` from a hub served out of a directory (only the transport is faked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_tiny_model, make_token_dataset
from e2e_helpers import runner_config
from sae_lens import (
    SAE,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)

from sae_lens_e2e import E2ESAETrainingRunner

HOOK = "blocks.1.hook_resid_pre"
D_IN, D_SAE, K = 16, 64, 8


def _randomise(sae: SAE[Any], unit_rows: bool = False) -> SAE[Any]:
    """Non-trivial biases and (unless `unit_rows`) decoder rows far from unit norm."""
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.5)
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_()
        sae.W_dec.normal_()
        norms = torch.ones(D_SAE, 1) if unit_rows else torch.rand(D_SAE, 1) * 3 + 0.2
        sae.W_dec.copy_(sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True) * norms)
    return sae


def _source(architecture: str, apply_b_dec: bool) -> SAE[Any]:
    torch.manual_seed(3)
    if architecture == "standard":
        return _randomise(
            StandardSAE(StandardSAEConfig(D_IN, D_SAE, apply_b_dec_to_input=apply_b_dec))
        )
    if architecture == "topk":
        cfg = TopKSAEConfig(
            D_IN, D_SAE, k=K, apply_b_dec_to_input=apply_b_dec, rescale_acts_by_decoder_norm=True
        )
        return _randomise(TopKSAE(cfg))
    sae = _randomise(JumpReLUSAE(JumpReLUSAEConfig(D_IN, D_SAE, apply_b_dec_to_input=apply_b_dec)))
    with torch.no_grad():  # some negative thresholds: stock JumpReLU applies ReLU first
        sae.threshold.copy_(torch.rand(D_SAE) * 0.8 - 0.2)
    return sae


def _runner(
    tmp_path: Path, architecture: str, model: Any = None, **kw: Any
) -> E2ESAETrainingRunner:
    sae = {"k": K} if architecture == "topk" else {}
    cfg_kw = {k: kw.pop(k) for k in ("from_pretrained_path",) if k in kw}
    cfg = runner_config(
        tmp_path, architecture=architecture, steps=3, sae=sae | kw.pop("sae", {}), **cfg_kw
    )
    return E2ESAETrainingRunner(
        cfg,
        override_model=model or make_tiny_model(),
        override_dataset=make_token_dataset(),
        **kw,
    )


def _assert_same_function(runner: E2ESAETrainingRunner, source: SAE[Any]) -> None:
    x = torch.randn(256, D_IN) * 3
    with torch.no_grad():
        acts, out, _ = runner.saes[HOOK].e2e_forward(x)
        expected_acts = source.encode(x)
        expected = source.decode(expected_acts)
    assert (out - expected).abs().max().item() <= 1e-6 * expected.abs().max().item()
    assert torch.equal(acts != 0, expected_acts != 0)
    assert 0 < (acts != 0).float().mean() < 1


@pytest.mark.parametrize("apply_b_dec", [False, True])
@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_warm_start_from_object_is_exact(tmp_path, architecture, apply_b_dec):
    source = _source(architecture, apply_b_dec)
    runner = _runner(tmp_path, architecture, override_sae=source)
    _assert_same_function(runner, source)


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_warm_start_from_an_e2e_sae_object_is_exact(tmp_path, architecture):
    """E.g. the local SAE of a first run, fine-tuned e2e in a second (the Karvonen recipe)."""
    first = _runner(tmp_path / "first", architecture)
    source = first.saes[HOOK]
    _randomise(source)
    second = _runner(tmp_path / "second", architecture, override_sae=source)
    x = torch.randn(256, D_IN) * 3
    with torch.no_grad():
        expected, out = source.e2e_forward(x)[1], second.saes[HOOK].e2e_forward(x)[1]
    assert (out - expected).abs().max().item() <= 1e-6 * expected.abs().max().item()


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_warm_start_from_folder_is_exact_then_trains(tmp_path, architecture):
    source = _source(architecture, apply_b_dec=True)
    source.save_model(tmp_path / "stock")
    runner = _runner(tmp_path, architecture, from_pretrained_path=str(tmp_path / "stock"))
    _assert_same_function(runner, source)
    before = runner.saes[HOOK].W_enc.detach().clone()
    runner.run()
    assert not torch.allclose(runner.saes[HOOK].W_enc, before)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """`hf_hub_download` reading a directory: the transport is faked, SAELens's loader is real."""
    from huggingface_hub.utils import EntryNotFoundError
    from sae_lens.loading import pretrained_sae_loaders

    root = tmp_path / "hub"

    def download(repo_id: str, filename: str, **_: Any) -> str:
        path = root / repo_id / filename
        if not path.is_file():
            raise EntryNotFoundError(f"404 {repo_id}/{filename}")
        return str(path)

    monkeypatch.setattr(pretrained_sae_loaders, "hf_hub_download", download)
    return root


def test_warm_start_from_release_and_sae_id(tmp_path, hub):
    source = _source("jumprelu", apply_b_dec=True)
    source.save_model(hub / "someone" / "jumprelu-saes" / "layer_1" / "width_64")
    sae = {"warm_start_release": "someone/jumprelu-saes", "warm_start_sae_id": "layer_1/width_64"}
    runner = _runner(tmp_path, "jumprelu", sae=sae)
    _assert_same_function(runner, source)


# -- refused before any work, naming the field ------------------------------------------------
def _no_model_load(monkeypatch) -> None:
    from sae_lens_e2e.training import runner as runner_module

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded before the warm-start check")

    monkeypatch.setattr(runner_module, "load_model", fail)


def test_refuses_other_architecture(tmp_path, monkeypatch):
    from sae_lens import GatedSAE, GatedSAEConfig

    _no_model_load(monkeypatch)
    cfg = runner_config(tmp_path)
    with pytest.raises(ValueError, match="architecture='gated' cannot start a e2e_standard"):
        E2ESAETrainingRunner(cfg, override_sae=GatedSAE(GatedSAEConfig(D_IN, D_SAE)))
    with pytest.raises(ValueError, match="architecture='jumprelu' cannot start a e2e_standard"):
        E2ESAETrainingRunner(cfg, override_sae=_source("jumprelu", False))


@pytest.mark.parametrize(
    ("architecture", "change", "message"),
    [
        ("standard", {"normalize_activations": "layer_norm"}, "normalize_activations='layer_norm'"),
        ("jumprelu", {"normalize_activations": "constant_norm_rescale"}, "normalize_activations="),
        ("standard", {"d_sae": 32}, "d_sae=32, but the config says d_sae=64"),
        ("topk", {"k": 4}, "k=4, but the config says k=8"),
        ("topk", {"rescale_acts_by_decoder_norm": False}, "rescale_acts_by_decoder_norm=False"),
    ],
)
def test_refuses_unrepresentable(tmp_path, monkeypatch, architecture, change, message):
    _no_model_load(monkeypatch)
    source = _source(architecture, apply_b_dec=False)
    cfg_dict = source.cfg.to_dict() | change
    stock = (
        SAE.from_dict(cfg_dict)
        if "d_sae" in change
        else type(source)(type(source.cfg).from_dict(cfg_dict))
    )
    if "d_sae" not in change:
        stock.load_state_dict(source.state_dict())
    sae = {"k": K} if architecture == "topk" else {}
    cfg = runner_config(tmp_path, architecture=architecture, sae=sae)
    with pytest.raises(ValueError, match=message):
        E2ESAETrainingRunner(cfg, override_sae=stock)


def test_release_fields_go_together():
    from sae_lens_e2e import E2EJumpReLUTrainingSAEConfig

    with pytest.raises(ValueError, match="warm_start_release and warm_start_sae_id go together"):
        E2EJumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, warm_start_release="a/b")


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_folding_keeps_an_e2e_training_saes_function(architecture):
    """SAELens's folds (scale the encoder by decoder norms; divide W_dec by an activation
    scale) assume a decoder used as stored; ours normalises its rows in the forward, so both
    are done exactly here: fold_W_dec_norm leaves unit rows, the activation scale s makes
    the SAE take raw x in place of s x, returning f(s x) / s."""
    from sae_lens_e2e import (
        E2EJumpReLUTrainingSAE,
        E2EJumpReLUTrainingSAEConfig,
        E2EStandardTrainingSAE,
        E2EStandardTrainingSAEConfig,
        E2ETopKTrainingSAE,
        E2ETopKTrainingSAEConfig,
    )

    torch.manual_seed(0)
    cls, cfg_cls, kw = {
        "standard": (E2EStandardTrainingSAE, E2EStandardTrainingSAEConfig, {}),
        "topk": (E2ETopKTrainingSAE, E2ETopKTrainingSAEConfig, {"k": K}),
        "jumprelu": (E2EJumpReLUTrainingSAE, E2EJumpReLUTrainingSAEConfig, {}),
    }[architecture]
    sae = _randomise(cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, kernels="torch", **kw)))
    if architecture == "jumprelu":
        with torch.no_grad():
            sae.threshold.copy_(torch.rand(D_SAE) * 0.5)
    x = torch.randn(256, D_IN) * 3
    with torch.no_grad():
        before = sae.e2e_forward(x)[1]
        sae.fold_W_dec_norm()
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))
        torch.testing.assert_close(sae.e2e_forward(x)[1], before, rtol=1e-5, atol=1e-5)
        scale = 2.5
        scaled = sae.e2e_forward(scale * x)[1] / scale
        sae.fold_activation_norm_scaling_factor(scale)
        torch.testing.assert_close(sae.e2e_forward(x)[1], scaled, rtol=1e-5, atol=1e-5)
    assert sae.cfg.normalize_activations == "none"
