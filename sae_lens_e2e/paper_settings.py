"""How the paper ran GPT-2 small (Braun et al. 2024; the reference's `gpt2_*.yaml` configs).

The one place for the settings that the quickstart's GPT-2 defaults, the evaluation defaults,
the example configs and their tests share. Field names are SAELens's
`LanguageModelSAERunnerConfig` and our `E2EStandardTrainingSAEConfig`; the functions return
fresh copies, so a caller can change its own.
"""

from __future__ import annotations

from typing import Any

MODEL_NAMES = ("gpt2", "gpt2-small")  # TransformerLens names of GPT-2 small
DATASET = "apollo-research/Skylion007-openwebtext-tokenizer-gpt2"  # pre-tokenised rows
CONTEXT_SIZE = 1024
HOOK = "blocks.6.hook_resid_pre"
# The paper counts a latent as alive if it fires at least once in this many tokens.
ALIVE_TOKENS = 500_000
# Layer 6, "similar CE increase" lambdas (Table 2), and the e2e_ds downstream weight there.
COEFFICIENTS = {"local": (4.0,), "e2e": (3.0,), "e2e_ds": (50.0,)}
IN_TO_ORIG_COEFFICIENT = 2.5
_SEQUENCES_PER_STEP = 16  # effective batch: the reference's batches of 8, accumulated twice


def model_from_pretrained_kwargs() -> dict[str, bool]:
    """TransformerLens's `HookedTransformer.from_pretrained` defaults, as the reference loaded
    GPT-2; SAELens's `load_model` uses `from_pretrained_no_processing` unless told these."""
    return {
        "fold_ln": True,
        "center_writing_weights": True,
        "center_unembed": True,
        "fold_value_biases": True,
    }


def runner_settings() -> dict[str, Any]:
    """`LanguageModelSAERunnerConfig` fields of the paper's GPT-2 runs."""
    return {
        "model_name": "gpt2",
        "model_from_pretrained_kwargs": model_from_pretrained_kwargs(),
        "dataset_path": DATASET,
        "is_dataset_tokenized": True,
        "prepend_bos": False,  # rows of 1024 tokens of text, no BOS added
        "context_size": CONTEXT_SIZE,
        "train_batch_size_tokens": _SEQUENCES_PER_STEP * CONTEXT_SIZE,
        "training_tokens": 400_000 * CONTEXT_SIZE,  # 400k samples
        "lr": 5e-4,
        "lr_scheduler_name": "cosineannealing",
        "lr_warm_up_steps": 20_000 // _SEQUENCES_PER_STEP,  # 20k samples, linear
        "lr_end": 5e-5,  # min_lr_factor 0.1
    }


def sae_settings() -> dict[str, Any]:
    """`E2EStandardTrainingSAEConfig` fields of the paper's GPT-2 runs (besides lambda)."""
    return {
        "d_in": 768,
        "d_sae": 60 * 768,  # dict_size_to_input_ratio 60
        "grad_clip_norm": 10.0,
        "gradient_accumulation_steps": 2,  # batch 8, effective batch 16
    }


def is_paper_model(model_name: str | None) -> bool:
    return model_name in MODEL_NAMES
