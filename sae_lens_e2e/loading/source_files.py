"""What fetching a published SAE yields (local files + provenance) and how it can fail."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_lens_e2e.loading.reference_format import E2EConversionError

LOCAL_DIR_ENV = "SAE_LENS_E2E_LOCAL_DIR"


def local_dir_hint(files: str) -> str:
    """How to convert without network, naming the CLI flag and the Python argument."""
    return f"pass --local-dir DIR (Python: local_dir=DIR, or ${LOCAL_DIR_ENV}) holding {files}"


class E2ESourceError(E2EConversionError):
    """A wandb run / Hugging Face file could not be obtained."""


class SourceNotFoundError(E2ESourceError):
    """The run path or file does not exist at the source."""


class NetworkUnavailableError(E2ESourceError):
    """The source cannot be reached (offline, no credentials); use a local directory."""


@dataclass(frozen=True)
class SourceFiles:
    """A reference checkpoint and its config on local disk, plus where they came from."""

    checkpoint: Path
    config: Path
    source: dict[str, Any] = field(default_factory=dict)


def resolve_local_dir(local_dir: str | Path | None) -> Path | None:
    value = local_dir if local_dir is not None else os.environ.get(LOCAL_DIR_ENV)
    return Path(value).expanduser() if value else None
