"""End-to-end SAE training for SAELens (Braun et al. 2024).

The public names below are imported on first use (PEP 562), so that `sae-lens-e2e --help` and
the CLI's argument checks start without loading torch and SAELens. Using any of them registers
the e2e training architectures with SAELens's registry (as importing the package used to).
"""

from __future__ import annotations

import importlib
from typing import Any

from sae_lens_e2e.version import __version__

_EXPORTS = {
    "evaluate": "sae_lens_e2e.training.evaluation",
    "evaluate_many": "sae_lens_e2e.training.evaluation",
    "convert_checkpoint": "sae_lens_e2e.loading.convert",
    "export_reference_checkpoint": "sae_lens_e2e.loading.export",
    "saelens_to_reference": "sae_lens_e2e.loading.export",
    "push_to_hub": "sae_lens_e2e.loading.huggingface",
    "list_paper_saes": "sae_lens_e2e.loading.paper",
    "E2EConversionError": "sae_lens_e2e.loading.reference_format",
    "UnsafeCheckpointError": "sae_lens_e2e.loading.reference_format",
    "e2e_converter": "sae_lens_e2e.loading.sources",
    "hf_converter": "sae_lens_e2e.loading.sources",
    "load_e2e_sae": "sae_lens_e2e.loading.sources",
    "wandb_converter": "sae_lens_e2e.loading.sources",
    "E2EJumpReLUTrainingSAEConfig": "sae_lens_e2e.training.config",
    "E2EStandardTrainingSAEConfig": "sae_lens_e2e.training.config",
    "E2ETopKTrainingSAEConfig": "sae_lens_e2e.training.config",
    "LossCoefficients": "sae_lens_e2e.training.config",
    "compute_loss_terms": "sae_lens_e2e.training.losses",
    "E2ESAETrainingRunner": "sae_lens_e2e.training.runner",
    "E2EJumpReLUTrainingSAE": "sae_lens_e2e.training.sae",
    "E2EStandardTrainingSAE": "sae_lens_e2e.training.sae",
    "E2ETopKTrainingSAE": "sae_lens_e2e.training.sae",
    "register_e2e_architectures": "sae_lens_e2e.training.sae",
    "E2ETrainer": "sae_lens_e2e.training.trainer",
    "NonFiniteLossError": "sae_lens_e2e.training.checkpoints",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sae_lens_e2e' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    importlib.import_module("sae_lens_e2e.training.sae").register_e2e_architectures()
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
