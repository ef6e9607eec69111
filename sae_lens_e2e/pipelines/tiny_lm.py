"""A small byte-level language model trained on the CPython docs, cached.

The corpus is the English text of the CPython documentation that ships with every Python
(`pydoc_data.topics`), split by document into train and held-out text and encoded as UTF-8
bytes. The model is a small TransformerLens causal transformer trained once on the train
text and cached under `quickstart_cache_dir()`, keyed by its settings and the exact corpus.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_lens_e2e.atomic import atomic_directory
from sae_lens_e2e.cache import CACHE_ENV, default_cache_dir
from sae_lens_e2e.models import BYTE_LM_NAME, BYTE_VOCAB, byte_lm_config
from sae_lens_e2e.preflight import check_writable

TINY_MODEL_NAME = BYTE_LM_NAME
TINY_DATASET_NAME = "pydoc_data.topics (byte-level)"


# ----------------------------------------------------------------------------- config


@dataclass
class TinyLMConfig:
    """The small byte-level causal transformer trained (once, then cached) on pydoc text."""

    n_layers: int = 4
    d_model: int = 128
    d_head: int = 32
    n_ctx: int = 128
    steps: int = 500
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 30
    seed: int = 0
    heldout_fraction: float = 0.12
    # The model must end well below the unigram baseline, or it is not a real model.
    max_loss_ratio: float = 0.8
    # Use only the first `corpus_bytes` bytes of each split (None = all); for fast tests.
    corpus_bytes: int | None = None


# ----------------------------------------------------------------------------- corpus


@dataclass
class ByteCorpus:
    """Byte-level token streams; held-out documents are never trained on."""

    train: torch.Tensor
    heldout: torch.Tensor
    train_docs: list[str]
    heldout_docs: list[str]

    def digest(self) -> str:
        h = hashlib.sha256(self.train.numpy().tobytes())
        h.update(self.heldout.numpy().tobytes())
        return h.hexdigest()[:16]


def _doc_rank(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_pydoc_corpus(heldout_fraction: float, corpus_bytes: int | None = None) -> ByteCorpus:
    """Split the pydoc topics by document (deterministically, by a hash of the key) into
    train and held-out text, then encode each side as UTF-8 bytes."""
    from pydoc_data.topics import topics

    docs = {k: v.encode("utf-8") for k, v in topics.items()}
    total = sum(len(v) for v in docs.values())
    heldout: list[str] = []
    for key in sorted(docs, key=_doc_rank):
        if sum(len(docs[k]) for k in heldout) >= heldout_fraction * total:
            break
        heldout.append(key)
    train = sorted(set(docs) - set(heldout))

    def stream(keys: list[str]) -> torch.Tensor:
        data = b"\n\n".join(docs[k] for k in sorted(keys))[:corpus_bytes]
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()

    return ByteCorpus(stream(train), stream(sorted(heldout)), train, sorted(heldout))


def unigram_cross_entropy(train: torch.Tensor, heldout: torch.Tensor) -> float:
    """CE (nats/token) on held-out text of the train byte distribution (add-one smoothed)."""
    counts = torch.bincount(train, minlength=BYTE_VOCAB).double() + 1.0
    log_p = torch.log(counts / counts.sum())
    return float(-log_p[heldout].mean())


def windows(stream: torch.Tensor, context: int) -> torch.Tensor:
    """Non-overlapping [n, context] windows (the tail that does not fill one is dropped)."""
    n = stream.numel() // context
    return stream[: n * context].view(n, context)


# ----------------------------------------------------------------------------- tiny model


def tiny_model_config(lm: TinyLMConfig, device: str) -> HookedTransformerConfig:
    """The model's architecture (models.py, which also loads a cached one as a folder)."""
    return byte_lm_config(lm.n_layers, lm.d_model, lm.d_head, lm.n_ctx, lm.seed, device)


def tiny_model_key(lm: TinyLMConfig, corpus: ByteCorpus) -> str:
    """Cache key: every training setting, the exact corpus and the torch version family."""
    blob = json.dumps(
        {"lm": dataclasses.asdict(lm), "corpus": corpus.digest(), "v": 1}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def quickstart_cache_dir() -> Path:
    """`<sae_lens_e2e cache>/quickstart` ($SAE_LENS_E2E_CACHE, else the user cache dir)."""
    return default_cache_dir() / "quickstart"


def cached_model_dir(lm: TinyLMConfig, corpus: ByteCorpus) -> Path | None:
    """The cache folder of this model if it was trained before, else None."""
    cache = quickstart_cache_dir() / tiny_model_key(lm, corpus)
    done = (cache / "model.pt").is_file() and (cache / "info.json").is_file()
    return cache if done else None


def seconds_per_step(corpus: ByteCorpus, lm: TinyLMConfig, device: str, steps: int = 2) -> float:
    """Wall time of one training step of the tiny LM, measured here and now (after a warm-up
    step): on a machine shared with other jobs that is what the training will take."""
    model = HookedTransformer(tiny_model_config(lm, device))
    opt = torch.optim.AdamW(model.parameters(), lr=lm.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(lm.seed)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        _train_step(model, opt, _random_windows(corpus, lm, gen).to(device))
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def training_note(lm: TinyLMConfig, device: str, threads: str = "") -> str:
    """What the quickstart does first and how long it will take (said before it starts): the
    step time is measured with the threads it will use, so a busy machine shows in it."""
    corpus = load_pydoc_corpus(lm.heldout_fraction, lm.corpus_bytes)
    cached = cached_model_dir(lm, corpus)
    if cached is not None:
        return f"quickstart: using the small language model trained by an earlier run ({cached})"
    if device.startswith("cuda"):
        estimate = "well under a minute on a GPU"
    else:
        step = seconds_per_step(corpus, lm, device)
        minutes = step * lm.steps / 60
        took = "under a minute" if minutes < 1 else f"about {minutes:.1f} min"
        with_threads = f" with {threads}" if threads else ""
        estimate = f"{took} at the {step:.2f} s/step measured just now{with_threads}"
    return (
        f"quickstart: first trains a small byte-level language model on the Python docs "
        f"({lm.steps} steps, {estimate}; once, then cached in {quickstart_cache_dir()}), "
        "then the SAEs"
    )


@torch.no_grad()
def heldout_loss(model: HookedTransformer, tokens: torch.Tensor, batch_size: int = 32) -> float:
    """Token-weighted next-byte CE on held-out windows."""
    total, count = 0.0, 0
    for batch in tokens.split(batch_size):
        per_token = model(batch.to(model.cfg.device), return_type="loss", loss_per_token=True)
        total += per_token.sum().item()
        count += per_token.numel()
    return total / count


def _lr_lambda(lm: TinyLMConfig) -> Callable[[int], float]:
    """Linear warmup then cosine decay to 10%."""

    def factor(step: int) -> float:
        if step < lm.warmup_steps:
            return (step + 1) / lm.warmup_steps
        progress = (step - lm.warmup_steps) / max(1, lm.steps - lm.warmup_steps)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _random_windows(corpus: ByteCorpus, lm: TinyLMConfig, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, corpus.train.numel() - lm.n_ctx, (lm.batch_size, 1), generator=gen)
    return corpus.train[starts + torch.arange(lm.n_ctx)]


def _train_step(model: HookedTransformer, opt: torch.optim.Optimizer, batch: torch.Tensor) -> float:
    loss = model(batch, return_type="loss")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def train_tiny_model(
    model: HookedTransformer, corpus: ByteCorpus, lm: TinyLMConfig, progress: bool = True
) -> None:
    """Next-byte prediction on random windows of the train text (AdamW, warmup + cosine)."""
    gen = torch.Generator().manual_seed(lm.seed)
    torch.manual_seed(lm.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lm.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(lm))
    model.train()
    with tqdm(range(lm.steps), desc="training the tiny LM", disable=not progress) as bar:
        for _ in bar:
            loss = _train_step(model, opt, _random_windows(corpus, lm, gen).to(model.cfg.device))
            sched.step()
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
    model.eval()


@dataclass
class TinyModel:
    model: HookedTransformer
    info: dict[str, Any]


def get_tiny_model(
    corpus: ByteCorpus, lm: TinyLMConfig, device: str, progress: bool = True
) -> TinyModel:
    """The cached model if its settings and corpus match, else train and cache it."""
    cfg = tiny_model_config(lm, device)
    model = HookedTransformer(cfg)
    cache = quickstart_cache_dir() / tiny_model_key(lm, corpus)
    if cached_model_dir(lm, corpus) is not None:
        model.load_state_dict(
            torch.load(cache / "model.pt", weights_only=True, map_location=device)
        )
        model.eval()
        info = json.loads((cache / "info.json").read_text()) | {"cached": True}
        return TinyModel(model, info | {"cache_dir": str(cache)})
    # Before minutes of training, not after: the cache must take the trained model.
    check_writable(cache, "quickstart cache", f"set {CACHE_ENV} to a writable folder")
    start = time.perf_counter()
    train_tiny_model(model, corpus, lm, progress)
    eval_windows = windows(corpus.heldout, lm.n_ctx)
    info = {
        "heldout_loss": heldout_loss(model, eval_windows),
        "unigram_ce": unigram_cross_entropy(corpus.train, corpus.heldout),
        "train_bytes": corpus.train.numel(),
        "heldout_bytes": corpus.heldout.numel(),
        "train_seconds": time.perf_counter() - start,
        "lm": dataclasses.asdict(lm),
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    _check_learned(info, lm)
    with atomic_directory(cache) as tmp:
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp / "model.pt")
        (tmp / "info.json").write_text(json.dumps(info, indent=2))
    return TinyModel(model, info | {"cached": False, "cache_dir": str(cache)})


def _check_learned(info: Mapping[str, Any], lm: TinyLMConfig) -> None:
    limit = lm.max_loss_ratio * info["unigram_ce"]
    if info["heldout_loss"] >= limit:
        raise ValueError(
            f"the tiny LM reached held-out loss {info['heldout_loss']:.3f} nats/byte, not below "
            f"{lm.max_loss_ratio} x the unigram baseline ({info['unigram_ce']:.3f}); "
            "train it longer (lm.steps) or with a larger lm.lr"
        )


# ----------------------------------------------------------------------------- save / load


def save_tiny_model(model: HookedTransformer, info: Mapping[str, Any], folder: Path) -> None:
    """The tiny LM beside the SAEs, so the report folder is self-contained."""
    folder.mkdir(parents=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, folder / "model.pt")
    cfg = model.cfg.to_dict()
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    (folder / "info.json").write_text(json.dumps(info, indent=2, default=str))


def load_tiny_model(folder: str | Path, device: str = "cpu") -> HookedTransformer:
    """Reload the tiny LM saved in a quickstart report folder (`<report>/model`)."""
    folder = Path(folder)
    info = json.loads((folder / "info.json").read_text())
    model = HookedTransformer(tiny_model_config(TinyLMConfig(**info["lm"]), device))
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True, map_location=device))
    return model.eval()
