"""The quickstart's configuration: what to train, on which model, with which coefficients."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from sae_lens import LanguageModelSAERunnerConfig

from sae_lens_e2e import paper_settings
from sae_lens_e2e.config_fields import build_config, check_fields
from sae_lens_e2e.names import check_hook_name
from sae_lens_e2e.pipelines.control import check_control, control_strategies
from sae_lens_e2e.pipelines.tiny_lm import TinyLMConfig
from sae_lens_e2e.training.config import STRATEGIES, E2EStandardTrainingSAEConfig

SAES_DIR = "saes"
LOGS_DIR = "logs"
MODEL_DIR = "model"

# Sparsity coefficients (the paper's lambda) per strategy for the tiny model, picked from a
# coarse sweep so that each strategy spans roughly L0 10-100 at the same dictionary size
# (the comparison is at equal L0, not equal lambda). As in the paper, local needs a larger
# lambda than e2e, and e2e_ds (whose downstream MSE also rewards reconstruction) larger still.
TINY_COEFFICIENTS: dict[str, list[float]] = {
    "local": [1.0, 3.0, 10.0],
    "e2e": [0.3, 1.0, 3.0],
    "e2e_ds": [3.0, 10.0, 30.0],
}
# Local-to-e2e runs (training/schedule.py): `local` first, the named strategy for the last
# (1 - e2e_start_fraction) of the steps, with the lambda grid of the strategy they end in.
SCHEDULES: tuple[str, ...] = ("local->e2e", "local->e2e_ds")
RUN_KINDS: tuple[str, ...] = (*STRATEGIES, *SCHEDULES)
TINY_COEFFICIENTS |= {s: list(TINY_COEFFICIENTS[s.split("->")[1]]) for s in SCHEDULES}

# Fields the sweep sets itself for every run -> the quickstart option to use instead.
SWEEP_SAE_FIELDS = {
    "strategy": "strategies",
    "l1_coefficient": "coefficients",
    "d_in": "hook (d_in is the hook's width)",
    "d_sae": "d_sae",
    "in_to_orig_coefficient": "in_to_orig_coefficient (it applies to e2e_ds only)",
}
SWEEP_RUNNER_FIELDS = {
    "sae": "sae_overrides",
    "model_name": "model",
    "dataset_path": "dataset",
    "hook_name": "hook",
    "context_size": "context_size",
    "training_tokens": "training_tokens",
    "train_batch_size_tokens": "train_batch_size_tokens",
    "lr": "lr",
    "lr_warm_up_steps": "lr_warm_up_steps",
    "seed": "seed",
    "device": "device",
    "output_path": "--out",
    "model_from_pretrained_kwargs": "model_from_pretrained_kwargs",
}


@dataclass
class QuickstartConfig:
    """Everything the pipeline needs. `model=None` is the offline tiny-model run."""

    model: str | None = None
    dataset: str | None = None
    hook: str | None = None  # default: blocks.<n_layers // 2>.hook_resid_pre
    context_size: int = 128
    d_sae: int | None = None  # default: 8 x d_in
    training_tokens: int = 2**18
    train_batch_size_tokens: int = 1024
    lr: float = 3e-3
    lr_warm_up_steps: int = 10
    strategies: list[str] = field(default_factory=lambda: [*STRATEGIES, "local->e2e"])
    coefficients: dict[str, list[float]] = field(
        default_factory=lambda: {k: list(v) for k, v in TINY_COEFFICIENTS.items()}
    )
    in_to_orig_coefficient: float | None = None  # e2e_ds downstream weight; None = 2.5
    e2e_start_fraction: float = 0.8  # local->e2e runs: share of steps trained `local`
    n_eval_sequences: int = 256
    eval_batch_size: int = 16
    device: str = "auto"
    seed: int = 0
    compare_saes: list[str] = field(default_factory=list)  # extra SAELens SAE folders
    # The randomised-weights control (pipelines/control.py): these strategies (with their
    # lambdas; None: local and e2e) are trained again on the architecture freshly initialised.
    control: str | None = None
    control_strategies: list[str] | None = None
    lm: TinyLMConfig = field(default_factory=TinyLMConfig)
    model_from_pretrained_kwargs: dict[str, Any] | None = None
    prepend_bos: bool | None = None  # None: False for the tiny model, else SAELens's True
    # Extra fields for SAELens's LanguageModelSAERunnerConfig / our SAE config (paper runs).
    runner_overrides: dict[str, Any] = field(default_factory=dict)
    sae_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # What decides which model and tokens the SAEs see follows the model even when the
        # config is built directly (from_dict fills in every other model default too).
        defaults = model_defaults(self.model)
        for name in ("prepend_bos", "model_from_pretrained_kwargs"):
            if getattr(self, name) is None and name in defaults:
                setattr(self, name, defaults[name])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config") -> QuickstartConfig:
        """Build from a mapping (YAML); every field is checked (name, type, range). Keys not
        given take the model's defaults (`model_defaults`), then the tiny model's."""
        raw = dict(raw)
        for name, value in model_defaults(raw.get("model")).items():
            given = raw.get(name)
            merge = name.endswith("_overrides") and isinstance(given, Mapping)
            raw[name] = {**value, **given} if merge else raw.get(name, value)
        cfg = build_config(source, raw, cls)
        cfg.check_overrides(source)
        return cfg

    def check_overrides(self, source: str = "config") -> None:
        """The override mappings against SAELens's runner config and our SAE config, leaving
        out what the sweep sets per run (which would silently relabel or merge runs)."""
        for name, owned, cls in (
            ("sae_overrides", SWEEP_SAE_FIELDS, E2EStandardTrainingSAEConfig),
            ("runner_overrides", SWEEP_RUNNER_FIELDS, LanguageModelSAERunnerConfig),
        ):
            overrides = getattr(self, name)
            for key in overrides:
                if key in owned:
                    raise ValueError(
                        f"{source}: {name}.{key}: set per run by the quickstart; use {owned[key]}"
                    )
            check_fields(source, overrides, cls, section=name)

    def validate(self) -> None:
        """Check what can be checked before any work starts (also for configs built in
        Python: every field's type and range, then how the fields fit together)."""
        check_fields("config", {f.name: getattr(self, f.name) for f in fields(self)}, type(self))
        if (self.model is None) != (self.dataset is None):
            raise ValueError(
                "--model and --dataset go together (a TransformerLens model and a Hugging Face "
                "dataset); give neither for the offline tiny-model run"
            )
        if self.hook is not None:  # the SAE folders are named by it
            check_hook_name(self.hook, "config: hook")
        unknown = sorted(set(self.strategies) - set(RUN_KINDS))
        if unknown or not self.strategies:
            raise ValueError(f"strategies must be a non-empty subset of {RUN_KINDS}, got {unknown}")
        check_control(self.control)
        if self.control is not None:
            control_strategies(self.control_strategies, self.strategies)
        if not 0 < self.e2e_start_fraction < 1:
            raise ValueError(f"e2e_start_fraction must be in (0, 1), got {self.e2e_start_fraction}")
        for strategy in self.strategies:
            coefs = self.coefficients.get(strategy)
            if not coefs:
                raise ValueError(f"no sparsity coefficients given for strategy {strategy!r}")
            if len(set(coefs)) != len(coefs):
                raise ValueError(f"coefficients for {strategy!r} repeat a value: {coefs}")
        if self.train_batch_size_tokens % self.context_size:
            raise ValueError(
                f"train_batch_size_tokens={self.train_batch_size_tokens} must be a multiple of "
                f"context_size={self.context_size}"
            )
        if self.training_tokens < self.train_batch_size_tokens:
            raise ValueError(
                f"training_tokens={self.training_tokens} is less than one batch "
                f"({self.train_batch_size_tokens} tokens)"
            )
        if self.model is None and self.context_size > self.lm.n_ctx:
            raise ValueError(f"context_size={self.context_size} exceeds lm.n_ctx={self.lm.n_ctx}")


def model_defaults(model: str | None) -> dict[str, Any]:
    """GPT-2 small runs as the paper ran it (`paper_settings`: model processing, no BOS, 1024
    tokens, batch 16 as 2 x 8, LR schedule, grad clip 10, dictionary, layer-6 lambdas, alive
    latents over >= 500k held-out tokens); the token budget and the dataset stay the user's.
    Any other named model gets the paper's lambdas (`local->S` runs those of S)."""
    coefficients = {k: list(v) for k, v in paper_settings.COEFFICIENTS.items()}
    coefficients |= {s: list(coefficients[s.split("->")[1]]) for s in SCHEDULES}
    if model is None:
        return {}
    if not paper_settings.is_paper_model(model):
        return {"coefficients": coefficients}
    runner, sae = paper_settings.runner_settings(), paper_settings.sae_settings()
    return {
        "hook": paper_settings.HOOK,
        "context_size": runner["context_size"],
        "d_sae": sae["d_sae"],
        "train_batch_size_tokens": runner["train_batch_size_tokens"],
        "lr": runner["lr"],
        "lr_warm_up_steps": runner["lr_warm_up_steps"],
        "coefficients": coefficients,
        "in_to_orig_coefficient": paper_settings.IN_TO_ORIG_COEFFICIENT,
        "n_eval_sequences": 512,  # 524k tokens: alive latents as the paper counts them
        "eval_batch_size": 8,
        "prepend_bos": runner["prepend_bos"],
        "model_from_pretrained_kwargs": runner["model_from_pretrained_kwargs"],
        "sae_overrides": {k: sae[k] for k in ("grad_clip_norm", "gradient_accumulation_steps")},
    }


def runner_eval_sequences(cfg: QuickstartConfig, tiny: bool) -> int:
    """Sequences each runner holds out from the start of its stream for its own evaluation:
    a token batch for the tiny model (our held-out text is separate), else our eval set."""
    batch = eval_batch_size(cfg)
    return batch if tiny else max(1, cfg.n_eval_sequences // batch) * batch


def eval_batch_size(cfg: QuickstartConfig) -> int:
    return min(cfg.eval_batch_size, cfg.n_eval_sequences)
