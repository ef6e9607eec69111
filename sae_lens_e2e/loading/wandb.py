"""Fetch a reference run from wandb: `entity/project/run_id` (default project sparsify/gpt2).

The run's highest `samples_<N>.pt` and its `final_config.yaml` are downloaded once into a cache
directory; a local directory of already-downloaded files serves machines without network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_lens_e2e.atomic import atomic_directory
from sae_lens_e2e.cache import default_cache_dir
from sae_lens_e2e.loading.reference_format import REFERENCE_CONFIG_FILENAME, checkpoint_step
from sae_lens_e2e.loading.source_files import (
    E2ESourceError,
    NetworkUnavailableError,
    SourceFiles,
    SourceNotFoundError,
    local_dir_hint,
    resolve_local_dir,
)
from sae_lens_e2e.preflight import WANDB_BASE_URL_DEFAULT, unreachable

DEFAULT_WANDB_PROJECT = "sparsify/gpt2"
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_CACHE_MARKER = "download.json"


@dataclass(frozen=True)
class WandbRunPath:
    entity: str
    project: str
    run_id: str

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}/{self.run_id}"


def parse_wandb_path(spec: str) -> WandbRunPath:
    """'wandb:sparsify/gpt2/d8vgjnyc', a run URL, or a bare run id (project sparsify/gpt2)."""
    s = spec.strip().removeprefix("wandb:")
    s = re.sub(r"^https?://(www\.)?wandb\.ai/", "", s).strip("/")
    parts = [p for p in s.split("/") if p and p != "runs"]
    if len(parts) == 1:
        parts = [*DEFAULT_WANDB_PROJECT.split("/"), parts[0]]
    if len(parts) != 3 or not all(_RUN_ID_RE.match(p) for p in parts):
        raise E2ESourceError(
            f"'{spec}' is not a wandb run path; expected ENTITY/PROJECT/RUN_ID "
            f"(e.g. {DEFAULT_WANDB_PROJECT}/tvj2owza) or a bare run id"
        )
    return WandbRunPath(*parts)


def _find_run_files(directory: Path) -> tuple[Path, Path] | None:
    """Highest samples_<N>.pt and final_config.yaml in a directory, if both are there."""
    config = directory / REFERENCE_CONFIG_FILENAME
    steps = [(checkpoint_step(p.name), p) for p in directory.glob("samples_*.pt")]
    steps = [(n, p) for n, p in steps if n is not None]
    if not config.is_file() or not steps:
        return None
    return max(steps)[1], config


def _from_local_dir(run: WandbRunPath, local_dir: Path) -> SourceFiles:
    """Offline: `local_dir`, `local_dir/<run_id>` or `local_dir/<entity>/<project>/<run_id>`."""
    for d in (local_dir / run.entity / run.project / run.run_id, local_dir / run.run_id, local_dir):
        found = _find_run_files(d)
        if found:
            return SourceFiles(found[0], found[1], {"wandb_run": run.path, "local_dir": str(d)})
    raise SourceNotFoundError(
        f"{local_dir}: no samples_<N>.pt + {REFERENCE_CONFIG_FILENAME} for run {run.path} "
        f"(looked in {local_dir}/{run.path}, {local_dir}/{run.run_id} and {local_dir})"
    )


def _from_cache(run: WandbRunPath, run_cache: Path) -> SourceFiles | None:
    marker = run_cache / _CACHE_MARKER
    if not marker.is_file():
        return None
    info = json.loads(marker.read_text())
    ckpt, cfg = run_cache / info["checkpoint"], run_cache / REFERENCE_CONFIG_FILENAME
    if not (ckpt.is_file() and cfg.is_file()):
        return None
    return SourceFiles(ckpt, cfg, {"wandb_run": run.path, "wandb_file": info["checkpoint"]})


def _wandb_error(run: WandbRunPath, e: Exception) -> E2ESourceError:
    """Tell apart 'no such run' from 'cannot reach wandb' in wandb's exceptions."""
    text = str(e)
    hint = f"; or {_offline_hint()}"
    if re.search(r"not found|could not find|404|does not exist", text, re.IGNORECASE):
        return SourceNotFoundError(f"wandb run '{run.path}' not found ({text})")
    if type(e).__name__ in {"UsageError", "AuthenticationError"}:
        return NetworkUnavailableError(
            f"wandb needs credentials to read '{run.path}' (wandb login / WANDB_API_KEY): "
            f"{text}{hint}"
        )
    return NetworkUnavailableError(f"cannot reach wandb for run '{run.path}': {text}{hint}")


def _offline_hint() -> str:
    return local_dir_hint(f"the run's samples_<N>.pt + {REFERENCE_CONFIG_FILENAME}")


def _list_run_files(run: WandbRunPath) -> list[Any]:
    try:
        import wandb
    except ImportError as e:  # pragma: no cover - wandb ships with sae-lens
        raise NetworkUnavailableError("the wandb package is not installed") from e
    # Ask the network first: offline, wandb.Api() reports missing credentials (or retries).
    reason = unreachable(os.environ.get("WANDB_BASE_URL") or WANDB_BASE_URL_DEFAULT)
    if reason is not None:
        raise NetworkUnavailableError(
            f"{reason}; to convert wandb run '{run.path}' offline, {_offline_hint()}"
        )
    try:
        return list(wandb.Api().run(run.path).files())
    except Exception as e:
        raise _wandb_error(run, e) from e


def _pick_run_files(run: WandbRunPath, files: list[Any]) -> tuple[Any, Any]:
    """The run's final_config.yaml and highest samples_<N>.pt."""
    names = [f.name for f in files]
    ckpts = [(checkpoint_step(f.name), f) for f in files if checkpoint_step(f.name) is not None]
    configs = [f for f in files if f.name.rsplit("/", 1)[-1] == REFERENCE_CONFIG_FILENAME]
    if not ckpts or not configs:
        raise SourceNotFoundError(
            f"wandb run '{run.path}' has no samples_<N>.pt and {REFERENCE_CONFIG_FILENAME} "
            f"(files: {names[:20]})"
        )
    return max(ckpts, key=lambda t: t[0])[1], configs[0]


def _download(file: Any, root: Path) -> Path:
    """Download one wandb file; refuse names that would land outside `root`."""
    target = (root / file.name).resolve()
    if root.resolve() not in target.parents:
        raise E2ESourceError(f"refusing wandb file name outside the cache: {file.name!r}")
    try:
        file.download(root=str(root), replace=True, exist_ok=True).close()
    except Exception as e:
        raise NetworkUnavailableError(f"download of '{file.name}' from wandb failed: {e}") from e
    if not target.is_file():
        raise E2ESourceError(f"wandb download of '{file.name}' produced no file")
    return target


def _flatten(path: Path, target: Path) -> None:
    """Run files may sit in sub-folders on wandb; the cache keeps them side by side."""
    if path.resolve() != target.resolve():
        shutil.move(str(path), target)


def _download_run(run: WandbRunPath, run_cache: Path) -> SourceFiles:
    """Download into a temp dir and rename it into the cache, so the cache is never partial."""
    ckpt_file, cfg_file = _pick_run_files(run, _list_run_files(run))
    ckpt_name = Path(ckpt_file.name).name
    with atomic_directory(run_cache) as tmp:
        _flatten(_download(ckpt_file, tmp), tmp / ckpt_name)
        _flatten(_download(cfg_file, tmp), tmp / REFERENCE_CONFIG_FILENAME)
        (tmp / _CACHE_MARKER).write_text(json.dumps({"checkpoint": ckpt_name}))
    return SourceFiles(
        run_cache / ckpt_name,
        run_cache / REFERENCE_CONFIG_FILENAME,
        {"wandb_run": run.path, "wandb_file": ckpt_name},
    )


def fetch_wandb_run(
    run_path: str,
    *,
    cache_dir: str | Path | None = None,
    local_dir: str | Path | None = None,
    force_download: bool = False,
) -> SourceFiles:
    """The run's final checkpoint + config: from `local_dir`, the cache, or the wandb API."""
    run = parse_wandb_path(run_path)
    local = resolve_local_dir(local_dir)
    if local is not None:
        return _from_local_dir(run, local)
    run_cache = Path(cache_dir or default_cache_dir()) / "wandb" / run.path
    cached = None if force_download else _from_cache(run, run_cache)
    return cached or _download_run(run, run_cache)
