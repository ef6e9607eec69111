"""From a clone's root the root is on sys.path: nothing there may shadow an installed package.

`python -m pytest`, `python -m sae_lens_e2e`, `torchrun -m sae_lens_e2e`, `python -c` and a
notebook started in the repo all put the current folder first on sys.path. The top-level
`kernels/` folder (shipped only as `sae_lens_e2e.kernels`) once shadowed Hugging Face's
`kernels`, which transformers >= 5 imports whenever transformer_lens is imported. Each check
runs a fresh interpreter from the repo root, as a user would.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
PREFIX_OK = ("test_", "bench_", "e2e_")  # names no popular distribution owns


def run_from_root(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    env.pop("PYTHONSAFEPATH", None)  # users run without it: the root is on sys.path
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )


def in_kernels_folder(path: str) -> bool:
    """A file of the repo's kernels/ folder (the repo may also hold the venv, as CI's does)."""
    return Path(path).resolve().is_relative_to(ROOT / "kernels")


def test_installed_kernels_distribution_wins_over_the_folder(tmp_path):
    """A stand-in `kernels` distribution (on PYTHONPATH, so behind the root on sys.path):
    `import kernels` from the root must give it, not the repo's folder."""
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("STAND_IN = True\n")
    dist = site / "kernels-0.19.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 0.19.1\n")
    code = (
        "import kernels, sae_lens_e2e.kernels as ours\n"
        "assert kernels.STAND_IN, kernels\n"
        "print(kernels.__file__); print(ours.__file__); print(ours.sae_forward.__module__)"
    )
    proc = run_from_root(sys.executable, "-c", code, env={"PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs, ours, module = proc.stdout.split()
    assert Path(theirs).resolve() == (site / "kernels" / "__init__.py").resolve()
    assert Path(ours).resolve() == ROOT / "kernels" / "__init__.py"
    assert module == "sae_lens_e2e.kernels.sae"


def test_without_any_kernels_distribution_the_name_stays_free():
    """`python -S` (no site-packages): from the root, `import kernels` finds nothing to hand
    over to and fails as it would anywhere else, leaving nothing half-imported behind."""
    code = (
        "import sys\n"
        "try:\n    import kernels\n"
        "except ModuleNotFoundError as e:\n"
        "    assert e.name == 'kernels', e.name\n"
        "    assert 'kernels' not in sys.modules\n"
        "    print('absent')\n"
    )
    proc = run_from_root(sys.executable, "-S", "-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "absent"


def test_transformer_lens_imports_from_the_root():
    code = (
        "import sae_lens_e2e, transformer_lens\n"
        "try:\n    import kernels\n"
        "except ModuleNotFoundError:\n    print('none')\n"
        "else:\n    print(kernels.__file__)\n"
        "print(transformer_lens.HookedTransformer.__name__)"
    )
    proc = run_from_root(sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kernels_file, name = proc.stdout.split()
    assert name == "HookedTransformer"
    assert kernels_file == "none" or not in_kernels_folder(kernels_file), kernels_file


def test_cli_and_benchmarks_start_from_the_root():
    """`python -m sae_lens_e2e --help` and every benchmark's `--help`, concurrently."""
    benches = sorted(p.relative_to(ROOT) for p in (ROOT / "benchmarks").glob("*.py"))
    assert benches
    cmds = [[sys.executable, "-m", "sae_lens_e2e", "--help"]]
    cmds += [[sys.executable, str(b), "--help"] for b in benches]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONSAFEPATH", None)
    procs = [
        subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for c in cmds
    ]
    failed = []
    try:
        for cmd, proc in zip(cmds, procs, strict=True):
            out, err = proc.communicate(timeout=TIMEOUT_S)
            if proc.returncode != 0 or b"usage:" not in out:
                failed.append(f"{' '.join(cmd[1:])}: rc {proc.returncode}\n{err.decode()[-2000:]}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not failed, "\n".join(failed)


def test_torchrun_train_from_the_root_gets_past_the_imports(tmp_path):
    """`torchrun -m sae_lens_e2e train` from the root loads transformer_lens and reaches the
    model download (offline, empty cache), which it reports in one line."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this interpreter")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "model_name: roneneldan/TinyStories-1M\n"
        "hook_name: blocks.0.hook_resid_pre\n"
        f"dataset_path: {tmp_path / 'data'}\n"
        "is_dataset_tokenized: true\ncontext_size: 16\ntrain_batch_size_tokens: 64\n"
        f"training_tokens: 128\noutput_path: {tmp_path / 'out'}\n"
        "sae: {architecture: e2e_standard, d_in: 64, d_sae: 128, strategy: e2e}\n"
        "logger: {log_to_wandb: false}\n"
    )
    args = [str(torchrun), "--standalone", "--nproc-per-node", "1", "-m", "sae_lens_e2e"]
    env = {"OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "empty-hf-cache")}
    proc = run_from_root(*args, "train", str(cfg), env=env)
    assert "ImportError" not in proc.stderr, proc.stderr[-3000:]
    assert "sae-lens-e2e train: error:" in proc.stderr, proc.stderr[-3000:]
    assert "hub cannot be reached" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()


def test_wheel_and_editable_install_have_no_top_level_kernels(tmp_path):
    """pyproject ships every package under sae_lens_e2e; away from the root, `kernels` is
    never this repo's folder, while sae_lens_e2e.kernels is."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p.split(".")[0] == "sae_lens_e2e" for p in tool["packages"])
    assert all(p.split(".")[0] == "sae_lens_e2e" for p in tool["package-dir"])
    code = (
        "import importlib.util as u\n"
        "spec = u.find_spec('kernels')\n"
        "print(spec.origin if spec else 'none')\n"
        "print(u.find_spec('sae_lens_e2e.kernels').origin)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    top, ours = proc.stdout.split()
    assert top == "none" or not in_kernels_folder(top), top
    assert Path(ours).resolve() == ROOT / "kernels" / "__init__.py"


def test_no_other_folder_claims_a_popular_name():
    """tests/, benchmarks/ and examples/ are not packages (an installed package of the same
    name always wins over a folder without __init__.py); the modules in them, which are
    top-level names when their folder is sys.path[0] (pytest, `python benchmarks/x.py`), are
    named so no installed distribution or stdlib module owns the name."""
    taken = set(sys.stdlib_module_names) | set(importlib.metadata.packages_distributions())
    clashes, generic = [], []
    for folder in ("tests", "benchmarks", "examples"):
        assert not (ROOT / folder / "__init__.py").exists(), f"{folder}/ is a package"
        for path in (ROOT / folder).iterdir():
            is_package = path.is_dir() and (path / "__init__.py").exists()
            if path.suffix != ".py" and not is_package:
                continue
            name = path.stem
            if name in taken:
                clashes.append(f"{folder}/{path.name}")
            if folder == "tests" and name != "conftest" and not name.startswith(PREFIX_OK):
                generic.append(f"{folder}/{path.name}")
    assert not clashes, f"shadow installed or stdlib modules: {clashes}"
    assert not generic, f"helper modules in tests/ need a prefix from {PREFIX_OK}: {generic}"
