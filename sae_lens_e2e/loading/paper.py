"""The paper's SAEs (Braun et al. 2024): the table in `paper_saes.yaml`, looked up by type,
layer and selection, or by Hugging Face file or wandb run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from sae_lens_e2e.loading.source_files import E2ESourceError, SourceNotFoundError
from sae_lens_e2e.loading.wandb import DEFAULT_WANDB_PROJECT

# Clean CE of GPT-2 small on the paper's evaluation set (its settings: paper_settings.py).
PAPER_GPT2_CLEAN_CE = 3.139

# A Hugging Face stem's type word -> the table's type.
_STEM_TYPES = {"local": "local", "e2e": "e2e", "downstream": "e2e+ds"}

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
    paper: dict[str, Any] | None = None
    hf_files: tuple[str, ...] = ()  # files in the HF repo holding this run (own name first)

    @property
    def hf(self) -> str | None:
        """The Hugging Face file to load this SAE from, if any holds its run."""
        return self.hf_files[0] if self.hf_files else None

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_pre"

    @property
    def wandb_path(self) -> str:
        return f"{DEFAULT_WANDB_PROJECT}/{self.wandb_run}"


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    text = resources.files("sae_lens_e2e.loading").joinpath("paper_saes.yaml").read_text()
    return yaml.safe_load(text)


def hf_files() -> dict[str, str]:
    """The upload script's mapping: Hugging Face file stem -> the wandb run it holds."""
    return {str(stem): str(run) for stem, run in _table()["hf_files"].items()}


def stem_of(sae_type: str, layer: int, selection: str) -> str:
    """The upload script's file name for a table row (the file may not exist)."""
    word = {v: k for k, v in _STEM_TYPES.items()}[sae_type]
    return f"{word}_{selection}_layer_{layer}"


def _files_for(sae_type: str, layer: int, selection: str, run: str) -> tuple[str, ...]:
    own = stem_of(sae_type, layer, selection)
    holding = [stem for stem, r in hf_files().items() if r == run]
    return tuple(sorted(holding, key=lambda stem: stem != own))


@functools.lru_cache(maxsize=1)
def list_paper_saes() -> tuple[PaperSAE, ...]:
    """The directory in paper_saes.yaml (type x layer x selection -> wandb run / HF files)."""
    return tuple(
        PaperSAE(
            sae_type=r["type"],
            layer=int(r["layer"]),
            selection=r["selection"],
            wandb_run=str(r["wandb_run"]),
            paper=r.get("paper"),
            hf_files=_files_for(r["type"], int(r["layer"]), r["selection"], str(r["wandb_run"])),
        )
        for r in _table()["saes"]
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


def parse_paper_spec(spec: str) -> PaperSAE:
    """'paper:TYPE/LAYER[/SELECTION]', e.g. paper:e2e/6/similar_ce."""
    parts = spec.removeprefix("paper:").split("/")
    if len(parts) not in (2, 3) or not parts[1].isdigit():
        raise E2ESourceError(f"'{spec}': expected paper:TYPE/LAYER[/SELECTION]")
    return find_paper_sae(parts[0], int(parts[1]), *parts[2:])


def paper_sae_for_run(run: str) -> PaperSAE | None:
    """The table row of a wandb run id (or ENTITY/PROJECT/RUN path), preferring the row with
    the paper's Table 2 numbers: a run the table lists twice is one SAE."""
    run_id = run.rsplit("/", 1)[-1]
    rows = sorted(
        (e for e in list_paper_saes() if e.wandb_run == run_id), key=lambda e: e.paper is None
    )
    return rows[0] if rows else None


def paper_sae_for_source(source: dict[str, Any] | None) -> PaperSAE | None:
    """The paper SAE a converted SAE came from, by its recorded `e2e_source` (wandb run, or
    a file of the paper's Hugging Face repo), else None."""
    source = source or {}
    stem = str(source.get("hf_file", "")).removesuffix(".pt")
    if source.get("hf_repo") == _table()["hf_repo"] and stem in hf_files():
        return paper_sae_for_run(hf_files()[stem])
    wandb_run = str(source.get("wandb_run", ""))
    if wandb_run.startswith(f"{DEFAULT_WANDB_PROJECT}/"):
        return paper_sae_for_run(wandb_run)
    return None
