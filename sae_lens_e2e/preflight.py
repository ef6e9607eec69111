"""Checks of the environment before any slow work: can we write there, is the device there, can
we reach the network. Each failure is a one-line ValueError naming the path or setting and the
fix, instead of a crash after minutes of training (or half a minute of network retries)."""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

HF_ENDPOINT_DEFAULT = "https://huggingface.co"
WANDB_BASE_URL_DEFAULT = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 3.0


def check_writable(path: str | Path, what: str, fix: str) -> None:
    """`path` (a folder or file to be created, or existing) can be written: its nearest
    existing ancestor is a writable folder. Checked with access(2), which also sees read-only
    mounts, so nothing is created."""
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{what} {path}: {existing} is a file, not a folder; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: cannot write to {existing} (permission denied); {fix}")


def check_device(device: str | None, option: str) -> None:
    """A CUDA / MPS device that is not there, named with the option that asked for it."""
    if not device or device in ("auto", "cpu"):
        return
    import torch

    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        why = (
            "this torch is a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
        )
        raise ValueError(f"{option}={device}: CUDA is not available ({why}); use cpu")
    if kind == "cuda" and ":" in device:
        index, count = int(device.split(":")[1]), torch.cuda.device_count()
        if index >= count:
            raise ValueError(f"{option}={device}: only {count} CUDA device(s) here")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{option}={device}: MPS is not available here; use cpu")


def resolve_device(device: str) -> str:
    """`auto` picks CUDA when there is one."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if a TCP connection to `url`'s host opens within `timeout`, else why not.

    Asked before a download so that an offline machine fails at once, instead of after the
    clients' own retries (huggingface_hub: about half a minute of "Retrying in ...s").
    """
    parsed = urlparse(url)
    host = parsed.hostname or url
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        if isinstance(err, socket.gaierror) or err.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            reason = f"no network ({reason})"
        return f"cannot reach {host}: {reason}"
    return None


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or HF_ENDPOINT_DEFAULT


def hub_offline_reason() -> str | None:
    """Why the Hugging Face hub cannot be used right now (HF_HUB_OFFLINE, or no route)."""
    import huggingface_hub

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    return unreachable(hf_endpoint())


def go_offline_if_hub_unreachable() -> str | None:
    """If the hub cannot be reached, put the Hugging Face libraries in offline mode (the cache
    only), so a missing model or dataset fails at once rather than after retries. Returns the
    reason, or None when the hub is reachable or offline mode was already on."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return None
    reason = unreachable(hf_endpoint())
    if reason is None:
        return None
    os.environ["HF_HUB_OFFLINE"] = "1"  # read by libraries imported from now on
    import sys

    for name, attr in (
        ("huggingface_hub.constants", "HF_HUB_OFFLINE"),
        ("datasets.config", "HF_HUB_OFFLINE"),
    ):
        if name in sys.modules:
            setattr(sys.modules[name], attr, True)
    return reason


def available_memory(device: str | None) -> tuple[int, str] | None:
    """(bytes free now, what they are) on `device`: the GPU's free memory for CUDA, the
    machine's available RAM for the CPU; None where it cannot be known here."""
    kind = (device or "cpu").split(":")[0]
    if kind == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free, f"GPU memory free on {device}"
    if kind != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "RAM available"
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available), "RAM available"
    except ImportError:
        return None


def usable_cpus() -> list[int] | None:
    """The CPUs this process may run on (its affinity), where the OS says."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    return sorted(getaffinity(0)) if getaffinity else None


def _cpu_jiffies(cpus: list[int]) -> tuple[int, int] | None:
    """(busy, total) jiffies of `cpus` since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            lines = [line.split() for line in f if line.startswith("cpu")]
    except OSError:
        return None
    busy = total = 0
    wanted = {f"cpu{i}" for i in cpus}
    for fields in lines:
        if fields[0] in wanted:
            values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            total += sum(values)
            busy += sum(values) - values[3] - values[4]
    return (busy, total) if total else None


def busy_cores(interval: float = 0.3) -> float | None:
    """How many of this process's CPUs other processes keep busy right now (this one sleeps
    while it measures): /proc/stat over `interval` seconds, else the 1-minute load average;
    None where neither exists."""
    cpus = usable_cpus()
    before = _cpu_jiffies(cpus) if cpus else None
    if before is not None:
        time.sleep(interval)
        after = _cpu_jiffies(cpus)
        if after is not None and after[1] > before[1]:
            return len(cpus) * (after[0] - before[0]) / (after[1] - before[1])
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def fair_threads(requested: int | None = None) -> tuple[int, str]:
    """Torch CPU threads for a shared machine, and why: never more than the cores idle now
    (with one other CPU-bound job on 2 cores, 2 threads wait on each other at every op and
    ran the quickstart's LM 17x slower than 1 thread); `requested` or OMP_NUM_THREADS win."""
    import torch

    if requested:
        return requested, "--threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    cpus = usable_cpus()
    n_cpus = len(cpus) if cpus else os.cpu_count() or 1
    busy = busy_cores()
    if busy is None:
        return torch.get_num_threads(), "torch's default"
    idle = max(1, min(n_cpus, round(n_cpus - busy)))
    threads = min(torch.get_num_threads(), idle)
    return threads, f"{busy:.1f} of {n_cpus} cores busy with other processes"
