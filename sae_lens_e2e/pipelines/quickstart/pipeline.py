"""`sae-lens-e2e quickstart`: the whole method, end to end, on any machine.

Without a model it needs no GPU and no internet: it trains a small byte-level
TransformerLens model on the English text of the CPython documentation that ships with every
Python (`pydoc_data.topics`; see `tiny_lm`), caches it, then trains `local`, `e2e` and
`e2e_ds` SAEs at its middle layer for a few sparsity coefficients each (`sweep`: same
dictionary size, same tokens, same runner as `sae-lens-e2e train`), evaluates every saved SAE
on held-out text and writes a report (`sae_lens_e2e.analysis.report`). With `model` and
`dataset` the same pipeline runs on any TransformerLens model and Hugging Face dataset (e.g.
the paper's GPT-2 run, `examples/quickstart_gpt2.yaml`).

Held-out text. Tiny model: whole documents are held out (never seen by the language model
or the SAEs). Hugging Face dataset: the first `n_eval_sequences` sequences of the stream; the
runner reserves exactly those as its own held-out set before training, so no SAE trains on
them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer

from sae_lens_e2e.analysis.geometry import (
    GeometryResult,
    alive_latents_from_sparsity,
    compare_saes,
    load_sae,
)
from sae_lens_e2e.analysis.report import (
    GEOMETRY_PNG,
    PARETO_PNG,
    REPORT_JSON,
    REPORT_MD,
    ReportData,
    SAERun,
    write_report,
)
from sae_lens_e2e.atomic import atomic_directory, remove_stale_temporaries
from sae_lens_e2e.pipelines.control import (
    RANDOM_WEIGHTS,
    control_metadata,
    control_strategies,
    random_weights,
    random_weights_seed,
    scheme_line,
)
from sae_lens_e2e.pipelines.output import check_output_dir
from sae_lens_e2e.pipelines.quickstart.config import (
    LOGS_DIR,
    MODEL_DIR,
    SAES_DIR,
    QuickstartConfig,
)
from sae_lens_e2e.pipelines.quickstart.sweep import run_label, train_sweep, validate_sweep
from sae_lens_e2e.pipelines.quickstart.workload import Workload, hf_workload, tiny_workload
from sae_lens_e2e.pipelines.tiny_lm import (
    save_tiny_model,
)
from sae_lens_e2e.preflight import check_device, resolve_device
from sae_lens_e2e.training.config import STRATEGIES
from sae_lens_e2e.training.validation import check_sae_fits

# ----------------------------------------------------------------------------- loaded SAEs


@dataclass
class LoadedSAE:
    """An existing SAELens SAE evaluated beside the trained ones (`--compare-sae`)."""

    label: str
    path: str
    hook: str
    sae: Any


def load_compare_saes(
    specs: list[str], model: HookedTransformer, device: str, taken: set[str]
) -> list[LoadedSAE]:
    """Load each `PATH[=LABEL]` SAELens SAE folder and check it against the model."""
    loaded: list[LoadedSAE] = []
    for spec in specs:
        path, _, label = spec.partition("=")
        label = label or f"loaded:{Path(path).name}"
        if label in taken:
            raise ValueError(f"--compare-sae label {label!r} is used twice; name it PATH=LABEL")
        taken.add(label)
        sae = load_sae(path, device=device)
        hook = check_sae_fits(model, sae, where=f"SAE at {path}")
        loaded.append(LoadedSAE(label, path, hook, sae))
    return loaded


# ----------------------------------------------------------------------------- evaluation


def evaluate_runs(
    work: Workload,
    runs: list[SAERun],
    out: Path,
    extra: list[LoadedSAE],
    device: str,
    cfg: QuickstartConfig,
    progress: bool = True,
) -> dict[str, Any]:
    """Reload every saved SAE with stock SAELens and evaluate all on the held-out tokens
    with one shared clean run per batch; fills `run.metrics`, returns label -> SAE."""
    from sae_lens_e2e.training.evaluation import evaluate_many

    saes = {run.label: load_sae(out / run.path, device=device) for run in runs}
    for loaded in extra:
        saes[loaded.label] = loaded.sae
        runs.append(SAERun(loaded.label, "loaded", None, loaded.hook, loaded.path))
    hooks = {run.label: run.hook for run in runs}
    results = evaluate_many(
        work.model,
        {label: {hooks[label]: sae} for label, sae in saes.items()},
        work.eval_tokens,
        batch_size=cfg.eval_batch_size,
        progress=progress,
    )
    for run in runs:
        run.metrics = results[run.label]
    return saes


def dead_sae_warnings(runs: list[SAERun]) -> list[str]:
    """Mostly dead SAEs, counted over the report's held-out tokens (its alive column)."""
    from sae_lens_e2e.training.evaluation import dead_latent_warnings

    return [line for run in runs for line in dead_latent_warnings(run.metrics, label=run.label)]


def alive_mask(run: SAERun) -> torch.Tensor:
    density = run.metrics[f"log10_feature_density/{run.hook}"]
    return alive_latents_from_sparsity(density, log10=True)


# ----------------------------------------------------------------------------- geometry


def matched_runs(runs: list[SAERun]) -> dict[str, SAERun]:
    """One SAE per strategy at similar CE increase (as the paper compares them): the middle
    e2e run (or the first strategy's), and for each other strategy its closest run."""
    by: dict[str, list[SAERun]] = {}
    for run in runs:
        if run.strategy in STRATEGIES:
            by.setdefault(run.strategy, []).append(run)
    if not by:
        return {}
    ref_strategy = "e2e" if "e2e" in by else next(iter(by))
    ref_runs = sorted(by[ref_strategy], key=lambda r: r.coefficient or 0.0)
    ref = ref_runs[len(ref_runs) // 2]
    target = ref.metrics["ce_loss_increase"]
    return {
        s: ref
        if s == ref_strategy
        else min(rs, key=lambda r: abs(r.metrics["ce_loss_increase"] - target))
        for s, rs in by.items()
    }


def geometry_comparisons(runs: list[SAERun], saes: Mapping[str, Any]) -> dict[str, GeometryResult]:
    """Within-SAE similarity of each matched SAE, and its cross similarity to a partner
    (local for e2e / e2e_ds, e2e for local), over alive latents only."""
    matched = matched_runs(runs)
    results: dict[str, GeometryResult] = {}
    for strategy, run in matched.items():
        partner_strategy = "local" if strategy != "local" else "e2e"
        if partner_strategy not in matched:
            partner_strategy = next((s for s in matched if s != strategy), "")
        partner = matched.get(partner_strategy)
        label = run.label if partner is None else f"{run.label} -> {partner.label}"
        results[label] = compare_saes(
            saes[run.label],
            None if partner is None else saes[partner.label],
            alive_mask(run),
            None if partner is None else alive_mask(partner),
        )
    return results


# ----------------------------------------------------------------------------- pipeline


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start


def setup_line(cfg: QuickstartConfig, hook: str, d_in: int) -> str:
    """How the sweep's SAEs were trained, for the report."""
    return (
        f"- SAEs at `{hook}` (d_in {d_in}, d_sae {cfg.d_sae or 8 * d_in}), "
        f"{cfg.training_tokens:,} training tokens each, lr {cfg.lr:g}, "
        f"SAE init seed {cfg.seed} + strategy index."
        + (
            f" `local->S` runs train `local` for the first {cfg.e2e_start_fraction:.0%} of "
            "their steps, then S, in one run."
            if any("->" in s for s in cfg.strategies)
            else ""
        )
    )


def train_control(
    cfg: QuickstartConfig, work: Workload, out: Path, device: str, progress: bool
) -> tuple[list[SAERun], list[str]]:
    """The randomised-weights control: `cfg.control_strategies` trained with their lambdas
    on the same tokens on the model's architecture freshly initialised (`pipelines.control`;
    the model's own seed, e.g. the tiny LM's weights before training), each evaluated on
    that model. Returns the runs and what the control model is, for the report."""
    seed = random_weights_seed(work.model, cfg.seed)
    model = random_weights(work.model, seed)
    control = dataclasses.replace(work, model=model)
    strategies = control_strategies(cfg.control_strategies, cfg.strategies)
    sweep = dataclasses.replace(cfg, strategies=strategies)
    runs = train_sweep(
        sweep,
        control,
        out,
        device,
        progress,
        weights=RANDOM_WEIGHTS,
        metadata=control_metadata(seed),
    )
    evaluate_runs(control, runs, out, [], device, cfg, progress)
    return runs, [scheme_line(work.model, seed) + "."]


# Everything the quickstart writes into its folder: all that --overwrite may replace.
REPORT_ENTRIES = {REPORT_MD, REPORT_JSON, PARETO_PNG, GEOMETRY_PNG, SAES_DIR, LOGS_DIR, MODEL_DIR}


def run_quickstart(
    cfg: QuickstartConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True
) -> ReportData:
    """Train, evaluate and report; the folder appears only when everything succeeded."""
    out = Path(out)
    cfg.validate()
    check_device(cfg.device, "device")  # here, not in validate(): a GPU config is valid anywhere
    check_output_dir(out, overwrite, REPORT_ENTRIES, "quickstart")
    remove_stale_temporaries(out.absolute().parent, re.escape(out.name))  # of killed runs
    device = resolve_device(cfg.device)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with atomic_directory(out) as tmp:
        extra: list[LoadedSAE] = []

        def precheck(model: HookedTransformer) -> None:
            validate_sweep(cfg, model, device)
            planned = {run_label(s, c) for s in cfg.strategies for c in cfg.coefficients[s]}
            extra.extend(load_compare_saes(cfg.compare_saes, model, device, planned))

        with _timed(timings, "model"):
            work = (
                tiny_workload(cfg, device, progress, precheck)
                if cfg.model is None
                else hf_workload(cfg, device, precheck)
            )
        if work.train_dataset is not None:
            save_tiny_model(work.model, work.info, tmp / MODEL_DIR)
        with _timed(timings, "sae_training"):
            runs = train_sweep(cfg, work, tmp, device, progress)
        with _timed(timings, "evaluation"):
            saes = evaluate_runs(work, runs, tmp, extra, device, cfg, progress)
        with _timed(timings, "geometry"):
            geometry = geometry_comparisons(runs, saes)
        control_setup: list[str] = []
        if cfg.control is not None:
            with _timed(timings, "control"):
                control_runs, control_setup = train_control(cfg, work, tmp, device, progress)
            runs += control_runs
        timings["total"] = time.perf_counter() - start
        result = ReportData(
            out=out,
            model_name=work.model_name,
            dataset_name=work.dataset_name,
            hook=work.hook,
            d_in=work.d_in,
            n_eval_tokens=work.eval_tokens.numel(),
            runs=runs,
            geometry=geometry,
            model_info=work.info,
            timings=timings,
            config=cfg.to_dict(),
            setup=[setup_line(cfg, work.hook, work.d_in)],
            control_setup=control_setup,
        )
        write_report(result, tmp)
    return result
