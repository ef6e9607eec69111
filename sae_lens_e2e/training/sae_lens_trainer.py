"""Our SAEs under SAELens's own trainer (`LanguageModelSAETrainingRunner`, `SAETrainer`).

SAELens's runner accepts any registered training architecture and trains it through
`TrainingSAE.training_forward_pass` on shuffled activations: no tokens and no language model
reach the SAE. So `e2e` / `e2e_ds` are refused there, before any activation is read
(`SAETrainer.__init__` asks the SAE for `get_coefficients`, which our own trainer never
does), and so is a `local` config that SAELens's trainer would silently change (it trains
one SAE, clips gradients at 1.0, has no accumulation, and folds activation scaling into a
decoder we re-normalise). A `local` SAE trains there on exactly the reference's local loss,
from the same term functions as `compute_loss_terms`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sae_lens.saes.sae import TrainCoefficientConfig, TrainStepInput, TrainStepOutput

from sae_lens_e2e.training.config import E2ETrainingMixin
from sae_lens_e2e.training.losses import local_terms, weighted_loss
from sae_lens_e2e.training.splice import SplicedRun

SAELENS_GRAD_CLIP = 1.0  # hard-coded in SAETrainer._train_step
_USE_OURS = "use sae_lens_e2e.E2ESAETrainingRunner(cfg).run() or `sae-lens-e2e train CONFIG.yaml`"


def check_sae_lens_trainable(cfg: E2ETrainingMixin) -> None:
    """Raise unless SAELens's trainer would train exactly what `cfg` says."""
    if cfg.strategy != "local":
        raise ValueError(
            f"strategy={cfg.strategy!r}: this SAE trains through the language model, which "
            "SAELens's LanguageModelSAETrainingRunner / SAETrainer never runs (it would train "
            f"MSE + L1 on activations instead); {_USE_OURS}"
        )
    coeffs = cfg.loss_coefficients()
    normalize = getattr(cfg, "normalize_activations", "none")
    checks = [
        (coeffs.kl != 0, f"kl_coefficient={coeffs.kl} (needs the model's logits)"),
        (coeffs.in_to_orig != 0, f"in_to_orig_coefficient={coeffs.in_to_orig} (needs the model)"),
        (cfg.additional_hook_names, f"additional_hook_names={cfg.additional_hook_names} (SAELens "
         "trains one SAE)"),
        (cfg.gradient_accumulation_steps != 1, f"gradient_accumulation_steps="
         f"{cfg.gradient_accumulation_steps} (SAELens has no accumulation)"),
        (cfg.grad_clip_norm != SAELENS_GRAD_CLIP, f"grad_clip_norm={cfg.grad_clip_norm} (SAELens "
         f"clips at {SAELENS_GRAD_CLIP})"),
        (normalize != "none", f"normalize_activations={normalize!r} (SAELens folds the scale "
         "into W_dec, which our forward re-normalises)"),
    ]  # fmt: skip
    problems = [message for bad, message in checks if bad]
    if problems:
        raise ValueError(
            "SAELens's SAETrainer cannot train this local SAE as configured: "
            f"{'; '.join(problems)}; {_USE_OURS}"
        )


def sae_lens_coefficients(sae: Any) -> dict[str, float | TrainCoefficientConfig]:
    """`TrainingSAE.get_coefficients`: refuse (see `check_sae_lens_trainable`), else lambda."""
    check_sae_lens_trainable(sae.cfg)
    lam = sae.cfg.loss_coefficients().sparsity
    warm_up = getattr(sae.cfg, "l1_warm_up_steps", 0)
    return {"l1": TrainCoefficientConfig(value=lam, warm_up_steps=warm_up)} if lam else {}


def sae_lens_training_forward_pass(sae: Any, step_input: TrainStepInput) -> TrainStepOutput:
    """`TrainingSAE.training_forward_pass` for SAELens's trainer: the reference's local loss,
    out_to_in + lambda * sparsity, with lambda from SAELens's coefficient schedule."""
    check_sae_lens_trainable(sae.cfg)
    feature_acts, hidden_pre = sae.encode_with_hidden_pre(step_input.sae_in)
    sae_out = sae.decode(feature_acts)
    coeffs = dataclasses.replace(
        sae.cfg.loss_coefficients(), sparsity=step_input.coefficients.get("l1", 0.0)
    )
    name = sae.cfg.metadata.hook_name or "sae"
    run = SplicedRun(
        sae_in={name: step_input.sae_in},
        sae_out={name: sae_out},
        feature_acts={name: feature_acts},
        sparsity={name: sae.sparsity_term(feature_acts, hidden_pre)},
    )
    terms = local_terms({name: sae}, run, coeffs)
    return TrainStepOutput(
        sae_in=step_input.sae_in,
        sae_out=sae_out,
        feature_acts=feature_acts,
        hidden_pre=hidden_pre,
        loss=weighted_loss(terms, coeffs),
        losses=terms,
    )
