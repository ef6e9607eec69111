"""Fused kernels for the SAE hot path and the logits KL (pure tensor functions, no SAELens).

Triton is optional: without it (or off CUDA) everything runs the plain-PyTorch reference.
The Triton kernel modules are imported lazily, on the first call that uses them, because
TRITON_INTERPRET is read when @triton.jit decorates (tests set it before that first call).

This folder is only ever the package `sae_lens_e2e.kernels` (pyproject.toml maps it there; the
wheel and the editable install have no top-level `kernels`). From a clone's root, though, the
root is on sys.path (`python -m ...`, pytest, `python -c`, a notebook started there), so
Python also finds this folder as a top-level `kernels` - the name of Hugging Face's package,
which transformers imports. In that case the module below hands the name over to whatever
`kernels` is installed (or to none) instead of shadowing it.
"""

import sys as _sys

_NAME = "sae_lens_e2e.kernels"


def _hand_over_top_level_name() -> None:
    """Import the installed distribution that owns this module's name, searching sys.path
    without the folder that holds this package, and leave it in sys.modules: the import
    system returns what sys.modules holds once this module's code has run."""
    import importlib
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    hidden = [(i, p) for i, p in enumerate(_sys.path) if os.path.abspath(p or ".") == root]
    for i, _ in reversed(hidden):
        del _sys.path[i]
    del _sys.modules[__name__]
    try:
        importlib.import_module(__name__)  # ModuleNotFoundError when nothing else owns it
    finally:
        for i, p in hidden:
            _sys.path.insert(i, p)


if __name__ != _NAME:
    _hand_over_top_level_name()
else:
    from .dispatch import Backend, density_threshold, resolve_backend
    from .kl import kl_div
    from .reference import kl_div_torch, sae_forward_torch
    from .sae import sae_forward

    __all__ = [
        "Backend",
        "density_threshold",
        "kl_div",
        "kl_div_torch",
        "resolve_backend",
        "sae_forward",
        "sae_forward_torch",
    ]
