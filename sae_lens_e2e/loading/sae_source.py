"""Any SAE by a SOURCE string, loaded through SAELens, for `sae-lens-e2e evaluate`.

SOURCE: a SAELens folder (cfg.json + weights), `hf:ORG/REPO/STEM`, `wandb:ENTITY/PROJECT/RUN`,
`paper:TYPE/LAYER[/SELECTION]`, or a SAELens `RELEASE/SAE_ID` (a release of SAELens's
pretrained table, or a Hugging Face repo `ORG/REPO/SAE_ID`). Each loaded SAE remembers the
paper SAE it is, when it is one, so the paper's numbers can be shown beside it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import errors as hf_errors
from sae_lens import SAE
from safetensors import SafetensorError

from sae_lens_e2e.loading.huggingface import parse_hf_spec
from sae_lens_e2e.loading.paper import (
    PaperSAE,
    paper_sae_for_source,
    parse_paper_spec,
)
from sae_lens_e2e.loading.reference_format import SAE_CFG_FILENAME
from sae_lens_e2e.loading.sources import hf_converter, load_e2e_sae, wandb_converter
from sae_lens_e2e.loading.wandb import parse_wandb_path
from sae_lens_e2e.names import check_hook_name
from sae_lens_e2e.sae_files import load_sae_folder


@dataclass
class SourceSAE:
    """One loaded SAE, where it came from, and the paper SAE it is (if any)."""

    spec: str
    sae: Any
    hook: str
    paper: PaperSAE | None


# What SAELens and the hub raise for a SOURCE that cannot be fetched or read.
_LOAD_ERRORS = (
    ValueError,
    OSError,
    KeyError,
    RuntimeError,
    SafetensorError,
    hf_errors.EntryNotFoundError,
)


class SourceUnavailableError(ValueError):
    """A SOURCE cannot be parsed, fetched or loaded; the message is one line naming it."""


def _one_line(err: BaseException) -> str:
    return re.sub(r"\s+", " ", str(err)).strip() or type(err).__name__


def _split_release(spec: str) -> tuple[str, str]:
    """'RELEASE/SAE_ID' (a SAELens release) or 'ORG/REPO/SAE_ID' (a hub repo)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    head, _, rest = spec.partition("/")
    if head in get_pretrained_saes_directory() and rest:
        return head, rest
    parts = spec.split("/", 2)
    if len(parts) == 3 and all(parts):
        return f"{parts[0]}/{parts[1]}", parts[2]
    raise SourceUnavailableError(
        f"SOURCE {spec!r} is not a SAELens folder (no {SAE_CFG_FILENAME}), not hf:/wandb:/paper:, "
        "and not RELEASE/SAE_ID of a known SAELens release"
    )


def _load(spec: str, device: str, kw: dict[str, Any]) -> tuple[Any, PaperSAE | None]:
    """The SAE of one SOURCE and, when known here, the paper SAE it is."""
    if Path(spec).is_dir():
        if not (Path(spec) / SAE_CFG_FILENAME).is_file():
            raise SourceUnavailableError(f"SOURCE {spec!r}: folder has no {SAE_CFG_FILENAME}")
        sae = load_sae_folder(spec, device=device)
    elif spec.startswith("paper:"):
        entry = parse_paper_spec(spec)
        sae = load_e2e_sae(entry.sae_type, entry.layer, entry.selection, device=device, **kw)[0]
    elif spec.startswith("hf:"):
        repo, stem = parse_hf_spec(spec)
        converter = functools.partial(hf_converter, **kw)
        sae = SAE.from_pretrained(repo, stem, device=device, converter=converter)
    elif spec.startswith("wandb:"):
        run = parse_wandb_path(spec)
        converter = functools.partial(wandb_converter, **kw)
        sae = SAE.from_pretrained(
            f"{run.entity}/{run.project}", run.run_id, device=device, converter=converter
        )
    else:
        sae = SAE.from_pretrained(*_split_release(spec), device=device)
    source = getattr(sae.cfg.metadata, "e2e_source", None)
    return sae, paper_sae_for_source(source if isinstance(source, dict) else None)


def load_source(
    spec: str,
    *,
    device: str = "cpu",
    local_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> SourceSAE:
    """Load one SOURCE; any failure (bad spec, not found, offline, bad file) is a one-line
    `SourceUnavailableError` naming the SOURCE."""
    kw = {"local_dir": local_dir, "cache_dir": cache_dir}
    try:
        sae, paper = _load(spec, device, kw)
    except SourceUnavailableError:
        raise
    except _LOAD_ERRORS as err:
        raise SourceUnavailableError(f"cannot load SOURCE {spec!r}: {_one_line(err)}") from err
    hook = sae.cfg.metadata.hook_name
    if not hook:
        raise SourceUnavailableError(f"SOURCE {spec!r}: the SAE records no metadata.hook_name")
    check_hook_name(hook, f"SOURCE {spec!r}: metadata.hook_name", SourceUnavailableError)
    return SourceSAE(spec, sae, hook, paper)
