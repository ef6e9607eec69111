"""The paper's SAEs (Braun et al. 2024): the table in `paper_saes.yaml`, looked up by type,
layer and selection.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from sae_lens_e2e.loading.source_files import SourceNotFoundError
from sae_lens_e2e.loading.wandb import DEFAULT_WANDB_PROJECT

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
