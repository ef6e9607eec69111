"""Shared fixtures: tiny TransformerLens models and token datasets built in memory (offline)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not torch.cuda.is_available():
    # Kernel tests run Triton's CPU interpreter; triton reads this when first imported (and
    # sae_lens imports triton), so it must be set here, before any test module is collected.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def make_tiny_model(
    n_layers: int = 4, d_model: int = 16, d_vocab: int = 64, n_ctx: int = 32, seed: int = 0
):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_ctx=n_ctx,
        d_head=4,
        n_heads=d_model // 4,
        d_vocab=d_vocab,
        act_fn="gelu",
        normalization_type="LN",
        model_name="tiny-test-model",
    )
    return HookedTransformer(cfg)


def make_token_dataset(n_rows: int = 256, context: int = 16, d_vocab: int = 64, seed: int = 0):
    """Tokens with structure (a noisy repeating pattern) so there is something to learn."""
    from datasets import Dataset

    gen = torch.Generator().manual_seed(seed)
    base = torch.arange(context) % 7
    offsets = torch.randint(0, d_vocab - 8, (n_rows, 1), generator=gen)
    noise = torch.randint(0, 2, (n_rows, context), generator=gen)
    tokens = (base + offsets + noise) % d_vocab
    return Dataset.from_dict({"tokens": tokens.tolist()})


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture
def token_dataset():
    return make_token_dataset()


@pytest.fixture
def read_only(monkeypatch):
    """Make a folder read-only; as root (which ignores modes) report it as access(2) does
    for a read-only mount."""

    made = []

    def make(path):
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o555)
        made.append(path)
        if os.access(path, os.W_OK):  # root
            real = os.access
            monkeypatch.setattr(
                os, "access", lambda p, mode, **kw: False if Path(p) == path else real(p, mode)
            )
        return path

    yield make
    for path in made:
        path.chmod(0o755)


@pytest.fixture
def hub_cache(monkeypatch, tmp_path):
    """huggingface_hub's default cache pointed at an empty folder (fill it with
    `e2e_hf_upload.fill_hub_cache`); HF_HUB_OFFLINE is set above, so nothing reaches the hub."""
    import huggingface_hub

    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert huggingface_hub.constants.HF_HUB_OFFLINE, "tests must not reach the hub"
    return cache
