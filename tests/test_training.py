"""The runner end to end on a tiny model: learning, saving, resuming, warm start, bad input."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model, make_token_dataset
from e2e_helpers import runner_config
from sae_lens import SAE

from sae_lens_e2e import E2ESAETrainingRunner, NonFiniteLossError, compute_loss_terms

HOOK = "blocks.1.hook_resid_pre"


def _runner(cfg, model=None, **kw) -> E2ESAETrainingRunner:
    return E2ESAETrainingRunner(
        cfg,
        override_model=model or make_tiny_model(),
        override_dataset=make_token_dataset(),
        **kw,
    )


def _held_out_loss(runner: E2ESAETrainingRunner) -> float:
    tokens = make_token_dataset(n_rows=8, seed=123)["tokens"]
    terms = compute_loss_terms(runner.model, runner.saes, torch.tensor(tokens), runner.cfg)
    return terms["loss"].item()


@pytest.mark.parametrize(
    ("strategy", "architecture"),
    [
        ("local", "standard"),
        ("e2e", "standard"),
        ("e2e_ds", "standard"),
        ("e2e", "topk"),
        ("e2e", "jumprelu"),
    ],
)
def test_each_strategy_reduces_its_loss(tmp_path, strategy, architecture):
    runner = _runner(runner_config(tmp_path, strategy=strategy, architecture=architecture))
    before = _held_out_loss(runner)
    runner.run()
    after = _held_out_loss(runner)
    assert after < 0.8 * before, (before, after)
    assert runner.eval_results["ce_loss_increase"] == pytest.approx(
        runner.eval_results["ce_loss_with_sae"] - runner.eval_results["ce_loss_clean"]
    )


STOCK_CHECK = textwrap.dedent(
    """
    import sys, torch
    from sae_lens import SAE
    sae = SAE.load_from_disk(sys.argv[1])
    data = torch.load(sys.argv[2])
    out = sae(data["x"])
    assert "sae_lens_e2e" not in sys.modules
    err = ((out - data["y"]).abs().max() / data["y"].abs().max()).item()
    print(type(sae).__name__, sae.cfg.metadata.hook_name, sae.cfg.metadata.training_strategy, err)
    assert err < 1e-6, err
    """
)


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_saved_sae_loads_in_stock_saelens_and_matches(tmp_path, architecture):
    cfg = runner_config(tmp_path, architecture=architecture, steps=4)
    runner = _runner(cfg)
    saes = runner.run()
    x = torch.randn(32, 16)
    with torch.no_grad():
        y = saes[HOOK].e2e_forward(x)[1]  # the forward the SAE was trained with
    torch.save({"x": x, "y": y}, tmp_path / "xy.pt")
    folder = Path(cfg.output_path) / HOOK
    cfg_json = json.loads((folder / "cfg.json").read_text())
    assert cfg_json["architecture"] == architecture
    assert cfg_json["apply_b_dec_to_input"] is False
    assert cfg_json["metadata"]["model_name"] == "tiny-test-model"
    assert (folder / "sparsity.safetensors").is_file()
    # The run's own record says what the SAE says (no local phase rewrote it).
    runner_cfg = json.loads((Path(cfg.output_path) / "runner_cfg.json").read_text())
    for meta in (cfg_json["metadata"], runner_cfg["sae"]["metadata"]):
        assert meta["training_strategy"] == "e2e", meta
        assert meta["training_architecture_details"]["strategy"] == "e2e", meta
    version = importlib.metadata.version("sae-lens-e2e")
    assert cfg_json["metadata"]["sae_lens_e2e_version"] == version
    assert runner_cfg["sae_lens_e2e_version"] == version
    # A fresh interpreter that never imports sae_lens_e2e: plain SAELens must load it.
    result = subprocess.run(
        [sys.executable, "-c", STOCK_CHECK, str(folder), str(tmp_path / "xy.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    expected_class = {"standard": "StandardSAE", "topk": "TopKSAE", "jumprelu": "JumpReLUSAE"}[
        architecture
    ]
    assert f"{expected_class} {HOOK} e2e" in result.stdout


def test_resume_equals_uninterrupted(tmp_path):
    full = _runner(runner_config(tmp_path / "a", steps=12, n_checkpoints=2))
    full.run()
    midway = Path(full.cfg.checkpoint_path) / "step_000000006"
    assert midway.is_dir()
    resumed = _runner(runner_config(tmp_path / "b", steps=12, resume_from_checkpoint=str(midway)))
    resumed.run()
    for a, b in zip(full.saes[HOOK].parameters(), resumed.saes[HOOK].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    runner = _runner(runner_config(tmp_path, steps=4, n_checkpoints=2))
    runner.run()
    ckpt = Path(runner.cfg.checkpoint_path)
    before = sorted(p.name for p in ckpt.iterdir())

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    from sae_lens_e2e.training import trainer as trainer_module

    runner2 = _runner(runner_config(tmp_path, steps=4))
    stream = trainer_module.TokenStream(runner2.activations_store)
    trainer = trainer_module.E2ETrainer(runner2.cfg, runner2.model, runner2.saes, stream)
    trainer.step = 99
    monkeypatch.setattr(trainer_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint(ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == before
    assert trainer_module.resolve_checkpoint(ckpt).name == "step_000000004"


def test_several_saes_in_one_run(tmp_path):
    cfg = runner_config(
        tmp_path, sae={"additional_hook_names": ["blocks.2.hook_resid_pre"]}, steps=6
    )
    runner = _runner(cfg)
    saes = runner.run()
    assert set(saes) == {HOOK, "blocks.2.hook_resid_pre"}
    for hook in saes:
        loaded = SAE.load_from_disk(Path(cfg.output_path) / hook)
        assert loaded.cfg.metadata.hook_name == hook
    assert f"l0/{HOOK}" in runner.eval_results


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    results = []
    for accum in (1, 2):
        runner = _runner(
            runner_config(
                tmp_path / str(accum), steps=1, sae={"gradient_accumulation_steps": accum}
            )
        )
        runner.run()
        results.append([p.detach().clone() for p in runner.saes[HOOK].parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# -- bad input: clear errors before any work ----------------------------------------------
def test_unknown_hook(tmp_path):
    with pytest.raises(ValueError, match="unknown hook name 'blocks.1.hook_nope'"):
        _runner(runner_config(tmp_path, hook_name="blocks.1.hook_nope"))


def test_downstream_hook_not_after_sae(tmp_path):
    cfg = runner_config(
        tmp_path,
        strategy="e2e_ds",
        hook_name="blocks.2.hook_resid_pre",
        sae={"downstream_hooks": ["blocks.1.hook_resid_post"]},
    )
    with pytest.raises(ValueError, match="not after the last SAE hook"):
        _runner(cfg)


def test_d_in_mismatch(tmp_path):
    with pytest.raises(ValueError, match="d_in=12 does not match hook"):
        _runner(runner_config(tmp_path, d_in=12))


def test_e2e_needs_logits(tmp_path):
    model = make_tiny_model()
    model.unembed = None
    with pytest.raises(ValueError, match="needs a model that produces logits"):
        _runner(runner_config(tmp_path, strategy="e2e"), model=model)


def test_context_size_over_n_ctx(tmp_path):
    cfg = runner_config(tmp_path, context_size=64, train_batch_size_tokens=128)
    with pytest.raises(ValueError, match="context_size=64 exceeds the model's n_ctx=32"):
        _runner(cfg)


def test_non_finite_loss_stops_with_step_and_keeps_checkpoint(tmp_path, monkeypatch):
    cfg = runner_config(tmp_path, steps=8, n_checkpoints=4)
    runner = _runner(cfg)
    from sae_lens_e2e.training import trainer as trainer_module

    original = trainer_module.E2ETrainer.train_step

    def poisoned(self):
        if self.step == 5:
            with torch.no_grad():
                runner.saes[HOOK].b_dec.fill_(float("nan"))
        return original(self)

    monkeypatch.setattr(trainer_module.E2ETrainer, "train_step", poisoned)
    with pytest.raises(NonFiniteLossError, match="step 6.*step_000000004"):
        runner.run()
    latest = trainer_module.resolve_checkpoint(cfg.checkpoint_path)
    assert latest.name == "step_000000004"
    assert not Path(cfg.output_path).exists()


def test_wandb_logging_and_periodic_eval(tmp_path, monkeypatch):
    import wandb
    from sae_lens import LoggingConfig

    logged: list[tuple[int, dict]] = []
    monkeypatch.setattr(wandb, "log", lambda values, step: logged.append((step, values)))
    inits: list[dict] = []

    class FakeRun:
        def finish(self) -> None:
            inits.append({"finished": True})

    monkeypatch.setattr(wandb, "init", lambda **kw: inits.append(kw) or FakeRun())
    logger = LoggingConfig(log_to_wandb=True, wandb_log_frequency=2, eval_every_n_wandb_logs=2)
    runner = _runner(runner_config(tmp_path, steps=8, logger=logger))
    runner.run()
    assert inits[0]["config"]["sae"]["strategy"] == "e2e" and inits[-1] == {"finished": True}
    loss_steps = [s for s, v in logged if "losses/loss" in v]
    eval_steps = [s for s, v in logged if "eval/ce_loss_increase" in v]
    assert loss_steps == [2, 4, 6, 8]
    assert eval_steps == [4, 8]
    last = next(v for s, v in logged if s == 8 and "losses/loss" in v)
    assert {"losses/kl", "losses/sparsity", "details/current_learning_rate"} <= set(last)


def test_final_save_keeps_other_content_of_output_path(tmp_path):
    out = tmp_path / "run"
    cfg = runner_config(
        tmp_path,
        steps=4,
        output_path=str(out),
        checkpoint_path=str(out / "ckpt"),
        save_final_checkpoint=True,
    )
    (out / "notes.txt").parent.mkdir(parents=True)
    (out / "notes.txt").write_text("keep me")
    _runner(cfg).run()
    assert (out / "notes.txt").read_text() == "keep me"
    assert (out / "ckpt" / "step_000000004" / "trainer_state.pt").is_file()
    assert (out / HOOK / "cfg.json").is_file() and (out / "eval_results.json").is_file()


def test_eval_results_and_summary_have_both_explained_variances(tmp_path, capsys):
    runner = _runner(runner_config(tmp_path, steps=4))
    runner.run()
    saved = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    printed = capsys.readouterr().out
    hooks = [HOOK, *(f"blocks.{i}.hook_resid_post" for i in range(1, 4))]
    for key in ("explained_variance", "explained_variance_per_token"):
        for hook in hooks:
            assert saved[f"{key}/{hook}"] == runner.eval_results[f"{key}/{hook}"], (key, hook)
            assert f"{key}/{hook}:" in printed
    assert f"alive latents were counted over {saved['n_tokens']:,} tokens" in printed
