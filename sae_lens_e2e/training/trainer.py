"""The e2e training loop: Adam, SAELens's LR schedules, grad clip, accumulation, checkpoints.

One step reads top to bottom in `train_step`: tokens (this rank's rows) -> `compute_loss_terms`
(under DDP on several ranks, see `distributed.py`) -> backward -> clip -> Adam -> LR schedule.
A NaN/Inf loss, gradient norm or weight stops it (checkpoints.py).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import torch
from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.training.optim import get_lr_scheduler
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from sae_lens_e2e.training import resume
from sae_lens_e2e.training.checkpoints import (
    CHECKPOINT_PREFIX,
    NonFiniteLossError,
    load_sae_weights,
    load_trainer_state,
    non_finite,
    remove_stale_checkpoint_temporaries,
    resolve_checkpoint,
    sae_tensors,
    write_checkpoint,
)
from sae_lens_e2e.training.distributed import Ranks, SAELoss
from sae_lens_e2e.training.losses import as_e2e_config
from sae_lens_e2e.training.schedule import PhaseSchedule, reset_adam_moments


class TokenStream:
    """Batches of token ids from SAELens's ActivationsStore, counted so a resume can skip them."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.n_sequences = 0

    def next(self, n_sequences: int) -> torch.Tensor:
        tokens = self.store.get_batch_tokens(n_sequences)
        self.n_sequences += n_sequences
        return tokens

    def skip(self, n_sequences: int, chunk: int = 256) -> None:
        while n_sequences > 0:
            taken = min(chunk, n_sequences)
            self.next(taken)
            n_sequences -= taken


class E2ETrainer:
    """Trains SAEs spliced into a frozen model with the configured e2e strategy."""

    def __init__(
        self,
        cfg: LanguageModelSAERunnerConfig[Any],
        model: HookedTransformer,
        saes: Mapping[str, Any],
        tokens: TokenStream,
        evaluator: Callable[[], dict[str, Any]] | None = None,
        ranks: Ranks | None = None,
    ) -> None:
        self.cfg, self.model, self.saes, self.tokens = cfg, model, saes, tokens
        self.e2e = as_e2e_config(cfg)
        self.evaluator = evaluator
        self.ranks = ranks or Ranks()
        # The loss as a module over the SAEs: wrapped in DDP when there are several ranks.
        self.loss = SAELoss(model, saes, self.e2e)
        self.loss_fn = self.ranks.wrap(self.loss)
        self.params = [p for sae in saes.values() for p in sae.parameters()]
        self.optimizer = torch.optim.Adam(
            self.params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2)
        )
        self.total_steps = cfg.total_training_steps
        self.schedule = PhaseSchedule.build(self.e2e, self.total_steps)
        self.scheduler = self._lr_scheduler()
        prompts_per_step = cfg.train_batch_size_tokens // cfg.context_size
        # Global micro-batch (sequences): each rank trains on its `ranks.rows` of it.
        self.micro_batch = prompts_per_step // self.e2e.gradient_accumulation_steps
        self.step = 0
        self.last_checkpoint: Path | None = None
        # Where checkpoints go: the configured folder, or the run folder a resume came from.
        self.checkpoint_root = Path(cfg.checkpoint_path) if cfg.checkpoint_path else None
        self.log_every = max(1, cfg.logger.wandb_log_frequency)
        self.eval_every = self.log_every * max(1, cfg.logger.eval_every_n_wandb_logs)

    def _lr_scheduler(self) -> Any:
        cfg = self.cfg
        return get_lr_scheduler(
            cfg.lr_scheduler_name,
            optimizer=self.optimizer,
            training_steps=self.total_steps,
            lr=cfg.lr,
            warm_up_steps=cfg.lr_warm_up_steps,
            decay_steps=cfg.lr_decay_steps,
            lr_end=cfg.lr_end if cfg.lr_end is not None else cfg.lr / 10,
            num_cycles=cfg.n_restart_cycles,
        )

    # -- one optimiser step ---------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """Accumulate gradients over micro-batches, clip, step Adam and the LR schedule."""
        accum = self.e2e.gradient_accumulation_steps
        all_terms = self._is_log_step()
        self.loss.cfg = self.schedule.config_at(self.step)  # local first, then e2e
        if self.schedule.starts_e2e_at(self.step) and self.e2e.reset_optimizer_at_switch:
            reset_adam_moments(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for i in range(accum):
            tokens = self.ranks.rows(self.tokens.next(self.micro_batch))
            # DDP averages gradients over ranks after the last micro-batch's backward only.
            with self.ranks.grad_sync(self.loss_fn, sync=i == accum - 1):
                with self._autocast():
                    terms = self.loss_fn(tokens, all_terms=all_terms)
                values = self._check_finite(terms)
                (terms["loss"] / accum).backward()
            for name, value in values.items():
                totals[name] = totals.get(name, 0.0) + value / accum
        totals["grad_norm"] = self._clip_gradients()
        self.optimizer.step()
        bad = non_finite(sae_tensors(self.saes))
        if bad:
            self._stop("non-finite SAE weights", f"{', '.join(bad)}; lr too high?", "after")
        self.scheduler.step()
        self.step += 1
        return totals

    def _check_finite(self, terms: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """The terms averaged over ranks; a NaN/Inf loss on any rank stops every rank here."""
        values, bad_ranks = self.ranks.mean_terms(terms)
        if bad_ranks:
            local = {k: v.item() for k, v in terms.items() if "/" not in k}
            on = f" on rank(s) {bad_ranks}" if self.ranks.distributed else ""
            self._stop(f"non-finite loss{on}", str(local), "before")
        return values

    def _clip_gradients(self) -> float:
        """Clip to `grad_clip_norm` if set; the total norm, checked finite before Adam sees it."""
        if self.e2e.grad_clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.e2e.grad_clip_norm).item()
        else:
            grads = [p.grad for p in self.params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads).item()
        if not math.isfinite(norm):
            self._stop("non-finite gradient norm", str(norm), "before")
        return norm

    def _stop(self, problem: str, detail: str, update: str) -> NoReturn:
        self.optimizer.zero_grad(set_to_none=True)
        where = self.last_checkpoint or "none written yet"
        raise NonFiniteLossError(
            f"{problem} at step {self.step + 1} ({detail}), found {update} updating the weights; "
            f"last good checkpoint: {where}"
        )

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on any device, as SAELens's trainer does (on CPU it also runs the GPU
        recipe's mixed precision where tests can see it)."""
        if self.cfg.autocast:
            return torch.autocast(torch.device(self.cfg.device).type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _is_log_step(self) -> bool:
        return (self.step + 1) % self.log_every == 0 or self.step + 1 == self.total_steps

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to `total_training_steps`, logging, evaluating and checkpointing on the way."""
        checkpoint_every = self._checkpoint_every()
        if checkpoint_every and self.checkpoint_root is not None and self.ranks.is_main:
            remove_stale_checkpoint_temporaries(self.checkpoint_root)
        with tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=f"e2e[{self.schedule.label}]",
            disable=not (self.ranks.is_main and self.cfg.verbose),
        ) as bar:
            while self.step < self.total_steps:
                terms = self.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{terms['loss']:.4g}", l0=f"{terms['l0']:.1f}", refresh=False)
                if self.step % self.log_every == 0 or self.step == self.total_steps:
                    self._log({f"losses/{k}": v for k, v in terms.items()})
                if self.evaluator is not None and self.step % self.eval_every == 0:
                    self._log({f"eval/{k}": v for k, v in self.evaluator().items()})
                if checkpoint_every and self.step % checkpoint_every == 0:
                    self.save_checkpoint()
        return dict(self.saes)

    def _checkpoint_every(self) -> int:
        n = self.cfg.n_checkpoints
        if self.cfg.checkpoint_path is None or n <= 0:
            return 0
        return max(1, self.total_steps // n)

    def _log(self, values: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        scalars["details/current_learning_rate"] = self.optimizer.param_groups[0]["lr"]
        scalars["details/n_training_tokens"] = self.tokens.n_sequences * self.cfg.context_size
        if self.cfg.logger.log_to_wandb and self.ranks.is_main:
            import wandb

            wandb.log(scalars, step=self.step)

    def _replay_lr_schedule(self, steps: int) -> None:
        """A fresh LR schedule for this config's number of steps, advanced `steps` steps (a
        checkpoint's own schedule ends where its run's old total did)."""
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] = self.cfg.lr
        self.scheduler = self._lr_scheduler()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()"
            for _ in range(steps):
                self.scheduler.step()

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, root: str | Path | None = None) -> Path:
        """Write `<root>/step_<n>/` atomically, never with a non-finite value in it."""
        root = Path(root or self.checkpoint_root or "checkpoints")
        if not self.ranks.is_main:  # rank 0 writes; the weights are the same on every rank
            self.last_checkpoint = root / f"{CHECKPOINT_PREFIX}{self.step:09d}"
            return self.last_checkpoint
        state = {
            "step": self.step,
            "n_sequences": self.tokens.n_sequences,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **self.ranks.checkpoint_fields(self.cfg),
        }
        self.last_checkpoint = write_checkpoint(root, self.step, self.saes, state, self.cfg)
        return self.last_checkpoint

    def load_checkpoint(self, path: str | Path, allow_changes: Iterable[str] = ()) -> Path:
        """Restore weights, optimiser, schedule, step and data position from a checkpoint.

        `path` is a `step_*` folder, a run folder or the configured checkpoint folder (the
        latest checkpoint of the run in it this config continues); later checkpoints go to
        the same run folder. A checkpoint of another config is refused (`resume.py`; only
        `allow_changes` fields may differ).
        """
        allow_changes = resume.check_allowed(allow_changes)
        path = resolve_checkpoint(path, self.cfg, allow_changes)
        state = load_trainer_state(path, self.params[0].device, self.total_steps)
        self.ranks.check_resume(state, self.cfg, path)
        resume.check_resume(path, self.cfg, allow_changes)
        load_sae_weights(path, self.saes)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        if resume.total_steps_changed(path, self.cfg):  # allowed: this total's LR schedule
            self._replay_lr_schedule(self.step)
        else:
            self.scheduler.load_state_dict(state["scheduler"])
        self.tokens.skip(int(state["n_sequences"]) - self.tokens.n_sequences)
        self.last_checkpoint, self.checkpoint_root = path, path.parent
        return path
