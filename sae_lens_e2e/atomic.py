"""Atomic writes: build under a temporary name beside the target, then rename into place.

Readers (SAELens loaders, resume logic) never see a half-written file or folder. What lands
in place gets the modes a plain mkdir/open gives under the user's umask, so collaborators can
read it: tempfile's mkdtemp/mkstemp (0700/0600) are not used, and files a writer made 0600
itself (safetensors does) are set to those modes before the rename. Temporary names carry the
writer's host and process id: a later run removes those whose writer was killed
(`remove_stale_temporaries`) and never touches anything else.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_TMP, _OLD = ".tmp", ".old"


def host_id() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"


def _create(target: Path, suffix: str, make: Callable[[Path], None]) -> Path:
    """A new `.<name>.<host>-<pid>-<random><suffix>` beside `target`, made by `make`."""
    while True:
        path = target.with_name(
            f".{target.name}.{host_id()}-{os.getpid()}-{secrets.token_hex(4)}{suffix}"
        )
        try:
            make(path)
            return path
        except FileExistsError:
            continue


def _new_file(path: Path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # umask applies


@contextmanager
def atomic_directory(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temp dir next to `out_dir`; it replaces `out_dir` only if the block succeeds."""
    out = Path(out_dir).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create(out, _TMP, Path.mkdir)  # mode 0o777 minus the umask
    try:
        yield tmp
        _set_modes(tmp, stat.S_IMODE(tmp.stat().st_mode))
        _replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _set_modes(folder: Path, dir_mode: int) -> None:
    """Folders in `folder` get `dir_mode`, files the same without execute bits."""
    for path in folder.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, dir_mode if path.is_dir() else dir_mode & 0o666)


def _replace_directory(tmp: Path, out: Path) -> None:
    """Swap `tmp` in for `out`, keeping the old `out` until the rename has succeeded."""
    if not out.exists():
        os.rename(tmp, out)
        return
    backup = _create(out, _OLD, lambda p: os.rename(out, p))
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(backup, out)
        raise
    shutil.rmtree(backup, ignore_errors=True)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp path in the target's directory; `os.replace` it into place on success."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create(path, _TMP, _new_file)
    mode = stat.S_IMODE(tmp.stat().st_mode)  # 0o666 minus the umask
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: str | Path, target: str) -> list[Path]:
    """Remove the temporaries a killed writer left in `folder` for names matching regex `target`.

    Only names made here are touched, and only when their writer (this host, that process id)
    is gone. A backup whose target is missing (killed mid-swap) is renamed back instead.
    """
    pattern = re.compile(
        rf"\.(?P<target>{target})\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)-[0-9a-f]{{8}}"
        rf"(?P<suffix>{re.escape(_TMP)}|{re.escape(_OLD)})"
    )
    folder = Path(folder)
    removed = []
    for path in sorted(folder.glob(".*")) if folder.is_dir() else []:
        m = pattern.fullmatch(path.name)
        if m is None or m["host"] != host_id() or process_alive(int(m["pid"])):
            continue
        if m["suffix"] == _OLD and not (folder / m["target"]).exists():
            os.rename(path, folder / m["target"])
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def unexpected_entries(folder: str | Path, expected: set[str]) -> list[str]:
    """Names in `folder` other than `expected` (folders shown with a trailing '/')."""
    return sorted(
        f"{p.name}/" if p.is_dir() else p.name
        for p in Path(folder).iterdir()
        if p.name not in expected
    )
