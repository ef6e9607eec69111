"""E2E training SAEs: SAELens training SAEs whose decoder rows are unit-normalised in the forward.

The reference e2e code normalises the dictionary inside every forward pass, which makes the
Lp penalty on `c` meaningful without SAELens's `||W_dec||` weighting. Saving bakes the
normalisation into `W_dec`, so the file is a plain `standard` / `topk` SAE.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, register_sae_training_class
from sae_lens.saes.sae import (
    SAE,
    TrainCoefficientConfig,
    TrainingSAE,
    TrainStepInput,
    TrainStepOutput,
)
from sae_lens.saes.standard_sae import StandardTrainingSAE
from sae_lens.saes.topk_sae import TopK
from torch import nn

from sae_lens_e2e import kernels
from sae_lens_e2e.training.config import E2EStandardTrainingSAEConfig, E2ETopKTrainingSAEConfig
from sae_lens_e2e.training.sae_lens_trainer import (
    sae_lens_coefficients,
    sae_lens_training_forward_pass,
)


def reference_init_(sae: SAE[Any]) -> None:
    """Reference init: orthogonal decoder, nn.Linear-default encoder (U(+-1/sqrt(d_in)))."""
    with torch.no_grad():
        nn.init.orthogonal_(sae.W_dec.data)
        bound = 1.0 / sae.cfg.d_in**0.5
        sae.W_enc.data.uniform_(-bound, bound)
        sae.b_enc.data.uniform_(-bound, bound)


@torch.no_grad()
def unit_decoder_weights(sae: SAE[Any]) -> dict[str, torch.Tensor]:
    """W_enc, b_enc, W_dec, b_dec of the same function with unit decoder rows and no input shift.

    `apply_b_dec_to_input` folds into b_enc; decoder row norms move into the encoder (ReLU and
    TopK-on-rescaled-acts commute with positive per-latent scaling). Computed in float64.
    """
    cfg = sae.cfg
    name = cfg.metadata.hook_name or cfg.architecture()
    if cfg.normalize_activations != "none" or cfg.reshape_activations != "none":
        raise ValueError(f"SAE at {name}: activation normalisation/reshaping cannot be folded")
    W_enc, b_enc, W_dec, b_dec = (
        getattr(sae, n).detach().double() for n in ("W_enc", "b_enc", "W_dec", "b_dec")
    )
    if cfg.apply_b_dec_to_input:
        b_enc = b_enc - b_dec @ W_enc
    norms = W_dec.norm(dim=1)
    scale = torch.where(norms > 0, norms, torch.ones_like(norms))
    # Without rescaling, moving norms into the encoder would change which latents TopK picks.
    topk_unscaled = cfg.architecture() == "topk" and not getattr(
        cfg, "rescale_acts_by_decoder_norm", False
    )
    if topk_unscaled and not torch.allclose(scale, torch.ones_like(scale), atol=1e-4):
        raise ValueError(f"TopK SAE at {name}: decoder rows are not unit norm; not exact")
    return {
        "W_enc": W_enc * scale,
        "b_enc": b_enc * scale,
        "W_dec": W_dec / scale[:, None],
        "b_dec": b_dec,
    }


class E2ESAEMixin:
    """Shared e2e behaviour; mixed in before a SAELens TrainingSAE class."""

    cfg: E2EStandardTrainingSAEConfig | E2ETopKTrainingSAEConfig
    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter

    @property
    def activation_name(self) -> str:
        raise NotImplementedError

    def normalized_W_dec(self) -> torch.Tensor:
        return F.normalize(self.W_dec, dim=-1)

    def e2e_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(feature_acts, sae_out) for x [..., d_in], through the configured kernel backend."""
        flat = x.reshape(-1, x.shape[-1]).to(self.W_enc.dtype)
        acts, out = kernels.sae_forward(
            flat,
            self.W_enc,
            self.b_enc,
            self.W_dec,
            self.b_dec,
            activation=self.activation_name,
            k=getattr(self.cfg, "k", None),
            backend=self.cfg.kernels,
        )
        return acts.reshape(*x.shape[:-1], -1), out.reshape(x.shape)

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        return feature_acts @ self.normalized_W_dec() + self.b_dec

    # SAELens's own trainer calls these two (ours never does): see training/sae_lens_trainer.py.
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return sae_lens_coefficients(self)

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        return sae_lens_training_forward_pass(self, step_input)

    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        """Bake the forward-pass normalisation into W_dec so stock SAELens reproduces us."""
        state_dict["W_dec"] = F.normalize(state_dict["W_dec"], dim=-1).contiguous()

    @torch.no_grad()
    def load_from_sae(self, source: SAE[Any]) -> None:
        """Warm start from a standard/TopK SAELens SAE, preserving its function exactly."""
        for name in ("d_in", "d_sae"):
            if getattr(source.cfg, name) != getattr(self.cfg, name):
                raise ValueError(
                    f"warm-start SAE has {name}={getattr(source.cfg, name)}, "
                    f"config says {getattr(self.cfg, name)}"
                )
        expected = {"relu": "standard", "topk": "topk"}[self.activation_name]
        if source.cfg.architecture() != expected:
            raise ValueError(
                f"cannot warm start a {self.cfg.architecture()} SAE from a "
                f"{source.cfg.architecture()!r} SAE (expected {expected!r})"
            )
        for name, value in unit_decoder_weights(source).items():
            getattr(self, name).data.copy_(value)


class E2EStandardTrainingSAE(E2ESAEMixin, StandardTrainingSAE):  # type: ignore[misc]
    """ReLU e2e SAE (the paper's). Saved as a stock `standard` SAE."""

    cfg: E2EStandardTrainingSAEConfig  # type: ignore[assignment]

    @property
    def activation_name(self) -> str:
        return "relu"

    def initialize_weights(self) -> None:
        super().initialize_weights()
        if self.cfg.init_decoder_orthogonal:
            reference_init_(self)


class E2ETopKTrainingSAE(E2ESAEMixin, TrainingSAE[E2ETopKTrainingSAEConfig]):  # type: ignore[misc]
    """TopK e2e SAE: fixed k, no sparsity term. Saved as a stock `topk` SAE."""

    b_enc: nn.Parameter

    @property
    def activation_name(self) -> str:
        return "topk"

    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))
        if self.cfg.init_decoder_orthogonal:
            reference_init_(self)

    def get_activation_fn(self) -> Any:
        return TopK(self.cfg.k)

    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_pre = self.hook_sae_acts_pre(self.process_sae_in(x) @ self.W_enc + self.b_enc)
        return self.hook_sae_acts_post(self.activation_fn(hidden_pre)), hidden_pre

    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        return {}


E2ETrainingSAE = E2EStandardTrainingSAE | E2ETopKTrainingSAE

_ARCHITECTURES: dict[str, tuple[type[TrainingSAE[Any]], type[Any]]] = {
    "e2e_standard": (E2EStandardTrainingSAE, E2EStandardTrainingSAEConfig),
    "e2e_topk": (E2ETopKTrainingSAE, E2ETopKTrainingSAEConfig),
}


def register_e2e_architectures() -> None:
    """Register the e2e training architectures with SAELens; safe to call repeatedly."""
    for name, (sae_class, cfg_class) in _ARCHITECTURES.items():
        registered = SAE_TRAINING_CLASS_REGISTRY.get(name)
        if registered is None:
            register_sae_training_class(name, sae_class, cfg_class)
        elif registered != (sae_class, cfg_class):
            # A reloaded module defines new class objects; point the registry at them.
            SAE_TRAINING_CLASS_REGISTRY[name] = (sae_class, cfg_class)
