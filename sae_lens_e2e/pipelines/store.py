"""SAELens's token store as the pipelines use it: quiet where its warnings mislead, and strict
at the end of the data (never silently repeating it)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch


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
