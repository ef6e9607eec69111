"""The quickstart's SAE sweep: one `E2ESAETrainingRunner` run per strategy and coefficient,
all with the same dictionary size and tokens; only strategy and lambda vary.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from sae_lens_e2e.analysis.report import TRAINED_WEIGHTS, SAERun
from sae_lens_e2e.pipelines.quickstart.config import LOGS_DIR, SAES_DIR, QuickstartConfig
from sae_lens_e2e.pipelines.quickstart.runner_config import build_runner_config, run_label
from sae_lens_e2e.pipelines.quickstart.workload import Workload
from sae_lens_e2e.pipelines.store import make_store_strict, quiet_store_warnings
from sae_lens_e2e.training.losses import downstream_hooks
from sae_lens_e2e.training.validation import default_hook, hook_width, validate_run


def train_sweep(
    cfg: QuickstartConfig,
    work: Workload,
    out: Path,
    device: str,
    progress: bool = True,
    *,
    weights: str = TRAINED_WEIGHTS,
    metadata: Mapping[str, Any] | None = None,
) -> list[SAERun]:
    """Every (strategy, lambda) through `E2ESAETrainingRunner`, saved under out/saes/.

    `weights` names the model's weights when they are not the trained ones (the
    randomised-weights control): its runs are labelled and saved under `<weights>/`, and
    `metadata` is recorded in each saved SAE's metadata."""
    prefix = "" if weights == TRAINED_WEIGHTS else f"{weights}/"
    labels = {prefix + run_label(s, c): (s, c) for s in cfg.strategies for c in cfg.coefficients[s]}
    plan = {
        label: (s, c, _runner_config_for(cfg, work, s, c, out / SAES_DIR / label, device, progress))
        for label, (s, c) in labels.items()
    }
    for _, _, runner_cfg in plan.values():
        for key, value in (metadata or {}).items():
            setattr(runner_cfg.sae.metadata, key, value)
    (out / LOGS_DIR / prefix).mkdir(parents=True, exist_ok=True)
    runs = []
    for i, (label, (strategy, coefficient, runner_cfg)) in enumerate(plan.items(), 1):
        if progress:
            on = "" if not prefix else f" ({weights} model)"
            tqdm.write(f"[{i}/{len(plan)}] training {strategy} SAE, lambda={coefficient:g}{on}")
        start = time.perf_counter()
        cost = _train_one(runner_cfg, work, out / LOGS_DIR / f"{label}.txt")
        path = f"{SAES_DIR}/{label}/{work.hook}"
        seconds = time.perf_counter() - start
        runs.append(
            SAERun(
                label,
                strategy,
                coefficient,
                work.hook,
                path,
                train_seconds=seconds,
                train_loop_seconds=cost["train_wall_time_s"],
                train_flops=cost["train_flops"],
                weights=weights,
            )  # fmt: skip
        )
    return runs


def validate_sweep(cfg: QuickstartConfig, model: HookedTransformer, device: str) -> None:
    """Run the runner's own checks on every run config, before any training work."""
    hook = cfg.hook or default_hook(model)
    d_in = hook_width(model, hook)
    for strategy in cfg.strategies:
        for coefficient in cfg.coefficients[strategy]:
            runner_cfg = build_runner_config(
                cfg, hook, d_in, strategy, coefficient, None, device, cfg.model is None
            )
            validate_run(runner_cfg, model, downstream_hooks(model, [hook], runner_cfg.sae))


def _runner_config_for(
    cfg: QuickstartConfig,
    work: Workload,
    strategy: str,
    coefficient: float,
    path: Path,
    device: str,
    progress: bool,
) -> Any:
    tiny = work.train_dataset is not None
    return build_runner_config(
        cfg,
        work.hook,
        work.d_in,
        strategy,
        coefficient,
        path,
        device,
        tiny,
        verbose=progress,
        model_name=work.model_name,
    )


def _train_one(runner_cfg: Any, work: Workload, log_path: Path) -> dict[str, Any]:
    """One runner; its per-run printed summary goes to `log_path`, not the screen. Returns
    its final evaluation (with the training loop's wall time and FLOPs estimate)."""
    from sae_lens_e2e.training.runner import E2ESAETrainingRunner

    log = io.StringIO()
    with quiet_store_warnings(), contextlib.redirect_stdout(log):
        runner = E2ESAETrainingRunner(
            runner_cfg, override_dataset=work.train_dataset, override_model=work.model
        )
        make_store_strict(runner.activations_store, work.dataset_name)
        runner.warn_dead_latents = False  # the report's evaluation warns (pipeline.py)
        runner.run()
    log_path.write_text(log.getvalue())
    return runner.eval_results
