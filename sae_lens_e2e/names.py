"""Names read from files (checkpoint keys, YAML, cfg.json) that become folder names.

A hook name is checked where it is read: TransformerLens hook names are dot-separated words
of letters, digits and '_' (`blocks.6.hook_resid_pre`, `hook_embed`, `ln_final.hook_scale`),
so '/', '..' or an absolute path can never reach a path. Every path built from such a name is
also proven to stay inside the folder it is written to (`inside`), lexically: a symlink the
user made inside that folder is theirs to follow.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

HOOK_NAME = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
# A folder name we make from a source (run name, file stem): no separators, no leading dot.
FOLDER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]*")
MAX_NAME = 200  # file names are limited to 255 bytes; temporaries add ~40


def is_hook_name(name: Any) -> bool:
    return isinstance(name, str) and len(name) <= MAX_NAME and bool(HOOK_NAME.fullmatch(name))


def check_hook_name(name: Any, where: str, error: type[ValueError] = ValueError) -> str:
    """`name` if it has the form of a TransformerLens hook name, else `error` naming it."""
    if not is_hook_name(name):
        raise error(
            f"{where}: {name!r} is not a hook name (letters, digits, '_' and '.', "
            "e.g. 'blocks.6.hook_resid_pre')"
        )
    return name


def is_folder_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and len(name) <= MAX_NAME
        and bool(FOLDER_NAME.fullmatch(name))
        and name not in (".", "..")
    )


def inside(root: str | Path, *parts: str, error: type[ValueError] = ValueError) -> Path:
    """`root / parts`, refused unless it names something strictly inside `root`."""
    joined = os.path.normpath(os.path.join(*parts)) if parts else "."
    first = joined.split(os.sep, 1)[0]
    if os.path.isabs(joined) or joined == "." or first == os.pardir:
        raise error(f"refusing to write {os.path.join(*parts)!r}: it is not inside {root}")
    return Path(root) / joined
