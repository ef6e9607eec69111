"""The quickstart's workload: the frozen model, the SAE training data and the held-out tokens.

Tiny model: whole documents are held out (never seen by the language model or the SAEs).
Hugging Face dataset: the first `n_eval_sequences` sequences of the stream; the runner
reserves exactly those as its own held-out set before training, so no SAE trains on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformer_lens import HookedTransformer

from sae_lens_e2e.pipelines.quickstart.config import QuickstartConfig, runner_eval_sequences
from sae_lens_e2e.pipelines.quickstart.runner_config import build_runner_config
from sae_lens_e2e.pipelines.store import make_store_strict, quiet_store_warnings
from sae_lens_e2e.pipelines.tiny_lm import (
    TINY_DATASET_NAME,
    TINY_MODEL_NAME,
    get_tiny_model,
    load_pydoc_corpus,
    tiny_model_config,
    windows,
)
from sae_lens_e2e.training.validation import default_hook, hook_width

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
    from sae_lens.training.activations_store import ActivationsStore

    from sae_lens_e2e.models import load_model  # a TransformerLens name or a model folder

    model = load_model(
        "HookedTransformer",
        cfg.model,
        device=device,
        model_from_pretrained_kwargs=cfg.model_from_pretrained_kwargs,
        field="--model",
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
