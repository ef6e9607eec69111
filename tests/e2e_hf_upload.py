"""The paper's Hugging Face files, built the way they were actually made, and a hub cache.

`write_uploaded_pair` does what the reference's upload script does (ApolloResearch/e2e_sae,
branch feature/upload_to_hf_script, e2e_sae/scripts/upload_to_hf.py) for one run: take the
run's SAE module, save exactly four un-prefixed tensors (the decoder as `dict_elements`, the
column-normalised tensor that still requires grad) as `<stem>.pt`, and copy the run's
`final_config.yaml` to `<stem>.yaml`. `fill_hub_cache` lays files out as huggingface_hub's
own cache does (refs/main -> snapshots/<commit>/<file> -> ../../blobs/<hash>), so the real
`hf_hub_download` serves them with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class ReferenceSAEModule(nn.Module):
    """The reference's `SAE` (e2e_sae/models/sparsifiers.py): the same submodules and forward."""

    def __init__(self, d_in: int, n_dict: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Sequential(nn.Linear(d_in, n_dict, bias=True), nn.ReLU())
        self.decoder = nn.Linear(n_dict, d_in, bias=True)
        with torch.no_grad():  # column norms far from 1, so normalisation matters
            self.decoder.weight.mul_(0.1 + 3 * torch.rand(n_dict))
            self.decoder.bias.normal_()

    @property
    def dict_elements(self) -> torch.Tensor:
        return F.normalize(self.decoder.weight, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.encoder(x)
        return F.linear(c, self.dict_elements, bias=self.decoder.bias)


def write_uploaded_pair(
    out_dir: Path, stem: str, sae: ReferenceSAEModule, final_config: dict
) -> tuple[Path, Path]:
    """`<stem>.pt` + `<stem>.yaml` exactly as upload_to_hf.py writes them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = out_dir / ".run"  # where the script downloaded the run's final_config.yaml
    run_dir.mkdir(exist_ok=True)
    (run_dir / "final_config.yaml").write_text(yaml.safe_dump(final_config))
    raw_state_dict = sae.state_dict()
    state_dict = {
        "encoder.weight": raw_state_dict["encoder.0.weight"],
        "encoder.bias": raw_state_dict["encoder.0.bias"],
        "decoder.weight": sae.dict_elements,
        "decoder.bias": raw_state_dict["decoder.bias"],
    }
    torch.save(state_dict, out_dir / f"{stem}.pt")
    shutil.copy(run_dir / "final_config.yaml", out_dir / f"{stem}.yaml")
    shutil.rmtree(run_dir)
    return out_dir / f"{stem}.pt", out_dir / f"{stem}.yaml"


def _blob_name(data: bytes, lfs: bool) -> str:
    """The hub's etag: sha256 for LFS files (.pt), the git blob sha1 for small text files."""
    if lfs:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def fill_hub_cache(cache_dir: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Put `files` (path in the repo -> local file) into a huggingface_hub cache as if
    downloaded from `repo_id` at main."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    for folder in (repo / "refs", repo / "blobs", snapshot):
        folder.mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for name, path in files.items():
        data = path.read_bytes()
        blob = repo / "blobs" / _blob_name(data, lfs=path.suffix in (".pt", ".safetensors"))
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return repo
