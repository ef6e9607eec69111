"""E2E training configs: SAELens training-SAE configs that also carry the e2e strategy.

The strategy lives on the SAE config (not on a new runner config) so that a plain
`LanguageModelSAERunnerConfig(sae=E2EStandardTrainingSAEConfig(...), ...)` selects it, and so
that SAELens records every e2e field in `metadata.training_architecture_details` of the
saved SAE.

Coefficient convention (the paper's lambda means the same thing here):
    loss = kl_coefficient * KL(P_orig || P_sae)
         + l1_coefficient * sum_saes ||c||_p.mean() / d_in
         + out_to_in_coefficient * sum_saes mse(sae_out, sae_in)         (mean over d_in too)
         + in_to_orig_coefficient * mean_h mse(act_h spliced, act_h clean)
with decoder rows unit-normalised inside every forward pass. Stock SAELens's standard SAE
uses `mse.sum(-1).mean() + l1 * ||c * ||W_dec||||_1.mean()`; with unit-norm decoder rows that is
exactly d_in times our `local` loss, so a `local` lambda equals SAELens's `l1_coefficient`
(Adam is invariant to the common factor). For `e2e` the KL term is not divided by d_in, so
the SAELens-equivalent l1 of an e2e lambda is lambda / d_in relative to a KL of weight 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import SAEConfig, TrainingSAEConfig
from sae_lens.saes.standard_sae import StandardSAEConfig, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKSAEConfig

Strategy = Literal["local", "e2e", "e2e_ds"]
STRATEGIES: tuple[str, ...] = ("local", "e2e", "e2e_ds")
KL_BALANCES: tuple[str, ...] = ("fixed", "per_step")
KERNEL_BACKENDS: tuple[str, ...] = ("auto", "triton", "torch")

# Paper defaults per strategy: (kl, out_to_in, in_to_orig). e2e_ds used in_to_orig 2.5 at
# layers 2 and 6 of GPT-2 small and 0.05 at layer 10; 2.5 is the default here.
_DEFAULT_COEFFICIENTS: dict[str, tuple[float, float, float]] = {
    "local": (0.0, 1.0, 0.0),
    "e2e": (1.0, 0.0, 0.0),
    "e2e_ds": (0.5, 0.0, 2.5),
}


@dataclass(frozen=True)
class LossCoefficients:
    """Resolved weights of each loss term (sparsity weight is `l1_coefficient`)."""

    kl: float
    sparsity: float
    out_to_in: float
    in_to_orig: float
    # "per_step": the KL's weight is also multiplied by alpha = (out_to_in / KL).detach()
    kl_balance: str = "fixed"


@dataclass(kw_only=True)
class E2ETrainingMixin:
    """Fields shared by every e2e training architecture. See the module docstring."""

    strategy: Strategy = "e2e"
    kl_coefficient: float | None = None
    out_to_in_coefficient: float | None = None
    in_to_orig_coefficient: float | None = None
    # Hooks whose activations the e2e_ds term reconstructs; None -> every
    # blocks.{l+1..L-1}.hook_resid_pre after the last SAE.
    downstream_hooks: list[str] | None = None
    # Further SAE positions trained in the same run, spliced in together with `hook_name`.
    additional_hook_names: list[str] = field(default_factory=list)
    grad_clip_norm: float | None = 1.0
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    kernels: Literal["auto", "triton", "torch"] = "auto"
    init_decoder_orthogonal: bool = True
    # Local-to-e2e schedule (training/schedule.py): the first round(f * steps) steps train
    # `local`, the rest `strategy`; None trains `strategy` throughout.
    e2e_start_fraction: float | None = None
    # Forget Adam's moments at the switch; keeping them measured better on the quickstart
    # model (README, "Local-to-e2e: what it costs and what it buys").
    reset_optimizer_at_switch: bool = False
    # Warm start from a SAELens release via SAE.from_pretrained (e.g. a Gemma Scope SAE).
    warm_start_release: str | None = None
    warm_start_sae_id: str | None = None
    # Tokens per chunk when the KL and CE are taken from the final residuals (the logits are
    # never held whole: training/logits.py); None picks it from a memory budget.
    logits_chunk_tokens: int | None = None
    # "per_step": the published Gemma Scope / Karvonen KL fine-tune, which weighs KL and the
    # SAE's reconstruction MSE (out_to_in) equally at every step:
    # loss = (alpha * KL + MSE) / 2 with alpha = (MSE / KL).detach(), sparsity and in_to_orig
    # weighted as configured; alpha is logged as `kl_alpha`.
    kl_balance: Literal["fixed", "per_step"] = "fixed"

    def validate_e2e_fields(self) -> None:
        """Reject bad values early, with the field name in the message."""
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r} is not one of {STRATEGIES}")
        if getattr(self, "apply_b_dec_to_input", False):
            raise ValueError("apply_b_dec_to_input must be False for e2e SAEs (as the reference)")
        if self.kernels not in KERNEL_BACKENDS:
            raise ValueError(f"kernels={self.kernels!r} is not one of {KERNEL_BACKENDS}")
        if self.gradient_accumulation_steps < 1:
            raise ValueError(
                f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}"
            )
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ValueError(f"grad_clip_norm must be positive or None, got {self.grad_clip_norm}")
        for name in ("kl_coefficient", "out_to_in_coefficient", "in_to_orig_coefficient"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.logits_chunk_tokens is not None and self.logits_chunk_tokens < 1:
            raise ValueError(
                f"logits_chunk_tokens must be >= 1 or None, got {self.logits_chunk_tokens}"
            )
        self._validate_kl_balance()
        self._validate_schedule_and_warm_start()

    def _validate_kl_balance(self) -> None:
        if self.kl_balance not in KL_BALANCES:
            raise ValueError(f"kl_balance={self.kl_balance!r} is not one of {KL_BALANCES}")
        if self.kl_balance == "fixed":
            return
        if self.strategy == "local":
            raise ValueError("kl_balance='per_step' needs strategy 'e2e' or 'e2e_ds', got 'local'")
        for name in ("kl_coefficient", "out_to_in_coefficient"):
            if getattr(self, name) is not None:
                raise ValueError(
                    f"{name}={getattr(self, name)} with kl_balance='per_step', which weighs KL "
                    "and out_to_in 1/2 each (KL times alpha): leave it unset"
                )

    def _validate_schedule_and_warm_start(self) -> None:
        fraction = self.e2e_start_fraction
        if fraction is not None and not 0 < fraction < 1:
            raise ValueError(f"e2e_start_fraction must be in (0, 1) or None, got {fraction}")
        if fraction is not None and self.strategy == "local":
            raise ValueError("e2e_start_fraction needs strategy 'e2e' or 'e2e_ds', got 'local'")
        if (self.warm_start_release is None) != (self.warm_start_sae_id is None):
            raise ValueError(
                "warm_start_release and warm_start_sae_id go together, got "
                f"{self.warm_start_release!r} and {self.warm_start_sae_id!r}"
            )

    def sparsity_coefficient(self) -> float:
        return 0.0

    def loss_coefficients(self) -> LossCoefficients:
        kl, out_to_in, in_to_orig = _DEFAULT_COEFFICIENTS[self.strategy]
        if self.kl_balance == "per_step" and self.strategy != "local":
            return LossCoefficients(
                kl=0.5, sparsity=self.sparsity_coefficient(), out_to_in=0.5,
                in_to_orig=in_to_orig if self.in_to_orig_coefficient is None
                else self.in_to_orig_coefficient, kl_balance="per_step",
            )  # fmt: skip
        return LossCoefficients(
            kl=kl if self.kl_coefficient is None else self.kl_coefficient,
            sparsity=self.sparsity_coefficient(),
            out_to_in=out_to_in
            if self.out_to_in_coefficient is None
            else self.out_to_in_coefficient,
            in_to_orig=in_to_orig
            if self.in_to_orig_coefficient is None
            else self.in_to_orig_coefficient,
        )

    def add_training_info_to_metadata(self) -> None:
        """Also record the strategy at the top level of the saved SAE's metadata."""
        super().add_training_info_to_metadata()  # type: ignore[misc]
        self.metadata.training_strategy = self.strategy  # type: ignore[attr-defined]


@dataclass(kw_only=True)
class E2EStandardTrainingSAEConfig(E2ETrainingMixin, StandardTrainingSAEConfig):
    """ReLU SAE (the paper's). `l1_coefficient` is the paper's lambda; `lp_norm` its p."""

    apply_b_dec_to_input: bool = False
    decoder_init_norm: float | None = None

    @classmethod
    def architecture(cls) -> str:
        return "e2e_standard"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_e2e_fields()

    def sparsity_coefficient(self) -> float:
        return self.l1_coefficient

    def get_inference_config_class(self) -> type[SAEConfig]:
        return StandardSAEConfig


@dataclass(kw_only=True)
class E2ETopKTrainingSAEConfig(E2ETrainingMixin, TrainingSAEConfig):
    """TopK SAE: fixed k, no sparsity term. Saved as a stock `topk` SAE."""

    k: int = 100
    apply_b_dec_to_input: bool = False
    decoder_init_norm: float | None = None
    # The decoder is normalised in the forward pass, so the stock TopK SAE must not rescale.
    rescale_acts_by_decoder_norm: bool = False

    @classmethod
    def architecture(cls) -> str:
        return "e2e_topk"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_e2e_fields()
        if not 0 < self.k <= self.d_sae:
            raise ValueError(f"k must be in [1, d_sae={self.d_sae}], got {self.k}")
        if self.apply_b_dec_to_input or self.rescale_acts_by_decoder_norm:
            raise ValueError(
                "e2e TopK SAEs need apply_b_dec_to_input=False and rescale_acts_by_decoder_norm=False"
            )

    def get_inference_config_class(self) -> type[SAEConfig]:
        return TopKSAEConfig


@dataclass(kw_only=True)
class E2EJumpReLUTrainingSAEConfig(E2ETrainingMixin, JumpReLUTrainingSAEConfig):
    """JumpReLU SAE: the threshold trains through SAELens's straight-through estimator
    (`jumprelu_bandwidth`); the sparsity term is SAELens's L0 penalty
    (`jumprelu_sparsity_loss_mode`) weighted by `l0_coefficient`. Saved as stock `jumprelu`."""

    apply_b_dec_to_input: bool = False
    decoder_init_norm: float | None = None
    # SAELens's default 1.0 weighs the L0 (tens of latents) against a summed MSE; here it
    # weighs against a KL of a fraction of a nat, so the default is smaller.
    l0_coefficient: float = 0.01
    # Keep the (e.g. Gemma Scope) threshold as loaded: the published KL fine-tunes freeze it.
    freeze_threshold: bool = False

    @classmethod
    def architecture(cls) -> str:
        return "e2e_jumprelu"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_e2e_fields()
        if self.l0_warm_up_steps:
            raise ValueError(
                f"l0_warm_up_steps={self.l0_warm_up_steps}: e2e training has no coefficient "
                "warm-up (as the reference); use 0"
            )
        if self.pre_act_loss_coefficient is not None:
            raise ValueError(
                f"pre_act_loss_coefficient={self.pre_act_loss_coefficient}: needs SAELens's "
                "dead-latent tracking, which e2e training does not have; use None"
            )

    def sparsity_coefficient(self) -> float:
        return self.l0_coefficient

    def get_inference_config_class(self) -> type[SAEConfig]:
        return JumpReLUSAEConfig


E2ETrainingSAEConfig = (
    E2EStandardTrainingSAEConfig | E2ETopKTrainingSAEConfig | E2EJumpReLUTrainingSAEConfig
)
