"""Checkpoints: resume from the configured folder, refused resumes, the non-finite guard."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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
    with pytest.raises(ValueError, match="other training settings: sae.d_sae 64 -> 32"):
        _run(cfg)
    # A checkpoint that records no config (an older version's) is checked by its weights.
    legacy = shutil.copytree(finished / "step_000000004", tmp_path / "legacy" / "step_000000004")
    (legacy / "training_config.json").unlink()
    cfg = runner_config(tmp_path, steps=4, sae={"d_sae": 32}, resume_from_checkpoint=str(legacy))
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


# -- a resume continues the run that wrote the checkpoint, or is refused ----------------------
@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"lr": 0.5}, "lr 0.01 -> 0.5"),
        ({"sae": {"l1_coefficient": 50.0}}, "sae.l1_coefficient 0.5 -> 50.0"),
        ({"strategy": "local"}, "sae.strategy 'e2e' -> 'local'"),
        ({"strategy": "e2e_ds"}, "sae.strategy 'e2e' -> 'e2e_ds'"),
        ({"seed": 1}, "seed 0 -> 1"),
    ],
)
def test_resume_with_a_changed_config_is_refused_naming_the_fields(
    tmp_path, finished, changes, named
):
    cfg = runner_config(tmp_path, steps=4, resume_from_checkpoint=str(finished), **changes)
    with pytest.raises(ValueError, match="other training settings: .*") as info:
        _run(cfg)
    assert named in str(info.value) and "resume with the config that wrote it" in str(info.value)
    assert not Path(cfg.output_path).exists()


def _lr_per_step(monkeypatch) -> list[tuple[int, float]]:
    """(step, lr) of every optimiser step from now on, read when Adam steps."""
    from sae_lens_e2e.training.trainer import E2ETrainer

    seen: list[tuple[int, float]] = []
    original = E2ETrainer.train_step

    def recording(self):
        step = self.step
        real = self.optimizer.step
        self.optimizer.step = lambda: (seen.append((step, self.optimizer.param_groups[0]["lr"])),
                                       real())[1]  # fmt: skip
        try:
            return original(self)
        finally:
            del self.optimizer.step

    monkeypatch.setattr(E2ETrainer, "train_step", recording)
    return seen


def test_more_training_tokens_only_when_asked_and_on_the_new_schedule(
    tmp_path, finished, monkeypatch
):
    """Twice the tokens is refused unless allowed; then steps 5-8 follow the LR schedule of an
    8-step run (the checkpoint's own schedule ended at step 4)."""
    cfg = runner_config(tmp_path / "a", steps=8, resume_from_checkpoint=str(finished))
    with pytest.raises(ValueError, match="training_tokens 256 -> 512; .* --allow-change"):
        _run(cfg)
    with pytest.raises(ValueError, match="--allow-change lr: only training_tokens may change"):
        E2ESAETrainingRunner(cfg, override_model=make_tiny_model(), resume_allow_changes=["lr"])
    seen = _lr_per_step(monkeypatch)
    E2ESAETrainingRunner(
        cfg, override_model=make_tiny_model(), override_dataset=make_token_dataset(),
        resume_allow_changes=["training_tokens"],
    ).run()  # fmt: skip
    resumed = list(seen)
    seen.clear()
    _run(runner_config(tmp_path / "b", steps=8))
    assert [s for s, _ in resumed] == [4, 5, 6, 7]
    assert resumed == seen[4:]


def _copy_run(run: Path, to: Path, **recorded) -> Path:
    """Another run folder like `run`, whose checkpoints record other config values."""
    shutil.copytree(run, to)
    for record in to.glob("step_*/training_config.json"):
        data = json.loads(record.read_text())
        data["config"].update(recorded)
        record.write_text(json.dumps(data))
    return to


def test_resume_of_a_folder_of_runs_takes_the_run_of_this_config_or_names_them(tmp_path):
    from sae_lens_e2e.training.checkpoints import resolve_checkpoint

    root = tmp_path / "ck"
    cfg = runner_config(tmp_path, steps=3, n_checkpoints=1, checkpoint_path=str(root), run_id=True)
    _run(cfg)
    (mine,) = root.iterdir()
    other = _copy_run(mine, root / "zzother", seed=7)
    os.utime(other / "step_000000003" / "trainer_state.pt")  # the newest run is not this one
    again = runner_config(tmp_path, steps=3, checkpoint_path=str(root), run_id=True)
    assert resolve_checkpoint(root, again) == mine / "step_000000003"
    seven = runner_config(tmp_path, steps=3, checkpoint_path=str(root), seed=7, run_id=True)
    assert resolve_checkpoint(root, seven) == other / "step_000000003"
    lr = runner_config(tmp_path, steps=3, checkpoint_path=str(root), lr=0.5, run_id=True)
    expected = (
        f"no run in {root} was trained with this config \\({mine.name}: lr 0.01 -> 0.5, .*; "
        "zzother: lr 0.01 -> 0.5, .*seed 7 -> 0"
    )
    with pytest.raises(ValueError, match=expected):
        resolve_checkpoint(root, lr)
    twin = _copy_run(mine, root / "twin")
    with pytest.raises(ValueError, match=f"holds 2 runs of this config: {mine.name} .*twin"):
        resolve_checkpoint(root, again)
    assert resolve_checkpoint(twin, again) == twin / "step_000000003"  # a run folder: itself


# -- one run per folder -------------------------------------------------------------------------
HOLDER = """
import sys
from sae_lens_e2e.locks import folder_lock
with folder_lock(sys.argv[1], "output_path"):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_folder_held_by_a_live_run_is_refused_and_a_dead_runs_lock_is_removed(
    tmp_path, monkeypatch, capsys
):
    from test_train_cli import _write_config

    from sae_lens_e2e import cli

    monkeypatch.setattr(
        "sae_lens_e2e.training.runner.load_model", lambda *a, **k: make_tiny_model()
    )
    path = _write_config(tmp_path)
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert cli.main(["train", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"sae-lens-e2e train: error: output_path {out} is in use by another "
                              f"run (pid {holder.pid} on ")  # fmt: skip
        assert len(err.splitlines()) == 1 and not out.exists()
        cfg = runner_config(tmp_path, steps=3, output_path=str(out))
        with pytest.raises(ValueError, match="output_path .* is in use by another run"):
            _run(cfg)  # the Python API refuses too
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert (tmp_path / ".out.lock").is_file()  # killed: its lock stays, stale

    def locked_model(*args, **kwargs):  # the folder is this run's before the model loads
        assert json.loads((tmp_path / ".out.lock").read_text())["pid"] == os.getpid()
        return make_tiny_model()

    monkeypatch.setattr("sae_lens_e2e.training.runner.load_model", locked_model)
    assert cli.main(["train", str(path)]) == 0
    assert (out / "blocks.1.hook_resid_pre" / "cfg.json").is_file()
    assert not (tmp_path / ".out.lock").exists()
