"""End-to-end SAE training for SAELens (Braun et al. 2024).

Importing the package registers the e2e training architectures with SAELens's registry.
"""

from sae_lens_e2e.analysis.evaluation import evaluate, evaluate_many
from sae_lens_e2e.loading.convert import convert_checkpoint
from sae_lens_e2e.loading.export import export_reference_checkpoint, saelens_to_reference
from sae_lens_e2e.loading.huggingface import push_to_hub
from sae_lens_e2e.loading.paper import list_paper_saes
from sae_lens_e2e.loading.reference_format import E2EConversionError, UnsafeCheckpointError
from sae_lens_e2e.loading.sources import e2e_converter, hf_converter, load_e2e_sae, wandb_converter
from sae_lens_e2e.training.config import (
    E2EStandardTrainingSAEConfig,
    E2ETopKTrainingSAEConfig,
    LossCoefficients,
)
from sae_lens_e2e.training.losses import compute_loss_terms
from sae_lens_e2e.training.runner import E2ESAETrainingRunner
from sae_lens_e2e.training.sae import (
    E2EStandardTrainingSAE,
    E2ETopKTrainingSAE,
    register_e2e_architectures,
)
from sae_lens_e2e.training.trainer import E2ETrainer, NonFiniteLossError

register_e2e_architectures()

__all__ = [
    "E2EConversionError",
    "UnsafeCheckpointError",
    "convert_checkpoint",
    "e2e_converter",
    "export_reference_checkpoint",
    "hf_converter",
    "list_paper_saes",
    "load_e2e_sae",
    "push_to_hub",
    "saelens_to_reference",
    "wandb_converter",
    "E2ESAETrainingRunner",
    "E2EStandardTrainingSAE",
    "E2EStandardTrainingSAEConfig",
    "E2ETopKTrainingSAE",
    "E2ETopKTrainingSAEConfig",
    "E2ETrainer",
    "LossCoefficients",
    "NonFiniteLossError",
    "compute_loss_terms",
    "evaluate",
    "evaluate_many",
    "register_e2e_architectures",
]
