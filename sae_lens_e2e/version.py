"""This package's version, from its installed metadata (no heavy import)."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("sae-lens-e2e")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
