"""wandb / Hugging Face sources, the paper SAE table, SAELens converters and hub pushes.

Nothing here touches the network: `wandb.Api`, `huggingface_hub.hf_hub_download` and
`huggingface_hub.HfApi` are replaced by fakes serving files from a temp directory. The one test
marked `network` runs only with SAE_LENS_E2E_NETWORK_TESTS=1.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import socket
from pathlib import Path

import huggingface_hub
import pytest
import torch
import wandb
import yaml
from e2e_hf_upload import ReferenceSAEModule, write_uploaded_pair
from huggingface_hub import errors as hf_errors
from sae_lens import SAE
from test_convert import (
    D_IN,
    D_SAE,
    make_reference_config,
    make_reference_sd,
    reference_forward,
    rel_err,
)

from sae_lens_e2e.cache import CACHE_ENV
from sae_lens_e2e.cli import main
from sae_lens_e2e.loading.huggingface import DEFAULT_HF_REPO
from sae_lens_e2e.loading.paper import find_paper_sae, list_paper_saes
from sae_lens_e2e.loading.reference_format import E2EConversionError
from sae_lens_e2e.loading.source_files import (
    LOCAL_DIR_ENV,
    E2ESourceError,
    NetworkUnavailableError,
    SourceNotFoundError,
)
from sae_lens_e2e.loading.sources import (
    convert_source,
    e2e_converter,
    hf_converter,
    load_e2e_sae,
    wandb_converter,
)
from sae_lens_e2e.loading.wandb import fetch_wandb_run, parse_wandb_path

pytestmark = pytest.mark.filterwarnings("ignore:\\s*This SAE has non-empty")

L6 = "blocks.6.hook_resid_pre"


# ------------------------------------------------------------------ fake wandb transport


def fake_network(monkeypatch) -> dict:
    """The sockets the reachability probe opens: up while state["up"], else no route."""
    state = {"up": True, "probed": []}

    class Connection:
        def close(self) -> None:
            pass

    def create_connection(address, timeout=None, *args, **kwargs):
        state["probed"].append(address[0])
        if not state["up"]:
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        return Connection()

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return state


class FakeFile:
    def __init__(self, name: str, data: bytes, log: list[str]) -> None:
        self.name, self._data, self._log = name, data, log

    def download(self, root: str = ".", replace: bool = False, exist_ok: bool = False):
        self._log.append(self.name)
        path = Path(root) / self.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self._data)
        return open(path)


class FakeRun:
    def __init__(self, files: list[FakeFile]) -> None:
        self._files = files

    def files(self):
        return iter(self._files)


def make_run_files(tmp: Path, sd: dict, config: dict, steps=(3, 20000, 400000)) -> dict:
    """Bytes of a reference run: several checkpoints (only the highest is the real one)."""
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    files = {"final_config.yaml": yaml.safe_dump(config).encode(), "output.log": b"log"}
    for n in steps:
        torch.save(sd if n == max(steps) else {"junk": torch.zeros(1)}, src / "x.pt")
        files[f"samples_{n}.pt"] = (src / "x.pt").read_bytes()
    return files


@pytest.fixture
def fake_wandb(monkeypatch, tmp_path):
    """wandb.Api() serving the runs in `runs` (path -> {name: bytes}); records every call."""
    state = {"runs": {}, "calls": [], "downloads": [], "error": None}

    class FakeApi:
        def __init__(self, *a, **k) -> None:
            pass

        def run(self, path: str):
            state["calls"].append(path)
            if state["error"] is not None:
                raise state["error"]
            if path not in state["runs"]:
                raise wandb.errors.CommError(f"Could not find run {path}")
            items = state["runs"][path].items()
            return FakeRun([FakeFile(n, b, state["downloads"]) for n, b in items])

    monkeypatch.setattr(wandb, "Api", FakeApi)
    state["network"] = fake_network(monkeypatch)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(LOCAL_DIR_ENV, raising=False)
    return state


# ------------------------------------------------------------------ fake hub transport


def _hf_error(cls: type, message: str) -> Exception:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    return err


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A hub in a directory: hf_hub_download reads it, HfApi.upload_folder writes it."""
    remote = tmp_path / "hub"
    state = {"remote": remote, "offline": False, "downloads": 0, "calls": []}
    state["network"] = fake_network(monkeypatch)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # conftest sets it

    def fake_download(repo_id, filename, *, subfolder=None, force_download=False, **kw):
        state["calls"].append({"filename": filename, **kw})
        if state["offline"] or kw.get("local_files_only"):  # the fake hub has no local cache
            raise hf_errors.LocalEntryNotFoundError("offline and not in cache")
        if not (remote / repo_id).is_dir():
            raise _hf_error(hf_errors.RepositoryNotFoundError, f"404 {repo_id}")
        path = remote / repo_id / (f"{subfolder}/{filename}" if subfolder else filename)
        if not path.is_file():
            raise _hf_error(hf_errors.RemoteEntryNotFoundError, f"404 {filename}")
        state["downloads"] += 1
        return str(path)

    class FakeHfApi:
        def __init__(self, token=None) -> None:
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False, **kw):
            (remote / repo_id).mkdir(parents=True, exist_ok=exist_ok)

        def upload_folder(self, *, repo_id, folder_path, path_in_repo, allow_patterns, **kw):
            dest = remote / repo_id / path_in_repo
            dest.mkdir(parents=True, exist_ok=True)
            for p in Path(folder_path).iterdir():
                if p.name in allow_patterns:
                    shutil.copy(p, dest / p.name)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    # stock SAELens imported hf_hub_download by name; serve its no-converter path as well
    import sae_lens.loading.pretrained_sae_loaders as loaders

    monkeypatch.setattr(loaders, "hf_hub_download", fake_download)
    return state


def put_hf_pair(hub: dict, stem: str, config: dict, seed: int = 0) -> ReferenceSAEModule:
    """A file pair on the fake hub, as the reference's upload script wrote the real ones."""
    module = ReferenceSAEModule(D_IN, D_SAE, seed=seed)
    write_uploaded_pair(hub["remote"] / DEFAULT_HF_REPO, stem, module, config)
    return module


# ------------------------------------------------------------------ paths and the paper table


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ("wandb:sparsify/gpt2/d8vgjnyc", "sparsify/gpt2/d8vgjnyc"),
        ("https://wandb.ai/sparsify/gpt2/runs/tvj2owza", "sparsify/gpt2/tvj2owza"),
        ("tvj2owza", "sparsify/gpt2/tvj2owza"),
    ],
)
def test_parse_wandb_path(spec: str, path: str) -> None:
    assert parse_wandb_path(spec).path == path


def test_parse_wandb_path_rejects_garbage() -> None:
    with pytest.raises(E2ESourceError, match="not a wandb run path"):
        parse_wandb_path("wandb:a/b/c/d")


def test_paper_table() -> None:
    saes = list_paper_saes()
    main_rows = [s for s in saes if s.selection.startswith("similar_")]
    assert len(main_rows) == 27 and len(saes) == 33
    assert sum(1 for s in saes if s.hf) == 23  # rows whose run some HF file holds
    assert all(isinstance(s.wandb_run, str) and len(s.wandb_run) == 8 for s in saes)
    e2e6 = find_paper_sae("e2e", 6, "similar_ce")
    assert (e2e6.wandb_run, e2e6.hf, e2e6.hook_name) == ("zgdpkafo", "e2e_similar_ce_layer_6", L6)
    assert e2e6.paper["l0"] == 27.5
    assert find_paper_sae("downstream", 10, "l0").wandb_run == "cvj5um2h"
    assert find_paper_sae("local", 6, "similar_alive").hf is None
    with pytest.raises(SourceNotFoundError, match="layers 2/6/10"):
        find_paper_sae("e2e", 5)


# ------------------------------------------------------------------ wandb


def test_fetch_wandb_picks_highest_checkpoint_and_caches(fake_wandb, tmp_path) -> None:
    sd = make_reference_sd([L6])
    fake_wandb["runs"]["sparsify/gpt2/d8vgjnyc"] = make_run_files(
        tmp_path, sd, make_reference_config(L6)
    )
    files = fetch_wandb_run("wandb:sparsify/gpt2/d8vgjnyc")
    assert files.checkpoint.name == "samples_400000.pt"
    assert files.checkpoint.parent == tmp_path / "cache" / "wandb" / "sparsify/gpt2/d8vgjnyc"
    assert sorted(fake_wandb["downloads"]) == ["final_config.yaml", "samples_400000.pt"]

    again = fetch_wandb_run("sparsify/gpt2/d8vgjnyc")  # served from the cache
    assert again.checkpoint == files.checkpoint and len(fake_wandb["calls"]) == 1
    fetch_wandb_run("d8vgjnyc", force_download=True)
    assert len(fake_wandb["calls"]) == 2


@pytest.mark.parametrize(
    ("error", "exc", "match"),
    [
        (None, SourceNotFoundError, "not found"),
        (ConnectionError("Max retries exceeded"), NetworkUnavailableError, "cannot reach"),
        (wandb.errors.UsageError("No API key"), NetworkUnavailableError, "WANDB_API_KEY"),
    ],
)
def test_wandb_errors_are_clear(fake_wandb, tmp_path, error, exc, match) -> None:
    fake_wandb["error"] = error
    with pytest.raises(exc, match=match):
        convert_source("wandb:sparsify/gpt2/unknown1", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.rglob("*.pt"))  # nothing half-downloaded into the cache


def test_wandb_offline_local_dir(fake_wandb, tmp_path) -> None:
    fake_wandb["error"] = ConnectionError("offline")
    sd = make_reference_sd([L6])
    run_dir = tmp_path / "downloads" / "sparsify" / "gpt2" / "abcd1234"
    run_dir.mkdir(parents=True)
    for name, data in make_run_files(tmp_path, sd, make_reference_config(L6)).items():
        (run_dir / name).write_bytes(data)
    written = convert_source(
        "wandb:sparsify/gpt2/abcd1234", tmp_path / "out", local_dir=tmp_path / "downloads"
    )
    assert fake_wandb["calls"] == []
    x = torch.randn(4, D_IN)
    sae = SAE.load_from_disk(written[L6])
    assert rel_err(sae(x).detach(), reference_forward(sd, "blocks-6-hook_resid_pre.", x)) < 1e-6
    assert sae.cfg.metadata.e2e_source["wandb_run"] == "sparsify/gpt2/abcd1234"
    with pytest.raises(SourceNotFoundError, match="no samples_<N>.pt"):
        fetch_wandb_run("zzzz9999", local_dir=tmp_path / "empty")


def test_saelens_from_pretrained_with_wandb_converter(fake_wandb, tmp_path) -> None:
    hooks = ["blocks.2.hook_resid_pre", L6]
    sd = make_reference_sd(hooks, seed=4)
    fake_wandb["runs"]["sparsify/gpt2/multi001"] = make_run_files(
        tmp_path, sd, make_reference_config("hook_resid_pre")
    )
    with pytest.raises(E2EConversionError, match="name one as"):
        SAE.from_pretrained("sparsify/gpt2", "multi001", converter=wandb_converter)
    sae, cfg, sparsity = SAE.from_pretrained_with_cfg_and_sparsity(
        "sparsify/gpt2", f"multi001/{L6}", converter=wandb_converter
    )
    assert sparsity is None and cfg["metadata"]["hook_name"] == L6
    x = torch.randn(4, D_IN)
    assert rel_err(sae(x).detach(), reference_forward(sd, "blocks-6-hook_resid_pre.", x)) < 1e-6
    # e2e_converter picks wandb for anything but hf: releases / the paper's HF repo
    sae2 = SAE.from_pretrained("wandb:sparsify/gpt2", f"multi001/{L6}", converter=e2e_converter)
    torch.testing.assert_close(sae2.W_enc, sae.W_enc)


# ------------------------------------------------------------------ Hugging Face


def test_hf_converter_and_load_e2e_sae(fake_hub, fake_wandb, tmp_path) -> None:
    module = put_hf_pair(fake_hub, "e2e_similar_ce_layer_6", make_reference_config([L6]), seed=5)
    x = torch.randn(4, D_IN)
    ref = module(x).detach()

    sae = SAE.from_pretrained(DEFAULT_HF_REPO, "e2e_similar_ce_layer_6", converter=hf_converter)
    assert rel_err(sae(x).detach(), ref) < 1e-6
    sae, cfg, sparsity = load_e2e_sae("e2e", layer=6, selection="similar_ce")
    assert (sae.cfg.d_in, sae.cfg.d_sae, sparsity) == (D_IN, D_SAE, None)
    assert cfg["metadata"]["e2e_source"]["hf_file"] == "e2e_similar_ce_layer_6.pt"
    assert rel_err(sae(x).detach(), ref) < 1e-6
    assert fake_wandb["calls"] == []


def test_load_e2e_sae_from_wandb_when_no_hf_copy(fake_wandb, tmp_path) -> None:
    sd = make_reference_sd([L6], seed=6)
    fake_wandb["runs"]["sparsify/gpt2/p9zmh62k"] = make_run_files(
        tmp_path, sd, make_reference_config(L6)
    )
    sae, cfg, _ = load_e2e_sae("e2e+ds", 6, "similar_alive", dtype="float64")
    assert sae.W_enc.dtype == torch.float64 and cfg["metadata"]["hook_name"] == L6
    assert fake_wandb["calls"] == ["sparsify/gpt2/p9zmh62k"]


def test_hf_errors_are_clear(fake_hub, tmp_path) -> None:
    with pytest.raises(SourceNotFoundError, match="not found"):
        convert_source(f"hf:{DEFAULT_HF_REPO}/nope", tmp_path / "out")
    fake_hub["offline"] = True
    with pytest.raises(NetworkUnavailableError, match="Hugging Face hub cannot be reached"):
        convert_source("hf:e2e_similar_ce_layer_6", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hf_fails_fast_offline_and_names_the_flag(fake_hub, tmp_path, monkeypatch) -> None:
    """HF_HUB_OFFLINE or no route: only the cache is asked (no retries), and the message says
    why and how to convert offline."""
    put_hf_pair(fake_hub, "e2e_similar_ce_layer_6", make_reference_config(L6))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(NetworkUnavailableError, match="HF_HUB_OFFLINE is set.*--local-dir"):
        convert_source("hf:e2e_similar_ce_layer_6", tmp_path / "out")
    assert fake_hub["calls"][-1]["local_files_only"] is True
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    fake_hub["network"]["up"] = False
    with pytest.raises(NetworkUnavailableError, match="cannot reach huggingface.co: no network"):
        convert_source("hf:e2e_similar_ce_layer_6", tmp_path / "out")
    assert fake_hub["calls"][-1]["local_files_only"] is True and fake_hub["downloads"] == 0
    fake_hub["network"]["up"] = True  # online again: downloads as usual
    assert convert_source("hf:e2e_similar_ce_layer_6", tmp_path / "out")


def test_wandb_offline_says_network_not_credentials(fake_wandb, tmp_path, capsys) -> None:
    """Offline without an API key, wandb itself complains about credentials: ask the network
    first, and fail before calling wandb at all."""
    fake_wandb["error"] = wandb.errors.UsageError("api_key not configured (no-tty)")
    fake_wandb["network"]["up"] = False
    with pytest.raises(NetworkUnavailableError) as info:
        convert_source("wandb:sparsify/gpt2/abcd1234", tmp_path / "out")
    message = str(info.value)
    assert "cannot reach api.wandb.ai: no network" in message and "credentials" not in message
    assert "--local-dir DIR" in message and fake_wandb["calls"] == []
    assert main(["convert", "wandb:sparsify/gpt2/abcd1234", "--out", str(tmp_path / "o")]) == 1
    assert "--local-dir" in capsys.readouterr().err
    fake_wandb["network"]["up"] = True  # online without credentials: now that is the cause
    with pytest.raises(NetworkUnavailableError, match="credentials"):
        convert_source("wandb:sparsify/gpt2/abcd1234", tmp_path / "out")


def test_cli_convert_hf_then_push_to_hub(fake_hub, tmp_path, capsys) -> None:
    module = put_hf_pair(fake_hub, "local_similar_ce_layer_6", make_reference_config(L6))
    out = tmp_path / "out"
    spec = f"hf:{DEFAULT_HF_REPO}/local_similar_ce_layer_6"
    args = ["convert", spec, "--out", str(out), "--push-to-hub", "me/e2e", "--hub-prefix", "l6"]
    assert main(args) == 0
    assert "SAE.from_pretrained('me/e2e', 'l6/blocks.6.hook_resid_pre')" in capsys.readouterr().out
    # stock SAELens, no converter: the pushed layout is what from_pretrained reads
    sae = SAE.from_pretrained("me/e2e", f"l6/{L6}")
    x = torch.randn(4, D_IN)
    assert rel_err(sae(x).detach(), module(x).detach()) < 1e-6


def test_cli_wandb_offline_directory(fake_wandb, tmp_path) -> None:
    fake_wandb["error"] = ConnectionError("offline")
    sd = make_reference_sd([L6])
    local = tmp_path / "dl"
    local.mkdir()
    for name, data in make_run_files(tmp_path, sd, make_reference_config(L6)).items():
        (local / name).write_bytes(data)
    out = tmp_path / "out"
    assert main(["convert", "wandb:sparsify/gpt2/d8vgjnyc", "--local-dir", str(local),
                 "--out", str(out)]) == 0  # fmt: skip
    assert (out / "d8vgjnyc" / L6 / "sae_weights.safetensors").is_file()
    assert main(["convert", "wandb:sparsify/gpt2/d8vgjnyc", "--out", str(tmp_path / "o2")]) == 1


# ------------------------------------------------------------------ real network (opt-in)


@pytest.mark.network
@pytest.mark.skipif(
    os.environ.get("SAE_LENS_E2E_NETWORK_TESTS") != "1",
    reason="set SAE_LENS_E2E_NETWORK_TESTS=1 (and WANDB_API_KEY for wandb) to run",
)
def test_published_sae_loads(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    load = functools.partial(load_e2e_sae, "e2e", 6, "similar_ce", cache_dir=tmp_path)
    sae, cfg, _ = load(source="hf")
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (768, 46080)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(46080))
    if os.environ.get("WANDB_API_KEY"):
        sae_w, _, _ = load(source="wandb")
        torch.testing.assert_close(sae_w.W_dec, sae.W_dec, atol=1e-5, rtol=1e-4)
