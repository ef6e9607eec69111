"""`sae-lens-e2e evaluate` offline: a tiny quickstart-format model, a token dataset on disk,
local SAELens folders and the paper's file formats served from local directories."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from e2e_helpers import stock_sae_folder
from e2e_hf_upload import ReferenceSAEModule, fill_hub_cache, write_uploaded_pair
from sae_lens import SAE
from test_convert import make_reference_config, write_checkpoint
from transformer_lens import HookedTransformer

from sae_lens_e2e import evaluate_many
from sae_lens_e2e.analysis.report import parse_markdown_table
from sae_lens_e2e.cli import main
from sae_lens_e2e.loading.huggingface import DEFAULT_HF_REPO
from sae_lens_e2e.loading.reference_format import TLENS_DEFAULT_PROCESSING
from sae_lens_e2e.paper_settings import DATASET
from sae_lens_e2e.pipelines.evaluate import EvaluateConfig, resolve_settings
from sae_lens_e2e.pipelines.tiny_lm import (
    TinyLMConfig,
    load_tiny_model,
    save_tiny_model,
    tiny_model_config,
)

pytestmark = pytest.mark.filterwarnings("ignore:\\s*This SAE has non-empty")

D_MODEL, CTX, ROWS = 16, 32, 40
L1, L6 = "blocks.1.hook_resid_pre", "blocks.6.hook_resid_pre"
E2E6 = "e2e_similar_ce_layer_6"


def _run_config() -> dict:
    """A paper run's final_config.yaml, but trained on rows as long as the tiny model's."""
    return make_reference_config([L6], train_data={"dataset_name": "owt", "n_ctx": CTX})


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A 7-layer byte model saved as the quickstart saves it (so blocks.6 exists, as in the
    paper), 40 rows of tokens on disk, two SAELens folders and the paper's HF file pair."""
    from datasets import Dataset

    root = tmp_path_factory.mktemp("eval")
    lm = TinyLMConfig(n_layers=7, d_model=D_MODEL, d_head=8, n_ctx=CTX)
    model = HookedTransformer(tiny_model_config(lm, "cpu"))
    save_tiny_model(model, {"lm": dataclasses.asdict(lm)}, root / "model")
    tokens = torch.randint(0, 256, (ROWS, CTX), generator=torch.Generator().manual_seed(0))
    Dataset.from_dict({"tokens": tokens.tolist()}).save_to_disk(root / "data")
    module = ReferenceSAEModule(D_MODEL, 4 * D_MODEL, seed=4)
    write_uploaded_pair(root / "dl", E2E6, module, _run_config())
    return {
        "root": root,
        "model": root / "model",
        "data": root / "data",
        "a": stock_sae_folder(root / "sae_a", D_MODEL, L1, seed=1, scale=0.3),
        "b": stock_sae_folder(root / "sae_b", D_MODEL, L6, seed=2, scale=0.3),
        "dl": root / "dl",
    }


def _cli(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["evaluate", *map(str, argv)])
    return rc, out.getvalue(), err.getvalue()


def _base(world: dict[str, Path], out: Path, n: int = 12) -> list[object]:
    return ["--model", world["model"], "--dataset", world["data"], "--n-sequences", n,
            "--batch-size", 5, "--out", out]  # fmt: skip


def test_local_folders_match_evaluate_many(world, tmp_path) -> None:
    """Same numbers as evaluate_many on the dataset's first rows: no BOS, no other tokens."""
    out = tmp_path / "report"
    rc, stdout, stderr = _cli(*_base(world, out), "--quiet", world["a"], world["b"])
    assert rc == 0, stderr
    for name in ("report.md", "report.json", "pareto.png"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "geometry.png").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["n_eval_tokens"] == 12 * CTX
    assert report["config"]["settings"]["prepend_bos"] is False

    model = load_tiny_model(world["model"])
    from datasets import load_from_disk

    tokens = torch.tensor(load_from_disk(str(world["data"]))["tokens"][:12])
    saes = {str(world[k]): SAE.load_from_disk(world[k]) for k in ("a", "b")}
    hooks = {str(world["a"]): L1, str(world["b"]): L6}
    expected = evaluate_many(model, {k: {hooks[k]: s} for k, s in saes.items()}, tokens)
    for run in report["runs"]:
        want = expected[run["label"]]
        for key in ("ce_loss_clean", "ce_loss_with_sae", "kl", f"l0/{run['hook']}"):
            assert run["metrics"][key] == pytest.approx(want[key], rel=1e-5), key
        assert abs(run["metrics"]["ce_loss_increase"]) > 1e-4  # the SAE does something
    rows = parse_markdown_table((out / "report.md").read_text())
    assert [r["strategy"] for r in rows] == [str(world["a"]), str(world["b"])]
    assert "evaluate finished" in stdout and "paper L0" not in stdout


def test_paper_sae_from_hf_and_wandb_layouts_with_paper_numbers(world, tmp_path) -> None:
    """hf: (the upload script's layout) and a converted folder are both known as the paper's
    e2e layer-6 SAE; --paper puts Table 2 beside our numbers."""
    converted = tmp_path / "converted"
    assert main(["convert", f"hf:{E2E6}", "--local-dir", str(world["dl"]),
                 "--out", str(converted)]) == 0  # fmt: skip
    out = tmp_path / "report"
    rc, stdout, stderr = _cli(
        *_base(world, out), "--quiet", "--paper", "--local-dir", world["dl"],
        f"hf:{DEFAULT_HF_REPO}/{E2E6}", converted / E2E6 / L6, world["a"],
    )  # fmt: skip
    assert rc == 0, stderr
    rows = parse_markdown_table((out / "report.md").read_text())
    assert [(r["strategy"], r["lambda"], r["paper L0"], r["paper CE increase"]) for r in rows] == [
        ("e2e", "3", "27.5", "0.145"),
        ("e2e", "3", "27.5", "0.145"),
        (str(world["a"]), "-", "-", "-"),
    ]
    runs = json.loads((out / "report.json").read_text())["runs"]
    assert runs[0]["metrics"] == runs[1]["metrics"]  # the same SAE, both ways
    assert runs[0]["paper"]["alive"] == "22k" and runs[2]["paper"] is None
    assert "paper CE increase" in stdout


def test_wandb_run_directory_source(world, tmp_path) -> None:
    run_dir = tmp_path / "runs" / "sparsify" / "gpt2" / "zgdpkafo"
    sd = torch.load(world["dl"] / f"{E2E6}.pt", weights_only=True)
    ref = {
        f"blocks-6-hook_resid_pre.{k.replace('encoder.', 'encoder.0.')}": v for k, v in sd.items()
    }
    write_checkpoint(run_dir, ref, _run_config())
    out = tmp_path / "report"
    rc, _, stderr = _cli(*_base(world, out), "--quiet", "--paper", "--local-dir",
                         tmp_path / "runs", "wandb:sparsify/gpt2/zgdpkafo")  # fmt: skip
    assert rc == 0, stderr
    (row,) = parse_markdown_table((out / "report.md").read_text())
    assert (row["strategy"], row["paper alive"]) == ("e2e", "22k")


def test_saelens_repo_source_from_the_hub_cache(world, hub_cache, tmp_path) -> None:
    """ORG/REPO/SAE_ID: a SAELens folder in a hub repo, read by stock SAE.from_pretrained."""
    files = {f"layer1/{p.name}": p for p in world["a"].iterdir()}
    fill_hub_cache(hub_cache, "me/saes", files)
    out = tmp_path / "report"
    rc, _, stderr = _cli(*_base(world, out, n=5), "--quiet", "me/saes/layer1", world["a"])
    assert rc == 0, stderr
    runs = json.loads((out / "report.json").read_text())["runs"]
    assert runs[0]["metrics"] == runs[1]["metrics"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("nope/nothing", "SOURCE 'nope/nothing' is not a SAELens folder"),
        (f"hf:{DEFAULT_HF_REPO}/missing", "cannot load SOURCE 'hf:"),
        ("paper:e2e/5", "no paper SAE for type='e2e' layer=5"),
        ("wandb:a/b/c/d", "not a wandb run path"),
    ],
)
def test_unfetchable_source_is_one_line_and_writes_nothing(world, tmp_path, source, message):
    out = tmp_path / "report"
    rc, stdout, stderr = _cli(*_base(world, out), "--quiet", world["a"], source)
    assert rc == 2 and message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert stderr.startswith("sae-lens-e2e evaluate: error:")
    assert list(tmp_path.iterdir()) == []


def test_failure_after_loading_leaves_nothing_and_progress_bars_show(world, tmp_path) -> None:
    out = tmp_path / "report"
    rc, _, stderr = _cli(*_base(world, out, n=ROWS + 1), world["a"])
    assert rc == 2 and "fewer than --n-sequences=41 rows" in stderr
    assert list(tmp_path.iterdir()) == []
    rc, _, stderr = _cli(*_base(world, out, n=10), world["a"])
    assert rc == 0 and "loading SAEs" in stderr and "evaluating" in stderr
    rc, _, stderr = _cli(*_base(world, out, n=10), "--quiet", world["a"])
    assert rc == 2 and "already holds a sae-lens-e2e evaluate report; pass --overwrite" in stderr


def test_gpt2_defaults_are_the_papers() -> None:
    settings = resolve_settings(EvaluateConfig(sources=["x"], model="gpt2"), [])
    assert (settings.dataset, settings.context_size, settings.prepend_bos) == (DATASET, 1024, False)
    assert DATASET == "apollo-research/Skylion007-openwebtext-tokenizer-gpt2"
    assert settings.model_from_pretrained_kwargs == TLENS_DEFAULT_PROCESSING
    flags = EvaluateConfig(sources=["x"], model="gpt2", context_size=128, prepend_bos=True)
    assert (resolve_settings(flags, []).context_size, resolve_settings(flags, []).prepend_bos) == (
        128,
        True,
    )
    with pytest.raises(ValueError, match="--dataset is needed"):
        resolve_settings(EvaluateConfig(sources=["x"], model="pythia-70m"), [])


def test_error_line_starts_after_the_progress_bar_is_closed(world, tmp_path) -> None:
    """The second SOURCE fails while the 'loading SAEs' bar is open: the bar is closed
    first, so the error is a line of its own, not glued to the bar."""
    rc, _, stderr = _cli(*_base(world, tmp_path / "r"), world["a"], tmp_path / "missing")
    assert rc == 2
    (line,) = [text for text in stderr.split("\n") if "error:" in text]
    assert line.split("\r")[-1].startswith("sae-lens-e2e evaluate: error: "), repr(line)


def test_ctrl_c_in_evaluate_is_one_line_and_writes_nothing(world, tmp_path, monkeypatch) -> None:
    from sae_lens_e2e.pipelines import evaluate as evaluate_pipeline

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_pipeline, "evaluate_many", ctrl_c)
    out = tmp_path / "r"
    rc, _, stderr = _cli(*_base(world, out), "--quiet", world["a"])
    assert rc == 130
    assert stderr == f"sae-lens-e2e evaluate: interrupted; {out} was left as it was\n"
    assert list(tmp_path.iterdir()) == []


def test_nan_weights_are_warned_about_naming_the_tensor(world, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nan_sae"
    shutil.copytree(world["a"], folder)
    weights = folder / "sae_weights.safetensors"
    sd = load_file(weights)
    sd["W_enc"][0, :3] = float("nan")
    save_file(sd, weights)
    out = tmp_path / "r"
    rc, _, stderr = _cli(*_base(world, out), "--quiet", world["a"], folder)
    assert rc == 0
    line = f"WARNING: SOURCE '{folder}': W_enc has 3 NaN/Inf value(s) of 768; every number"
    assert stderr.startswith(line), stderr
    assert line in (out / "report.md").read_text()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):  # export refuses them: the reference format cannot
        assert main(["export", str(folder), "--out", str(tmp_path / "x.pt")]) == 1
    assert err.getvalue() == f"error: SAE at {L1}: W_enc has 3 NaN/Inf value(s) of 768; not " \
        "exporting it\n"  # fmt: skip
    assert not (tmp_path / "x.pt").exists()
