"""`E2ESAETrainingRunner`: SAELens's runner shape (model + data + trainer) for e2e training."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from sae_lens.config import HfDataset, LanguageModelSAERunnerConfig
from sae_lens.constants import RUNNER_CFG_FILENAME, SPARSITY_FILENAME
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import SAE, SAEMetadata
from sae_lens.training.activations_store import ActivationsStore
from safetensors.torch import save_file

from sae_lens_e2e.atomic import WriteFailedError, atomic_directory, atomic_file
from sae_lens_e2e.locks import check_free, folder_lock
from sae_lens_e2e.models import load_model  # a TransformerLens name or a model folder
from sae_lens_e2e.names import inside
from sae_lens_e2e.training import warm_start
from sae_lens_e2e.training.checkpoints import TrainingInterrupted
from sae_lens_e2e.training.cost import run_flops
from sae_lens_e2e.training.distributed import check_split, join_from_env
from sae_lens_e2e.training.evaluation import alive_tokens_note, dead_latent_warnings, evaluate
from sae_lens_e2e.training.losses import as_e2e_config, downstream_hooks
from sae_lens_e2e.training.resume import check_allowed
from sae_lens_e2e.training.sae import register_e2e_architectures
from sae_lens_e2e.training.trainer import E2ETrainer, TokenStream
from sae_lens_e2e.training.validation import (
    check_run_environment,
    sae_hook_names,
    validate_run,
)
from sae_lens_e2e.version import __version__

EVAL_RESULTS_FILENAME = "eval_results.json"


class E2ESAETrainingRunner:
    """Train e2e SAEs on a TransformerLens model; mirrors `LanguageModelSAETrainingRunner`.

    `override_sae` warm-starts from existing SAELens SAEs: one SAE (for `cfg.hook_name`) or a
    dict hook name -> SAE. `cfg.from_pretrained_path` does the same from a saved SAE folder,
    `cfg.sae.warm_start_release` + `warm_start_sae_id` from a SAELens release (warm_start.py).

    `resume_allow_changes=["training_tokens"]` lets `cfg.resume_from_checkpoint` continue a
    run for another number of steps; any other change to what a run trains is refused.

    Under torchrun it trains data-parallel (see `distributed.py`): it joins the process group
    (creating it, with `dist_timeout` seconds per collective, if the caller has not), puts
    this rank on cuda:LOCAL_RANK, and only rank 0 logs and writes.
    """

    def __init__(
        self,
        cfg: LanguageModelSAERunnerConfig[Any],
        override_dataset: HfDataset | None = None,
        override_model: Any | None = None,
        override_sae: SAE[Any] | dict[str, SAE[Any]] | None = None,
        dist_timeout: float | None = None,
        resume_allow_changes: Iterable[str] = (),
    ) -> None:
        register_e2e_architectures()
        self.cfg = cfg
        # Fields a resume may change (only training_tokens: see training/resume.py).
        self.resume_allow_changes = check_allowed(resume_allow_changes)
        self.e2e = as_e2e_config(cfg)
        self.ranks = join_from_env(cfg, dist_timeout)  # before loading: picks this rank's GPU
        self.hooks = sae_hook_names(cfg)
        check_run_environment(cfg)  # devices, kernels, the SAEs' memory: before any loading
        if self.ranks.is_main and cfg.output_path is not None:  # before any work; run() locks
            check_free(cfg.output_path, "output_path")
        # Warm-start sources are loaded and checked before the model: refuse before any work.
        self._warm_start_sources = warm_start.load_sources(cfg, override_sae, "cpu")
        for hook in self._warm_start_sources:
            if hook not in self.hooks:
                raise ValueError(f"warm-start SAE given for {hook!r}, which is not an SAE hook")
        self.model = override_model or load_model(
            cfg.model_class_name,
            cfg.model_name,
            device=cfg.llm_device,
            model_from_pretrained_kwargs=cfg.model_from_pretrained_kwargs,
        )
        self.model.requires_grad_(False).eval()
        validate_run(cfg, self.model, self._downstream())
        check_split(cfg, self.e2e.gradient_accumulation_steps, self._n_eval_batches(), self.ranks)
        self.activations_store = ActivationsStore.from_config(
            self.model, cfg, override_dataset=override_dataset
        )
        torch.manual_seed(cfg.seed)
        self.saes = {hook: self._build_sae(hook) for hook in self.hooks}
        for hook, source in self._warm_start_sources.items():
            self.saes[hook].load_from_sae(source)
        self.eval_results: dict[str, Any] = {}
        # The end-of-run warning about a mostly dead SAE; a caller that evaluates the SAE on
        # other tokens (the quickstart) warns from its own numbers instead.
        self.warn_dead_latents = True

    def _downstream(self) -> list[str]:
        return downstream_hooks(self.model, self.hooks, self.e2e)

    def _build_sae(self, hook: str) -> Any:
        metadata = SAEMetadata(
            **self.cfg.sae.metadata.to_dict()
            | dict(
                model_name=self.cfg.model_name,
                model_class_name=self.cfg.model_class_name,
                hook_name=hook,
                hook_head_index=self.cfg.hook_head_index,
                context_size=self.cfg.context_size,
                prepend_bos=self.cfg.prepend_bos,
                dataset_path=self.cfg.dataset_path,
                model_from_pretrained_kwargs=self.cfg.model_from_pretrained_kwargs or {},
                sequence_separator_token=self.cfg.sequence_separator_token,
                disable_concat_sequences=self.cfg.disable_concat_sequences,
                exclude_special_tokens=self.cfg.exclude_special_tokens,
                sae_lens_e2e_version=__version__,
            )
        )
        sae_cfg = dataclasses.replace(self.cfg.sae, metadata=metadata, device=self.cfg.device)
        sae_class, _ = get_sae_training_class(sae_cfg.architecture())
        with warnings.catch_warnings():
            # SAELens tells whoever loads an SAE with model_from_pretrained_kwargs to load the
            # model with them; here the runner already did (and SAELens fills in a default).
            warnings.filterwarnings("ignore", message=r"\s*This SAE has non-empty model_from")
            return sae_class(sae_cfg)

    def _eval_batch_size(self) -> int:
        return self.cfg.eval_batch_size_prompts or self.cfg.store_batch_size_prompts

    def _n_eval_batches(self) -> int:
        return max(1, self.cfg.n_eval_batches)

    def _eval_tokens(self, stream: TokenStream) -> torch.Tensor:
        """This rank's whole batches of the held-out sequences, drawn (on every rank alike)
        before training, so that no rank ever trains on them."""
        batch = self._eval_batch_size()
        return self.ranks.rows(stream.next(self._n_eval_batches() * batch), unit=batch)

    def _evaluate(self, tokens: torch.Tensor) -> dict[str, Any]:
        """Sharded over ranks, reduced token-weighted: the numbers one process would get."""
        return evaluate(
            self.model,
            self.saes,
            tokens,
            batch_size=self._eval_batch_size(),
            reduce=self.ranks.sum_over_ranks,
        )

    def run(self) -> dict[str, Any]:
        """Train, evaluate on held-out tokens, save; returns hook name -> trained SAE.

        Rank 0 locks `output_path` and the checkpoint run folder for the run (`locks.py`): a
        second run into either is refused, naming the run that holds it.
        """
        with contextlib.ExitStack() as locks:
            if self.ranks.is_main and self.cfg.output_path is not None:
                locks.enter_context(folder_lock(self.cfg.output_path, "output_path"))
            return self._run(locks)

    def _lock_checkpoints(self, trainer: E2ETrainer, locks: contextlib.ExitStack) -> None:
        """The run folder this run writes checkpoints into (also when it resumed one)."""
        periodic = self.cfg.checkpoint_path is not None and self.cfg.n_checkpoints > 0
        writes = periodic or self.cfg.save_final_checkpoint
        if not (writes and self.ranks.is_main):
            return
        folder = Path(trainer.checkpoint_root or "checkpoints").absolute()
        if self.cfg.output_path is None or folder != Path(self.cfg.output_path).absolute():
            locks.enter_context(folder_lock(folder, "checkpoint folder"))

    def _run(self, locks: contextlib.ExitStack) -> dict[str, Any]:
        stream = TokenStream(self.activations_store)
        eval_tokens = self._eval_tokens(stream)

        def evaluator() -> dict[str, Any]:
            metrics = self._evaluate(eval_tokens)
            return {k: v for k, v in metrics.items() if not isinstance(v, torch.Tensor)}

        trainer = E2ETrainer(self.cfg, self.model, self.saes, stream, evaluator, self.ranks)
        if self.cfg.resume_from_checkpoint is not None:
            path = trainer.load_checkpoint(
                self.cfg.resume_from_checkpoint, self.resume_allow_changes
            )
            print(f"resuming from {path} at step {trainer.step}")
        self._lock_checkpoints(trainer, locks)
        wandb_run = self._init_wandb() if self.ranks.is_main else None
        try:
            start_step, start = trainer.step, time.perf_counter()
            trainer.fit()
            cost = self._cost(trainer, start_step, time.perf_counter() - start)
            results = self._evaluate(eval_tokens) | cost
            self.eval_results = results
            if self.cfg.save_final_checkpoint:
                trainer.save_checkpoint()
            if self.ranks.is_main:
                if self.cfg.output_path is not None:
                    self.save(Path(self.cfg.output_path), results)
                print(format_summary(results, trainer.schedule.label))
                for warning in dead_latent_warnings(results) if self.warn_dead_latents else []:
                    print(warning, file=sys.stderr)
            self.ranks.barrier()  # every rank returns once rank 0's outputs exist
        except KeyboardInterrupt:
            raise TrainingInterrupted(trainer.step, trainer.last_checkpoint) from None
        except WriteFailedError as err:  # disk full, file-size limit: what is safe to resume
            err.note = f"last good checkpoint: {trainer.last_checkpoint or 'none written yet'}"
            raise
        finally:
            if wandb_run is not None:
                wandb_run.finish()
        return self.saes

    def _cost(self, trainer: E2ETrainer, start_step: int, seconds: float) -> dict[str, Any]:
        """Wall time of the training loop in this process and the run's estimated FLOPs."""
        schedule = trainer.schedule
        return {
            "train_wall_time_s": seconds,
            "train_steps": trainer.total_steps,
            "train_local_steps": schedule.switch,
            "resumed_from_step": start_step,
            "train_flops": run_flops(
                self.model,
                self.saes,
                schedule,
                trainer.total_steps,
                self.cfg.train_batch_size_tokens,
                self.cfg.context_size,
            ),
        }

    def _init_wandb(self) -> Any:
        if not self.cfg.logger.log_to_wandb:
            return None
        import wandb

        return wandb.init(
            project=self.cfg.logger.wandb_project,
            entity=self.cfg.logger.wandb_entity,
            config=self.cfg.to_dict(),
            name=self.cfg.logger.run_name,
            id=self.cfg.logger.wandb_id,
        )

    def save(self, output_path: Path, results: dict[str, Any]) -> Path:
        """One stock SAELens folder per SAE (`<output>/<hook>/`), each written atomically.

        Only those folders and the two JSON files are replaced; anything else already in
        `output_path` (e.g. checkpoints) is left alone, as SAELens's runner does.
        """
        for hook, sae in self.saes.items():
            with atomic_directory(inside(output_path, hook)) as tmp:
                sae.save_inference_model(tmp)
                density = results[f"log10_feature_density/{hook}"]
                save_file({"sparsity": density.contiguous()}, tmp / SPARSITY_FILENAME)
        scalars = {k: v for k, v in results.items() if not isinstance(v, torch.Tensor)}
        files = {
            RUNNER_CFG_FILENAME: json.dumps(
                {**self.cfg.to_dict(), "sae_lens_e2e_version": __version__}, default=str
            ),
            EVAL_RESULTS_FILENAME: json.dumps(scalars, indent=2),
        }
        for name, text in files.items():
            with atomic_file(output_path / name) as tmp:
                tmp.write_text(text)
        return output_path


def format_summary(results: dict[str, Any], strategy: str) -> str:
    """A short human-readable table of the final evaluation."""
    lines = [
        f"e2e training finished (strategy={strategy}), held-out evaluation on "
        f"{results['n_tokens']} tokens:",
        f"  CE clean {results['ce_loss_clean']:.4f} | with SAEs {results['ce_loss_with_sae']:.4f}"
        f" | zero-ablation {results['ce_loss_zero_ablation']:.4f}",
        f"  CE increase {results['ce_loss_increase']:.4f} | CE recovered "
        f"{results['ce_loss_recovered']:.3f} | KL {results['kl']:.4f}",
    ]
    if "train_flops" in results:
        lines.append(
            f"  training: {results['train_wall_time_s']:.1f} s wall time, "
            f"~{results['train_flops']:.3g} FLOPs (estimate, training/cost.py)"
        )
    prefixes = ("l0/", "alive/", "explained_variance/", "explained_variance_per_token/")
    for key, value in results.items():
        if key.startswith(prefixes):
            lines.append(
                f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}"
            )
    note = alive_tokens_note(results["n_tokens"])
    return "\n".join(lines + ([f"  note: {note}"] if note else []))
