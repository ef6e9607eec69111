"""Hugging Face: fetch the paper's files from `apollo-research/e2e-saes-gpt2`, and push
converted SAELens folders to the hub.
"""

from __future__ import annotations

import re
from pathlib import Path

import huggingface_hub
from huggingface_hub import errors as hf_errors

from sae_lens_e2e.loading.paper import hf_files
from sae_lens_e2e.loading.reference_format import (
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    E2EConversionError,
)
from sae_lens_e2e.loading.source_files import (
    E2ESourceError,
    NetworkUnavailableError,
    SourceFiles,
    SourceNotFoundError,
    local_dir_hint,
    resolve_local_dir,
)
from sae_lens_e2e.loading.wandb import DEFAULT_WANDB_PROJECT
from sae_lens_e2e.names import is_folder_name
from sae_lens_e2e.preflight import hub_offline_reason
from sae_lens_e2e.sae_files import load_sae_folder

DEFAULT_HF_REPO = "apollo-research/e2e-saes-gpt2"


def parse_hf_spec(spec: str) -> tuple[str, str]:
    """'hf:ORG/REPO/STEM' or 'hf:STEM' (default repo) -> (repo_id, stem)."""
    s = spec.strip().removeprefix("hf:").strip("/")
    parts = s.split("/")
    if len(parts) == 1:
        parts = [*DEFAULT_HF_REPO.split("/"), parts[0]]
    if len(parts) == 3:
        parts[2] = re.sub(r"\.(pt|yaml)$", "", parts[2])
    # The stem names the conversion's folder and the files read: a plain file name only.
    if len(parts) != 3 or not all(is_folder_name(p) for p in parts):
        raise E2ESourceError(f"'{spec}' is not a Hugging Face file spec; expected ORG/REPO/STEM")
    return f"{parts[0]}/{parts[1]}", parts[2]


def _hf_download(repo_id: str, filename: str, cache_dir: Path | None, force: bool) -> Path:
    """One file through huggingface_hub (which caches it), with clear errors. Offline
    (HF_HUB_OFFLINE, or no route to the hub) only the cache is asked, so that this fails at
    once instead of after huggingface_hub's retries."""
    offline = hub_offline_reason()
    try:
        return Path(
            huggingface_hub.hf_hub_download(
                repo_id,
                filename,
                cache_dir=cache_dir,
                force_download=force and offline is None,
                local_files_only=offline is not None,
            )
        )
    except hf_errors.LocalEntryNotFoundError as e:
        raise NetworkUnavailableError(
            f"{repo_id}/{filename} is not in the download cache and "
            f"{offline or 'the Hugging Face hub cannot be reached'}; {local_dir_hint(filename)}"
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
    """`<stem>.pt` + `<stem>.yaml` from the hub (or `local_dir` when offline); the paper's
    files also record the wandb run they hold."""
    source = {"hf_repo": repo_id, "hf_file": f"{stem}.pt"}
    if repo_id == DEFAULT_HF_REPO and stem in hf_files():
        source["wandb_run"] = f"{DEFAULT_WANDB_PROJECT}/{hf_files()[stem]}"
    local = resolve_local_dir(local_dir)
    if local is not None:
        ckpt, cfg = local / f"{stem}.pt", local / f"{stem}.yaml"
        if not (ckpt.is_file() and cfg.is_file()):
            raise SourceNotFoundError(f"{local}: no {stem}.pt + {stem}.yaml")
        return SourceFiles(ckpt, cfg, {**source, "local_dir": str(local)})
    hf_cache = Path(cache_dir) / "hf" if cache_dir else None
    ckpt = _hf_download(repo_id, f"{stem}.pt", hf_cache, force_download)
    cfg = _hf_download(repo_id, f"{stem}.yaml", hf_cache, force_download)
    return SourceFiles(ckpt, cfg, source)


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
    load_sae_folder(sae_dir)  # refuse to publish something stock SAELens cannot load
    sae_id = (path_in_repo or sae_dir.name).strip("/")
    if not all(is_folder_name(part) for part in sae_id.split("/")):
        raise E2EConversionError(f"{sae_id!r} is not a folder path for the hub repo")
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
