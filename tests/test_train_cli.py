"""`sae-lens-e2e train CONFIG.yaml`, offline: the model loader is replaced by a tiny model."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from conftest import make_tiny_model, make_token_dataset
from sae_lens import SAE

from sae_lens_e2e import cli
from sae_lens_e2e.cli.train import load_runner_config

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("gpt2_layer6_*.yaml"))


def _write_config(tmp_path: Path, **changes) -> Path:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    make_token_dataset().to_parquet(str(data_dir / "train.parquet"))
    cfg = {
        "model_name": "tiny-test-model",
        "hook_name": "blocks.1.hook_resid_pre",
        "dataset_path": str(data_dir),
        "is_dataset_tokenized": True,
        "streaming": False,
        "prepend_bos": False,
        "context_size": 16,
        "train_batch_size_tokens": 64,
        "training_tokens": 64 * 5,
        "store_batch_size_prompts": 4,
        "n_eval_batches": 1,
        "output_path": str(tmp_path / "out"),
        "checkpoint_path": None,
        "sae": {"d_in": 16, "d_sae": 32, "strategy": "e2e_ds", "l1_coefficient": 1.0},
        "logger": {"log_to_wandb": False},
    }
    cfg.update(changes)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "CONFIG.yaml" in out and "strategy" in out


def test_train_from_yaml(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "sae_lens_e2e.training.runner.load_model", lambda *a, **k: make_tiny_model()
    )
    path = _write_config(tmp_path)
    assert cli.main(["train", str(path)]) == 0
    sae = SAE.load_from_disk(tmp_path / "out" / "blocks.1.hook_resid_pre")
    assert sae.cfg.metadata.training_strategy == "e2e_ds"


def test_unknown_field_is_named(tmp_path, capsys):
    path = _write_config(tmp_path, sae={"d_in": 16, "d_sae": 32, "l1_coeficient": 1.0})
    assert cli.main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown field(s) ['l1_coeficient']" in err and str(path) in err


def test_unreadable_yaml(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("sae: [unclosed")
    assert cli.main(["train", str(path)]) == 2
    assert f"cannot read config {path}" in capsys.readouterr().err


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_paper_examples_parse(path):
    cfg = load_runner_config(path)
    assert cfg.hook_name == "blocks.6.hook_resid_pre"
    assert cfg.sae.d_sae == 46080
    assert cfg.sae.strategy in path.stem
    assert cfg.sae.grad_clip_norm == 10.0


def test_examples_exist():
    assert len(EXAMPLES) == 3


def test_ctrl_c_prints_the_resume_command_which_finishes_the_run(tmp_path, monkeypatch, capsys):
    from sae_lens_e2e.training.trainer import E2ETrainer

    monkeypatch.setattr(
        "sae_lens_e2e.training.runner.load_model", lambda *a, **k: make_tiny_model()
    )
    path = _write_config(tmp_path, checkpoint_path=str(tmp_path / "ck"), n_checkpoints=5)
    train_step = E2ETrainer.train_step

    def ctrl_c_in_step_4(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return train_step(self)

    monkeypatch.setattr(E2ETrainer, "train_step", ctrl_c_in_step_4)
    assert cli.main(["train", str(path)]) == 130
    (run_folder,) = (tmp_path / "ck").iterdir()  # SAELens's random run id
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert err == (
        f"sae-lens-e2e train: interrupted at step 3; resume with: sae-lens-e2e train {path} "
        f"--resume {run_folder} (from step_000000003)"
    )
    assert not (tmp_path / "out").exists()

    monkeypatch.setattr(E2ETrainer, "train_step", train_step)
    assert cli.main(shlex.split(err.split("resume with: sae-lens-e2e ")[1])[:-2]) == 0
    assert list((tmp_path / "ck").iterdir()) == [run_folder]
    assert sorted(p.name for p in run_folder.iterdir())[-1] == "step_000000005"
    assert (tmp_path / "out" / "blocks.1.hook_resid_pre" / "cfg.json").is_file()

    shorter = tmp_path / "short.yaml"
    shorter.write_text(
        path.read_text().replace(f"training_tokens: {64 * 5}", "training_tokens: 192")
    )
    assert cli.main(["train", str(shorter), "--resume", str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("sae-lens-e2e train: error: checkpoint ")
    assert "is at step 5, past the 3 steps this config trains" in err
