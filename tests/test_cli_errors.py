"""Environment problems (files, devices, network, a diverged run) are one-line CLI errors
naming the path or setting and the fix, found before any slow work; `--help` is light."""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from conftest import make_tiny_model
from huggingface_hub import errors as hf_errors
from test_train_cli import _write_config

from sae_lens_e2e import cli, preflight
from sae_lens_e2e.cli.errors import user_message
from sae_lens_e2e.sae_files import read_safetensors
from sae_lens_e2e.training.trainer import E2ETrainer, NonFiniteLossError


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the environment was checked")


def _train(path: Path, capsys) -> str:
    """Run `train`; its error: exactly one line, no traceback (other stderr is progress)."""
    capsys.readouterr()  # the test data's own progress output
    assert cli.main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_read_only_output_path_fails_before_the_model_is_loaded(
    tmp_path, monkeypatch, capsys, read_only
):
    monkeypatch.setattr("sae_lens_e2e.training.runner.load_model", _no_model)
    locked = read_only(tmp_path / "locked")
    err = _train(_write_config(tmp_path, output_path=str(locked / "out")), capsys)
    assert f"output_path {locked / 'out'}: cannot write to {locked}" in err and "--output" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sae_lens_e2e.training.runner.load_model", _no_model)
    err = _train(_write_config(tmp_path, device="cuda"), capsys)
    assert "device=cuda: CUDA is not available" in err and "use cpu" in err


def test_triton_kernels_on_cpu_fail_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr("sae_lens_e2e.training.runner.load_model", _no_model)
    sae = {"d_in": 16, "d_sae": 32, "strategy": "e2e", "l1_coefficient": 1.0, "kernels": "triton"}
    err = _train(_write_config(tmp_path, sae=sae), capsys)
    assert "kernels='triton'" in err and ("CUDA" in err or "not importable" in err)


def _offline_model_error(*args, **kwargs):
    """What transformers raises for a hub model that is not cached, offline."""
    try:
        raise hf_errors.LocalEntryNotFoundError("Cannot find the requested files in the cache")
    except hf_errors.LocalEntryNotFoundError as cause:
        raise OSError(
            "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't "
            "find them in the cached files.\nCheck your internet connection."
        ) from cause


def test_unreachable_hub_model_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sae_lens_e2e.training.runner.load_model", _offline_model_error)
    err = _train(_write_config(tmp_path), capsys)
    assert "couldn't connect" in err and "not in the local cache" in err


def test_offline_dataset_error_is_one_line():
    try:
        try:
            raise FileNotFoundError("Dataset x is not cached")
        except FileNotFoundError:
            raise ConnectionError("Couldn't reach 'x' on the Hub (OfflineModeIsEnabled)")  # noqa: B904
    except ConnectionError as err:
        message = user_message(err)
    assert message is not None and "Couldn't reach 'x'" in message and "\n" not in message


def test_non_finite_loss_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        "sae_lens_e2e.training.runner.load_model", lambda *a, **k: make_tiny_model()
    )

    def diverge(self):
        raise NonFiniteLossError("non-finite loss at step 1: {'loss': nan}; stopped")

    monkeypatch.setattr(E2ETrainer, "train_step", diverge)
    err = _train(_write_config(tmp_path), capsys)
    assert "error: training stopped: non-finite loss at step 1" in err


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "sae_lens_e2e.training.runner.load_model", lambda *a, **k: make_tiny_model()
    )
    monkeypatch.setattr(E2ETrainer, "train_step", lambda self: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["train", str(_write_config(tmp_path))])


def test_write_errors_name_the_path_and_the_fix():
    err = PermissionError(errno.EACCES, "Permission denied", "/data/out/.tmp")
    assert user_message(err) == (
        "Permission denied: /data/out/.tmp; choose a writable location or fix its permissions"
    )


def test_unreachable_hub_switches_to_offline_mode(monkeypatch):
    """No route to the hub: the HF libraries go offline (cache only) instead of retrying."""
    import datasets

    def no_route(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_route)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    reason = preflight.go_offline_if_hub_unreachable()
    assert reason is not None and "no network" in reason and "huggingface.co" in reason
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert huggingface_hub.constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE
    assert preflight.go_offline_if_hub_unreachable() is None  # already offline: nothing to do


def test_help_imports_nothing_heavy():
    """`sae-lens-e2e --help` builds every sub-command's parser without torch, SAELens & co
    (measured: ~7-14 s before, see the issue's closing note); the public API stays lazy too
    and registers the e2e architectures on first use."""
    code = (
        "import sys\n"
        "from sae_lens_e2e.cli import build_parser\n"
        "build_parser().format_help()\n"
        "import sae_lens_e2e\n"
        "heavy = ['torch', 'sae_lens', 'transformer_lens', 'matplotlib', 'datasets', 'wandb',"
        " 'huggingface_hub', 'transformers']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "cfg = sae_lens_e2e.E2EStandardTrainingSAEConfig\n"
        "from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY as r\n"
        "print(r['e2e_standard'][1] is cfg)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "True"], done.stdout


def _huge_header(folder: Path) -> Path:
    """Make the weights file of a SAELens folder claim a 50 GB header."""
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(struct.pack("<Q", 50_000_000_000) + weights.read_bytes()[8:])
    return weights


def test_safetensors_header_claiming_50_gb_is_one_line(tmp_path, capsys):
    from e2e_helpers import stock_sae_folder

    folder = stock_sae_folder(tmp_path / "sae", 16, "blocks.1.hook_resid_pre")
    weights = _huge_header(folder)
    for argv in (
        ["export", str(folder), "--out", str(tmp_path / "x.pt")],
        ["evaluate", str(folder), "--model", "gpt2", "--out", str(tmp_path / "r"), "--quiet"],
    ):
        assert cli.main(argv) != 0
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert str(folder) in err and "header too large" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]
    with pytest.raises(ValueError, match=f"{weights}: not a readable safetensors file"):
        read_safetensors(weights)


def test_file_size_limit_during_a_checkpoint_is_one_line_naming_the_last_good_one(
    tmp_path, monkeypatch, capsys
):
    """A real file-size limit (RLIMIT_FSIZE, as `ulimit -f`) while the third checkpoint is
    written: torch's zip writer fails ("unexpected pos ..."); one line names the checkpoint,
    the cause and the last good checkpoint, and nothing half-written is left."""
    resource = pytest.importorskip("resource")
    from sae_lens_e2e.training import trainer as trainer_module

    monkeypatch.setattr(
        "sae_lens_e2e.training.runner.load_model", lambda *a, **k: make_tiny_model()
    )
    real, calls = trainer_module.write_checkpoint, []

    def limited(run_folder, step, *args, **kwargs):
        calls.append(step)
        if len(calls) < 3:
            return real(run_folder, step, *args, **kwargs)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, hard))  # weights fit, Adam's do not
        try:
            return real(run_folder, step, *args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    monkeypatch.setattr(trainer_module, "write_checkpoint", limited)
    path = _write_config(tmp_path, checkpoint_path=str(tmp_path / "ck"), n_checkpoints=5)
    err = _train(path, capsys)
    (run,) = (tmp_path / "ck").iterdir()
    assert err == (
        f"sae-lens-e2e train: error: File too large while writing {run / 'step_000000003'} "
        f"(nothing half-written was left); last good checkpoint: {run / 'step_000000002'}; "
        "a file-size limit (ulimit -f) is below the file's size: raise it"
    )
    assert sorted(p.name for p in run.iterdir()) == ["step_000000001", "step_000000002"]


def test_write_failures_name_the_file_and_the_cause(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from sae_lens_e2e import atomic

    target = tmp_path / "out" / "sae_weights.safetensors"
    full = atomic.write_failure(OSError(errno.ENOSPC, "No space left on device"), target)
    assert str(full) == f"No space left on device while writing {target} (nothing half-written " \
        "was left)"  # fmt: skip
    big = SafetensorError("Error while serializing: I/O error: File too large (os error 27)")
    assert atomic.write_failure(big, target).errno == errno.EFBIG
    monkeypatch.setattr(os, "statvfs", lambda p: type("S", (), {"f_bavail": 0})())
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704")
    assert atomic.write_failure(torch_error, target).errno == errno.ENOSPC
    assert atomic.write_failure(RuntimeError("a bug"), target) is None
    assert atomic.write_failure(OSError(errno.EACCES, "denied"), target) is None
    refused = pytest.raises(atomic.WriteFailedError, match="No space left on device while")
    with refused, atomic.atomic_directory(tmp_path / "d") as tmp:
        (tmp / "x").write_text("x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_version(capsys):
    import importlib.metadata

    import sae_lens_e2e

    assert sae_lens_e2e.__version__ == importlib.metadata.version("sae-lens-e2e")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"sae-lens-e2e {sae_lens_e2e.__version__} (sae-lens ")
    assert len(out.splitlines()) == 1 and "torch" in out
