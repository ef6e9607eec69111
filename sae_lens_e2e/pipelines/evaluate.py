"""Evaluate any SAEs (SAELens folders, the paper's checkpoints, SAELens releases) on a model
and dataset, and write the quickstart's report: the table, report.json and the Pareto plot.

For GPT-2 the defaults are the paper's (`paper_settings`): TransformerLens's default
weight processing, no BOS, rows of 1024 tokens of the paper's pre-tokenised OpenWebText. For
other models each setting comes from the SAEs' own metadata when they agree, else SAELens's
defaults. Every SAE is evaluated on the same tokens with one shared clean run per batch.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sae_lens_e2e import paper_settings
from sae_lens_e2e.analysis import report
from sae_lens_e2e.analysis.report import TRAINED_WEIGHTS, ReportData, SAERun
from sae_lens_e2e.atomic import atomic_directory
from sae_lens_e2e.loading.paper import PAPER_GPT2_CLEAN_CE, PaperSAE
from sae_lens_e2e.loading.sae_source import SourceSAE, load_source
from sae_lens_e2e.models import check_model_name
from sae_lens_e2e.pipelines.control import check_control, random_weights, scheme_line
from sae_lens_e2e.sae_files import describe_non_finite, non_finite_weights
from sae_lens_e2e.training.config import STRATEGIES
from sae_lens_e2e.training.evaluation import evaluate_many
from sae_lens_e2e.training.validation import check_sae_fits

PAPER_STRATEGIES = {"local": "local", "e2e": "e2e", "e2e+ds": "e2e_ds"}
# SAELens's defaults; a context size left unset becomes min(128, the model's n_ctx).
_FALLBACKS: dict[str, Any] = {"context_size": None, "prepend_bos": True}
DEFAULT_CONTEXT_SIZE = 128


@dataclass
class EvaluateConfig:
    """What `sae-lens-e2e evaluate` was asked; None = the default described in the module."""

    sources: list[str]
    model: str = "gpt2"
    dataset: str | None = None
    context_size: int | None = None
    prepend_bos: bool | None = None
    n_sequences: int = 500  # the paper: 500 x 1024 tokens, >= its 500k for alive latents
    batch_size: int = 8
    device: str = "auto"
    paper: bool = False
    local_dir: str | None = None
    cache_dir: str | None = None
    control: str | None = None  # "random-weights": SAEs trained on the control model

    def validate(self) -> None:
        check_control(self.control)
        if not self.sources:
            raise ValueError("give at least one SOURCE to evaluate")
        repeated = sorted({s for s in self.sources if self.sources.count(s) > 1})
        if repeated:
            raise ValueError(f"SOURCE given twice: {repeated}")
        for name in ("context_size", "n_sequences", "batch_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")


@dataclass(frozen=True)
class EvalSettings:
    """The model and data settings the evaluation ran with (recorded in report.json)."""

    dataset: str
    context_size: int | None
    prepend_bos: bool
    model_from_pretrained_kwargs: dict[str, Any]
    defaults: str  # where the values no flag set came from


def paper_defaults() -> dict[str, Any]:
    """The paper's GPT-2 runs' model and data settings, by this module's names."""
    run = paper_settings.runner_settings()
    return {
        "dataset": run["dataset_path"],
        "context_size": run["context_size"],
        "prepend_bos": run["prepend_bos"],
        "model_from_pretrained_kwargs": run["model_from_pretrained_kwargs"],
    }


def is_quickstart_model(model: str) -> bool:
    """A tiny LM saved by the quickstart (`<report>/model`): byte tokens, no tokenizer."""
    return (Path(model) / "info.json").is_file() and (Path(model) / "model.pt").is_file()


def _agreed(saes: list[SourceSAE], name: str) -> Any:
    """A metadata value all SAEs share, else None."""
    values = {json.dumps(getattr(s.sae.cfg.metadata, name, None)) for s in saes}
    return json.loads(values.pop()) if len(values) == 1 else None


def resolve_settings(cfg: EvaluateConfig, saes: list[SourceSAE]) -> EvalSettings:
    """Flags first; then the paper's settings for GPT-2, else the SAEs' agreed metadata."""
    paper = paper_settings.is_paper_model(cfg.model)

    def pick(flag: Any, key: str, metadata_name: str) -> Any:
        if flag is not None:
            return flag
        if paper:
            return paper_defaults()[key]
        agreed = _agreed(saes, metadata_name)
        return agreed if agreed is not None else _FALLBACKS.get(key)

    bos = pick(cfg.prepend_bos, "prepend_bos", "prepend_bos")
    if is_quickstart_model(cfg.model):
        if cfg.prepend_bos:
            raise ValueError(f"--prepend-bos: the model at {cfg.model} has no BOS token")
        bos = False
    dataset = pick(cfg.dataset, "dataset", "dataset_path")
    if not dataset:
        raise ValueError(
            f"--dataset is needed: {cfg.model!r} is not GPT-2 and the SAEs record no shared "
            "metadata.dataset_path"
        )
    kwargs = pick(None, "model_from_pretrained_kwargs", "model_from_pretrained_kwargs")
    return EvalSettings(
        dataset=dataset,
        context_size=pick(cfg.context_size, "context_size", "context_size"),
        prepend_bos=bool(bos),
        model_from_pretrained_kwargs=dict(kwargs or {}),
        defaults="the paper's GPT-2 settings" if paper else "SAE metadata / SAELens defaults",
    )


def load_model(name: str, settings: EvalSettings, device: str) -> Any:
    """A local model folder (e.g. a quickstart's), else a TransformerLens model via SAELens's
    `load_model` (models.py)."""
    from sae_lens_e2e.models import load_model as load_language_model

    model = load_language_model(
        "HookedTransformer",
        name,
        device=device,
        model_from_pretrained_kwargs=settings.model_from_pretrained_kwargs,
    )
    return model.requires_grad_(False).eval()


def _dataset(path: str) -> Any:
    """A folder written by `Dataset.save_to_disk`, else a Hugging Face dataset name."""
    if Path(path).is_dir():
        from datasets import load_from_disk

        return load_from_disk(path)
    return path


def eval_tokens(
    model: Any, settings: EvalSettings, n_sequences: int, batch_size: int, first: SourceSAE
) -> torch.Tensor:
    """The first `n_sequences` rows of the dataset's train split, through SAELens's store
    (tokenising text, adding or not the BOS, cutting rows to the context size)."""
    from sae_lens.training.activations_store import ActivationsStore

    from sae_lens_e2e.pipelines.store import quiet_store_warnings

    dataset = _dataset(settings.dataset)
    with quiet_store_warnings():
        store = ActivationsStore(
            model=model,
            dataset=dataset,
            streaming=isinstance(dataset, str),
            hook_name=first.hook,
            hook_head_index=None,
            context_size=settings.context_size,
            d_in=first.sae.cfg.d_in,
            n_batches_in_buffer=2,
            total_training_tokens=n_sequences * settings.context_size,
            store_batch_size_prompts=batch_size,
            train_batch_size_tokens=batch_size * settings.context_size,
            prepend_bos=settings.prepend_bos,
            normalize_activations="none",
            device=torch.device("cpu"),
            dtype="float32",
        )
        try:
            return store.get_batch_tokens(n_sequences, raise_at_epoch_end=True).cpu()
        except StopIteration as err:
            raise ValueError(
                f"dataset {settings.dataset!r} has fewer than --n-sequences={n_sequences} rows "
                f"of {settings.context_size} tokens; lower --n-sequences or --context-size"
            ) from err


def _fit_context(settings: EvalSettings, n_ctx: int) -> EvalSettings:
    """Fill an unset context size; refuse one longer than the model's."""
    if settings.context_size is None:
        return dataclasses.replace(settings, context_size=min(DEFAULT_CONTEXT_SIZE, n_ctx))
    if settings.context_size > n_ctx:
        raise ValueError(
            f"context size {settings.context_size} (--context-size or the SAEs' metadata) "
            f"exceeds the model's n_ctx={n_ctx}"
        )
    return settings


def _strategy(source: SourceSAE) -> str:
    """The SAE's training strategy when known (paper type, or recorded by our trainer)."""
    if source.paper is not None:
        return PAPER_STRATEGIES[source.paper.sae_type]
    recorded = getattr(source.sae.cfg.metadata, "training_strategy", None)
    return recorded if recorded in STRATEGIES else "loaded"


def _paper_numbers(paper: PaperSAE | None) -> dict[str, Any] | None:
    return dict(paper.paper) if paper is not None and paper.paper else None


def _coefficient(source: SourceSAE, numbers: dict[str, Any] | None) -> float | None:
    """The paper's lambda, else the one our trainer recorded, else unknown."""
    if numbers is not None:
        return float(numbers["lambda"])
    if _strategy(source) not in STRATEGIES:
        return None
    details = getattr(source.sae.cfg.metadata, "training_architecture_details", None) or {}
    value = details.get("l1_coefficient") if isinstance(details, dict) else None
    return None if value is None else float(value)


def weights_of(source: SourceSAE) -> str:
    """The model weights the SAE was trained on: recorded by our pipelines for a control."""
    return getattr(source.sae.cfg.metadata, "model_weights", None) or TRAINED_WEIGHTS


def make_run(source: SourceSAE, metrics: dict[str, Any], with_paper: bool) -> SAERun:
    numbers = _paper_numbers(source.paper)
    return SAERun(
        label=source.spec,
        strategy=_strategy(source),
        coefficient=_coefficient(source, numbers),
        hook=source.hook,
        path=source.spec,
        metrics=metrics,
        paper=numbers if with_paper else None,
        weights=weights_of(source),
    )


def control_model(cfg: EvaluateConfig, sources: list[SourceSAE], model: Any) -> Any | None:
    """The control model the control SAEs among `sources` were trained on (rebuilt from the
    seed they record), or None when there are none; a mismatch is a one-line error."""
    control = [s for s in sources if weights_of(s) != TRAINED_WEIGHTS]
    if not control and cfg.control is None:
        return None
    if cfg.control is None:
        raise ValueError(
            f"SOURCE {control[0].spec!r} was trained on the {weights_of(control[0])} control "
            "of its model; pass --control random-weights to evaluate it there"
        )
    if not control or any(weights_of(s) != cfg.control for s in control):
        raise ValueError(
            f"--control {cfg.control}: give SAEs trained on that control model among the "
            "SOURCEs (`sae-lens-e2e quickstart --control random-weights` writes them under "
            "DIR/saes/random-weights/), beside the trained model's"
        )
    seeds = {getattr(s.sae.cfg.metadata, "random_weights_seed", None) for s in control}
    if len(seeds) != 1 or None in seeds:
        raise ValueError(
            f"the control SAEs record different or no seeds: {sorted(map(str, seeds))}"
        )
    return random_weights(model, int(seeds.pop()))


def load_sources(cfg: EvaluateConfig, device: str, progress: bool) -> list[SourceSAE]:
    kw = {"device": device, "local_dir": cfg.local_dir, "cache_dir": cfg.cache_dir}
    # Closed however it ends, so that an error line starts on a line of its own.
    with tqdm(cfg.sources, desc="loading SAEs", disable=not progress, leave=False) as bar:
        return [load_source(spec, **kw) for spec in bar]


def non_finite_warnings(sources: list[SourceSAE]) -> list[str]:
    """One loud line per SOURCE with NaN/Inf weights, naming each tensor."""
    lines = []
    for s in sources:
        bad = non_finite_weights(s.sae)
        if bad:
            lines.append(
                f"WARNING: SOURCE {s.spec!r}: {describe_non_finite(bad)}; every number of this "
                "SAE in the report is meaningless"
            )
    return lines


def _setup_lines(cfg: EvaluateConfig, s: EvalSettings, runs: list[SAERun]) -> list[str]:
    lines = [
        f"- Settings ({s.defaults} unless given): context {s.context_size} tokens, "
        f"prepend_bos={s.prepend_bos}, model_from_pretrained_kwargs="
        f"{s.model_from_pretrained_kwargs or '{}'}; the first rows of the dataset's train split.",
    ]
    if cfg.paper:
        n = sum(r.paper is not None for r in runs)
        lines.append(
            f"- `paper` columns: Table 2 of Braun et al. (2024) for the {n} paper SAE(s) here "
            f"(similar CE increase rows); the paper's clean CE of GPT-2 is {PAPER_GPT2_CLEAN_CE} "
            "on its own evaluation set."
        )
    return lines


def run_evaluate(
    cfg: EvaluateConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True
) -> ReportData:
    """Load every SOURCE (failing before any model work), evaluate all on the same tokens,
    write the report folder atomically."""
    from sae_lens_e2e.pipelines.output import check_output_dir
    from sae_lens_e2e.preflight import resolve_device

    out = Path(out)
    cfg.validate()
    check_model_name(cfg.model, "--model")  # before any SAE is fetched
    check_output_dir(
        out,
        overwrite,
        {report.REPORT_MD, report.REPORT_JSON, report.PARETO_PNG},
        "sae-lens-e2e evaluate",
    )
    device = resolve_device(cfg.device)
    start = time.perf_counter()
    sources = load_sources(cfg, device, progress)
    weight_warnings = non_finite_warnings(sources)
    for line in weight_warnings:  # before the long part: the user may stop here
        print(line, file=sys.stderr)
    settings = resolve_settings(cfg, sources)
    model = load_model(cfg.model, settings, device)
    settings = _fit_context(settings, model.cfg.n_ctx)
    for s in sources:
        check_sae_fits(model, s.sae, where=f"SOURCE {s.spec!r}", hook=s.hook)
    control = control_model(cfg, sources, model)
    tokens = eval_tokens(model, settings, cfg.n_sequences, cfg.batch_size, sources[0])
    metrics: dict[str, dict[str, Any]] = {}
    for weights, on in ((TRAINED_WEIGHTS, model), (cfg.control, control)):
        mine = [s for s in sources if weights_of(s) == weights]
        if on is None or not mine:
            continue
        metrics |= evaluate_many(
            on,
            {s.spec: {s.hook: s.sae} for s in mine},
            tokens,
            batch_size=cfg.batch_size,
            progress=progress,
        )
    runs = [make_run(s, metrics[s.spec], cfg.paper) for s in sources]
    hooks = sorted({s.hook for s in sources})
    result = ReportData(
        out=out,
        model_name=cfg.model,
        dataset_name=settings.dataset,
        hook=", ".join(hooks),
        d_in=sources[0].sae.cfg.d_in,
        n_eval_tokens=tokens.numel(),
        runs=runs,
        geometry={},
        model_info={"n_params": sum(p.numel() for p in model.parameters())},
        timings={"total": time.perf_counter() - start},
        config=dataclasses.asdict(cfg) | {"settings": dataclasses.asdict(settings)},
        setup=_setup_lines(cfg, settings, runs) + [f"- **{line}**" for line in weight_warnings],
        name="evaluate",
        saes_dir=None,
        control_setup=[] if control is None else [scheme_line(model, control.cfg.seed) + "."],
    )
    with atomic_directory(out) as tmp:
        report.write_report(result, tmp)
    return result
