"""Reading SAELens folders and safetensors files that may be corrupt or hostile.

safetensors reports a bad file (a header claiming 50 GB, offsets past the end, a truncated
file) as a `SafetensorError` that names neither the file nor what to do; here it becomes a
one-line `UnreadableFileError` naming the file. A file that reads fine may still hold NaN/Inf
weights (`non_finite_weights`), which no evaluation of it can mean anything with.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import SafetensorError


class UnreadableFileError(ValueError):
    """A file that exists but cannot be read as what it should be."""


@contextmanager
def reading(path: str | Path, what: str = "safetensors file") -> Iterator[None]:
    """Turn safetensors' errors while reading `path` into one line naming it."""
    try:
        yield
    except SafetensorError as err:
        detail = " ".join(str(err).split())
        raise UnreadableFileError(
            f"{path}: not a readable {what} ({detail}); the file is damaged or is not one"
        ) from None


def read_safetensors(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    from safetensors.torch import load_file

    with reading(path):
        return load_file(path, device=device)


def load_sae_folder(path: str | Path, **kw: Any) -> Any:
    """`SAE.load_from_disk(path, **kw)`, with a damaged weights file named."""
    from sae_lens import SAE

    with reading(path, "SAE folder (cfg.json + sae_weights.safetensors)"):
        return SAE.load_from_disk(path, **kw)


def non_finite_weights(sae: Any) -> dict[str, tuple[int, int]]:
    """Tensor name -> (NaN/Inf values, all values) for each of `sae`'s tensors holding any."""
    import torch

    out = {}
    for name, tensor in sae.state_dict().items():
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                out[name] = (bad, tensor.numel())
    return out


def describe_non_finite(counts: dict[str, tuple[int, int]]) -> str:
    return ", ".join(
        f"{name} has {bad:,} NaN/Inf value(s) of {n:,}" for name, (bad, n) in counts.items()
    )
