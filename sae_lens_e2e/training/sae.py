"""E2E training SAEs: SAELens training SAEs whose decoder rows are unit-normalised in the forward.

The reference e2e code normalises the dictionary inside every forward pass, which makes the
Lp penalty on `c` meaningful without SAELens's `||W_dec||` weighting. Saving bakes the
normalisation into `W_dec`, so the file is a plain `standard` / `topk` / `jumprelu` SAE.
Each architecture's `e2e_forward` also returns its own (unweighted) sparsity term.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY, register_sae_training_class
from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE
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
from sae_lens_e2e.training import warm_start
from sae_lens_e2e.training.config import (
    E2EJumpReLUTrainingSAEConfig,
    E2EStandardTrainingSAEConfig,
    E2ETopKTrainingSAEConfig,
)
from sae_lens_e2e.training.jumprelu import jumprelu_forward, l0_penalty
from sae_lens_e2e.training.losses import sparsity_loss
from sae_lens_e2e.training.sae_lens_trainer import (
    sae_lens_coefficients,
    sae_lens_training_forward_pass,
)


def reference_init_(sae: SAE[Any]) -> None:
    """Reference init: orthogonal decoder, nn.Linear-default encoder (U(+-1/sqrt(d_in))).

    The orthogonal matrix is drawn in fp32 and then cast: its QR (geqrf) has no bf16/fp16
    kernel on CPU or CUDA, so a half-precision SAE could not be built otherwise."""
    with torch.no_grad():
        W_dec = torch.empty(sae.W_dec.shape, dtype=torch.float32, device=sae.W_dec.device)
        sae.W_dec.data.copy_(nn.init.orthogonal_(W_dec))
        bound = 1.0 / sae.cfg.d_in**0.5
        sae.W_enc.data.uniform_(-bound, bound)
        sae.b_enc.data.uniform_(-bound, bound)


class E2ESAEMixin:
    """Shared e2e behaviour; mixed in before a SAELens TrainingSAE class."""

    cfg: E2EStandardTrainingSAEConfig | E2ETopKTrainingSAEConfig | E2EJumpReLUTrainingSAEConfig
    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter

    @property
    def activation_name(self) -> str:
        raise NotImplementedError

    def initialize_weights(self) -> None:
        super().initialize_weights()  # type: ignore[misc]
        if self.cfg.init_decoder_orthogonal:
            reference_init_(self)  # type: ignore[arg-type]

    def normalized_W_dec(self) -> torch.Tensor:
        return F.normalize(self.W_dec, dim=-1)

    def e2e_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(feature_acts, sae_out, sparsity term) for x [..., d_in], through the configured
        kernel backend; the sparsity term is unweighted (the loss applies its coefficient)."""
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
        sparsity = self.sparsity_term(acts, acts)
        return acts.reshape(*x.shape[:-1], -1), out.reshape(x.shape), sparsity

    def sparsity_term(self, feature_acts: torch.Tensor, hidden_pre: torch.Tensor) -> torch.Tensor:
        """This architecture's sparsity term, unweighted; here the reference's Lp penalty."""
        return sparsity_loss(feature_acts, float(getattr(self.cfg, "lp_norm", 1.0)), self.cfg.d_in)

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

    def load_from_sae(self, source: SAE[Any]) -> None:
        """Warm start from a SAELens SAE, preserving its function exactly (see warm_start)."""
        warm_start.copy_into(self, source)

    # SAELens's folds assume the decoder is used as stored; ours is normalised in the forward,
    # so these keep the SAE's function exactly instead (tests/test_warm_start.py).
    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """Unit decoder rows: the forward already uses the normalised rows, so nothing moves
        into the encoder (SAELens's fold would scale it by norms nothing then divides out)."""
        self.W_dec.data = F.normalize(self.W_dec.data, dim=-1)

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """Take raw inputs x instead of `scaling_factor * x`, returning f(s x) / s: ReLU, TopK
        and JumpReLU commute with a positive scale, so b_enc, b_dec (and the threshold) are
        divided by s (SAELens divides W_dec, which the normalising forward would undo)."""
        if not scaling_factor > 0:
            raise ValueError(f"scaling_factor must be positive, got {scaling_factor}")
        self.b_enc.data /= scaling_factor
        self.b_dec.data /= scaling_factor
        threshold = getattr(self, "threshold", None)
        if threshold is not None:
            threshold.data /= scaling_factor
        self.cfg.normalize_activations = "none"


class E2EStandardTrainingSAE(E2ESAEMixin, StandardTrainingSAE):  # type: ignore[misc]
    """ReLU e2e SAE (the paper's). Saved as a stock `standard` SAE."""

    cfg: E2EStandardTrainingSAEConfig  # type: ignore[assignment]

    @property
    def activation_name(self) -> str:
        return "relu"


class E2ETopKTrainingSAE(E2ESAEMixin, TrainingSAE[E2ETopKTrainingSAEConfig]):  # type: ignore[misc]
    """TopK e2e SAE: fixed k, no sparsity term. Saved as a stock `topk` SAE."""

    b_enc: nn.Parameter

    @property
    def activation_name(self) -> str:
        return "topk"

    def initialize_weights(self) -> None:
        TrainingSAE.initialize_weights(self)  # the SAELens base has no b_enc; add it first
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))
        if self.cfg.init_decoder_orthogonal:
            reference_init_(self)

    def get_activation_fn(self) -> Any:
        return TopK(self.cfg.k)

    def sparsity_term(self, feature_acts: torch.Tensor, hidden_pre: torch.Tensor) -> torch.Tensor:
        return feature_acts.new_zeros((), dtype=torch.float32)

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


class E2EJumpReLUTrainingSAE(E2ESAEMixin, JumpReLUTrainingSAE):  # type: ignore[misc]
    """JumpReLU e2e SAE: SAELens's threshold (fp32, straight-through estimator with its
    bandwidth) and L0 penalty, decoder rows normalised in the forward. Saved as `jumprelu`."""

    cfg: E2EJumpReLUTrainingSAEConfig  # type: ignore[assignment]

    @property
    def activation_name(self) -> str:
        return "jumprelu"

    def __init__(self, cfg: E2EJumpReLUTrainingSAEConfig, use_error_term: bool = False) -> None:
        super().__init__(cfg, use_error_term)
        self.threshold.requires_grad_(not cfg.freeze_threshold)

    def _project_threshold(self) -> None:
        """Keep the threshold >= 0 by projection, as SAELens's training_forward_pass does."""
        with torch.no_grad():
            self.threshold.data.clamp_(min=0.0)

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        self._project_threshold()
        return super().training_forward_pass(step_input)

    def sparsity_term(self, feature_acts: torch.Tensor, hidden_pre: torch.Tensor) -> torch.Tensor:
        return l0_penalty(hidden_pre, feature_acts, self.threshold, self.cfg)

    def e2e_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._project_threshold()
        flat = x.reshape(-1, x.shape[-1]).to(self.W_enc.dtype)
        acts, out, pre = jumprelu_forward(
            flat, self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.threshold,
            bandwidth=self.bandwidth, ste_to_input=self.cfg.jumprelu_ste_to_input,
            backend=self.cfg.kernels,
        )  # fmt: skip
        sparsity = self.sparsity_term(acts, pre)
        return acts.reshape(*x.shape[:-1], -1), out.reshape(x.shape), sparsity


E2ETrainingSAE = E2EStandardTrainingSAE | E2ETopKTrainingSAE | E2EJumpReLUTrainingSAE

_ARCHITECTURES: dict[str, tuple[type[TrainingSAE[Any]], type[Any]]] = {
    "e2e_standard": (E2EStandardTrainingSAE, E2EStandardTrainingSAEConfig),
    "e2e_topk": (E2ETopKTrainingSAE, E2ETopKTrainingSAEConfig),
    "e2e_jumprelu": (E2EJumpReLUTrainingSAE, E2EJumpReLUTrainingSAEConfig),
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
