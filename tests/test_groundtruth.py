"""The ground-truth model has the property it claims, and its metrics equal a brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sae_lens_e2e.analysis.groundtruth import GroundTruthScorer
from sae_lens_e2e.pipelines.groundtruth.model import (
    HOOK,
    GroundTruthConfig,
    ablation_effects,
    build_ground_truth,
    next_token_probs,
    sample_tokens,
)

SMALL = GroundTruthConfig(n_codes=256, n_groups=8, context_size=8)  # the default features


@pytest.fixture(scope="module")
def gt():
    return build_ground_truth(SMALL)


def _logits_with(gt, delta: torch.Tensor) -> torch.Tensor:
    """Logits of every token with `delta` [n_codes, d_model] added at the SAE's hook."""
    vocab = torch.arange(gt.cfg.n_codes)[:, None]
    with gt.model.hooks(fwd_hooks=[(HOOK, lambda act, hook: act + delta[:, None])]):
        return gt.model(vocab)[:, 0]


@torch.no_grad()
def test_residual_is_the_sparse_code_and_ignored_features_carry_more_variance(gt):
    vocab = torch.arange(SMALL.n_codes)[:, None]
    _, cache = gt.model.run_with_cache(vocab, names_filter=HOOK)
    torch.testing.assert_close(cache[HOOK][:, 0], gt.codes @ gt.features)
    assert SMALL.n_features > SMALL.d_features  # superposition
    var = gt.codes.var(0)
    order = var.argsort(descending=True)
    for run in order.split(SMALL.important_every):
        important, ignored = run[gt.important[run]], run[~gt.important[run]]
        assert len(important) == 1 and var[ignored].min() >= var[important].max()


@torch.no_grad()
def test_logits_ignore_the_ignored_features_up_to_interference(gt):
    """Removing an ignored feature's part that no important feature's reader sees leaves the
    logits exactly as they were; the whole feature moves them only by interference, much
    less than an important feature moves them; writing straight into the output axes (around
    the MLP) changes nothing."""
    clean = _logits_with(gt, torch.zeros(gt.d_model))
    readers = gt.features[gt.important]  # the MLP reads along these directions
    q, _ = torch.linalg.qr(readers.T)
    for j in (~gt.important).nonzero().squeeze(1).tolist():
        unseen = gt.features[j] - q @ (q.T @ gt.features[j])
        moved = _logits_with(gt, -gt.codes[:, j, None] * unseen)
        torch.testing.assert_close(moved, clean, atol=1e-5, rtol=0)
    output_axes = torch.zeros(gt.d_model)
    output_axes[SMALL.d_features :] = torch.randn(SMALL.n_groups)
    torch.testing.assert_close(_logits_with(gt, 5 * output_axes), clean, atol=1e-4, rtol=0)
    effects = ablation_effects(gt)
    important, ignored = effects[gt.important], effects[~gt.important]
    assert important.min() > 0.1  # every important feature matters
    assert ignored.mean() < 0.1 * important.mean()  # interference, measured: a few percent
    assert ignored.max() < important.min()


def test_tokens_are_drawn_from_the_model(gt):
    """The model is its data's next-token distribution: its CE on sampled tokens is the
    entropy of its own predictions (within sampling error)."""
    tokens = sample_tokens(gt, 2000, seed=1)
    probs = next_token_probs(gt.model)
    ce = -probs[tokens[:, :-1], tokens[:, 1:]].log().mean()
    entropy = -(probs * probs.log()).sum(-1)[tokens[:, :-1]].mean()
    assert abs(float(ce - entropy)) < 0.02
    # Doubly stochastic: every token is as likely next as it is now (uniform marginal).
    torch.testing.assert_close(probs.sum(0), torch.ones(SMALL.n_codes), atol=1e-4, rtol=0)
    assert torch.equal(sample_tokens(gt, 5, seed=1), sample_tokens(gt, 5, seed=1))


def _brute_force(w_dec, w_enc, features, important, latents, acts, recovered, matched):
    """Every metric by loops over features and latents, Hungarian by trying permutations."""
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    alive = [j for j in range(len(w_dec)) if (latents[:, j] > 0).any()]
    best = [max(range(len(features)), key=lambda i: abs(cos(w_dec[j], features[i]))) for j in range(len(w_dec))]  # fmt: skip
    out = {}
    for name, mask in (("important", important), ("ignored", ~important)):
        group = [i for i in range(len(features)) if mask[i]]
        dec = [max(cos(features[i], w_dec[j]) for j in alive) for i in group]
        out[f"dec_max_cos/{name}"] = sum(dec) / len(dec)
        out[f"enc_max_cos/{name}"] = sum(max(cos(features[i], w_enc[:, j]) for j in alive) for i in group) / len(group)  # fmt: skip
        out[f"recovered/{name}"] = sum(d >= recovered for d in dec) / len(dec)
        out[f"mcc/{name}"] = max(
            sum(abs(cos(features[i], w_dec[j])) for i, j in zip(group, perm, strict=False))
            for perm in itertools.permutations(range(len(w_dec)), len(group))
        ) / len(group)
        mine = [j for j in alive if mask[best[j]]]
        prec, rec = [], []
        for j in mine:
            fires, truth = latents[:, j] > 0, acts[:, best[j]] > 0
            tp = int((fires & truth).sum())
            prec.append(tp / max(1, int(fires.sum())))
            rec.append(tp / max(1, int(truth.sum())))
        out[f"precision/{name}"] = sum(prec) / len(prec) if prec else math.nan
        out[f"recall/{name}"] = sum(rec) / len(rec) if rec else math.nan
        out[f"latents_on/{name}"] = sum(
            1 for j in mine if abs(cos(w_dec[j], features[best[j]])) >= matched
        )
    out["alive"] = len(alive)
    return out


def test_metrics_equal_a_brute_force_on_a_hand_made_case():
    features = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.6, 0.8, 0]])
    important = torch.tensor([True, False, True, False])
    w_dec = torch.tensor(
        [[0.9, 0.1, 0], [0, 0.2, 1], [0.5, 0.9, 0], [0, 1, 0.1], [1, 1, 1]]  # last: dead
    )
    w_enc = torch.tensor([[1.0, 0, 0.3, 0, 1], [0.2, 0, 1, 1, 1], [0, 1, 0, 0.1, 1]])
    acts = torch.tensor(
        [[1.0, 0, 0, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 1, 1], [0, 1, 0, 0], [1, 1, 1, 0]]
    )
    latents = torch.tensor(
        [[1.0, 0, 0, 0, 0], [0, 0, 2, 1, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0],
         [0, 0, 0, 1, 0], [0, 1, 0, 1, 0]]
    )  # fmt: skip
    scorer = GroundTruthScorer(w_dec, w_enc, features, important, recovered_cos=0.95)
    scorer.add_batch(latents[:3], acts[:3])  # two batches: the sums must add up
    scorer.add_batch(latents[3:], acts[3:])
    got = scorer.compute()
    want = _brute_force(w_dec, w_enc, features, important, latents, acts, 0.95, 0.5)
    for key, value in want.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, abs=1e-6), key


def test_study_trains_through_the_runner_and_reports(tmp_path):
    """The whole study at toy size (seconds): every SAE trained by the runner, saved, scored;
    the control's SAEs on fresh weights, marked; report and figure written; the CLI refuses
    a bad value in one line before any work."""
    import json

    from sae_lens import SAE

    import sae_lens_e2e
    from sae_lens_e2e.analysis.report import parse_markdown_table
    from sae_lens_e2e.cli import main
    from sae_lens_e2e.pipelines.groundtruth.study import StudyConfig, run_groundtruth

    cfg = StudyConfig(
        model=SMALL,
        strategies=["local", "e2e"],
        coefficients={"local": [0.3], "e2e": [1.0]},
        training_tokens=8 * 256,
        n_eval_sequences=32,
        eval_batch_size=16,
        control="random-weights",
        control_strategies=["local"],
        device="cpu",
    )
    out = tmp_path / "gt"
    report = run_groundtruth(cfg, out, progress=False)
    for name in ("report.md", "report.json", "groundtruth.png"):
        assert (out / name).stat().st_size > 0, name
    written = json.loads((out / "report.json").read_text())
    assert written["sae_lens_e2e_version"] == sae_lens_e2e.__version__
    runs = written["runs"]
    assert [(r["label"], r["weights"]) for r in runs] == [
        ("local_lambda0.3", "trained"),
        ("e2e_lambda1", "trained"),
        ("random-weights/local_lambda0.3", "random-weights"),
    ]
    for run in runs:
        m = run["metrics"]
        assert 0 <= m["gt/dec_max_cos/important"] <= 1 and m["gt/alive"] == m[f"alive/{HOOK}"]
        assert m["gt/mcc/important"] >= 0 and m["kl"] >= 0
    sae = SAE.load_from_disk(out / runs[-1]["path"])
    assert sae.cfg.metadata.model_weights == "random-weights"
    table = parse_markdown_table((out / "report.md").read_text())
    assert [r["strategy"] for r in table] == ["local", "e2e", "local"]
    assert "## Control: random-weights" in (out / "report.md").read_text()
    assert report.facts["n_important"] == int(build_ground_truth(SMALL).important.sum())
    rc = main(["groundtruth", "--out", str(tmp_path / "x"), "--strategies", "local,nope"])
    assert rc == 2 and not (tmp_path / "x").exists()


@pytest.fixture
def keep_torch_threads():
    """The CLI sets torch's thread count for its process (share_cpu); run in this one, it
    must not change the thread count of the tests that follow."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_cli_warns_of_a_mostly_dead_sae_over_the_reports_tokens(
    tmp_path, monkeypatch, capsys, keep_torch_threads
):
    """The runners the study drives leave the mostly-dead warning to it, as the quickstart's
    do: an SAE killed by a huge lambda and lr is named and counted over the held-out tokens
    of the report's alive column (32 x 8 = 256), not the runner's own batch. On the CPU it
    takes the threads it is given (--threads; else the quickstart's fair share)."""
    import functools
    import json

    from sae_lens_e2e.cli import main
    from sae_lens_e2e.pipelines.groundtruth import study

    toy = functools.partial(
        study.StudyConfig, model=SMALL, training_tokens=8 * 256, n_eval_sequences=32,
        eval_batch_size=16, lr=3.0, device="cpu",
    )  # fmt: skip
    monkeypatch.setattr(study, "StudyConfig", toy)
    out = tmp_path / "gt"
    rc = main(["groundtruth", "--out", str(out), "--threads", "0"])
    assert rc == 2 and "--threads must be >= 1" in capsys.readouterr().err
    torch.set_num_threads(2)
    rc = main(["groundtruth", "--out", str(out), "--quiet", "--strategies", "local",
               "--coefficients", "local=1000", "--threads", "1"])  # fmt: skip
    assert rc == 0 and torch.get_num_threads() == 1
    (run,) = json.loads((out / "report.json").read_text())["runs"]
    m = run["metrics"]
    dead, alive = m[f"dead/{HOOK}"], m[f"alive/{HOOK}"]
    assert dead > alive and m["n_tokens"] == 32 * 8
    warnings = [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line]
    assert warnings == [
        f"WARNING: run local_lambda1000: {dead} of {dead + alive} latents of the SAE at {HOOK} "
        f"never fired on 256 held-out tokens (L0 {m[f'l0/{HOOK}']:.3g}): the SAE is mostly "
        "dead; try a lower lr or sparsity coefficient"
    ]
