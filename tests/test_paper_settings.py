"""GPT-2 as the paper ran it: every place that says "the paper's GPT-2 run" agrees with
`paper_settings` (model processing, BOS, context, dataset, batch, LR schedule, grad clip)."""

from __future__ import annotations

import contextlib
import io
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from sae_lens_e2e import paper_settings
from sae_lens_e2e.cli import build_parser, main
from sae_lens_e2e.cli.quickstart import config_from_args
from sae_lens_e2e.cli.train import load_runner_config, runner_config_from_dict
from sae_lens_e2e.pipelines.quickstart.config import QuickstartConfig
from sae_lens_e2e.pipelines.quickstart.runner_config import build_runner_config
from sae_lens_e2e.pipelines.quickstart.workload import hf_workload

EXAMPLES = Path(__file__).parent.parent / "examples"
TRAIN_EXAMPLES = sorted(EXAMPLES.glob("gpt2_layer6_*.yaml"))
# The paper's lambda per strategy at layer 6 (similar CE increase).
LAMBDA = {s: v[0] for s, v in paper_settings.COEFFICIENTS.items()}


def assert_paper_run(cfg: Any, where: str, *, full_budget: bool = True) -> None:
    """`cfg` (a LanguageModelSAERunnerConfig) runs GPT-2 small as the paper did."""
    expected = paper_settings.runner_settings()
    if not full_budget:  # a shorter run: warm-up is capped by the quickstart, rest the same
        for name in ("training_tokens", "lr_warm_up_steps"):
            expected.pop(name)
    for name, value in expected.items():
        assert getattr(cfg, name) == value, f"{where}: {name}={getattr(cfg, name)!r}"
    for name, value in paper_settings.sae_settings().items():
        assert getattr(cfg.sae, name) == value, f"{where}: sae.{name}={getattr(cfg.sae, name)!r}"
    assert cfg.hook_name == paper_settings.HOOK, where
    assert cfg.sae.l1_coefficient == LAMBDA[cfg.sae.strategy], where
    if cfg.sae.strategy == "e2e_ds":
        assert cfg.sae.in_to_orig_coefficient == paper_settings.IN_TO_ORIG_COEFFICIENT, where
    micro_batch = cfg.train_batch_size_tokens // cfg.context_size
    assert micro_batch // cfg.sae.gradient_accumulation_steps == 8, f"{where}: batch 8"


def test_the_settings_are_the_papers():
    """The facts themselves (Braun et al. 2024; reference gpt2_e2e.yaml)."""
    runner = paper_settings.runner_settings()
    assert runner["prepend_bos"] is False and runner["context_size"] == 1024
    assert runner["training_tokens"] == 400_000 * 1024
    assert runner["train_batch_size_tokens"] == 16 * 1024  # effective batch 16
    assert runner["lr_warm_up_steps"] * 16 == 20_000  # warm-up over 20k samples
    assert runner["lr_end"] == pytest.approx(0.1 * runner["lr"])  # min_lr_factor 0.1
    assert all(runner["model_from_pretrained_kwargs"].values())
    assert paper_settings.sae_settings()["d_sae"] == 60 * 768
    assert paper_settings.runner_settings() is not paper_settings.runner_settings()


@pytest.mark.parametrize("path", TRAIN_EXAMPLES, ids=lambda p: p.stem)
def test_train_examples_are_the_paper_run(path):
    assert_paper_run(load_runner_config(path), path.name)


def _help_example() -> dict[str, Any]:
    """The YAML block of `sae-lens-e2e train --help`, as printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["train", "--help"])
    text = out.getvalue()
    block = text[text.index("example CONFIG.yaml") :].split("\n\n", 1)[1]
    return yaml.safe_load(textwrap.dedent(block))


def test_train_help_example_is_the_paper_run():
    cfg = runner_config_from_dict(_help_example(), source="train --help")
    assert_paper_run(cfg, "train --help")


def _quickstart_runner_configs(*argv: str) -> list[Any]:
    args = build_parser().parse_args(["quickstart", *argv])
    cfg = config_from_args(args)
    cfg.validate()
    return [
        build_runner_config(cfg, cfg.hook, 768, strategy, coefficient, None, "cpu")
        for strategy in cfg.strategies
        for coefficient in cfg.coefficients[strategy]
    ]


def test_quickstart_gpt2_example_is_the_paper_run():
    configs = _quickstart_runner_configs("--config", str(EXAMPLES / "quickstart_gpt2.yaml"))
    assert [c.sae.strategy for c in configs] == ["local", "e2e", "e2e_ds"]
    for cfg in configs:
        assert_paper_run(cfg, f"quickstart_gpt2.yaml {cfg.sae.strategy}")


def test_quickstart_model_gpt2_defaults_to_the_paper_run():
    """`--model gpt2` alone (no config file) takes every setting of the paper's run."""
    paper = ["--model", "gpt2", "--dataset", paper_settings.DATASET]
    for cfg in _quickstart_runner_configs(*paper, "--training-tokens", str(409_600_000)):
        assert_paper_run(cfg, f"--model gpt2 {cfg.sae.strategy}")
    for cfg in _quickstart_runner_configs(*paper):  # the default (short) budget
        assert_paper_run(cfg, f"--model gpt2, short, {cfg.sae.strategy}", full_budget=False)


def test_quickstart_config_built_directly_loads_gpt2_as_the_paper():
    cfg = QuickstartConfig(model="gpt2", dataset="x/y")
    assert cfg.prepend_bos is False
    assert cfg.model_from_pretrained_kwargs == paper_settings.model_from_pretrained_kwargs()
    assert QuickstartConfig(model="gpt2", dataset="x/y", prepend_bos=True).prepend_bos is True


def test_quickstart_other_models_keep_saelens_defaults():
    args = [
        "--model",
        "pythia-70m",
        "--dataset",
        "some/dataset",
        "--hook",
        "blocks.3.hook_resid_pre",
    ]
    for cfg in _quickstart_runner_configs(*args):
        assert cfg.prepend_bos is True and cfg.model_from_pretrained_kwargs == {}
        assert cfg.sae.l1_coefficient == LAMBDA[cfg.sae.strategy]


def test_quickstart_gpt2_loads_the_processed_model(monkeypatch):
    """The model the quickstart trains and evaluates on is loaded with the paper's processing
    (SAELens would otherwise use `from_pretrained_no_processing`)."""
    seen: dict[str, Any] = {}

    class Loaded(Exception):
        pass

    def fake_load_model(class_name: str, name: str, **kwargs: Any) -> None:
        seen.update(kwargs, name=name)
        raise Loaded

    monkeypatch.setattr("sae_lens.load_model.load_model", fake_load_model)
    args = build_parser().parse_args(["quickstart", "--model", "gpt2", "--dataset", "x/y"])
    with pytest.raises(Loaded):
        hf_workload(config_from_args(args), "cpu")
    assert seen["name"] == "gpt2"
    assert seen["model_from_pretrained_kwargs"] == paper_settings.model_from_pretrained_kwargs()
