"""`sae-lens-e2e groundtruth`: local, e2e and e2e_ds SAEs on a model whose functionally
important features are known (`model.py`), scored against them.

Every SAE is trained by `E2ESAETrainingRunner` through the quickstart's sweep (same
dictionary size, tokens and optimiser; strategy and lambda vary), saved as a stock SAELens
folder, reloaded, evaluated on held-out tokens (`evaluate_many`: KL, CE, L0, alive, EV) and
scored against the true features (`analysis.groundtruth`). With `control="random-weights"`
the same SAEs are also trained on the same tokens on the model's architecture with fresh
TransformerLens weights (`pipelines.control`) and scored against the same features.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sae_lens_e2e.analysis.groundtruth import (
    REPORT_ENTRIES,
    GroundTruthReport,
    GroundTruthScorer,
    write_groundtruth_report,
)
from sae_lens_e2e.analysis.report import TRAINED_WEIGHTS, SAERun
from sae_lens_e2e.atomic import atomic_directory, remove_stale_temporaries
from sae_lens_e2e.pipelines.control import (
    RANDOM_WEIGHTS,
    check_control,
    control_metadata,
    control_strategies,
    random_weights,
    scheme_line,
)
from sae_lens_e2e.pipelines.groundtruth.model import (
    GROUND_TRUTH_MODEL_NAME,
    HOOK,
    GroundTruth,
    GroundTruthConfig,
    ablation_effects,
    build_ground_truth,
    sample_tokens,
)
from sae_lens_e2e.pipelines.output import check_output_dir
from sae_lens_e2e.pipelines.quickstart.config import QuickstartConfig, runner_eval_sequences
from sae_lens_e2e.pipelines.quickstart.pipeline import evaluate_runs
from sae_lens_e2e.pipelines.quickstart.sweep import train_sweep, validate_sweep
from sae_lens_e2e.pipelines.quickstart.workload import Workload
from sae_lens_e2e.preflight import check_device, resolve_device
from sae_lens_e2e.training.config import STRATEGIES
from sae_lens_e2e.training.splice import hook_layer, run_prefix

DATASET_NAME = "sequences sampled from the model itself"
# Lambdas per strategy, chosen from a coarse sweep so that every strategy spans about the
# same L0 range on the default model (the comparison is at equal L0, not equal lambda).
COEFFICIENTS: dict[str, list[float]] = {
    "local": [0.1, 0.3, 1.0],
    "e2e": [0.3, 1.0, 3.0],
    "e2e_ds": [1.0, 3.0, 10.0],
}


@dataclass
class StudyConfig:
    """The study: the ground-truth model, the SAE sweep on it, the optional control."""

    model: GroundTruthConfig = field(default_factory=GroundTruthConfig)
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    coefficients: dict[str, list[float]] = field(
        default_factory=lambda: {k: list(v) for k, v in COEFFICIENTS.items()}
    )
    d_sae: int = 64  # as many latents as true features
    training_tokens: int = 2**18
    train_batch_size_tokens: int = 256  # small batches: more steps for the same tokens
    lr: float = 5e-3
    lr_warm_up_steps: int = 10
    n_eval_sequences: int = 512
    eval_batch_size: int = 32
    control: str | None = None  # "random-weights"
    control_strategies: list[str] | None = None  # None: local and e2e
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def sweep_config(self, strategies: list[str] | None = None) -> QuickstartConfig:
        """The quickstart sweep's config for these runs (SAE seeds: model seed + strategy)."""
        strategies = list(self.strategies if strategies is None else strategies)
        return QuickstartConfig(
            hook=HOOK,
            context_size=self.model.context_size,
            d_sae=self.d_sae,
            training_tokens=self.training_tokens,
            train_batch_size_tokens=self.train_batch_size_tokens,
            lr=self.lr,
            lr_warm_up_steps=self.lr_warm_up_steps,
            strategies=strategies,
            coefficients={s: list(self.coefficients.get(s, [])) for s in strategies},
            n_eval_sequences=self.n_eval_sequences,
            eval_batch_size=self.eval_batch_size,
            device=self.device,
            seed=self.model.seed,
        )

    def validate(self) -> None:
        self.model.validate()
        check_control(self.control)
        unknown = sorted(set(self.strategies) - set(STRATEGIES))
        if unknown or not self.strategies:
            raise ValueError(f"strategies must be a non-empty subset of {STRATEGIES}: {unknown}")
        if self.control is not None:
            control_strategies(self.control_strategies, self.strategies)
        self.sweep_config().validate()


def train_sequences(cfg: QuickstartConfig) -> int:
    """Sequences one run reads: its steps' batches plus the runner's held-out batch."""
    steps = math.ceil(cfg.training_tokens / cfg.train_batch_size_tokens)
    per_step = cfg.train_batch_size_tokens // cfg.context_size
    return steps * per_step + runner_eval_sequences(cfg, tiny=True)


def _workload(
    model: Any, gt: GroundTruth, train: torch.Tensor, heldout: torch.Tensor, info: dict
) -> Workload:
    from datasets import Dataset

    return Workload(
        model=model,
        model_name=GROUND_TRUTH_MODEL_NAME,
        hook=HOOK,
        d_in=gt.d_model,
        eval_tokens=heldout,
        train_dataset=Dataset.from_dict({"tokens": train.tolist()}),
        dataset_name=DATASET_NAME,
        info=info,
    )


@torch.no_grad()
def score_runs(
    work: Workload, gt: GroundTruth, runs: list[SAERun], saes: dict[str, Any], batch: int
) -> None:
    """Ground-truth metrics of every run on the held-out tokens, into `run.metrics` under
    `gt/` (the latents are the SAE's on this workload's model)."""
    layer = hook_layer(HOOK)
    scorers = {
        run.label: GroundTruthScorer(
            saes[run.label].W_dec, saes[run.label].W_enc, gt.features, gt.important
        )
        for run in runs
    }
    for tokens in work.eval_tokens.split(batch):
        resid = run_prefix(work.model, tokens.to(work.model.cfg.device), layer).flatten(0, 1)
        truth = gt.feature_acts(tokens).flatten(0, 1)
        for run in runs:
            scorers[run.label].add_batch(saes[run.label].encode(resid), truth)
    for run in runs:
        run.metrics |= {f"gt/{k}": v for k, v in scorers[run.label].compute().items()}


def construction_facts(gt: GroundTruth, tokens: torch.Tensor) -> dict[str, Any]:
    """What the model is, measured: variance shares, superposition, ablation effects."""
    acts = gt.feature_acts(tokens).flatten(0, 1)
    var = acts.var(0)
    directions = gt.features[:, : gt.cfg.d_features].cpu()
    cos = directions @ directions.T
    cos.fill_diagonal_(0)
    effects = ablation_effects(gt)
    imp = gt.important
    return {
        "n_features": gt.cfg.n_features,
        "n_important": int(imp.sum()),
        "d_model": gt.d_model,
        "true_l0": float((acts > 0).float().sum(1).mean()),
        "variance_share_important": float(var[imp].sum() / var.sum()),
        "min_variance_ratio_in_run/codes": _min_ratio_in_runs(gt.codes.var(0), imp, gt),
        "min_variance_ratio_in_run/heldout": _min_ratio_in_runs(var, imp, gt),
        "max_abs_cos": float(cos.abs().max()),
        "mean_abs_cos": float(cos.abs().sum() / (cos.numel() - cos.shape[0])),
        "ablation_kl/important/mean": float(effects[imp].mean()),
        "ablation_kl/important/min": float(effects[imp].min()),
        "ablation_kl/ignored/mean": float(effects[~imp].mean()),
        "ablation_kl/ignored/max": float(effects[~imp].max()),
        "per_feature/ablation_kl": effects.tolist(),
        "per_feature/important": imp.tolist(),
        "per_feature/variance": var.tolist(),
    }


def _min_ratio_in_runs(var: torch.Tensor, imp: torch.Tensor, gt: GroundTruth) -> float:
    """Smallest variance ratio (ignored / important) within a run of `important_every`
    features by code variance: >= 1 means every important feature has that many ignored
    ones with at least its variance on these tokens too."""
    order = gt.codes.var(0).argsort(descending=True)
    every = gt.cfg.important_every
    ratios = []
    for start in range(0, len(order), every):
        run = order[start : start + every]
        important, ignored = run[imp[run]], run[~imp[run]]
        ratios.append(float(var[ignored].min() / var[important].max()))
    return min(ratios)


def run_groundtruth(
    cfg: StudyConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True
) -> GroundTruthReport:
    """Build the model, train and score the sweep (and the control), write the report; the
    folder appears only when everything succeeded."""
    out = Path(out)
    cfg.validate()
    check_device(cfg.device, "device")
    check_output_dir(out, overwrite, REPORT_ENTRIES, "groundtruth")
    remove_stale_temporaries(out.absolute().parent, re.escape(out.name))
    device = resolve_device(cfg.device)
    sweep = cfg.sweep_config()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    gt = build_ground_truth(cfg.model, device)
    validate_sweep(sweep, gt.model, device)
    seed = cfg.model.seed
    train = sample_tokens(gt, train_sequences(sweep), seed=seed + 1)
    heldout = sample_tokens(gt, cfg.n_eval_sequences, seed=seed + 2)
    facts = construction_facts(gt, heldout)
    models = {TRAINED_WEIGHTS: gt.model}
    setup = [f"- Ground-truth model: {_model_line(gt)}"]
    if cfg.control == RANDOM_WEIGHTS:
        models[RANDOM_WEIGHTS] = random_weights(gt.model, seed)
        setup.append(f"- Control: {scheme_line(gt.model, seed)}.")
    timings["model_and_data"] = time.perf_counter() - start
    runs: list[SAERun] = []
    with atomic_directory(out) as tmp:
        for weights, model in models.items():
            work = _workload(model, gt, train, heldout, {"weights": weights})
            t0 = time.perf_counter()
            control = weights != TRAINED_WEIGHTS
            metadata = control_metadata(seed) if control else None
            controlled = control_strategies(cfg.control_strategies, cfg.strategies)
            plan = cfg.sweep_config(controlled) if control else sweep
            mine = train_sweep(
                plan, work, tmp, device, progress, weights=weights, metadata=metadata
            )
            timings[f"sae_training/{weights}"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            saes = evaluate_runs(work, mine, tmp, [], device, sweep, progress)
            score_runs(work, gt, mine, saes, cfg.eval_batch_size)
            timings[f"evaluation/{weights}"] = time.perf_counter() - t0
            runs += mine
        timings["total"] = time.perf_counter() - start
        report = GroundTruthReport(
            out=out,
            model_name=GROUND_TRUTH_MODEL_NAME,
            hook=HOOK,
            n_eval_tokens=heldout.numel(),
            runs=runs,
            facts=facts,
            timings=timings,
            config=cfg.to_dict(),
            setup=setup,
        )
        write_groundtruth_report(report, tmp)
    return report


def _model_line(gt: GroundTruth) -> str:
    c = gt.cfg
    return (
        f"{c.n_features} features ({int(gt.important.sum())} important) in a "
        f"{c.d_features}-dimensional subspace of a {gt.d_model}-dimensional residual stream, "
        f"{c.n_codes} tokens (one sparse code each), {c.n_groups} output groups, MLP "
        f"threshold {c.threshold:g}, logit scale {c.logit_scale:g}, seed {c.seed}"
    )
