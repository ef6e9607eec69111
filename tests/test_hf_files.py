"""The paper's Hugging Face files as the reference's upload script wrote them: read through the
CLI, `SAE.from_pretrained(..., converter=hf_converter)` and `load_e2e_sae`.

The hub tests mock nothing: the files sit in a huggingface_hub cache laid out as the real
library lays it out, and the real `hf_hub_download` serves them with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from e2e_hf_upload import ReferenceSAEModule, fill_hub_cache, write_uploaded_pair
from sae_lens import SAE
from test_convert import D_IN, D_SAE, make_reference_config, rel_err

from sae_lens_e2e import load_e2e_sae
from sae_lens_e2e.cli import main
from sae_lens_e2e.loading.huggingface import DEFAULT_HF_REPO
from sae_lens_e2e.loading.paper import find_paper_sae, hf_files, list_paper_saes, stem_of
from sae_lens_e2e.loading.sources import hf_converter

pytestmark = pytest.mark.filterwarnings("ignore:\\s*This SAE has non-empty")

L6 = "blocks.6.hook_resid_pre"

# The upload script's `wandb_id_to_hf_name`, as it stands in the reference repo.
UPLOAD_SCRIPT_MAPPING = [
    ("ue3lz0n7", "local_similar_ce_layer_2"),
    ("ovhfts9n", "e2e_similar_ce_layer_2"),
    ("visi12en", "downstream_similar_ce_layer_2"),
    ("1jy3m5j0", "local_similar_ce_layer_6"),
    ("zgdpkafo", "e2e_similar_ce_layer_6"),
    ("2lzle2f0", "downstream_similar_ce_layer_6"),
    ("m2hntlav", "local_similar_ce_layer_10"),
    ("8crnit9h", "e2e_similar_ce_layer_10"),
    ("cvj5um2h", "downstream_similar_ce_layer_10"),
    ("6vtk4k51", "local_similar_l0_layer_2"),
    ("bst0prdd", "e2e_similar_l0_layer_2"),
    ("e26jflpq", "downstream_similar_l0_layer_2"),
    ("jup3glm9", "local_similar_l0_layer_6"),
    ("tvj2owza", "e2e_similar_l0_layer_6"),
    ("2lzle2f0", "downstream_similar_l0_layer_6"),
    ("5vmpdgaz", "local_similar_l0_layer_10"),
    ("8crnit9h", "e2e_similar_l0_layer_10"),
    ("cvj5um2h", "downstream_similar_l0_layer_10"),
]


def _uploaded(folder: Path, stem: str, hook: str = L6, seed: int = 0) -> ReferenceSAEModule:
    """One file pair as the script writes it; returns the run's SAE module (the truth)."""
    module = ReferenceSAEModule(D_IN, D_SAE, seed=seed)
    write_uploaded_pair(folder, stem, module, make_reference_config([hook]))
    return module


def _assert_same_function(sae: SAE, module: ReferenceSAEModule) -> None:
    x = torch.randn(32, D_IN) * 3
    with torch.no_grad():
        assert rel_err(sae(x), module(x)) < 1e-6
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))


def _to_cache(cache: Path, folder: Path, *stems: str) -> None:
    files = {f"{stem}.{ext}": folder / f"{stem}.{ext}" for stem in stems for ext in ("pt", "yaml")}
    fill_hub_cache(cache, DEFAULT_HF_REPO, files)


def test_uploaded_file_holds_four_unprefixed_tensors(tmp_path) -> None:
    """The fixture is the script's layout (and the decoder is saved normalised)."""
    _uploaded(tmp_path, "e2e_similar_ce_layer_6")
    sd = torch.load(tmp_path / "e2e_similar_ce_layer_6.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "encoder.weight": (D_SAE, D_IN),
        "encoder.bias": (D_SAE,),
        "decoder.weight": (D_IN, D_SAE),
        "decoder.bias": (D_IN,),
    }
    torch.testing.assert_close(sd["decoder.weight"].norm(dim=0), torch.ones(D_SAE))


def test_cli_converts_an_uploaded_file(tmp_path, capsys) -> None:
    module = _uploaded(tmp_path / "dl", "e2e_similar_ce_layer_6")
    out = tmp_path / "out"
    spec = f"hf:{DEFAULT_HF_REPO}/e2e_similar_ce_layer_6"
    rc = main(["convert", spec, "--local-dir", str(tmp_path / "dl"), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    sae = SAE.load_from_disk(out / "e2e_similar_ce_layer_6" / L6)  # OUT/<source name>/<hook>
    _assert_same_function(sae, module)
    source = sae.cfg.metadata.e2e_source
    assert source["hf_file"] == "e2e_similar_ce_layer_6.pt"
    assert source["wandb_run"] == "sparsify/gpt2/zgdpkafo"


def test_hf_converter_reads_the_hub_cache(hub_cache, tmp_path) -> None:
    module = _uploaded(tmp_path / "up", "local_similar_ce_layer_6", seed=1)
    _to_cache(hub_cache, tmp_path / "up", "local_similar_ce_layer_6")
    sae, cfg, sparsity = SAE.from_pretrained_with_cfg_and_sparsity(
        DEFAULT_HF_REPO, "local_similar_ce_layer_6", converter=hf_converter
    )
    _assert_same_function(sae, module)
    assert sparsity is None and cfg["metadata"]["hook_name"] == L6
    with pytest.raises(ValueError, match="is not in the download cache"):
        SAE.from_pretrained(DEFAULT_HF_REPO, "e2e_similar_ce_layer_6", converter=hf_converter)


def test_load_e2e_sae_reads_the_file_holding_the_run(hub_cache, tmp_path) -> None:
    """downstream similar_l0 layer 6 is the similar_ce run 2lzle2f0, in its own file; the
    similar_alive local layer-2 SAE (6vtk4k51) has no file of its own name but one holds it."""
    ds6 = _uploaded(tmp_path / "up", "downstream_similar_l0_layer_6", seed=2)
    local2 = _uploaded(tmp_path / "up", "local_similar_l0_layer_2", "blocks.2.hook_resid_pre", 3)
    _to_cache(
        hub_cache, tmp_path / "up", "downstream_similar_l0_layer_6", "local_similar_l0_layer_2"
    )

    sae, cfg, _ = load_e2e_sae("e2e+ds", 6, "similar_l0")
    _assert_same_function(sae, ds6)
    source = cfg["metadata"]["e2e_source"]
    assert (source["hf_file"], source["wandb_run"]) == (
        "downstream_similar_l0_layer_6.pt",
        "sparsify/gpt2/2lzle2f0",
    )
    sae, cfg, _ = load_e2e_sae("local", 2, "similar_alive")
    _assert_same_function(sae, local2)
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_pre"


def test_paper_table_says_which_file_holds_which_run() -> None:
    assert hf_files() == {stem: run for run, stem in UPLOAD_SCRIPT_MAPPING}
    for run, stem in UPLOAD_SCRIPT_MAPPING:  # each file's own row is that run
        word, _, rest = stem.partition("_")
        selection, _, layer = rest.rpartition("_layer_")
        row = find_paper_sae(word, int(layer), selection)
        assert row.wandb_run == run and stem_of(row.sae_type, row.layer, row.selection) == stem
        assert row.hf == stem
    ds6_l0 = find_paper_sae("downstream", 6, "similar_l0")
    assert ds6_l0.hf_files == ("downstream_similar_l0_layer_6", "downstream_similar_ce_layer_6")
    assert find_paper_sae("e2e+ds", 6, "similar_alive").hf is None  # p9zmh62k: no file
    with_files = [e for e in list_paper_saes() if e.hf]
    assert len(with_files) == 23  # 18 own files + 4 similar_alive rows + the local seed row
