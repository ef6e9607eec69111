"""Where SAELens behaves differently inside our supported range (sae-lens>=6.51.0,<7).

One function per difference, each naming the versions, so no version check lives elsewhere.
Found by running the suite against older releases; `.ci/run` keeps both ends of the range green.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def keep_null_checkpoint_path(cfg: Any, fields: Mapping[str, Any]) -> Any:
    """The runner config `cfg` built from `fields`, with `checkpoint_path=None` kept as None.

    SAELens 6.51.0-6.51.4 (and older) turn `checkpoint_path=None` into "None/<random id>" in __post_init__
    (checkpoints would land in ./None/); 6.51.5+ keep None (no checkpoints).
    """
    if "checkpoint_path" in fields and fields["checkpoint_path"] is None:
        cfg.checkpoint_path = None
    return cfg
