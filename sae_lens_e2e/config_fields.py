"""Checks of plain mappings (YAML) against config dataclasses, shared by the train and
quickstart configs (top level, so that neither side imports the other or the CLI)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def check_known_fields(section: str, given: Mapping[str, Any], cls: type) -> None:
    """Reject keys that are not fields of dataclass `cls` (typos), naming the section."""
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"{section}: unknown field(s) {unknown} for {cls.__name__}")
