"""One run per folder: a lock file beside each folder a training run writes into.

`.<name>.lock` (next to `<name>/`) holds the writer's host, process id, start time and
command. A second run into the folder is refused, naming that run, instead of both finishing
with one's SAE in the other's output. A lock left by a process that is gone (this host, a
dead pid) is stale and removed; one from another host is never guessed dead (the message
says which file to remove if that run is over). The lock file is created complete, by a
hard link of a written temporary, so no reader ever sees it half-written.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sae_lens_e2e.atomic import host_id, process_alive


class FolderInUseError(ValueError):
    """Another run (alive, or on another host) holds the lock of a folder."""


def lock_path(folder: str | Path) -> Path:
    folder = Path(folder).absolute()
    return folder.with_name(f".{folder.name}.lock")


def _read(lock: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: treated as held, named in the message
    return info if isinstance(info, dict) else {}


def _stale(info: dict[str, Any]) -> bool:
    pid = info.get("pid")
    return info.get("host") == host_id() and isinstance(pid, int) and not process_alive(pid)


def _refusal(folder: Path, what: str, lock: Path, info: dict[str, Any]) -> FolderInUseError:
    who = f"pid {info.get('pid', '?')} on {info.get('host', '?')}"
    since = info.get("started")
    command = info.get("command")
    detail = who + (f" since {since}" if since else "") + (f": {command}" if command else "")
    remedy = (
        f"wait for it to finish or choose another {what}"
        if info.get("host") == host_id()
        else f"choose another {what}, or remove {lock} if that run is no longer running"
    )
    return FolderInUseError(f"{what} {folder} is in use by another run ({detail}); {remedy}")


def check_free(folder: str | Path, what: str) -> None:
    """Refuse before any work if another live run (or one on another host) holds `folder`."""
    lock = lock_path(folder)
    info = _read(lock)
    if info is not None and not _stale(info) and not _ours(info):
        raise _refusal(Path(folder), what, lock, info)


def _try_create(lock: Path) -> bool:
    """Create `lock` holding this process's record, atomically; False if it exists."""
    record = {
        "host": host_id(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }
    tmp = lock.with_name(f"{lock.name}.{host_id()}-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(record))
    try:
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: create, then fill (briefly empty)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record))
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _ours(info: dict[str, Any] | None) -> bool:
    return bool(info) and info.get("host") == host_id() and info.get("pid") == os.getpid()


@contextmanager
def folder_lock(folder: str | Path, what: str) -> Iterator[Path]:
    """Hold the lock of `folder` (its parent is created) for the duration of the block;
    re-entrant: a block inside another holding the same lock leaves it to that one."""
    folder = Path(folder).absolute()
    lock = lock_path(folder)
    if _ours(_read(lock)):
        yield lock
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    while not _try_create(lock):
        info = _read(lock)
        if info is None:
            continue  # released in between
        if not _stale(info):
            raise _refusal(folder, what, lock, info)
        if _read(lock) == info:  # still the dead run's record: remove it and try again
            lock.unlink(missing_ok=True)
    try:
        yield lock
    finally:
        if _ours(_read(lock)):
            lock.unlink(missing_ok=True)
