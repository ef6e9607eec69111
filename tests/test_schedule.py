"""Local-to-e2e schedules (one run switches loss at a step) and what each run costs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_tiny_model, make_token_dataset
from e2e_helpers import runner_config

from sae_lens_e2e import E2ESAETrainingRunner, E2EStandardTrainingSAEConfig
from sae_lens_e2e.training import cost, distributed
from sae_lens_e2e.training import trainer as trainer_module

HOOK = "blocks.1.hook_resid_pre"
LAMBDA = 0.5


def _runner(cfg: Any) -> E2ESAETrainingRunner:
    return E2ESAETrainingRunner(
        cfg, override_model=make_tiny_model(), override_dataset=make_token_dataset()
    )


def _scheduled(tmp_path: Path, steps: int, reset: bool = False, **kw: Any) -> Any:
    sae = {"e2e_start_fraction": 0.5, "reset_optimizer_at_switch": reset, "l1_coefficient": LAMBDA}
    return runner_config(tmp_path, steps=steps, sae=sae, **kw)


def test_switches_at_the_right_step_and_kl_enters_only_after(tmp_path, monkeypatch):
    seen: list[tuple[str, dict[str, float]]] = []
    original = distributed.compute_loss_terms

    def recording(model, saes, tokens, cfg, **kw):
        terms = original(model, saes, tokens, cfg, all_terms=True)
        seen.append((cfg.strategy, {k: v.item() for k, v in terms.items() if "/" not in k}))
        return terms

    monkeypatch.setattr(distributed, "compute_loss_terms", recording)
    _runner(_scheduled(tmp_path, steps=6)).run()
    assert [strategy for strategy, _ in seen] == ["local"] * 3 + ["e2e"] * 3
    for strategy, t in seen:
        assert t["kl"] > 0 and t["out_to_in"] > 0  # both measured on every step here
        data_term = t["out_to_in"] if strategy == "local" else t["kl"]
        assert t["loss"] == pytest.approx(data_term + LAMBDA * t["sparsity"], rel=1e-6)


@pytest.mark.parametrize("reset", [False, True])
def test_resume_on_either_side_of_the_switch_is_exact(tmp_path, reset):
    full = _runner(_scheduled(tmp_path / "full", steps=8, reset=reset, n_checkpoints=8))
    full.run()
    final = [p.detach().clone() for p in full.saes[HOOK].parameters()]
    for step in (3, 4, 5):  # the switch is before step index 4 (after 4 steps)
        ckpt = Path(full.cfg.checkpoint_path) / f"step_{step:09d}"
        resumed = _runner(
            _scheduled(
                tmp_path / f"r{step}", steps=8, reset=reset, resume_from_checkpoint=str(ckpt)
            )
        )
        resumed.run()
        for a, b in zip(final, resumed.saes[HOOK].parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_reset_forgets_adam_moments_at_the_switch(tmp_path, monkeypatch):
    counts: dict[bool, list[int]] = {False: [], True: []}
    original = trainer_module.E2ETrainer.train_step

    def counting(self):
        out = original(self)
        state = next(iter(self.optimizer.state.values()))
        counts[self.e2e.reset_optimizer_at_switch].append(int(state["step"]))
        return out

    monkeypatch.setattr(trainer_module.E2ETrainer, "train_step", counting)
    for reset in (False, True):
        _runner(_scheduled(tmp_path / str(reset), steps=4, reset=reset)).run()
    assert counts == {False: [1, 2, 3, 4], True: [1, 2, 1, 2]}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"e2e_start_fraction": 1.0}, r"e2e_start_fraction must be in \(0, 1\)"),
        ({"e2e_start_fraction": 0.5, "strategy": "local"}, "needs strategy 'e2e' or 'e2e_ds'"),
    ],
)
def test_bad_schedule_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        E2EStandardTrainingSAEConfig(d_in=16, d_sae=64, **fields)


def test_wall_time_and_flops_recorded(tmp_path, capsys):
    results = {}
    for name, sae in {
        "local": {"strategy": "local"},
        "e2e": {},
        "local->e2e": {"e2e_start_fraction": 0.75},
    }.items():
        cfg = runner_config(tmp_path / name.replace(">", ""), steps=4, sae=sae)
        _runner(cfg).run()
        results[name] = json.loads((Path(cfg.output_path) / "eval_results.json").read_text())
        summary = capsys.readouterr().out
        assert f"(strategy={name})" in summary and "s wall time" in summary
    for r in results.values():
        assert r["train_wall_time_s"] > 0 and r["train_steps"] == 4
    local, e2e, mixed = (results[k]["train_flops"] for k in ("local", "e2e", "local->e2e"))
    assert results["local->e2e"]["train_local_steps"] == 3
    assert mixed == pytest.approx(0.75 * local + 0.25 * e2e)
    assert 0 < local < mixed < e2e


def test_flops_estimate_counts_the_right_blocks():
    model = make_tiny_model(n_layers=4, d_model=16)
    sae = type("S", (), {"cfg": type("C", (), {"d_in": 16, "d_sae": 64})()})()
    block = cost.block_flops_per_token(model, 0, n_ctx=16)
    # attention (4 x 16 x 16 weights) and MLP (2 x 16 x 64 weights), plus 4 * n_ctx * d_model
    assert block == 2 * (4 * 16 * 16 + 2 * 16 * 64) + 4 * 16 * 16
    saes = {"blocks.2.hook_resid_pre": sae}
    sae_flops = 12 * 16 * 64
    local = cost.step_flops_per_token(model, saes, "local", 16)
    assert local == pytest.approx(3 * block + sae_flops)
    e2e = cost.step_flops_per_token(model, saes, "e2e", 16)
    unembed = 2 * 16 * 64
    assert e2e == pytest.approx(2 * block + 3 * (2 * block + unembed) + sae_flops)
