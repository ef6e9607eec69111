"""Atomic writes: build under a temporary name beside the target, then rename into place.

Readers (SAELens loaders, resume logic) never see a half-written file or folder. What lands
in place gets the modes a plain mkdir/open gives under the user's umask, so collaborators can
read it: tempfile's mkdtemp/mkstemp (0700/0600) are not used, and files a writer made 0600
itself (safetensors does) are set to those modes before the rename. Temporary names carry the
writer's host and process id: a later run removes those whose writer was killed
(`remove_stale_temporaries`, also at the start of every atomic write) and never touches
anything else. A target that is a symlink is written through: the swap happens beside the
folder or file it points to, and the link stays.
"""

from __future__ import annotations

import errno
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
# The write failures that are the machine's, not ours: disk full, file-size limit, quota, I/O.
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO}


class WriteFailedError(OSError):
    """Writing `filename` failed for a reason of the machine (disk full, file-size limit);
    the temporary was removed, so nothing half-written is left. `note` adds context (the
    last good checkpoint)."""

    def __init__(self, code: int, target: str | Path, note: str = "") -> None:
        super().__init__(code, os.strerror(code), str(target))
        self.note = note

    def __str__(self) -> str:
        note = f"; {self.note}" if self.note else ""
        return (
            f"{self.strerror} while writing {self.filename} (nothing half-written was left){note}"
        )


def _diagnose(folder: Path) -> int:
    """Why a writer that reports no errno (torch's "unexpected pos") could not write."""
    try:
        if os.statvfs(folder).f_bavail == 0:
            return errno.ENOSPC
    except (OSError, AttributeError):
        pass
    try:
        import resource

        if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
            return errno.EFBIG
    except (ImportError, OSError, ValueError):
        pass
    return errno.EIO


def write_failure(err: BaseException, target: Path) -> WriteFailedError | None:
    """`err` as a WriteFailedError naming `target`, if it is the machine's write failure:
    an OSError (disk full, file too large, ...), safetensors' "(os error N)" or torch's
    "unexpected pos" / "failed writing" from its zip writer."""
    if isinstance(err, WriteFailedError):
        return err
    if isinstance(err, OSError):
        return WriteFailedError(err.errno, target) if err.errno in WRITE_ERRNOS else None
    text = str(err)
    code = re.search(r"\(os error (\d+)\)", text)
    if code and int(code.group(1)) in WRITE_ERRNOS:
        return WriteFailedError(int(code.group(1)), target)
    if isinstance(err, RuntimeError) and re.search(r"unexpected pos|failed writing", text):
        return WriteFailedError(_diagnose(target.parent), target)
    return None


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


def _through_links(path: str | Path) -> Path:
    """Where a write to `path` lands: the target of a symlink (kept), else `path` itself."""
    path = Path(path).absolute()
    return path.resolve() if path.is_symlink() else path


@contextmanager
def atomic_directory(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temp dir next to `out_dir`; it replaces `out_dir` only if the block succeeds."""
    out = _through_links(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out.parent, re.escape(out.name))  # of killed earlier writers
    tmp = _create(out, _TMP, Path.mkdir)  # mode 0o777 minus the umask
    try:
        yield tmp
        _set_modes(tmp, stat.S_IMODE(tmp.stat().st_mode))
        _replace_directory(tmp, out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = write_failure(err, out)
        if failure is not None and failure is not err:
            raise failure from err
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
    if backup.is_symlink():  # rmtree refuses links: it would leave the backup behind
        backup.unlink()
    else:
        shutil.rmtree(backup, ignore_errors=True)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp path in the target's directory; `os.replace` it into place on success."""
    path = _through_links(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create(path, _TMP, _new_file)
    mode = stat.S_IMODE(tmp.stat().st_mode)  # 0o666 minus the umask
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as err:
        failure = write_failure(err, path)
        if failure is not None and failure is not err:
            raise failure from err
        raise
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
