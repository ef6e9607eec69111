"""One-line messages for the errors a user can act on (bad input, files, devices, network,
a diverged run); anything else is a bug and keeps its traceback."""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator

from sae_lens_e2e.atomic import WriteFailedError

# Raised (or chained) by huggingface_hub / transformers / datasets / requests / httpx when the
# hub cannot be reached and the files are not cached.
_OFFLINE_ERRORS = {
    "LocalEntryNotFoundError",
    "OfflineModeIsEnabled",
    "ConnectionError",
    "ConnectError",
    "ConnectTimeout",
    "NameResolutionError",
    "MaxRetryError",
}
_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}
_FULL_HINTS = {
    errno.ENOSPC: "free some space or choose another location",
    errno.EDQUOT: "the disk quota is used up: free some space or choose another location",
    errno.EFBIG: "a file-size limit (ulimit -f) is below the file's size: raise it",
}


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _one_line(err: BaseException) -> str:
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def _non_finite(err: BaseException) -> bool:
    # Only if training ran (the module is loaded); the CLI itself never imports torch for this.
    checkpoints = sys.modules.get("sae_lens_e2e.training.checkpoints")
    return checkpoints is not None and isinstance(err, checkpoints.NonFiniteLossError)


def user_message(err: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug."""
    if _non_finite(err):
        return f"training stopped: {_one_line(err)}"
    if any(type(e).__name__ in _OFFLINE_ERRORS for e in _chain(err)):
        return (
            f"{_first_line(err)} - the Hugging Face hub cannot be reached and the files are not "
            "in the local cache: connect once to download them (and unset HF_HUB_OFFLINE if "
            "set), or give a local path"
        )
    if isinstance(err, WriteFailedError):  # disk full, file-size limit: the file and the cause
        hint = _FULL_HINTS.get(err.errno)
        return f"{err}" + (f"; {hint}" if hint else "")
    if isinstance(err, OSError) and err.filename is not None:
        hint = "; choose a writable location or fix its permissions"
        if err.errno == errno.ENOSPC:
            hint = "; free some space or choose another location"
        elif err.errno not in _WRITE_ERRNOS:
            hint = ""
        return f"{err.strerror or _first_line(err)}: {err.filename}{hint}"
    if isinstance(err, ValueError | OSError):
        return _one_line(err)
    return None
