"""`sae-lens-e2e train CONFIG.yaml`, offline: the model loader is replaced by a tiny model."""

from __future__ import annotations

import shlex
import warnings
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


def test_null_checkpoint_path_means_no_checkpoints(tmp_path):
    # SAELens < 6.51.5 alone would turn it into "None/<random id>" (see sae_lens_e2e/compat.py).
    assert load_runner_config(_write_config(tmp_path, n_checkpoints=2)).checkpoint_path is None


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

    # More steps of the same run: only when asked, and only that field.
    longer = tmp_path / "long.yaml"
    longer.write_text(
        path.read_text().replace(f"training_tokens: {64 * 5}", "training_tokens: 448")
    )
    for extra, message in [
        ([], "training_tokens 320 -> 448; to train the same run for another number of steps "
             "pass --allow-change training_tokens"),
        (["--allow-change", "lr"], "--allow-change lr: only training_tokens may change"),
    ]:  # fmt: skip
        assert cli.main(["train", str(longer), "--resume", str(tmp_path / "ck"), *extra]) == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]
    argv = ["train", str(longer), "--resume", str(tmp_path / "ck"), "--allow-change",
            "training_tokens"]  # fmt: skip
    assert cli.main(argv) == 0
    assert sorted(p.name for p in run_folder.iterdir())[-1] == "step_000000007"


# ----------------------------------------------------------------------------- typed fields

SAE_FIELDS = {"d_in": 16, "d_sae": 32, "strategy": "e2e_ds", "l1_coefficient": 1.0}


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded: the config was not checked before any work")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sae": {**SAE_FIELDS, "d_sae": "32"}}, "sae.d_sae: expected an integer, got '32'"),
        ({"training_tokens": "320"}, "training_tokens: expected an integer, got '320'"),
        ({"lr": "1.0e-3"}, "lr: expected a number, got '1.0e-3'"),  # quoted in the YAML
        ({"context_size": "sixteen"}, "context_size: expected an integer, got 'sixteen'"),
        ({"sae": {**SAE_FIELDS, "l1_coefficient": "big"}}, "sae.l1_coefficient: expected a number"),
        ({"sae": [1, 2]}, "sae: expected a mapping"),
        ({"sae": {**SAE_FIELDS, "architecture": [1]}}, "sae.architecture=[1] is not one of"),
        ({"sae": {**SAE_FIELDS, "d_sae": 0}}, "sae.d_sae: must be > 0, got 0"),
        (
            {"sae": {**SAE_FIELDS, "kl_coefficient": -1}},
            "sae.kl_coefficient: must be >= 0, got -1.0",
        ),
        ({"sae": {**SAE_FIELDS, "strategy": "e3e"}}, "sae.strategy: must be one of 'local'"),
        ({"logger": {"log_to_wandb": "no"}}, "logger.log_to_wandb: expected true or false"),
        ({"logger": [1]}, "logger: expected a mapping"),
        ({"seqpos_slice": ["a"]}, "seqpos_slice[0]: expected an integer or null"),
        ({"lr": float("nan")}, "lr: must be a finite number"),
        ({"adam_beta1": 1.5}, "adam_beta1: must be >= 0 and <= 1, got 1.5"),
        ({"hook_name": "../../x"}, "hook_name: '../../x' is not a hook name"),
        (
            {"sae": {**SAE_FIELDS, "additional_hook_names": ["/abs/x"]}},
            "sae.additional_hook_names: '/abs/x' is not a hook name",
        ),
    ],
)
def test_wrong_type_or_range_is_one_line_before_any_work(
    tmp_path, monkeypatch, capsys, changes, message
):
    monkeypatch.setattr("sae_lens_e2e.training.runner.load_model", _no_model)
    path = _write_config(tmp_path, **changes)
    capsys.readouterr()  # the test data's own progress output
    assert cli.main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_yaml_numbers_in_exponent_form_are_numbers(tmp_path):
    """PyYAML reads `1e-3` as a string (YAML 1.1); the config loader reads it as 0.001."""
    path = _write_config(tmp_path)
    path.write_text(
        path.read_text().replace("training_tokens: 320", "training_tokens: 320\nlr: 1e-3")
    )
    cfg = load_runner_config(path)
    assert cfg.lr == 0.001 and cfg.seqpos_slice == (None,)


def test_dataset_trust_remote_code_is_off_unless_asked(tmp_path):
    assert load_runner_config(_write_config(tmp_path)).dataset_trust_remote_code is False
    path = tmp_path / "again.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load((tmp_path / "run.yaml").read_text()),
                                    "dataset_trust_remote_code": True}))  # fmt: skip
    assert load_runner_config(path).dataset_trust_remote_code is True


def test_train_prints_no_spurious_warnings(tmp_path, monkeypatch):
    """SAELens's 'non-empty model_from_pretrained_kwargs' (the user set none) and tensor-copy
    warnings are not shown by `train`."""
    monkeypatch.setattr(
        "sae_lens_e2e.training.runner.load_model", lambda *a, **k: make_tiny_model()
    )
    path = _write_config(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["train", str(path)]) == 0
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "model_from_pretrained_kwargs" in m], messages
    assert not [m for m in messages if "To copy construct from a tensor" in m], messages


@pytest.mark.parametrize(
    ("extra", "key", "line"),
    [
        ("lr: 0.5\nlr: 0.001\n", "lr", 2),
        ("sae:\n  d_in: 16\n  l1_coefficient: 1.0\n  l1_coefficient: 50.0\n", "l1_coefficient", 4),
        ("sae:\n  d_in: 16\nsae:\n  d_sae: 32\n", "sae", 3),
    ],
)
def test_a_key_given_twice_is_one_line_before_any_work(
    tmp_path, monkeypatch, capsys, extra, key, line
):
    """PyYAML keeps the last of two equal keys; a config must not silently lose one."""
    monkeypatch.setattr("sae_lens_e2e.training.runner.load_model", _no_model)
    path = _write_config(tmp_path)
    path.write_text(extra + "\n".join(
        text for text in path.read_text().splitlines() if not text.startswith(("lr:", "sae:", "  "))
    ))  # fmt: skip
    capsys.readouterr()
    assert cli.main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: line {line}: key '{key}' given twice" in err, err
    assert len(err.strip().splitlines()) == 1


def test_an_sae_too_large_for_memory_is_refused_before_the_model_loads(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr("sae_lens_e2e.training.runner.load_model", _no_model)
    path = _write_config(tmp_path, sae={**SAE_FIELDS, "d_sae": 2_000_000_000})
    capsys.readouterr()
    assert cli.main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "error: sae.d_sae=2000000000 (sae.d_in=16, 1 SAE(s)): training needs at least " in err
    assert "1,056,000,000,256 bytes for 66,000,000,016 parameters x 4 copies" in err
    assert "512,000,000,000 bytes for one micro-batch's codes" in err  # 64 tokens x d_sae x 4
    assert "GB of RAM available; lower sae.d_sae" in err


def test_memory_estimate_counts_every_sae_and_the_codes(monkeypatch):
    from sae_lens_e2e.training import validation

    cfg = load_runner_config(EXAMPLES[0])  # GPT-2 layer 6, d_sae 46080, batch 16 x 1024 as 2 x 8
    params, state, codes = validation.sae_memory(cfg)
    assert params == 2 * 768 * 46080 + 46080 + 768
    assert state == 16 * params and codes == 8 * 1024 * 46080 * 4
    cfg.device = "cuda"
    monkeypatch.setattr(
        validation, "available_memory", lambda d: (10**9, "GPU memory free on cuda")
    )
    with pytest.raises(ValueError, match="needs at least 2.6 GB .* than the 1.0 GB of GPU memory"):
        validation.check_memory(cfg)
    monkeypatch.setattr(validation, "available_memory", lambda d: (10**12, "GPU memory free"))
    validation.check_memory(cfg)  # 2.6 GB fits


@pytest.mark.parametrize("layout", ["config.json", "quickstart cache"])
def test_train_on_a_local_model_folder(tmp_path, layout):
    """`model_name` may be a model folder: model.pt with config.json (save_local_model), or
    with info.json as the quickstart caches its byte LM (as `evaluate --model DIR` reads)."""
    import json

    from transformer_lens import HookedTransformer

    from sae_lens_e2e.models import byte_lm_config, save_local_model

    folder = tmp_path / "my_model"
    lm = {"n_layers": 3, "d_model": 16, "d_head": 4, "n_ctx": 32, "seed": 1}
    model = HookedTransformer(byte_lm_config(**lm))
    save_local_model(model, folder)
    if layout == "quickstart cache":
        (folder / "config.json").unlink()
        (folder / "info.json").write_text(json.dumps({"lm": {**lm, "steps": 500}}))
    path = _write_config(tmp_path, model_name=str(folder))
    assert cli.main(["train", str(path)]) == 0
    sae = SAE.load_from_disk(tmp_path / "out" / "blocks.1.hook_resid_pre")
    assert sae.cfg.metadata.model_name == str(folder)


def test_unknown_model_name_names_the_nearest_ones_in_one_line(tmp_path, capsys):
    path = _write_config(tmp_path, model_name="gtp2-smal")
    capsys.readouterr()
    assert cli.main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) < 400, err
    assert "model_name='gtp2-smal' is neither a TransformerLens model name nor a local model " \
        "folder (model.pt + config.json); nearest: gpt2-small" in err  # fmt: skip


def test_under_torchrun_rank_0_alone_checks_and_holds_the_output_lock(tmp_path, monkeypatch):
    """Rank 0 locks output_path for the whole job: the other ranks must not see its lock as
    another run's (they start at the same moment, so which one checks first is chance)."""
    import json
    import os

    from sae_lens_e2e.atomic import host_id
    from sae_lens_e2e.cli.train import check_outputs

    cfg = load_runner_config(_write_config(tmp_path))
    (tmp_path / ".out.lock").write_text(json.dumps({"host": host_id(), "pid": os.getppid()}))
    with pytest.raises(ValueError, match="output_path .* is in use by another run"):
        check_outputs(cfg)
    monkeypatch.setenv("RANK", "1")
    check_outputs(cfg)
