"""Load the published e2e SAEs through SAELens, from any source.

Sources: `wandb:entity/project/run_id`, `hf:repo/stem`, `paper:TYPE/LAYER[/SELECTION]` or a
local `.pt`. `wandb_converter`, `hf_converter` and `e2e_converter` follow SAELens's converter
protocol, so `SAE.from_pretrained(release, sae_id, converter=...)` loads them with no
conversion step.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from sae_lens.util import str_to_dtype

from sae_lens_e2e.loading.convert import (
    ConvertedSAE,
    check_destination,
    convert_reference_checkpoint,
    write_saelens_folders,
)
from sae_lens_e2e.loading.huggingface import DEFAULT_HF_REPO, fetch_hf_sae, parse_hf_spec
from sae_lens_e2e.loading.paper import find_paper_sae, parse_paper_spec
from sae_lens_e2e.loading.reference_format import (
    REFERENCE_CONFIG_FILENAME,
    E2EConversionError,
    checkpoint_step,
    file_sha256,
    load_reference_config,
)
from sae_lens_e2e.loading.source_files import SourceFiles, SourceNotFoundError
from sae_lens_e2e.loading.wandb import DEFAULT_WANDB_PROJECT, fetch_wandb_run, parse_wandb_path
from sae_lens_e2e.names import MAX_NAME, is_folder_name


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
    """'wandb:...', 'hf:...', 'paper:TYPE/LAYER/SELECTION' or a local .pt path -> local files.

    A paper SAE comes from the Hugging Face file that holds its run when there is one (as
    `load_e2e_sae` does), else from wandb."""
    kw = {"cache_dir": cache_dir, "local_dir": local_dir, "force_download": force_download}
    if spec.startswith("paper:"):
        entry = parse_paper_spec(spec)
        if entry.hf:  # no wandb credentials needed
            return fetch_hf_sae(DEFAULT_HF_REPO, entry.hf, **kw)
        return fetch_wandb_run(entry.wandb_path, **kw)
    if spec.startswith("wandb:"):
        return fetch_wandb_run(spec, **kw)
    if spec.startswith("hf:"):
        return fetch_hf_sae(*parse_hf_spec(spec), **kw)
    return _local_checkpoint(Path(spec), config)


def source_name(spec: str, config: str | Path | None = None) -> str:
    """The folder the CLI converts `spec` into under --out, named by what identifies the
    source, so that two runs never share one: the wandb run id (also for paper:), the hub
    file stem; for a local checkpoint its file stem, unless that is the reference's generic
    `samples_<N>` (every run's final file is samples_400000.pt): then the run name in its
    final_config.yaml, else the folder holding it, else a short hash of its content."""
    if spec.startswith("paper:"):
        return parse_paper_spec(spec).wandb_run
    if spec.startswith("wandb:"):
        return parse_wandb_path(spec).run_id
    if spec.startswith("hf:"):
        return parse_hf_spec(spec)[1]
    files = _local_checkpoint(Path(spec), config)
    if checkpoint_step(files.checkpoint.name) is None and is_folder_name(files.checkpoint.stem):
        return files.checkpoint.stem
    raw = load_reference_config(files.config).raw
    run = raw.get("wandb_run_name")
    candidates = [
        f"{raw.get('wandb_run_name_prefix') or ''}{run}" if isinstance(run, str) and run else "",
        files.checkpoint.absolute().parent.name,
    ]
    for candidate in candidates:
        name = re.sub(r"[^A-Za-z0-9_.+=-]+", "_", candidate).strip("._")[:MAX_NAME]
        if is_folder_name(name):
            return name
    return "sha256-" + file_sha256(files.checkpoint)[:12]


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
    check_destination(Path(out_dir).absolute(), overwrite)  # before any download
    files = resolve_source(
        spec, config=config, cache_dir=cache_dir, local_dir=local_dir,
        force_download=force_download,
    )  # fmt: skip
    converted = convert_reference_checkpoint(
        files.checkpoint, files.config, source=files.source, model_name=model_name
    )
    return write_saelens_folders(converted, out_dir, overwrite=overwrite)
