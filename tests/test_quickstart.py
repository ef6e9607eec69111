"""`sae-lens-e2e quickstart` end to end at a reduced size (seconds), offline."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import make_tiny_model
from e2e_helpers import killed_while_writing, stock_sae_folder
from sae_lens import SAE

from sae_lens_e2e import paper_settings
from sae_lens_e2e.analysis.report import EV_KINDS, parse_markdown_table
from sae_lens_e2e.cli import build_parser, main
from sae_lens_e2e.cli.quickstart import config_from_args, parse_coefficients
from sae_lens_e2e.pipelines.quickstart.config import SCHEDULES, TINY_COEFFICIENTS, QuickstartConfig
from sae_lens_e2e.pipelines.tiny_lm import (
    TinyLMConfig,
    load_pydoc_corpus,
    load_tiny_model,
    training_note,
)
from sae_lens_e2e.training.evaluation import alive_tokens_note

HOOK = "blocks.1.hook_resid_pre"
D_MODEL = 32

# The whole pipeline in a few seconds: a 3-layer d_model-32 byte LM on 60 kB of pydoc text.
TINY: dict[str, Any] = {
    "context_size": 32,
    "d_sae": 64,
    "training_tokens": 32 * 8 * 12,
    "train_batch_size_tokens": 32 * 8,
    "strategies": ["local", "e2e", "e2e_ds", "local->e2e"],
    "coefficients": {"local": [0.5, 2.0], "e2e": [0.5, 2.0], "e2e_ds": [1.0], "local->e2e": [1.0]},
    "n_eval_sequences": 24,
    "eval_batch_size": 8,
    "device": "cpu",
    "lm": {
        "n_layers": 3,
        "d_model": D_MODEL,
        "d_head": 16,
        "n_ctx": 32,
        "steps": 120,
        "batch_size": 16,
        "lr": 1e-2,
        "warmup_steps": 10,
        "corpus_bytes": 60_000,
        "max_loss_ratio": 0.95,
    },
}


@pytest.fixture(autouse=True, scope="module")
def _keep_torch_threads():
    """The quickstart CLI sets torch's thread count for its process (share_cpu); run in this
    one, it must not change the thread count of the test modules that follow."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _write_config(path: Path, **changes: Any) -> Path:
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["quickstart", "--quiet", *map(str, argv)])
    return rc, out.getvalue(), err.getvalue()


def _stock_sae_folder(path: Path, d_in: int = D_MODEL, hook: str = HOOK) -> Path:
    return stock_sae_folder(path, d_in, hook)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAE_LENS_E2E_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("qs")
    stock = _stock_sae_folder(root / "stock_sae")
    config = _write_config(root / "qs.yaml")
    out = root / "report"
    rc, stdout, stderr = _cli("--config", config, "--out", out, "--compare-sae", f"{stock}=stock")
    assert rc == 0, stderr
    return {"out": out, "stdout": stdout, "stderr": stderr, "config": config, "root": root}


def _runs(out: Path) -> list[dict[str, Any]]:
    return json.loads((out / "report.json").read_text())["runs"]


def test_report_folder_has_every_file(quickstart_run):
    out = quickstart_run["out"]
    for name in ("report.md", "report.json", "pareto.png", "geometry.png"):
        assert (out / name).stat().st_size > 0, name
    runs = _runs(out)
    trained = [r for r in runs if r["strategy"] != "loaded"]
    assert [r["label"] for r in trained] == [
        "local_lambda0.5",
        "local_lambda2",
        "e2e_lambda0.5",
        "e2e_lambda2",
        "e2e_ds_lambda1",
        "local_to_e2e_lambda1",
    ]
    for run in trained:
        folder = out / run["path"]
        for name in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors"):
            assert (folder / name).is_file(), (folder, name)
        sae = SAE.load_from_disk(folder)  # stock SAELens, no plugin code needed
        assert (sae.cfg.d_in, sae.cfg.d_sae) == (D_MODEL, 64)
        assert sae.cfg.metadata.hook_name == HOOK
    assert not list(out.parent.glob(".report.*")), "temp folders left behind"


def test_table_numbers_are_consistent(quickstart_run):
    out = quickstart_run["out"]
    for run in _runs(out):
        m = run["metrics"]
        assert m["ce_loss_increase"] == pytest.approx(m["ce_loss_with_sae"] - m["ce_loss_clean"])
        recovered = (m["ce_loss_zero_ablation"] - m["ce_loss_with_sae"]) / (
            m["ce_loss_zero_ablation"] - m["ce_loss_clean"]
        )
        assert m["ce_loss_recovered"] == pytest.approx(recovered)
    rows = parse_markdown_table((out / "report.md").read_text())
    assert len(rows) == len(_runs(out)) == 7
    for row in rows:
        clean, sae, zero = (float(row[k]) for k in ("CE clean", "CE with SAE", "CE zero-abl."))
        # Cells are rounded to 4 decimals, so allow the rounding of the cells involved.
        assert float(row["CE increase"]) == pytest.approx(sae - clean, abs=1.5e-4)
        slack = 2e-4 / (zero - clean) * (1 + abs(zero - sae) / (zero - clean))
        assert float(row["CE recovered"]) == pytest.approx(
            (zero - sae) / (zero - clean), abs=slack + 1e-4
        )
        alive, d_sae = map(int, row["alive"].split("/"))
        assert 0 <= alive <= d_sae
        assert 0 <= float(row["L0"]) <= d_sae
    assert len({row["CE clean"] for row in rows}) == 1, "one shared clean run"


def test_local_to_e2e_run_switches_and_costs_are_reported(quickstart_run):
    out = quickstart_run["out"]
    scheduled = json.loads(
        (out / "saes" / "local_to_e2e_lambda1" / "eval_results.json").read_text()
    )
    assert (scheduled["train_steps"], scheduled["train_local_steps"]) == (12, 10)  # 80% local
    runs = {r["label"]: r for r in _runs(out)}
    flops = {label: r["train_flops"] for label, r in runs.items() if r["strategy"] != "loaded"}
    assert flops["local_lambda0.5"] < flops["local_to_e2e_lambda1"] < flops["e2e_lambda0.5"]
    assert all(r["train_loop_seconds"] > 0 for r in runs.values() if r["strategy"] != "loaded")
    (row,) = json.loads((out / "report.json").read_text())["cheap_path_comparison"]
    assert row["label"] == "local_to_e2e_lambda1"
    assert row["flops_vs_full"] == pytest.approx(
        flops["local_to_e2e_lambda1"] / ((flops["e2e_lambda0.5"] + flops["e2e_lambda2"]) / 2)
    )
    assert "## The cheap path" in (out / "report.md").read_text()


def test_geometry_compares_independently_initialised_strategies(quickstart_run):
    geometry = json.loads((quickstart_run["out"] / "report.json").read_text())["geometry"]
    assert len(geometry) == 3
    for label, summary in geometry.items():
        assert 0 < summary["decoder/within/mean"] <= 1, label
        # Shared init would make nearly every latent match its own index in the other SAE.
        assert summary["decoder/cross/same_index_fraction"] < 0.2, label


def test_tiny_model_is_real_and_held_out_is_separate(quickstart_run):
    report = json.loads((quickstart_run["out"] / "report.json").read_text())
    info = report["model_info"]
    assert info["heldout_loss"] < 0.95 * info["unigram_ce"]
    assert report["n_eval_tokens"] == 24 * 32
    corpus = load_pydoc_corpus(0.12)
    assert corpus.heldout_docs and not set(corpus.heldout_docs) & set(corpus.train_docs)
    assert load_pydoc_corpus(0.12).heldout_docs == corpus.heldout_docs  # deterministic
    model = load_tiny_model(quickstart_run["out"] / "model")
    assert model.cfg.n_layers == 3


def test_summary_is_printed(quickstart_run):
    text = quickstart_run["stdout"]
    assert "quickstart finished" in text and "CE increase" in text
    assert "e2e_ds" in text and "stock" in text
    assert len(text.splitlines()) < 40  # one screen


def test_loaded_sae_is_evaluated_like_the_others(quickstart_run):
    loaded = [r for r in _runs(quickstart_run["out"]) if r["strategy"] == "loaded"]
    assert [r["label"] for r in loaded] == ["stock"]
    assert loaded[0]["path"] == str(quickstart_run["root"] / "stock_sae")
    assert loaded[0]["metrics"][f"alive/{HOOK}"] > 0


def test_report_files_and_folders_get_the_users_umask_modes(quickstart_run):
    umask = os.umask(0)
    os.umask(umask)
    out = quickstart_run["out"]
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert {out / "geometry.png", out / "pareto.png", out / "saes"} <= set(modes)
    expected = {p: (0o777 if p.is_dir() else 0o666) & ~umask for p in modes}
    assert modes == expected


def test_existing_output_is_refused_then_overwritten_with_cached_model(quickstart_run):
    out, config = quickstart_run["out"], quickstart_run["config"]
    before = (out / "report.json").read_text()
    rc, _, err = _cli("--config", config, "--out", out)
    assert rc == 2 and "--overwrite" in err
    assert (out / "report.json").read_text() == before
    rc, _, err = _cli(
        "--config", config, "--out", out, "--overwrite", "--strategies", "e2e",
        "--coefficients", "e2e=1",
    )  # fmt: skip
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["model_info"]["cached"] is True
    assert [r["label"] for r in report["runs"]] == ["e2e_lambda1"]


def test_ctrl_c_is_one_line_and_leaves_the_report_as_it_was(quickstart_run, monkeypatch):
    out = quickstart_run["out"]
    before = (out / "report.json").read_text()

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("sae_lens_e2e.pipelines.quickstart.pipeline.train_sweep", interrupted)
    rc, _, err = _cli("--config", quickstart_run["config"], "--out", out, "--overwrite")
    assert rc == 130 and err.startswith(f"sae-lens-e2e quickstart: interrupted; {out} was left")
    assert len(err.strip().splitlines()) == 1
    assert (out / "report.json").read_text() == before
    assert not list(out.parent.glob(f".{out.name}.*"))


def test_overwrite_never_replaces_what_the_quickstart_did_not_write(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_LENS_E2E_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    (out / "mine").mkdir(parents=True)
    (out / "notes.txt").write_text("keep")
    (out / "report.json").write_text("{}")
    config = _write_config(tmp_path / "c.yaml")
    rc, _, err = _cli("--config", config, "--out", out, "--overwrite")
    assert rc == 2 and "holds mine/, notes.txt, which the quickstart did not write" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["mine", "notes.txt", "report.json"]
    (out / "notes.txt").unlink()
    (out / "mine").rmdir()
    (out / "report.json").unlink()
    (out / "logs").mkdir()
    rc, _, err = _cli("--config", config, "--out", out, "--overwrite")
    assert rc == 2 and "is not a quickstart report (no report.json)" in err
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_a_killed_runs_temporary_folder_is_removed_on_the_next_start(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_LENS_E2E_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    stale = killed_while_writing(out)
    stock = _stock_sae_folder(tmp_path / "sae", d_in=D_MODEL + 1)
    config = _write_config(tmp_path / "c.yaml")
    rc, _, err = _cli("--config", config, "--out", out, "--compare-sae", stock)
    assert rc == 2 and "d_in=33" in err  # this start failed fast, after the clean-up
    assert not stale.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hook", "blocks.7.hook_resid_pre"], "does not exist"),
        (["--hook", "../../x"], "hook: '../../x' is not a hook name"),
        (["--training-tokens", str(10**9)], "lower --training-tokens"),
        (["--coefficients", "local=1,1"], "repeat"),
        (["--coefficients", "bogus=1"], "STRATEGY=L1"),
        (["--model", "gpt2"], "--model and --dataset go together"),
    ],
)
def test_bad_input_fails_fast_and_writes_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("SAE_LENS_E2E_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    rc, _, err = _cli("--config", _write_config(tmp_path / "c.yaml"), "--out", out, *args)
    assert rc == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "cache").exists()  # failed before training
    assert not list(tmp_path.glob(".report.*"))


@pytest.mark.parametrize(
    ("d_in", "hook", "message"),
    [(D_MODEL + 1, HOOK, "d_in=33"), (D_MODEL, "blocks.9.hook_resid_pre", "does not exist")],
)
def test_mismatched_sae_is_refused(tmp_path, monkeypatch, d_in, hook, message):
    monkeypatch.setenv("SAE_LENS_E2E_CACHE", str(tmp_path / "cache"))
    stock = _stock_sae_folder(tmp_path / "sae", d_in=d_in, hook=hook)
    out = tmp_path / "report"
    rc, _, err = _cli(
        "--config", _write_config(tmp_path / "c.yaml"), "--out", out, "--compare-sae", stock
    )
    assert rc == 2 and message in err, err
    assert not out.exists()


def test_compare_sae_label_clash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_LENS_E2E_CACHE", str(tmp_path / "cache"))
    stock = _stock_sae_folder(tmp_path / "sae")
    rc, _, err = _cli(
        "--config", _write_config(tmp_path / "c.yaml"), "--out", tmp_path / "report",
        "--compare-sae", f"{stock}=e2e_lambda2",
    )  # fmt: skip
    assert rc == 2 and "used twice" in err, err
    assert not (tmp_path / "report").exists()


def test_config_and_coefficient_parsing():
    assert parse_coefficients(["local=1,2.5", "e2e=0.5"]) == {"local": [1.0, 2.5], "e2e": [0.5]}
    with pytest.raises(ValueError, match="unknown field"):
        QuickstartConfig.from_dict({"d_sea": 3})
    with pytest.raises(ValueError, match="lm: unknown field"):
        QuickstartConfig.from_dict({"lm": {"layers": 3}})
    cfg = QuickstartConfig.from_dict({**TINY, "lm": dict(TINY["lm"])})
    assert QuickstartConfig.from_dict(cfg.to_dict()) == cfg


def test_quiet_prints_no_progress_bars(quickstart_run):
    assert "e2e[" not in quickstart_run["stderr"] and "it/s" not in quickstart_run["stderr"]


def test_lambda_labels_do_not_overlap():
    """SAEs with the same alive count sit on one point of the pareto plot's right panel;
    their lambda labels are stacked, not printed on top of each other."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    from sae_lens_e2e.analysis.report.plots import annotate_apart

    fig = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    points = [(63, 0.394, "λ=0.5", "C0"), (63, 0.395, "λ=2", "C0"), (63, 0.396, "λ=10", "C0"),
              (62, 0.586, "λ=0.5", "C1")]  # fmt: skip
    ax.plot([p[0] for p in points], [p[1] for p in points], "o")
    annotate_apart(ax, points)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]  # the text, not its arrow
    assert len(boxes) == 4
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)


def test_report_says_how_local_is_compared_at_equal_l0(quickstart_run):
    text = (quickstart_run["out"] / "report.md").read_text()
    assert "interpolated linearly in log L0" in text


def test_training_note_says_what_comes_first(quickstart_run, tmp_path, monkeypatch):
    lm = QuickstartConfig.from_dict(TINY).lm
    assert "trained by an earlier run" in training_note(lm, "cpu")  # the fixture's model
    monkeypatch.setenv("SAE_LENS_E2E_CACHE", str(tmp_path / "empty"))
    note = training_note(lm, "cpu", "1 torch thread (1.0 of 2 cores busy with other processes)")
    assert "first trains a small byte-level language model" in note
    assert " s/step measured just now with 1 torch thread (1.0 of 2 cores busy" in note
    assert str(tmp_path / "empty") in note


SPINNER = "import sys\nprint('spinning', flush=True)\nwhile True:\n    pass\n"


def test_threads_leave_busy_cores_alone(monkeypatch):
    """A CPU-bound process is seen as a busy core; torch gets no more threads than the cores
    left idle (never fewer than one), unless --threads or OMP_NUM_THREADS say otherwise."""
    import subprocess
    import sys

    from sae_lens_e2e import preflight

    spinner = subprocess.Popen([sys.executable, "-c", SPINNER], stdout=subprocess.PIPE, text=True)
    try:
        assert spinner.stdout.readline().strip() == "spinning"
        assert preflight.busy_cores() >= 0.8
    finally:
        spinner.kill()
        spinner.wait(timeout=60)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(preflight, "usable_cpus", lambda: [0, 1])
    for busy, threads in [(1.0, 1), (1.3, 1), (2.0, 1), (0.4, 2), (0.0, 2)]:
        monkeypatch.setattr(preflight, "busy_cores", lambda b=busy: b)
        assert preflight.fair_threads() == (threads, f"{busy:.1f} of 2 cores busy with other "
                                            "processes")  # fmt: skip
    assert preflight.fair_threads(3) == (3, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert preflight.fair_threads() == (2, "OMP_NUM_THREADS")


@pytest.mark.parametrize(
    ("changes", "args", "message"),
    [
        ({"strategies": "e2e"}, [], "strategies: expected a list of strings, got 'e2e'"),
        ({"coefficients": [1, 2]}, [], "coefficients: expected a mapping, got [1, 2]"),
        ({"runner_overrides": {"bogus": 1}}, [], "runner_overrides: unknown field(s) ['bogus']"),
        ({"runner_overrides": {"n_batches_in_buffer": "x"}}, [], "n_batches_in_buffer: expected"),
        ({"sae_overrides": {"strategy": "local"}}, [], "sae_overrides.strategy: set per run"),
        ({"sae_overrides": {"l1_coefficient": 2.0}}, [], "use coefficients"),
        ({"d_sae": "32"}, [], "d_sae: expected an integer or null, got '32'"),
        ({"d_sae": 0}, [], "d_sae: must be > 0, got 0"),
        ({"lm": {"steps": "many"}}, [], "lm.steps: expected an integer"),
        (
            {},
            ["--coefficients", "e2e=-1"],
            "coefficients.e2e[0]: must be >= 0, got -1.0 (negative)",
        ),
    ],
)
def test_wrong_config_values_fail_fast(tmp_path, monkeypatch, changes, args, message):
    monkeypatch.setenv("SAE_LENS_E2E_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    rc, _, err = _cli(
        "--config", _write_config(tmp_path / "c.yaml", **changes), "--out", out, *args
    )
    assert rc == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_coefficients_option_merges_with_the_defaults():
    parser = build_parser()
    args = parser.parse_args(["quickstart", "--coefficients", "e2e=0.5"])
    cfg = config_from_args(args)
    assert cfg.coefficients == {**TINY_COEFFICIENTS, "e2e": [0.5]}
    cfg.validate()
    args = parser.parse_args(
        ["quickstart", "--model", "m", "--dataset", "d", "--coefficients", "local=2"]
    )
    paper = {k: list(v) for k, v in paper_settings.COEFFICIENTS.items()}
    paper |= {s: paper[s.split("->")[1]] for s in SCHEDULES}  # local->S: the lambdas of S
    assert config_from_args(args).coefficients == {**paper, "local": [2.0]}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_refused(tmp_path):
    rc, _, err = _cli("--config", _write_config(tmp_path / "c.yaml"), "--out", tmp_path / "o",
                      "--device", "cuda")  # fmt: skip
    assert rc == 2 and "--device=cuda: CUDA is not available" in err, err


def test_read_only_cache_fails_before_the_tiny_lm_is_trained(tmp_path, monkeypatch, read_only):
    cache = read_only(tmp_path / "cache")
    monkeypatch.setenv("SAE_LENS_E2E_CACHE", str(cache))

    def no_training(*args, **kwargs):
        raise AssertionError("trained the tiny LM before checking that the cache is writable")

    monkeypatch.setattr("sae_lens_e2e.pipelines.tiny_lm.train_tiny_model", no_training)
    rc, _, err = _cli("--config", _write_config(tmp_path / "c.yaml"), "--out", tmp_path / "o")
    assert rc == 2 and f"quickstart cache {cache}" in err and "SAE_LENS_E2E_CACHE" in err, err
    assert not (tmp_path / "o").exists()


def test_read_only_out_is_refused_before_any_work(tmp_path, monkeypatch, read_only):
    monkeypatch.setenv("SAE_LENS_E2E_CACHE", str(tmp_path / "cache"))
    locked = read_only(tmp_path / "locked")
    rc, _, err = _cli("--config", _write_config(tmp_path / "c.yaml"), "--out", locked / "report")
    assert rc == 2 and f"cannot write to {locked}" in err, err
    assert not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------------- HF path


def _hf_setup(tmp_path, monkeypatch, n_rows: int) -> Path:
    """A local parquet dataset (no network) and SAELens's load_model returning a tiny model."""
    from datasets import Dataset

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (n_rows, 16), generator=gen)
    data = tmp_path / "data"
    data.mkdir()
    Dataset.from_dict({"tokens": tokens.tolist()}).to_parquet(data / "train.parquet")
    model = make_tiny_model()
    monkeypatch.setattr("sae_lens.load_model.load_model", lambda *a, **k: model)
    return data


def _hf_config(tmp_path: Path, data: Path, training_tokens: int) -> Path:
    cfg = {
        "model": "tiny-test-model",
        "dataset": str(data),
        "hook": HOOK,
        "context_size": 16,
        "d_sae": 32,
        "training_tokens": training_tokens,
        "train_batch_size_tokens": 64,
        "strategies": ["local", "e2e"],
        "coefficients": {"local": [0.5], "e2e": [0.5]},
        "n_eval_sequences": 8,
        "eval_batch_size": 4,
        "device": "cpu",
    }
    path = tmp_path / "hf.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_hf_dataset_path_evaluates_on_the_runners_held_out_sequences(tmp_path, monkeypatch):
    data = _hf_setup(tmp_path, monkeypatch, n_rows=64)
    out = tmp_path / "report"
    rc, _, err = _cli("--config", _hf_config(tmp_path, data, 64 * 10), "--out", out)
    assert rc == 0, err
    for run in _runs(out):
        # The runner evaluated its training SAE on the sequences it held out before training;
        # the report evaluated the saved SAE on ours: same tokens, same numbers.
        own = json.loads((out / run["path"]).parent.joinpath("eval_results.json").read_text())
        for key in ("ce_loss_clean", "ce_loss_with_sae", "ce_loss_zero_ablation"):
            assert run["metrics"][key] == pytest.approx(own[key], rel=1e-5), key
        assert math.isfinite(run["metrics"]["kl"])


def test_hf_dataset_shorter_than_budget_is_refused(tmp_path, monkeypatch):
    data = _hf_setup(tmp_path, monkeypatch, n_rows=40)  # 8 held out + 32 = 512 tokens
    out = tmp_path / "report"
    rc, _, err = _cli("--config", _hf_config(tmp_path, data, 64 * 10), "--out", out)
    assert rc == 2 and "ran out" in err, err
    assert not out.exists() and not list(tmp_path.glob(".report.*"))


def test_report_has_both_explained_variances_and_alive_tokens(quickstart_run):
    out = quickstart_run["out"]
    text = (out / "report.md").read_text()
    rows, runs = parse_markdown_table(text), _runs(out)
    posts = [h for h in rows[0] if h.startswith("EV blocks.") and h.endswith("(pooled)")]
    assert posts == ["EV blocks.1.hook_resid_post (pooled)", "EV blocks.2.hook_resid_post (pooled)"]
    differ = 0
    for row, run in zip(rows, runs, strict=True):
        m = run["metrics"]
        for hook, column in [(HOOK, "EV at SAE"), *((p[3:-9], p[:-9]) for p in posts)]:
            pooled, per_token = (m[f"{k}/{hook}"] for k in EV_KINDS.values())
            assert float(row[f"{column} (pooled)"]) == pytest.approx(pooled, abs=6e-4)
            assert float(row[f"{column} (per token)"]) == pytest.approx(per_token, abs=6e-4)
            differ += abs(pooled - per_token) > 1e-3
        assert int(row["alive tokens"].replace(",", "")) == m["n_tokens"] == 24 * 32
    assert differ, "pooled and per-token EV are different quantities"
    note = "counted over 768 tokens, fewer than the 500,000 the paper counts over"
    assert note in text and note in quickstart_run["stdout"]
    assert "EV per token" in quickstart_run["stdout"]


def test_alive_note_only_below_the_papers_500k_tokens():
    assert alive_tokens_note(500_000) == ""
    assert "499,999 tokens" in alive_tokens_note(499_999)


def test_a_dead_sae_is_warned_about_over_the_reports_tokens(cache_dir, quickstart_run, tmp_path):
    """The warning counts over the same held-out tokens as the report's alive column (here
    24 x 32 = 768), not over the runner's own evaluation batch (8 x 32 = 256)."""
    out = tmp_path / "report"
    rc, _, err = _cli("--config", quickstart_run["config"], "--out", out, "--strategies", "local",
                      "--coefficients", "local=1000", "--lr", "3")  # fmt: skip
    assert rc == 0, err
    (run,) = _runs(out)
    alive = run["metrics"][f"alive/{HOOK}"]
    assert err.strip().splitlines() == [
        f"WARNING: run local_lambda1000: {64 - alive} of 64 latents of the SAE at {HOOK} never "
        f"fired on 768 held-out tokens (L0 {run['metrics'][f'l0/{HOOK}']:.3g}): the SAE is "
        "mostly dead; try a lower lr or sparsity coefficient"
    ]


# ----------------------------------------------------------------------------- control


@pytest.fixture(scope="module")
def control_run(tmp_path_factory, cache_dir):
    """local and e2e SAEs on the tiny LM and on its randomised-weights control."""
    root = tmp_path_factory.mktemp("control")
    config = _write_config(
        root / "qs.yaml",
        strategies=["local", "e2e"],
        coefficients={"local": [0.5, 2.0], "e2e": [0.5]},
        control="random-weights",
    )
    out = root / "report"
    rc, stdout, stderr = _cli("--config", config, "--out", out)
    assert rc == 0, stderr
    return {"out": out, "stdout": stdout, "config": config}


def test_control_trains_the_same_saes_on_the_lms_own_initialisation(control_run):
    """The control model is TransformerLens's init of the tiny LM's config with its seed:
    exactly the LM's weights before training, embeddings included. Its SAEs are the same
    runs (strategy, lambda, init seed, tokens), saved apart and marked in their metadata."""
    from transformer_lens import HookedTransformer

    from sae_lens_e2e.pipelines.control import random_weights
    from sae_lens_e2e.pipelines.tiny_lm import TinyLMConfig, tiny_model_config

    out = control_run["out"]
    trained = load_tiny_model(out / "model")
    lm = TinyLMConfig(**TINY["lm"])
    fresh = HookedTransformer(tiny_model_config(lm, "cpu")).state_dict()
    control = random_weights(trained, lm.seed).state_dict()
    assert control.keys() == fresh.keys()
    assert all(torch.equal(control[k], fresh[k]) for k in fresh)
    assert not torch.equal(control["embed.W_E"], trained.state_dict()["embed.W_E"])
    runs = _runs(out)
    assert [(r["label"], r["weights"]) for r in runs] == [
        ("local_lambda0.5", "trained"),
        ("local_lambda2", "trained"),
        ("e2e_lambda0.5", "trained"),
        ("random-weights/local_lambda0.5", "random-weights"),
        ("random-weights/local_lambda2", "random-weights"),
        ("random-weights/e2e_lambda0.5", "random-weights"),
    ]
    sae = SAE.load_from_disk(out / runs[-1]["path"])
    assert sae.cfg.metadata.model_weights == "random-weights"
    assert sae.cfg.metadata.random_weights_seed == lm.seed
    clean = {r["weights"]: r["metrics"]["ce_loss_clean"] for r in runs}
    assert clean["random-weights"] > clean["trained"] + 1  # an untrained LM predicts worse


def test_control_report_shows_trained_and_random_side_by_side(control_run):
    out = control_run["out"]
    text = (out / "report.md").read_text()
    assert "## Control: random-weights (each cell: trained / random-weights)" in text
    section = text[text.index("## Control") :]
    rows = parse_markdown_table(section)
    assert [(r["strategy"], r["lambda"]) for r in rows] == [("local", "0.5"), ("local", "2"), ("e2e", "0.5")]  # fmt: skip
    runs = {r["label"]: r["metrics"] for r in _runs(out)}
    a, b = runs["e2e_lambda0.5"], runs["random-weights/e2e_lambda0.5"]
    assert rows[2]["KL"] == f"{a['kl']:.4f} / {b['kl']:.4f}"
    assert rows[2]["EV per token"].count("/") == 1 and rows[2]["alive"].count("/") == 1
    table = parse_markdown_table(text)  # the main table gains a weights column
    assert [r["weights"] for r in table] == ["trained"] * 3 + ["random-weights"] * 3
    report = json.loads((out / "report.json").read_text())
    assert [r["label"] for r in report["equal_l0_comparison"]] == ["e2e_lambda0.5"]  # trained only
    assert "random-weights" in control_run["stdout"]


def test_evaluate_rebuilds_the_control_model_from_the_saes_metadata(control_run, tmp_path):
    """`evaluate --control random-weights` on the quickstart's folders: every SAE on its own
    model, the same numbers as the quickstart; a control SAE without --control is refused."""
    from datasets import Dataset

    out = control_run["out"]
    runs = _runs(out)
    tokens = Dataset.from_dict({"tokens": _heldout_tokens(out).tolist()})
    tokens.save_to_disk(str(tmp_path / "data"))
    base = ["evaluate", "--quiet", "--model", out / "model", "--dataset", tmp_path / "data",
            "--n-sequences", 24, "--batch-size", 8]  # fmt: skip
    folders = [out / r["path"] for r in runs]
    rc = main([*map(str, base), "--control", "random-weights", "--out", str(tmp_path / "ev"),
               *map(str, folders)])  # fmt: skip
    assert rc == 0
    got = {Path(r["label"]): r for r in json.loads((tmp_path / "ev" / "report.json").read_text())["runs"]}  # fmt: skip
    for run in runs:
        mine = got[out / run["path"]]
        assert mine["weights"] == run["weights"] and mine["coefficient"] == run["coefficient"]
        for key in ("ce_loss_clean", "kl", f"l0/{HOOK}", f"explained_variance/{HOOK}"):
            assert mine["metrics"][key] == pytest.approx(run["metrics"][key], rel=1e-5), key
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main([*map(str, base), "--out", str(tmp_path / "ev2"), str(folders[-1])])
    assert rc == 2 and "pass --control random-weights" in err.getvalue()
    assert not (tmp_path / "ev2").exists()


def _heldout_tokens(out: Path) -> torch.Tensor:
    """The quickstart's held-out windows (its first n_eval_sequences of held-out text)."""
    from sae_lens_e2e.pipelines.tiny_lm import windows

    lm = TinyLMConfig(**TINY["lm"])
    corpus = load_pydoc_corpus(lm.heldout_fraction, lm.corpus_bytes)
    return windows(corpus.heldout, TINY["context_size"])[: TINY["n_eval_sequences"]]
