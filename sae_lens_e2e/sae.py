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
from sae_lens.saes.sae import SAE, TrainCoefficientConfig, TrainingSAE, TrainStepInput
from sae_lens.saes.standard_sae import StandardTrainingSAE
from sae_lens.saes.topk_sae import TopK
from torch import nn

from sae_lens_e2e import kernels
from sae_lens_e2e.config import E2EStandardTrainingSAEConfig, E2ETopKTrainingSAEConfig


def reference_init_(sae: SAE[Any]) -> None:
    """Reference init: orthogonal decoder, nn.Linear-default encoder (U(+-1/sqrt(d_in)))."""
    with torch.no_grad():
        nn.init.orthogonal_(sae.W_dec.data)
        bound = 1.0 / sae.cfg.d_in**0.5
        sae.W_enc.data.uniform_(-bound, bound)
        sae.b_enc.data.uniform_(-bound, bound)


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

    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        """Bake the forward-pass normalisation into W_dec so stock SAELens reproduces us."""
        state_dict["W_dec"] = F.normalize(state_dict["W_dec"], dim=-1).contiguous()

    @torch.no_grad()
    def load_from_sae(self, source: SAE[Any]) -> None:
        """Warm start from any standard/topk SAELens SAE, preserving its function exactly.

        `apply_b_dec_to_input` is folded into b_enc; decoder row norms are folded into the
        encoder (ReLU and TopK commute with positive per-latent scaling).
        """
        expected = {"d_in": self.cfg.d_in, "d_sae": self.cfg.d_sae}
        for name, value in expected.items():
            if getattr(source.cfg, name) != value:
                raise ValueError(
                    f"warm-start SAE has {name}={getattr(source.cfg, name)}, config says {value}"
                )
        if not hasattr(source, "b_enc") or type(source).__name__.startswith("JumpReLU"):
            raise ValueError(
                f"cannot warm start a {self.cfg.architecture()} SAE from a "
                f"{source.cfg.architecture()} SAE"
            )
        if getattr(source.cfg, "normalize_activations", "none") != "none":
            raise ValueError("warm-start SAE must have normalize_activations='none'")
        W_enc, b_enc = source.W_enc.float(), source.b_enc.float()
        W_dec, b_dec = source.W_dec.float(), source.b_dec.float()
        if source.cfg.apply_b_dec_to_input:
            b_enc = b_enc - b_dec @ W_enc
        if getattr(source.cfg, "rescale_acts_by_decoder_norm", False):
            norms = torch.ones_like(b_enc)  # acts are already per unit decoder direction
        else:
            norms = W_dec.norm(dim=-1).clamp_min(1e-8)
        self.W_enc.data.copy_(W_enc * norms)
        self.b_enc.data.copy_(b_enc * norms)
        self.W_dec.data.copy_(W_dec / W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))
        self.b_dec.data.copy_(b_dec)


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

    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {}

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
