"""Reference e2e_sae checkpoints <-> SAELens folders: numerics, validation, atomic writes, CLI."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from sae_lens import SAE
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

import sae_lens_e2e
from sae_lens_e2e.cli import main
from sae_lens_e2e.loading import convert as conv
from sae_lens_e2e.loading import export
from sae_lens_e2e.loading import reference_format as ref
from sae_lens_e2e.loading.reference_format import E2EConversionError, UnsafeCheckpointError

pytestmark = pytest.mark.filterwarnings("ignore:\\s*This SAE has non-empty")

D_IN, RATIO = 16, 4
D_SAE = D_IN * RATIO


# ------------------------------------------------------------------ reference-layout builders


def make_reference_sd(
    hooks: list[str], *, normalized: bool = False, prefixed: bool = True, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random weights in the exact reference ModuleDict layout ('.' -> '-' in hook names)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for hook in hooks:
        p = hook.replace(".", "-") + "." if prefixed else ""
        dec = torch.randn(D_IN, D_SAE, generator=g) * (0.1 + 3 * torch.rand(D_SAE, generator=g))
        sd[p + "encoder.0.weight"] = torch.randn(D_SAE, D_IN, generator=g) / D_IN**0.5
        sd[p + "encoder.0.bias"] = torch.randn(D_SAE, generator=g) * 0.1
        sd[p + "decoder.weight"] = F.normalize(dec, dim=0) if normalized else dec
        sd[p + "decoder.bias"] = torch.randn(D_IN, generator=g)
    return sd


def make_reference_config(positions: Any, **extra: Any) -> dict[str, Any]:
    """A final_config.yaml as the reference writes it (subset), plus old-run extra keys."""
    return {
        "wandb_project": "gpt2",
        "seed": 0,
        "tlens_model_name": "gpt2",
        "tlens_model_path": None,
        "n_samples": 400_000,
        "loss": {"sparsity": {"p_norm": 1.0, "coeff": 1.5}, "logits_kl": {"coeff": 1.0}},
        "train_data": {"dataset_name": "apollo-research/owt-gpt2", "n_ctx": 1024},
        "saes": {"sae_positions": positions, "dict_size_to_input_ratio": float(RATIO)},
        "type_of_sparsifier": "sae",
        "k": None,
        **extra,
    }


def write_checkpoint(
    directory: Path, sd: dict, config: dict | str, name: str = "samples_400000.pt"
) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    ckpt, cfg = directory / name, directory / "final_config.yaml"
    torch.save(sd, ckpt)
    cfg.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return ckpt, cfg


def reference_forward(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    """What e2e_sae's SAE.forward computes: ReLU encoder, decoder normalised per column."""
    c = F.relu(F.linear(x, sd[prefix + "encoder.0.weight"], sd[prefix + "encoder.0.bias"]))
    dict_elements = F.normalize(sd[prefix + "decoder.weight"], dim=0)
    return F.linear(c, dict_elements, sd[prefix + "decoder.bias"])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ reference -> SAELens


def test_convert_matches_reference_forward(tmp_path: Path) -> None:
    hook = "blocks.6.hook_resid_pre"
    sd = make_reference_sd([hook])
    ckpt, cfg = write_checkpoint(tmp_path / "run", sd, make_reference_config(hook))
    written = conv.convert_checkpoint(ckpt, cfg, tmp_path / "out")
    assert written == {hook: (tmp_path / "out" / hook).absolute()}

    sae = SAE.load_from_disk(written[hook])
    x = torch.randn(32, D_IN) * 3
    assert rel_err(sae(x), reference_forward(sd, "blocks-6-hook_resid_pre.", x)) < 1e-6
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))

    cfg_json = json.loads((written[hook] / "cfg.json").read_text())
    assert cfg_json["architecture"] == "standard"
    assert cfg_json["apply_b_dec_to_input"] is False
    assert cfg_json["normalize_activations"] == "none"
    assert (cfg_json["d_in"], cfg_json["d_sae"]) == (D_IN, D_SAE)
    meta = cfg_json["metadata"]
    assert meta["hook_name"] == hook and meta["model_name"] == "gpt2"
    assert meta["sae_lens_e2e_version"] == sae_lens_e2e.__version__
    assert meta["e2e_source"]["sha256"] == ref.file_sha256(ckpt)
    assert meta["model_from_pretrained_kwargs"] == ref.TLENS_DEFAULT_PROCESSING
    assert meta["prepend_bos"] is False and meta["context_size"] == 1024
    assert sae.cfg.metadata.hook_name == hook


def test_multi_position_checkpoint_writes_one_folder_each(tmp_path: Path) -> None:
    hooks = ["blocks.2.hook_resid_pre", "blocks.6.hook_resid_pre"]
    sd = make_reference_sd(hooks, seed=1)
    ckpt, cfg = write_checkpoint(tmp_path, sd, make_reference_config("hook_resid_pre"))
    written = conv.convert_checkpoint(ckpt, cfg, tmp_path / "out")
    assert sorted(written) == hooks
    x = torch.randn(8, D_IN)
    for hook in hooks:
        sae = SAE.load_from_disk(written[hook])
        ref = reference_forward(sd, hook.replace(".", "-") + ".", x)
        assert rel_err(sae(x), ref) < 1e-6


@pytest.mark.parametrize("prefixed", [True, False])
def test_hf_variant_with_normalised_decoder(tmp_path: Path, prefixed: bool) -> None:
    hook = "blocks.10.hook_resid_pre"
    sd = make_reference_sd([hook], normalized=True, prefixed=prefixed, seed=2)
    torch.save(sd, tmp_path / "e2e_similar_ce_layer_10.pt")
    (tmp_path / "e2e_similar_ce_layer_10.yaml").write_text(
        yaml.safe_dump(make_reference_config([hook]))
    )
    converted = conv.convert_reference_checkpoint(
        tmp_path / "e2e_similar_ce_layer_10.pt", tmp_path / "e2e_similar_ce_layer_10.yaml"
    )
    (cfg, weights) = converted[hook]
    prefix = "blocks-10-hook_resid_pre." if prefixed else ""
    torch.testing.assert_close(weights["W_dec"], sd[prefix + "decoder.weight"].T)
    assert cfg["metadata"]["hook_name"] == hook


def test_zero_decoder_column_matches_reference(tmp_path: Path) -> None:
    hook = "blocks.6.hook_resid_pre"
    sd = make_reference_sd([hook])
    sd["blocks-6-hook_resid_pre.decoder.weight"][:, :3] = 0.0
    ckpt, cfg = write_checkpoint(tmp_path, sd, make_reference_config(hook))
    sae = SAE.load_from_disk(conv.convert_checkpoint(ckpt, cfg, tmp_path / "o")[hook])
    x = torch.randn(8, D_IN)
    assert rel_err(sae(x), reference_forward(sd, "blocks-6-hook_resid_pre.", x)) < 1e-6


# ------------------------------------------------------------------ safety and bad input


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # executed by an unsafe unpickler: creates the marker file
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_refused_not_executed(tmp_path: Path, writer: str) -> None:
    marker, ckpt = tmp_path / "pwned", tmp_path / "samples_1.pt"
    payload = {"blocks-6-hook_resid_pre.encoder.0.weight": _Exploit(marker)}
    if writer == "torch":
        torch.save(payload, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps(payload, protocol=2))
    cfg = tmp_path / "final_config.yaml"
    cfg.write_text(yaml.safe_dump(make_reference_config("blocks.6.hook_resid_pre")))
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        conv.convert_checkpoint(ckpt, cfg, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


HOOK = "blocks.6.hook_resid_pre"
P = "blocks-6-hook_resid_pre."


def _drop(sd: dict) -> None:
    del sd[P + "decoder.bias"]


def _extra(sd: dict) -> None:
    sd[P + "decoder.scale"] = torch.ones(3)


def _bad_dec(sd: dict) -> None:
    sd[P + "decoder.weight"] = torch.randn(D_IN, D_SAE + 1)


def _bad_bias(sd: dict) -> None:
    sd[P + "encoder.0.bias"] = torch.randn(D_SAE - 1)


def _nan(sd: dict) -> None:
    sd[P + "encoder.0.weight"][0, 0] = float("nan")


def _inf(sd: dict) -> None:
    sd[P + "decoder.bias"][1] = float("inf")


@pytest.mark.parametrize(
    ("mutate", "config", "match"),
    [
        (_drop, None, r"missing key\(s\) \['blocks-6-hook_resid_pre.decoder.bias'\]"),
        (_extra, None, r"unexpected key\(s\) \['blocks-6-hook_resid_pre.decoder.scale'\]"),
        (
            _bad_dec,
            None,
            r"'blocks-6-hook_resid_pre.decoder.weight' has shape \(16, 65\), "
            r"expected \(16, 64\)",
        ),  # fmt: skip
        (_bad_bias, None, r"encoder.0.bias' has shape \(63,\), expected \(64,\)"),
        (_nan, None, r"encoder.0.weight' has 1 NaN/Inf"),
        (_inf, None, r"decoder.bias' has 1 NaN/Inf"),
        (None, make_reference_config("blocks.7.hook_resid_pre"), "matches no key"),
        (None, make_reference_config(["blocks.6", "hook_mlp_out"]), "'hook_mlp_out' matches no"),
        (
            None,
            make_reference_config(
                "blocks.6", saes={"sae_positions": HOOK, "dict_size_to_input_ratio": 3.0}
            ),
            r"dict_size_to_input_ratio=3.0",
        ),  # fmt: skip
        (None, "saes: [unclosed\n", "cannot read the config yaml"),
        (None, "- just\n- a list\n", "expected a yaml mapping"),
    ],
)
def test_bad_input_clear_error_and_no_output(tmp_path: Path, mutate, config, match) -> None:
    sd = make_reference_sd([HOOK])
    if mutate:
        mutate(sd)
    ckpt, cfg = write_checkpoint(tmp_path / "run", sd, config or make_reference_config(HOOK))
    out = tmp_path / "out" / "nested"
    with pytest.raises(E2EConversionError, match=match) as info:
        conv.convert_checkpoint(ckpt, cfg, out)
    assert str(ckpt) in str(info.value) or str(cfg) in str(info.value)
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not leftovers(tmp_path / "out")


def test_extra_sae_not_selected_by_config(tmp_path: Path) -> None:
    sd = make_reference_sd(["blocks.2.hook_resid_pre", HOOK])
    ckpt, cfg = write_checkpoint(tmp_path, sd, make_reference_config(HOOK))
    with pytest.raises(E2EConversionError, match=r"extra key\(s\).*blocks.2.hook_resid_pre"):
        conv.convert_reference_checkpoint(ckpt, cfg)


def test_unreadable_checkpoint_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(make_reference_config(HOOK)))
    with pytest.raises(E2EConversionError, match="bad.pt"):
        conv.convert_reference_checkpoint(tmp_path / "bad.pt", cfg)
    with pytest.raises(E2EConversionError, match="not found"):
        conv.convert_reference_checkpoint(tmp_path / "missing.pt", cfg)


def test_overwrite_replaces_only_what_a_conversion_wrote(tmp_path: Path) -> None:
    ckpt, cfg = write_checkpoint(
        tmp_path / "run", make_reference_sd([HOOK]), make_reference_config(HOOK)
    )
    out = tmp_path / "out"
    conv.convert_checkpoint(ckpt, cfg, out)
    with pytest.raises(E2EConversionError, match="already holds converted SAEs.*--overwrite"):
        conv.convert_checkpoint(ckpt, cfg, out)
    conv.convert_checkpoint(ckpt, cfg, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [HOOK]
    # Anything a conversion did not write stays, even with overwrite, and is named.
    (out / "notes.txt").write_text("keep")
    (out / HOOK / "README.md").write_text("keep")
    (out / "mine").mkdir()
    with pytest.raises(E2EConversionError, match=f"holds {HOOK}/README.md, mine/, notes.txt"):
        conv.convert_checkpoint(ckpt, cfg, out, overwrite=True)
    assert (out / "notes.txt").read_text() == (out / HOOK / "README.md").read_text() == "keep"
    assert (out / "mine").is_dir() and (out / HOOK / "cfg.json").is_file()
    assert not leftovers(tmp_path)


def test_failure_while_writing_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    sd = make_reference_sd(["blocks.2.hook_resid_pre", HOOK])
    ckpt, cfg = write_checkpoint(tmp_path / "run", sd, make_reference_config("hook_resid_pre"))
    calls = []

    def failing_save(tensors, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        torch.save(tensors, path)

    monkeypatch.setattr(conv, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        conv.convert_checkpoint(ckpt, cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not leftovers(tmp_path)


# ------------------------------------------------------------------ SAELens -> reference


def make_standard_sae(apply_b_dec: bool, seed: int = 0) -> StandardSAE:
    torch.manual_seed(seed)
    cfg = StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=apply_b_dec)
    cfg.metadata.hook_name, cfg.metadata.model_name = HOOK, "gpt2"
    sae = StandardSAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
        sae.W_dec.mul_(torch.rand(D_SAE, 1) * 3)  # rows far from unit norm
    return sae


@pytest.mark.parametrize("apply_b_dec", [False, True])
def test_export_is_exact_in_the_reference_forward(apply_b_dec: bool) -> None:
    sae = make_standard_sae(apply_b_dec)
    with pytest.warns(UserWarning, match="centred writing weights"):
        sd, config = export.saelens_to_reference(sae)
    assert set(sd) == {P + s for s in ref.REFERENCE_SUFFIXES}
    assert sd[P + "encoder.0.weight"].shape == (D_SAE, D_IN)
    assert sd[P + "decoder.weight"].shape == (D_IN, D_SAE)
    x = torch.randn(16, D_IN)
    with torch.no_grad():
        assert rel_err(reference_forward(sd, P, x), sae(x)) < 1e-5
    assert config["saes"] == {
        "sae_positions": [HOOK],
        "dict_size_to_input_ratio": float(RATIO),
        "pretrained_sae_paths": None,
        "retrain_saes": False,
    }
    assert config["tlens_model_name"] == "gpt2"


def test_round_trip_through_files(tmp_path: Path) -> None:
    sd = make_reference_sd(["blocks.2.hook_resid_pre", HOOK], seed=3)
    ckpt, cfg = write_checkpoint(tmp_path / "run", sd, make_reference_config("hook_resid_pre"))
    written = conv.convert_checkpoint(ckpt, cfg, tmp_path / "sl")
    saes = [SAE.load_from_disk(written[h]) for h in sorted(written)]
    pt, yml = export.export_reference_checkpoint(saes, tmp_path / "back" / "samples_0.pt")
    assert yml == tmp_path / "back" / "final_config.yaml"
    back = ref.load_reference_state_dict(pt)
    assert set(back) == set(sd)
    x = torch.randn(8, D_IN)
    for hook in written:
        prefix = hook.replace(".", "-") + "."
        assert rel_err(reference_forward(back, prefix, x), reference_forward(sd, prefix, x)) < 1e-5
    again = conv.convert_reference_checkpoint(pt, yml)  # the exported config converts again
    assert sorted(again) == sorted(written)


def test_export_refuses_what_the_reference_cannot_represent(tmp_path: Path) -> None:
    topk = TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4))
    topk.cfg.metadata.hook_name = HOOK
    with pytest.raises(E2EConversionError, match="architecture 'topk'"):
        export.saelens_to_reference(topk)
    normed = make_standard_sae(False)
    normed.cfg.normalize_activations = "layer_norm"
    with pytest.raises(E2EConversionError, match="normalize_activations='layer_norm'"):
        export.saelens_to_reference(normed)
    nohook = make_standard_sae(False)
    nohook.cfg.metadata.hook_name = None
    with pytest.raises(E2EConversionError, match="hook_name"):
        export.saelens_to_reference(nohook)
    with pytest.raises(E2EConversionError, match="share a hook name"):
        export.saelens_to_reference([make_standard_sae(False), make_standard_sae(False, 1)])


# ------------------------------------------------------------------ CLI


def test_cli_convert_and_export(tmp_path: Path, capsys) -> None:
    sd = make_reference_sd([HOOK])
    ckpt, cfg = write_checkpoint(tmp_path / "run", sd, make_reference_config(HOOK))
    out = tmp_path / "out"
    assert main(["convert", str(ckpt), "--out", str(out)]) == 0  # config found beside the .pt
    assert HOOK in capsys.readouterr().out
    folder = out / "run" / HOOK  # samples_400000.pt is every run's name: its folder's instead
    assert (folder / "cfg.json").is_file()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing reaches Python's raw warning printer
        rc = main(["export", str(folder), "--out", str(tmp_path / "exp" / "samples_0.pt")])
    assert rc == 0
    assert (tmp_path / "exp" / "final_config.yaml").is_file()
    assert capsys.readouterr().err == ""  # SAELens's advice on loading the model: not shown
    # An SAE made for a model without TransformerLens's processing: a note in our words.
    from e2e_helpers import stock_sae_folder

    stock = stock_sae_folder(tmp_path / "stock", D_IN, HOOK, d_sae=D_SAE)
    assert main(["export", str(stock), "--out", str(tmp_path / "exp2" / "samples_0.pt")]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"sae-lens-e2e export: note: the SAE at {HOOK} was trained on a model")
    assert len(err.strip().splitlines()) == 1 and "UserWarning" not in err, err


def test_ctrl_c_in_convert_and_export_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    from sae_lens_e2e.loading import sources

    ckpt, _ = write_checkpoint(
        tmp_path / "run", make_reference_sd([HOOK]), make_reference_config(HOOK)
    )

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sources, "convert_reference_checkpoint", ctrl_c)
    assert main(["convert", str(ckpt), "--out", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err
    assert err == f"sae-lens-e2e convert: interrupted; {tmp_path / 'out'} was left as it was\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_cli_converts_several_runs_at_one_hook_into_one_out(tmp_path: Path, capsys) -> None:
    """Every reference run's final file is samples_400000.pt: each run gets its own folder
    (the run name in its final_config.yaml, else its folder), and --overwrite never replaces
    one run's SAEs with another's."""
    out = tmp_path / "saes"
    named = make_reference_config(HOOK, wandb_run_name="e2e_l6", wandb_run_name_prefix="gpt2_")
    runs = {"run_a": make_reference_config(HOOK), "run_b": make_reference_config(HOOK),
            "gpt2_e2e_l6": named}  # fmt: skip
    sources = {}
    for seed, (folder, config) in enumerate(runs.items()):
        sd = make_reference_sd([HOOK], seed=seed)
        where = tmp_path / (folder if folder.startswith("run") else "downloads")
        ckpt, _ = write_checkpoint(where, sd, config)
        assert main(["convert", str(ckpt), "--out", str(out)]) == 0
        sources[folder] = (ckpt, sd)
    assert sorted(p.name for p in out.iterdir()) == sorted(runs)
    x = torch.randn(4, D_IN)
    for folder, (_, sd) in sources.items():
        sae = SAE.load_from_disk(out / folder / HOOK)
        assert rel_err(sae(x), reference_forward(sd, "blocks-6-hook_resid_pre.", x)) < 1e-6
    run_a = str(sources["run_a"][0])
    assert main(["convert", run_a, "--out", str(out)]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["convert", run_a, "--out", str(out), "--overwrite"]) == 0  # the same source
    # Another checkpoint of run_a (another step): never into run_a's folder, even with
    # --overwrite; --name puts it beside.
    step = write_checkpoint(tmp_path / "run_a", make_reference_sd([HOOK], seed=9),
                            make_reference_config(HOOK), "samples_200000.pt")[0]  # fmt: skip
    assert main(["convert", str(step), "--out", str(out), "--overwrite"]) == 1
    assert f"holds SAEs converted from another source ({run_a})" in capsys.readouterr().err
    assert main(["convert", str(step), "--out", str(out), "--name", "run_a_200k"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*runs, "run_a_200k"])
    # A file named for what it holds keeps its name.
    hf = write_checkpoint(tmp_path / "hf", make_reference_sd([HOOK]), make_reference_config(HOOK),
                          "e2e_similar_ce_layer_6.pt")[0]  # fmt: skip
    assert main(["convert", str(hf), "--out", str(out)]) == 0
    assert (out / "e2e_similar_ce_layer_6" / HOOK / "cfg.json").is_file()


def test_cli_reports_bad_input(tmp_path: Path, capsys) -> None:
    sd = make_reference_sd([HOOK])
    _nan(sd)
    ckpt, cfg = write_checkpoint(tmp_path, sd, make_reference_config(HOOK))
    assert main(["convert", str(ckpt), "--config", str(cfg), "--out", str(tmp_path / "o")]) == 1
    assert "NaN/Inf" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["convert", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")]) == 1


def test_cli_help_lists_sources(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["convert", "--help"])
    assert info.value.code == 0
    assert "wandb:ENTITY/PROJECT/RUN_ID" in capsys.readouterr().out


# ------------------------------------------------------------------ names from files never escape


def _outside_entries(tmp_path: Path, out: Path) -> list[str]:
    """Everything under tmp_path that is neither the sources nor inside `out`."""
    return sorted(
        str(p.relative_to(tmp_path))
        for p in tmp_path.rglob("*")
        if not p.is_relative_to(out) and not p.is_relative_to(tmp_path / "src")
    )


@pytest.mark.parametrize("prefix", ["ABS", "../../escaped", "..-..-escaped", "a/b"])
def test_key_prefix_that_is_a_path_is_refused_and_nothing_escapes(tmp_path, capsys, prefix):
    out = tmp_path / "deep" / "er" / "out"
    if prefix == "ABS":  # a folder without '-' (which the reader turns into '.')
        prefix = str(Path(tempfile.mkdtemp(prefix="e2e_abs_")) / "escaped")
    sd = {f"{prefix}.{k}": v for k, v in make_reference_sd([HOOK], prefixed=False).items()}
    ckpt, _ = write_checkpoint(tmp_path / "src", sd, {"tlens_model_name": "gpt2"})
    # Where the hook's folder would land: the key prefix with '-' read back as '.'.
    target = Path(os.path.normpath(out / "samples_400000" / prefix.replace("-", ".")))
    assert not target.exists()
    try:
        assert main(["convert", str(ckpt), "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert "is not a hook name" in err and len(err.strip().splitlines()) == 1, err
        assert _outside_entries(tmp_path, out) == [] and not out.exists()
        assert not target.exists()
    finally:  # the folder made outside tmp_path
        if not target.is_relative_to(tmp_path):
            shutil.rmtree(target.parent)


def test_yaml_position_that_is_a_path_is_refused_for_an_unprefixed_file(tmp_path, capsys):
    out = tmp_path / "deep" / "er" / "out"
    sd = make_reference_sd([HOOK], normalized=True, prefixed=False)
    ckpt, _ = write_checkpoint(tmp_path / "src", sd, make_reference_config("../../../x.y"))
    assert main(["convert", str(ckpt), "--out", str(out)]) == 1
    assert "sae_positions" in capsys.readouterr().err
    assert _outside_entries(tmp_path, out) == [] and not out.exists()


@pytest.mark.parametrize("spec", ["hf:org/repo/..", "hf:org/repo/.", "hf:org/repo/.hidden"])
def test_hub_stem_that_is_not_a_folder_name_is_refused(tmp_path, capsys, spec):
    assert main(["convert", spec, "--out", str(tmp_path / "out")]) == 1
    assert "not a Hugging Face file spec" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_every_written_path_is_proven_inside_the_output_folder(tmp_path):
    from sae_lens_e2e.names import inside

    assert inside(tmp_path, "a", "b.c") == tmp_path / "a" / "b.c"
    for parts in [("..",), ("a", "../../b"), ("/etc",), (".",), ("a/../..",)]:
        with pytest.raises(ValueError, match="not inside"):
            inside(tmp_path, *parts)
    converted = {"../x": ({"d_in": 1}, {})}
    with pytest.raises(E2EConversionError, match="not a hook name"):
        conv.write_saelens_folders(converted, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_a_hook_name_that_is_not_one(tmp_path):
    sae = make_standard_sae(False)
    sae.cfg.metadata.hook_name = "../../x"
    with pytest.raises(E2EConversionError, match="is not a hook name"):
        export.export_reference_checkpoint(sae, tmp_path / "o.pt")
    assert list(tmp_path.iterdir()) == []


def test_reference_config_with_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    sd = make_reference_sd([HOOK])
    text = yaml.safe_dump(make_reference_config(HOOK)) + "tlens_model_name: gpt2-xl\n"
    ckpt, cfg = write_checkpoint(tmp_path, sd, text)
    with pytest.raises(E2EConversionError, match="key 'tlens_model_name' given twice"):
        conv.convert_reference_checkpoint(ckpt, cfg)


def test_overwrite_through_a_symlinked_folder_leaves_no_backup(tmp_path: Path) -> None:
    """OUT/NAME is a symlink to a folder elsewhere (a bigger disk): --overwrite writes the new
    conversion through it, keeps the link, and leaves no `.NAME.<host>-<pid>-*.old` behind;
    one that a killed run left is removed by the next conversion."""
    from e2e_helpers import killed_while_writing

    ckpt, _ = write_checkpoint(
        tmp_path / "run", make_reference_sd([HOOK]), make_reference_config(HOOK)
    )
    real, out = tmp_path / "big_disk" / "run", tmp_path / "saes"
    assert main(["convert", str(ckpt), "--out", str(tmp_path / "big_disk")]) == 0
    out.mkdir()
    (out / "run").symlink_to(real, target_is_directory=True)
    # A killed conversion's temporary, beside the target (made elsewhere, then moved there).
    left = killed_while_writing(tmp_path / "scratch" / "run")
    stale = left.rename(real.parent / left.name)
    assert main(["convert", str(ckpt), "--out", str(out), "--overwrite"]) == 0
    assert (out / "run").is_symlink() and (out / "run" / HOOK / "cfg.json").is_file()
    assert leftovers(out) == [] and leftovers(real.parent) == [] and not stale.exists()
