"""Where downloads and the quickstart's trained model are cached (shared by loading/ and pipelines/)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SAE_LENS_E2E_CACHE"


def default_cache_dir() -> Path:
    """$SAE_LENS_E2E_CACHE, else $XDG_CACHE_HOME/sae_lens_e2e, else ~/.cache/sae_lens_e2e."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sae_lens_e2e"
