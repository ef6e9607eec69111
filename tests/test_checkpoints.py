"""Checkpoints: resume from the configured folder, refused resumes, the non-finite guard."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model, make_token_dataset
from e2e_helpers import killed_while_writing, runner_config
from safetensors.torch import load_file, save_file

from sae_lens_e2e import E2ESAETrainingRunner, NonFiniteLossError
from sae_lens_e2e.training.checkpoints import TRAINER_STATE_FILENAME

HOOK = "blocks.1.hook_resid_pre"


def _run(cfg) -> E2ESAETrainingRunner:
    runner = E2ESAETrainingRunner(
        cfg, override_model=make_tiny_model(), override_dataset=make_token_dataset()
    )
    runner.run()
    return runner


def _steps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_resume_from_the_configured_folder_continues_in_the_same_run_folder(tmp_path, capsys):
    root = tmp_path / "ck"
    full = _run(
        runner_config(tmp_path, steps=8, n_checkpoints=4, checkpoint_path=str(root), run_id=True)
    )
    (run_folder,) = root.iterdir()  # SAELens put the checkpoints in ck/<random run id>/
    assert _steps(run_folder) == [f"step_00000000{i}" for i in (2, 4, 6, 8)]
    # As if killed during step 6: the last two checkpoints never written, one half-written.
    for name in ("step_000000006", "step_000000008"):
        for path in sorted((run_folder / name).rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        (run_folder / name).rmdir()
    stale = killed_while_writing(run_folder / "step_000000006")
    capsys.readouterr()

    resumed = _run(
        runner_config(
            tmp_path, steps=8, n_checkpoints=4, checkpoint_path=str(root), run_id=True,
            resume_from_checkpoint=str(root),
        )
    )  # fmt: skip
    assert f"resuming from {run_folder / 'step_000000004'} at step 4" in capsys.readouterr().out
    assert list(root.iterdir()) == [run_folder]  # no new random folder
    assert _steps(run_folder) == [f"step_00000000{i}" for i in (2, 4, 6, 8)]
    assert not stale.exists()
    for a, b in zip(full.saes[HOOK].parameters(), resumed.saes[HOOK].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step run with a checkpoint after every step."""
    tmp = tmp_path_factory.mktemp("finished")
    cfg = runner_config(tmp, steps=4, n_checkpoints=4)
    _run(cfg)
    return Path(cfg.checkpoint_path)


def test_resume_past_the_configured_steps_is_refused(tmp_path, finished):
    cfg = runner_config(tmp_path, steps=3, resume_from_checkpoint=str(finished))
    with pytest.raises(ValueError, match="at step 4, past the 3 steps this config trains"):
        _run(cfg)
    assert not Path(cfg.output_path).exists()


def test_resume_with_another_d_sae_is_refused(tmp_path, finished):
    cfg = runner_config(tmp_path, steps=4, sae={"d_sae": 32}, resume_from_checkpoint=str(finished))
    with pytest.raises(ValueError, match="d_in=16, d_sae=64; this config has d_in=16, d_sae=32"):
        _run(cfg)


def test_checkpoint_with_non_finite_weights_is_not_resumed(tmp_path, finished):
    bad = tmp_path / "step_000000002"
    bad.mkdir()
    for path in (finished / "step_000000002").rglob("*"):
        target = bad / path.relative_to(finished / "step_000000002")
        target.mkdir(exist_ok=True) if path.is_dir() else target.write_bytes(path.read_bytes())
    weights = bad / "saes" / HOOK / "sae_weights.safetensors"
    sd = load_file(weights)
    sd["W_enc"][0, 0] = float("inf")
    save_file(sd, weights)
    cfg = runner_config(tmp_path, steps=4, resume_from_checkpoint=str(bad))
    with pytest.raises(ValueError, match=f"non-finite weights \\({HOOK} W_enc\\)"):
        _run(cfg)


def test_infinite_lr_stops_at_the_first_step_and_writes_no_checkpoint(tmp_path):
    cfg = runner_config(tmp_path, steps=4, n_checkpoints=4, lr=float("inf"))
    with pytest.raises(
        NonFiniteLossError,
        match="weights at step 1 .* after updating .*; last good checkpoint: none",
    ):
        _run(cfg)
    assert not Path(cfg.checkpoint_path).exists() or not any(
        (p / TRAINER_STATE_FILENAME).exists() for p in Path(cfg.checkpoint_path).iterdir()
    )


def test_non_finite_gradient_stops_before_the_update(tmp_path, monkeypatch):
    runner = E2ESAETrainingRunner(
        runner_config(tmp_path, steps=4),
        override_model=make_tiny_model(),
        override_dataset=make_token_dataset(),
    )
    sae = runner.saes[HOOK]
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    sae.W_enc.register_hook(lambda grad: grad * float("inf"))  # finite loss, Inf gradient
    with pytest.raises(
        NonFiniteLossError, match="gradient norm at step 1 \\((nan|inf)\\), found before updating"
    ):
        runner.run()
    for key, value in sae.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_a_mostly_dead_sae_is_warned_about_at_the_end(tmp_path, capsys):
    _run(runner_config(tmp_path, steps=20, lr=1e10))  # diverges to finite but dead weights
    err = capsys.readouterr().err
    assert f"of 64 latents of the SAE at {HOOK} never fired" in err and "WARNING" in err
