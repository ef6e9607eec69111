"""This package's version, from its installed metadata (no heavy import)."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("sae-lens-e2e")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


def version_line() -> str:
    """`sae-lens-e2e --version`: ours and the versions that decide what it computes."""
    found = []
    for name in ("sae-lens", "transformer-lens", "torch"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return f"sae-lens-e2e {__version__} ({', '.join(found)})"
