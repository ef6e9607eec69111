"""Fetch the published e2e SAEs (wandb runs, Hugging Face files) and load them through SAELens.

Sources:
- wandb: `entity/project/run_id` (default project sparsify/gpt2); the run's highest
  `samples_<N>.pt` and its `final_config.yaml`, downloaded once into a cache directory.
- Hugging Face: `apollo-research/e2e-saes-gpt2`, `<stem>.pt` + `<stem>.yaml` pairs.
- A local directory of already-downloaded files, for machines without network.

`wandb_converter`, `hf_converter` and `e2e_converter` follow SAELens's converter protocol, so
`SAE.from_pretrained(release, sae_id, converter=...)` loads them with no conversion step.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
import yaml
from huggingface_hub import errors as hf_errors
from sae_lens import SAE
from sae_lens.util import str_to_dtype

from sae_lens_e2e.loading.convert import (
    REFERENCE_CONFIG_FILENAME,
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    ConvertedSAE,
    E2EConversionError,
    checkpoint_step,
    convert_reference_checkpoint,
    write_saelens_folders,
)

DEFAULT_WANDB_PROJECT = "sparsify/gpt2"
DEFAULT_HF_REPO = "apollo-research/e2e-saes-gpt2"
CACHE_ENV = "SAE_LENS_E2E_CACHE"
LOCAL_DIR_ENV = "SAE_LENS_E2E_LOCAL_DIR"
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_CACHE_MARKER = "download.json"


class E2ESourceError(E2EConversionError):
    """A wandb run / Hugging Face file could not be obtained."""


class SourceNotFoundError(E2ESourceError):
    """The run path or file does not exist at the source."""


class NetworkUnavailableError(E2ESourceError):
    """The source cannot be reached (offline, no credentials); use a local directory."""


@dataclass(frozen=True)
class SourceFiles:
    """A reference checkpoint and its config on local disk, plus where they came from."""

    checkpoint: Path
    config: Path
    source: dict[str, Any] = field(default_factory=dict)


def default_cache_dir() -> Path:
    """$SAE_LENS_E2E_CACHE, else $XDG_CACHE_HOME/sae_lens_e2e, else ~/.cache/sae_lens_e2e."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sae_lens_e2e"


def _local_dir(local_dir: str | Path | None) -> Path | None:
    value = local_dir if local_dir is not None else os.environ.get(LOCAL_DIR_ENV)
    return Path(value).expanduser() if value else None


# ---------------------------------------------------------------------------------------------
# wandb
# ---------------------------------------------------------------------------------------------


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
    hint = (
        "; or pass a local directory holding the run's samples_<N>.pt + "
        f"{REFERENCE_CONFIG_FILENAME}"
    )
    if re.search(r"not found|could not find|404|does not exist", text, re.IGNORECASE):
        return SourceNotFoundError(f"wandb run '{run.path}' not found ({text})")
    if type(e).__name__ in {"UsageError", "AuthenticationError"}:
        return NetworkUnavailableError(
            f"wandb needs credentials to read '{run.path}' (wandb login / WANDB_API_KEY): "
            f"{text}{hint}"
        )
    return NetworkUnavailableError(f"cannot reach wandb for run '{run.path}': {text}{hint}")


def _list_run_files(run: WandbRunPath) -> list[Any]:
    try:
        import wandb
    except ImportError as e:  # pragma: no cover - wandb ships with sae-lens
        raise NetworkUnavailableError("the wandb package is not installed") from e
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
    run_cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run.run_id}.", dir=run_cache.parent))
    try:
        ckpt_name = Path(ckpt_file.name).name
        _flatten(_download(ckpt_file, tmp), tmp / ckpt_name)
        _flatten(_download(cfg_file, tmp), tmp / REFERENCE_CONFIG_FILENAME)
        (tmp / _CACHE_MARKER).write_text(json.dumps({"checkpoint": ckpt_name}))
        shutil.rmtree(run_cache, ignore_errors=True)
        os.rename(tmp, run_cache)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
    local = _local_dir(local_dir)
    if local is not None:
        return _from_local_dir(run, local)
    run_cache = Path(cache_dir or default_cache_dir()) / "wandb" / run.path
    cached = None if force_download else _from_cache(run, run_cache)
    return cached or _download_run(run, run_cache)


# ---------------------------------------------------------------------------------------------
# Hugging Face
# ---------------------------------------------------------------------------------------------


def parse_hf_spec(spec: str) -> tuple[str, str]:
    """'hf:ORG/REPO/STEM' or 'hf:STEM' (default repo) -> (repo_id, stem)."""
    s = spec.strip().removeprefix("hf:").strip("/")
    parts = s.split("/")
    if len(parts) == 1:
        parts = [*DEFAULT_HF_REPO.split("/"), parts[0]]
    if len(parts) != 3 or not all(parts):
        raise E2ESourceError(f"'{spec}' is not a Hugging Face file spec; expected ORG/REPO/STEM")
    stem = re.sub(r"\.(pt|yaml)$", "", parts[2])
    return f"{parts[0]}/{parts[1]}", stem


def _hf_download(repo_id: str, filename: str, cache_dir: Path | None, force: bool) -> Path:
    """One file through huggingface_hub (which caches it), with clear errors."""
    try:
        return Path(
            huggingface_hub.hf_hub_download(
                repo_id, filename, cache_dir=cache_dir, force_download=force
            )
        )
    except hf_errors.LocalEntryNotFoundError as e:
        raise NetworkUnavailableError(
            f"cannot reach the Hugging Face hub for {repo_id}/{filename} and it is not cached "
            f"({e}); pass a local directory holding the file"
        ) from e
    except (hf_errors.RepositoryNotFoundError, hf_errors.EntryNotFoundError) as e:
        raise SourceNotFoundError(f"Hugging Face file {repo_id}/{filename} not found") from e
    except (OSError, ConnectionError, hf_errors.HfHubHTTPError) as e:
        raise NetworkUnavailableError(f"download of {repo_id}/{filename} failed: {e}") from e


def fetch_hf_sae(
    repo_id: str,
    stem: str,
    *,
    cache_dir: str | Path | None = None,
    local_dir: str | Path | None = None,
    force_download: bool = False,
) -> SourceFiles:
    """`<stem>.pt` + `<stem>.yaml` from the hub (or `local_dir` when offline)."""
    source = {"hf_repo": repo_id, "hf_file": f"{stem}.pt"}
    local = _local_dir(local_dir)
    if local is not None:
        ckpt, cfg = local / f"{stem}.pt", local / f"{stem}.yaml"
        if not (ckpt.is_file() and cfg.is_file()):
            raise SourceNotFoundError(f"{local}: no {stem}.pt + {stem}.yaml")
        return SourceFiles(ckpt, cfg, {**source, "local_dir": str(local)})
    hf_cache = Path(cache_dir) / "hf" if cache_dir else None
    ckpt = _hf_download(repo_id, f"{stem}.pt", hf_cache, force_download)
    cfg = _hf_download(repo_id, f"{stem}.yaml", hf_cache, force_download)
    return SourceFiles(ckpt, cfg, source)


# ---------------------------------------------------------------------------------------------
# The paper's SAEs
# ---------------------------------------------------------------------------------------------

_TYPE_ALIASES = {
    "local": "local",
    "e2e": "e2e",
    "e2e+ds": "e2e+ds",
    "e2e_ds": "e2e+ds",
    "e2eds": "e2e+ds",
    "downstream": "e2e+ds",
    "e2e+downstream": "e2e+ds",
}


@dataclass(frozen=True)
class PaperSAE:
    """One SAE of the paper: where it lives on wandb and (for some) on Hugging Face."""

    sae_type: str
    layer: int
    selection: str
    wandb_run: str
    hf: str | None = None
    paper: dict[str, Any] | None = None

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_pre"

    @property
    def wandb_path(self) -> str:
        return f"{DEFAULT_WANDB_PROJECT}/{self.wandb_run}"


@functools.lru_cache(maxsize=1)
def list_paper_saes() -> tuple[PaperSAE, ...]:
    """The directory in paper_saes.yaml (type x layer x selection -> wandb run / HF file)."""
    text = resources.files("sae_lens_e2e.loading").joinpath("paper_saes.yaml").read_text()
    rows = yaml.safe_load(text)["saes"]
    return tuple(
        PaperSAE(
            sae_type=r["type"],
            layer=int(r["layer"]),
            selection=r["selection"],
            wandb_run=str(r["wandb_run"]),
            hf=r.get("hf"),
            paper=r.get("paper"),
        )
        for r in rows
    )


def find_paper_sae(sae_type: str, layer: int, selection: str = "similar_ce") -> PaperSAE:
    """Look up a paper SAE; accepts 'downstream'/'e2e_ds' for e2e+ds and 'ce'/'l0'/'alive'."""
    t = _TYPE_ALIASES.get(sae_type.lower())
    sel = selection.lower()
    sel = f"similar_{sel}" if sel in {"ce", "l0", "alive"} else sel
    for entry in list_paper_saes():
        if (entry.sae_type, entry.layer, entry.selection) == (t, layer, sel):
            return entry
    options = sorted({(e.sae_type, e.layer, e.selection) for e in list_paper_saes()})
    raise SourceNotFoundError(
        f"no paper SAE for type={sae_type!r} layer={layer} selection={selection!r}; "
        f"types local/e2e/e2e+ds, layers 2/6/10, selections similar_ce/similar_l0/"
        f"similar_alive (layer 6 also other_seed_1/2). Known: {len(options)} entries"
    )


# ---------------------------------------------------------------------------------------------
# SAELens converters
# ---------------------------------------------------------------------------------------------


def select_sae(converted: Mapping[str, ConvertedSAE], hook: str | None, where: str) -> ConvertedSAE:
    """Pick one SAE of a (possibly multi-position) checkpoint."""
    if hook is None and len(converted) == 1:
        return next(iter(converted.values()))
    if hook in converted:
        return converted[hook]
    raise E2EConversionError(
        f"{where}: holds SAEs at {sorted(converted)}; "
        + ("name one as '<id>/<hook_name>'" if hook is None else f"none at '{hook}'")
    )


def _finalize(
    converted: ConvertedSAE, device: str, cfg_overrides: Mapping[str, Any] | None
) -> tuple[dict[str, Any], dict[str, torch.Tensor], None]:
    """Apply SAELens's device / dtype overrides; the e2e runs store no feature sparsity."""
    cfg = {**converted[0], "device": device, **(cfg_overrides or {})}
    dtype = str_to_dtype(cfg["dtype"])
    sd = {k: v.to(device=cfg["device"], dtype=dtype) for k, v in converted[1].items()}
    return cfg, sd, None


def _convert_one(
    files: SourceFiles,
    hook: str | None,
    where: str,
    device: str,
    cfg_overrides: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], None]:
    """Convert fetched run files and return the one SAE a converter call asked for."""
    converted = convert_reference_checkpoint(files.checkpoint, files.config, source=files.source)
    return _finalize(select_sae(converted, hook, where), device, cfg_overrides)


def _split_folder(folder_name: str) -> tuple[str, str | None]:
    """'<id>' or '<id>/<hook_name>'."""
    head, _, hook = folder_name.partition("/")
    return head, hook or None


def wandb_converter(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
    *,
    local_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], None]:
    """SAELens converter: release 'ENTITY/PROJECT', sae_id 'RUN_ID' or 'RUN_ID/HOOK_NAME'."""
    run_id, hook = _split_folder(folder_name)
    run_path = f"{repo_id.removeprefix('wandb:')}/{run_id}"
    files = fetch_wandb_run(
        run_path, cache_dir=cache_dir, local_dir=local_dir, force_download=force_download
    )
    return _convert_one(files, hook, f"wandb run {run_path}", device, cfg_overrides)


def hf_converter(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
    *,
    local_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], None]:
    """SAELens converter: release 'apollo-research/e2e-saes-gpt2', sae_id '<stem>[/<hook>]'."""
    stem, hook = _split_folder(folder_name)
    repo = repo_id.removeprefix("hf:")
    files = fetch_hf_sae(
        repo, stem, cache_dir=cache_dir, local_dir=local_dir, force_download=force_download
    )
    return _convert_one(files, hook, f"{repo}/{stem}.pt", device, cfg_overrides)


def e2e_converter(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], None]:
    """Either source: release 'hf:ORG/REPO' or the default HF repo -> hub, else wandb."""
    is_hf = repo_id.startswith("hf:") or repo_id == DEFAULT_HF_REPO
    convert = hf_converter if is_hf else wandb_converter
    return convert(repo_id, folder_name, device, force_download, cfg_overrides)


def load_e2e_sae(
    sae_type: str,
    layer: int,
    selection: str = "similar_ce",
    *,
    source: str = "auto",
    device: str = "cpu",
    dtype: str = "float32",
    force_download: bool = False,
    local_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[SAE, dict[str, Any], torch.Tensor | None]:
    """A paper SAE as (sae, cfg_dict, log_sparsity) via SAE.from_pretrained_with_cfg_and_sparsity.

    source: 'hf', 'wandb' or 'auto' (Hugging Face when the paper SAE has a file there: it needs
    no wandb credentials). log_sparsity is None: the e2e checkpoints store no feature density.
    """
    entry = find_paper_sae(sae_type, layer, selection)
    if source == "auto":
        source = "hf" if entry.hf else "wandb"
    kwargs = {"local_dir": local_dir, "cache_dir": cache_dir}
    if source == "hf":
        if not entry.hf:
            raise SourceNotFoundError(f"{entry} has no Hugging Face copy; use source='wandb'")
        release, sae_id = DEFAULT_HF_REPO, f"{entry.hf}/{entry.hook_name}"
        converter = functools.partial(hf_converter, **kwargs)
    elif source == "wandb":
        release, sae_id = DEFAULT_WANDB_PROJECT, f"{entry.wandb_run}/{entry.hook_name}"
        converter = functools.partial(wandb_converter, **kwargs)
    else:
        raise ValueError(f"source must be 'auto', 'hf' or 'wandb', got {source!r}")
    return SAE.from_pretrained_with_cfg_and_sparsity(
        release, sae_id, device=device, dtype=dtype, force_download=force_download,
        converter=converter,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Resolving CLI sources, pushing to the hub
# ---------------------------------------------------------------------------------------------


def resolve_source(
    spec: str,
    *,
    config: str | Path | None = None,
    cache_dir: str | Path | None = None,
    local_dir: str | Path | None = None,
    force_download: bool = False,
) -> SourceFiles:
    """'wandb:...', 'hf:...', 'paper:TYPE/LAYER/SELECTION' or a local .pt path -> local files."""
    kw = {"cache_dir": cache_dir, "local_dir": local_dir, "force_download": force_download}
    if spec.startswith("paper:"):
        parts = spec.removeprefix("paper:").split("/")
        if len(parts) not in (2, 3) or not parts[1].isdigit():
            raise E2ESourceError(f"'{spec}': expected paper:TYPE/LAYER[/SELECTION]")
        entry = find_paper_sae(parts[0], int(parts[1]), *parts[2:])
        return fetch_wandb_run(entry.wandb_path, **kw)
    if spec.startswith("wandb:"):
        return fetch_wandb_run(spec, **kw)
    if spec.startswith("hf:"):
        return fetch_hf_sae(*parse_hf_spec(spec), **kw)
    return _local_checkpoint(Path(spec), config)


def _local_checkpoint(ckpt: Path, config: str | Path | None) -> SourceFiles:
    """A .pt path; its config defaults to final_config.yaml or <stem>.yaml beside it."""
    if not ckpt.is_file():
        raise E2EConversionError(f"{ckpt}: checkpoint file not found")
    if config is None:
        candidates = [ckpt.parent / REFERENCE_CONFIG_FILENAME, ckpt.with_suffix(".yaml")]
        config = next((c for c in candidates if c.is_file()), None)
        if config is None:
            raise E2EConversionError(
                f"{ckpt}: no config given and neither {candidates[0].name} nor "
                f"{candidates[1].name} is beside it; pass --config"
            )
    return SourceFiles(ckpt, Path(config), {"path": str(ckpt.absolute())})


def convert_source(
    spec: str,
    out_dir: str | Path,
    *,
    config: str | Path | None = None,
    cache_dir: str | Path | None = None,
    local_dir: str | Path | None = None,
    force_download: bool = False,
    model_name: str | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Fetch (if remote) and convert any source into `out_dir/<hook_name>/` folders."""
    files = resolve_source(
        spec, config=config, cache_dir=cache_dir, local_dir=local_dir,
        force_download=force_download,
    )  # fmt: skip
    converted = convert_reference_checkpoint(
        files.checkpoint, files.config, source=files.source, model_name=model_name
    )
    return write_saelens_folders(converted, out_dir, overwrite=overwrite)


def push_to_hub(
    sae_dir: str | Path,
    repo_id: str,
    *,
    path_in_repo: str | None = None,
    private: bool | None = None,
    token: str | None = None,
) -> str:
    """Upload a SAELens folder so that `SAE.from_pretrained(repo_id, sae_id)` reads it as is.

    Returns the sae_id (the folder inside the repo; default: the folder's name, the hook name).
    """
    sae_dir = Path(sae_dir)
    if not (sae_dir / SAE_CFG_FILENAME).is_file() or not (sae_dir / SAE_WEIGHTS_FILENAME).is_file():
        raise E2EConversionError(f"{sae_dir}: not a SAELens folder (cfg.json + weights)")
    SAE.load_from_disk(sae_dir)  # refuse to publish something stock SAELens cannot load
    sae_id = (path_in_repo or sae_dir.name).strip("/")
    try:
        api = huggingface_hub.HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=sae_dir,
            path_in_repo=sae_id,
            allow_patterns=[SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, "sparsity.safetensors"],
            commit_message=f"Add SAE {sae_id} (converted by sae_lens_e2e)",
        )
    except (OSError, hf_errors.HfHubHTTPError) as e:
        raise NetworkUnavailableError(f"upload to {repo_id} failed: {e}") from e
    return sae_id
