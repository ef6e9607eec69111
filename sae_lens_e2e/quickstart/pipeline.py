"""`sae-lens-e2e quickstart`: the whole method, end to end, on any machine.

Without a model it needs no GPU and no internet: it trains a small byte-level
TransformerLens model on the English text of the CPython documentation that ships with every
Python (`pydoc_data.topics`), caches it (see `sae_lens_e2e.quickstart.tiny_lm`), then trains `local`, `e2e` and `e2e_ds` SAEs at its
middle layer for a few sparsity coefficients each (same dictionary size, same tokens, same
runner as `sae-lens-e2e train`), evaluates every saved SAE on held-out text and writes a
report (see `sae_lens_e2e.analysis.report`). With `model` and `dataset` the same pipeline runs on any
TransformerLens model and Hugging Face dataset (e.g. the paper's GPT-2 run,
`examples/quickstart_gpt2.yaml`).

Held-out text. Tiny model: whole documents are held out (never seen by the language model
or the SAEs). Hugging Face dataset: the first `n_eval_sequences` sequences of the stream; the
runner reserves exactly those as its own held-out set before training, so no SAE trains on
them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from sae_lens_e2e.analysis.geometry import (
    GeometryResult,
    alive_latents_from_sparsity,
    compare_saes,
    load_sae,
)
from sae_lens_e2e.atomic import atomic_directory
from sae_lens_e2e.cli.train import check_known_fields
from sae_lens_e2e.quickstart.tiny_lm import (
    TINY_DATASET_NAME,
    TINY_MODEL_NAME,
    TinyLMConfig,
    get_tiny_model,
    load_pydoc_corpus,
    save_tiny_model,
    tiny_model_config,
    windows,
)
from sae_lens_e2e.training.config import STRATEGIES
from sae_lens_e2e.training.losses import downstream_hooks
from sae_lens_e2e.training.validation import check_sae_fits, default_hook, hook_width, validate_run

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


# ----------------------------------------------------------------------------- configs


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
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    coefficients: dict[str, list[float]] = field(
        default_factory=lambda: {k: list(v) for k, v in TINY_COEFFICIENTS.items()}
    )
    in_to_orig_coefficient: float | None = None  # e2e_ds downstream weight; None = 2.5
    n_eval_sequences: int = 256
    eval_batch_size: int = 16
    device: str = "auto"
    seed: int = 0
    compare_saes: list[str] = field(default_factory=list)  # extra SAELens SAE folders
    lm: TinyLMConfig = field(default_factory=TinyLMConfig)
    model_from_pretrained_kwargs: dict[str, Any] | None = None
    # Extra fields for SAELens's LanguageModelSAERunnerConfig / our SAE config (paper runs).
    runner_overrides: dict[str, Any] = field(default_factory=dict)
    sae_overrides: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config") -> QuickstartConfig:
        """Build from a mapping (YAML), rejecting unknown keys so typos are caught."""
        raw = dict(raw)
        lm = raw.pop("lm", None) or {}
        check_known_fields(source, raw, cls)
        check_known_fields(f"{source}: lm", lm, TinyLMConfig)
        try:
            return cls(**raw, lm=TinyLMConfig(**lm))
        except TypeError as err:
            raise ValueError(f"{source}: {err}") from err

    def validate(self) -> None:
        """Check what can be checked before any work starts."""
        if (self.model is None) != (self.dataset is None):
            raise ValueError(
                "--model and --dataset go together (a TransformerLens model and a Hugging Face "
                "dataset); give neither for the offline tiny-model run"
            )
        unknown = sorted(set(self.strategies) - set(STRATEGIES))
        if unknown or not self.strategies:
            raise ValueError(
                f"strategies must be a non-empty subset of {STRATEGIES}, got {unknown}"
            )
        for strategy in self.strategies:
            coefs = self.coefficients.get(strategy)
            if not coefs:
                raise ValueError(f"no sparsity coefficients given for strategy {strategy!r}")
            if len(set(coefs)) != len(coefs):
                raise ValueError(f"coefficients for {strategy!r} repeat a value: {coefs}")
            if any(not math.isfinite(c) or c < 0 for c in coefs):
                raise ValueError(f"coefficients for {strategy!r} must be >= 0, got {coefs}")
        for name in ("context_size", "d_sae", "training_tokens", "n_eval_sequences"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
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


def resolve_device(device: str) -> str:
    """`auto` picks CUDA when there is one."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# ----------------------------------------------------------------------------- data + model

ModelCheck = Callable[[HookedTransformer], None]


@dataclass
class Workload:
    """The frozen model, the SAE training data and the held-out evaluation tokens."""

    model: HookedTransformer
    model_name: str
    hook: str
    d_in: int
    eval_tokens: torch.Tensor
    train_dataset: Any | None  # in-memory dataset (tiny), else None (runner loads `dataset`)
    dataset_name: str
    info: dict[str, Any] = field(default_factory=dict)


def tiny_workload(
    cfg: QuickstartConfig, device: str, progress: bool = True, precheck: ModelCheck | None = None
) -> Workload:
    """Corpus split, cached/trained tiny LM, SAE training windows and held-out windows.

    Every check (hook, budget, `precheck` on the untrained model) runs before training.
    """
    corpus = load_pydoc_corpus(cfg.lm.heldout_fraction, cfg.lm.corpus_bytes)
    skeleton = HookedTransformer(tiny_model_config(cfg.lm, "cpu"))
    hook = cfg.hook or default_hook(skeleton)
    d_in = hook_width(skeleton, hook)
    eval_tokens = _take(windows(corpus.heldout, cfg.context_size), cfg.n_eval_sequences)
    train = windows(corpus.train, cfg.context_size)
    _check_budget(cfg, len(train), reserve=runner_eval_sequences(cfg, tiny=True))
    if precheck is not None:
        precheck(skeleton)
    tiny = get_tiny_model(corpus, cfg.lm, device, progress)
    train = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))]
    from datasets import Dataset

    dataset = Dataset.from_dict({"tokens": train.tolist()})
    return Workload(
        tiny.model, TINY_MODEL_NAME, hook, d_in, eval_tokens, dataset, TINY_DATASET_NAME, tiny.info
    )


def _take(tokens: torch.Tensor, n: int) -> torch.Tensor:
    if len(tokens) < n:
        raise ValueError(
            f"the held-out text has only {len(tokens)} sequences, fewer than "
            f"n_eval_sequences={n}; lower --n-eval-sequences or --context-size"
        )
    return tokens[:n]


def _check_budget(cfg: QuickstartConfig, n_sequences: int, reserve: int) -> None:
    """Refuse a dataset shorter than the token budget (the store would silently repeat it)."""
    needed = math.ceil(cfg.training_tokens / cfg.train_batch_size_tokens) * (
        cfg.train_batch_size_tokens // cfg.context_size
    )
    if n_sequences < needed + reserve:
        raise ValueError(
            f"the training data has {n_sequences} sequences of {cfg.context_size} tokens, but "
            f"training_tokens={cfg.training_tokens} needs {needed} plus {reserve} held out; "
            "lower --training-tokens or use a larger dataset"
        )


def hf_workload(cfg: QuickstartConfig, device: str, precheck: ModelCheck | None = None) -> Workload:
    """A TransformerLens model via SAELens's `load_model` and a Hugging Face dataset.

    Held-out tokens are the first sequences of the dataset's stream: each runner reserves
    exactly these (`runner_eval_sequences`) before it trains, so no SAE trains on them.
    """
    from sae_lens.load_model import load_model
    from sae_lens.training.activations_store import ActivationsStore

    model = load_model(
        "HookedTransformer",
        cfg.model,
        device=device,
        model_from_pretrained_kwargs=cfg.model_from_pretrained_kwargs,
    )
    model.requires_grad_(False).eval()
    hook = cfg.hook or default_hook(model)
    d_in = hook_width(model, hook)
    if precheck is not None:
        precheck(model)
    n_eval = runner_eval_sequences(cfg, tiny=False)
    with quiet_store_warnings():
        store = ActivationsStore.from_config(
            model, build_runner_config(cfg, hook, d_in, "local", 0.0, None, device)
        )
        if store.is_dataset_tokenized and hasattr(store.dataset, "__len__"):
            _check_budget(cfg, len(store.dataset), reserve=n_eval)
        make_store_strict(store, cfg.dataset or "")
        eval_tokens = store.get_batch_tokens(n_eval).cpu()
    info = {"n_params": sum(p.numel() for p in model.parameters())}
    return Workload(model, cfg.model or "", hook, d_in, eval_tokens, None, cfg.dataset or "", info)


def runner_eval_sequences(cfg: QuickstartConfig, tiny: bool) -> int:
    """Sequences each runner holds out from the start of its stream for its own evaluation:
    a token batch for the tiny model (our held-out text is separate), else our eval set."""
    batch = eval_batch_size(cfg)
    return batch if tiny else max(1, cfg.n_eval_sequences // batch) * batch


def eval_batch_size(cfg: QuickstartConfig) -> int:
    return min(cfg.eval_batch_size, cfg.n_eval_sequences)


# ----------------------------------------------------------------------------- SAE sweep


def run_label(strategy: str, coefficient: float) -> str:
    return f"{strategy}_lambda{coefficient:g}"


def sae_seed(seed: int, strategy: str) -> int:
    """SAE init seed: `seed` plus the strategy's index. The runner's seed only sets the
    initialisation (the data order is fixed), so every run sees the same tokens, the runs of
    one strategy share an init, and different strategies do not: otherwise their decoders
    stay close to one shared start and the cross-strategy geometry measures only that."""
    return seed + STRATEGIES.index(strategy)


def build_runner_config(
    cfg: QuickstartConfig,
    hook: str,
    d_in: int,
    strategy: str,
    coefficient: float,
    output_path: Path | None,
    device: str,
    tiny: bool = False,
) -> Any:
    """One SAELens runner config of the sweep; only strategy and lambda vary across runs."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    from sae_lens_e2e.training.config import E2EStandardTrainingSAEConfig

    sae_kwargs: dict[str, Any] = dict(
        d_in=d_in, d_sae=cfg.d_sae or 8 * d_in, strategy=strategy, l1_coefficient=coefficient
    )
    if strategy == "e2e_ds" and cfg.in_to_orig_coefficient is not None:
        sae_kwargs["in_to_orig_coefficient"] = cfg.in_to_orig_coefficient
    sae_kwargs.update(cfg.sae_overrides)
    batch = eval_batch_size(cfg)
    fields: dict[str, Any] = dict(
        model_name=TINY_MODEL_NAME if tiny else cfg.model,
        hook_name=hook,
        dataset_path="" if tiny else cfg.dataset,
        is_dataset_tokenized=True,
        prepend_bos=not tiny,
        streaming=not tiny,
        context_size=cfg.context_size,
        train_batch_size_tokens=cfg.train_batch_size_tokens,
        training_tokens=cfg.training_tokens,
        store_batch_size_prompts=batch,
        eval_batch_size_prompts=batch,
        n_eval_batches=runner_eval_sequences(cfg, tiny) // batch,
        lr=cfg.lr,
        lr_scheduler_name="cosineannealing",
        # Never the whole run: SAELens's cosine schedule needs steps after the warmup.
        lr_warm_up_steps=min(
            cfg.lr_warm_up_steps, cfg.training_tokens // cfg.train_batch_size_tokens // 2
        ),
        logger=LoggingConfig(log_to_wandb=False),
        output_path=None if output_path is None else str(output_path),
        checkpoint_path=None,
        n_checkpoints=0,
        save_final_checkpoint=False,
        verbose=False,
        device=device,
        act_store_device=device,
        seed=sae_seed(cfg.seed, strategy),
        model_from_pretrained_kwargs=cfg.model_from_pretrained_kwargs or {},
    )
    overrides = dict(cfg.runner_overrides)
    if isinstance(overrides.get("logger"), Mapping):  # from YAML
        overrides["logger"] = LoggingConfig(**{"log_to_wandb": False, **overrides["logger"]})
    fields.update(overrides)
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=E2EStandardTrainingSAEConfig(**sae_kwargs), **fields
    )
    runner_cfg.checkpoint_path = None  # SAELens appends a random id in post-init
    return runner_cfg


@dataclass
class SAERun:
    """One trained (or loaded) SAE and its held-out evaluation."""

    label: str
    strategy: str  # local / e2e / e2e_ds, or "loaded" for --compare-sae SAEs
    coefficient: float | None
    hook: str
    path: str  # SAELens folder, relative to the report folder when trained here
    metrics: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0


def train_sweep(
    cfg: QuickstartConfig, work: Workload, out: Path, device: str, progress: bool = True
) -> list[SAERun]:
    """Every (strategy, lambda) through `E2ESAETrainingRunner`, saved under out/saes/."""
    plan = {
        run_label(s, c): (s, c, _runner_config_for(cfg, work, s, c, out, device))
        for s in cfg.strategies
        for c in cfg.coefficients[s]
    }
    (out / LOGS_DIR).mkdir(exist_ok=True)
    runs = []
    for i, (label, (strategy, coefficient, runner_cfg)) in enumerate(plan.items(), 1):
        if progress:
            tqdm.write(f"[{i}/{len(plan)}] training {strategy} SAE, lambda={coefficient:g}")
        start = time.perf_counter()
        _train_one(runner_cfg, work, out / LOGS_DIR / f"{label}.txt")
        path = f"{SAES_DIR}/{label}/{work.hook}"
        seconds = time.perf_counter() - start
        runs.append(SAERun(label, strategy, coefficient, work.hook, path, train_seconds=seconds))
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
    cfg: QuickstartConfig, work: Workload, strategy: str, coefficient: float, out: Path, device: str
) -> Any:
    label = run_label(strategy, coefficient)
    tiny = work.train_dataset is not None
    return build_runner_config(
        cfg, work.hook, work.d_in, strategy, coefficient, out / SAES_DIR / label, device, tiny
    )


def _train_one(runner_cfg: Any, work: Workload, log_path: Path) -> None:
    """One runner; its per-run printed summary goes to `log_path`, not the screen."""
    from sae_lens_e2e.training.runner import E2ESAETrainingRunner

    log = io.StringIO()
    with quiet_store_warnings(), contextlib.redirect_stdout(log):
        runner = E2ESAETrainingRunner(
            runner_cfg, override_dataset=work.train_dataset, override_model=work.model
        )
        make_store_strict(runner.activations_store, work.dataset_name)
        runner.run()
    log_path.write_text(log.getvalue())


@contextlib.contextmanager
def quiet_store_warnings() -> Iterator[None]:
    """Silence two SAELens store warnings that mislead here: its size check compares rows
    with tokens (we check the budget exactly, and the store is strict), and a tensor-copy
    notice from its pre-tokenised path."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The training dataset contains fewer samples")
        warnings.filterwarnings("ignore", message="To copy construct from a tensor")
        yield


def make_store_strict(store: Any, name: str) -> None:
    """Make a store raise at the end of its data instead of silently starting over (which
    would repeat data and train on the held-out sequences at the stream's start)."""
    original = store.get_batch_tokens

    def strict(batch_size: int | None = None, **kwargs: Any) -> torch.Tensor:
        kwargs.pop("raise_at_epoch_end", None)
        try:
            return original(batch_size, raise_at_epoch_end=True, **kwargs)
        except StopIteration as err:
            raise ValueError(
                f"dataset {name!r} ran out after {store.n_dataset_processed} rows, before the "
                "token budget was used; lower --training-tokens or use a larger dataset"
            ) from err

    store.get_batch_tokens = strict


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


SCALAR_TYPES = (int, float)


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
    from sae_lens_e2e.analysis.evaluation import evaluate_many

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


def alive_mask(run: SAERun) -> torch.Tensor:
    density = run.metrics[f"log10_feature_density/{run.hook}"]
    return alive_latents_from_sparsity(density, log10=True)


def scalar_metrics(run: SAERun) -> dict[str, Any]:
    return {k: v for k, v in run.metrics.items() if isinstance(v, SCALAR_TYPES)}


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


@dataclass
class QuickstartResult:
    """What the pipeline produced; `out` holds the report folder."""

    config: QuickstartConfig
    out: Path
    model_name: str
    dataset_name: str
    hook: str
    d_in: int
    n_eval_tokens: int
    runs: list[SAERun]
    geometry: dict[str, GeometryResult]
    model_info: dict[str, Any]
    timings: dict[str, float]


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start


def check_output_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"output directory {out} already exists; pass --overwrite to replace it"
        )
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {out} exists and is not a directory")


def run_quickstart(
    cfg: QuickstartConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True
) -> QuickstartResult:
    """Train, evaluate and report; the folder appears only when everything succeeded."""
    from sae_lens_e2e.analysis import report

    out = Path(out)
    cfg.validate()
    check_output_dir(out, overwrite)
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
        timings["total"] = time.perf_counter() - start
        result = QuickstartResult(
            cfg,
            out,
            work.model_name,
            work.dataset_name,
            work.hook,
            work.d_in,
            work.eval_tokens.numel(),
            runs,
            geometry,
            work.info,
            timings,
        )
        report.write_report(result, tmp)
    return result
