"""What one optimiser step does, checked where a planted bug would show: the gradients Adam
sees (accumulation, clipping), the LR of every step against SAELens's schedule, no gradient
into the language model, and gradient checkpointing that really recomputes."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_tiny_model, make_token_dataset
from e2e_helpers import runner_config

from sae_lens_e2e import (
    E2ESAETrainingRunner,
    E2EStandardTrainingSAE,
    E2EStandardTrainingSAEConfig,
    compute_loss_terms,
)
from sae_lens_e2e.training import distributed

HOOK = "blocks.1.hook_resid_pre"
STEPS, WARM_UP, LR, LR_END, CLIP = 6, 2, 1e-2, 1e-3, 0.05


def _expected_lr(step: int) -> float:
    """SAELens's `cosineannealing` with linear warm-up, in closed form: the LR of 0-based
    optimiser step `step` (warm-up from lr / W to lr over W steps, then cosine to lr_end)."""
    if step < WARM_UP:
        return LR * (1 / WARM_UP + (1 - 1 / WARM_UP) * step / (WARM_UP - 1))
    progress = (step - WARM_UP) / (STEPS - WARM_UP)
    return LR_END + (LR - LR_END) * (1 + math.cos(math.pi * progress)) / 2


def _run_recording(tmp, clip: float | None) -> tuple[list[dict], E2ESAETrainingRunner]:
    """Every optimiser step of a 6-step e2e_ds run with two SAEs and gradient accumulation
    2: the tokens of its micro-batches, the SAEs' weights and gradients as Adam receives
    them, and its LR."""
    cfg = runner_config(
        tmp, strategy="e2e_ds", steps=STEPS, lr=LR, lr_end=LR_END, lr_warm_up_steps=WARM_UP,
        sae={"gradient_accumulation_steps": 2, "grad_clip_norm": clip,
             "additional_hook_names": ["blocks.2.hook_resid_pre"]},
        train_batch_size_tokens=128, training_tokens=128 * STEPS,
    )  # fmt: skip
    runner = E2ESAETrainingRunner(
        cfg, override_model=make_tiny_model(), override_dataset=make_token_dataset()
    )
    seen: list[dict] = []
    micro_batches: list[torch.Tensor] = []
    compute = distributed.compute_loss_terms

    def spy(model, saes, tokens, cfg, **kw):
        micro_batches.append(tokens.clone())
        return compute(model, saes, tokens, cfg, **kw)

    optimizer_step = torch.optim.Adam.step

    def recording_step(optimizer, *args, **kwargs):
        seen.append({
            "tokens": list(micro_batches),
            "saes": {h: copy.deepcopy(s) for h, s in runner.saes.items()},
            "grads": {(h, n): p.grad.clone() for h, s in runner.saes.items()
                      for n, p in s.named_parameters()},
            "lr": optimizer.param_groups[0]["lr"],
        })  # fmt: skip
        micro_batches.clear()
        return optimizer_step(optimizer, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distributed, "compute_loss_terms", spy)
        mp.setattr(torch.optim.Adam, "step", recording_step)
        runner.run()
    return seen, runner


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """Unclipped steps: Adam must see exactly the whole batch's gradient."""
    return _run_recording(tmp_path_factory.mktemp("steps"), None)


@pytest.fixture(scope="module")
def clipped_steps(tmp_path_factory):
    """Steps whose gradient norm is far above grad_clip_norm."""
    return _run_recording(tmp_path_factory.mktemp("clipped"), CLIP)


def _whole_batch_gradients(record: dict, runner: E2ESAETrainingRunner) -> dict:
    """The gradient of the step's whole batch (all its micro-batches as one) at the weights
    the step started from, computed directly with compute_loss_terms."""
    saes = record["saes"]
    for sae in saes.values():
        sae.zero_grad(set_to_none=True)
    loss = compute_loss_terms(runner.model, saes, torch.cat(record["tokens"]), runner.cfg)
    loss["loss"].backward()
    return {(h, n): p.grad for h, s in saes.items() for n, p in s.named_parameters()}


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Equal up to float summation order (measured: <= 6e-7 of the largest element)."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale, msg=what)


def test_adam_gets_the_gradient_of_the_whole_step(steps):
    """Accumulation over micro-batches divides once: Adam receives the whole batch's mean
    gradient (before its update), not half or twice of it."""
    seen, runner = steps
    assert len(seen) == STEPS and all(len(s["tokens"]) == 2 for s in seen)
    for record in seen:
        for key, grad in _whole_batch_gradients(record, runner).items():
            _assert_close(record["grads"][key], grad, str(key))


def test_adam_gets_the_whole_steps_gradient_clipped_to_grad_clip_norm(clipped_steps):
    """Clipping scales the whole batch's gradient to grad_clip_norm (never skipped)."""
    seen, runner = clipped_steps
    for record in seen:
        expected = _whole_batch_gradients(record, runner)
        norm = torch.nn.utils.get_total_norm(list(expected.values())).item()
        assert norm > 2 * CLIP  # so clipping has something to do
        clipped = torch.nn.utils.get_total_norm(list(record["grads"].values())).item()
        assert clipped <= CLIP * (1 + 1e-5)
        for key, grad in expected.items():
            _assert_close(record["grads"][key], grad * CLIP / norm, str(key))


def test_the_lr_of_every_step_follows_the_schedule(steps, clipped_steps):
    for seen, _ in (steps, clipped_steps):
        lrs = [record["lr"] for record in seen]
        assert lrs == pytest.approx([_expected_lr(k) for k in range(STEPS)], rel=1e-9)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_no_gradient_reaches_a_model_left_trainable(checkpointing):
    """A freshly loaded model's parameters require grad; compute_loss_terms' backward must
    not touch them (nor their flags): only the SAE learns."""
    model = make_tiny_model()
    assert all(p.requires_grad for p in model.parameters())
    sae = _sae(gradient_checkpointing=checkpointing)
    tokens = torch.randint(0, 64, (2, 16))
    compute_loss_terms(model, {HOOK: sae}, tokens, sae.cfg)["loss"].backward()
    touched = [n for n, p in model.named_parameters() if p.grad is not None]
    assert touched == []
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is not None for p in sae.parameters())


def _sae(**kw) -> E2EStandardTrainingSAE:
    torch.manual_seed(0)
    cfg = E2EStandardTrainingSAEConfig(d_in=16, d_sae=64, strategy="e2e_ds", **kw)
    return E2EStandardTrainingSAE(cfg)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_checkpointed_blocks_really_recompute(checkpointing):
    """With gradient checkpointing the blocks after the last SAE run a third time, in the
    backward pass (clean run, spliced run, recomputation); without it, twice. (Counted at
    each block's first hook: the recomputation stops once it has what backward needs.)"""
    model = make_tiny_model().requires_grad_(False)
    sae = _sae(gradient_checkpointing=checkpointing)
    calls = {2: 0, 3: 0}

    def count(layer):
        def hook(module, args, output):
            calls[layer] += 1

        return hook

    handles = [model.blocks[i].hook_resid_pre.register_forward_hook(count(i)) for i in calls]
    try:
        terms = compute_loss_terms(model, {HOOK: sae}, torch.randint(0, 64, (2, 16)), sae.cfg)
        assert calls == {2: 2, 3: 2}  # forward: clean and spliced
        terms["loss"].backward()
    finally:
        for handle in handles:
            handle.remove()
    assert calls == ({2: 3, 3: 3} if checkpointing else {2: 2, 3: 2})
