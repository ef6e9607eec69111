"""Local-to-e2e schedules: `local` for the first steps of a run, then the configured strategy.

`e2e_start_fraction=f` trains the first round(f * total_steps) optimiser steps with the
`local` loss (out_to_in 1 + the same sparsity term and coefficient) and the rest with the
configured `e2e` / `e2e_ds` loss, in one run with one optimiser, one LR schedule and one
output. The phase is a pure function of the step, so a checkpoint on either side of the
switch resumes exactly. At the switch Adam's moments are kept or reset
(`reset_optimizer_at_switch`; README "Local-to-e2e: what it costs and what it buys" has the
measurement behind the default).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from sae_lens_e2e.training.config import E2ETrainingMixin


def switch_step(cfg: E2ETrainingMixin, total_steps: int) -> int:
    """Index of the first step that trains the configured strategy (0: no local phase)."""
    if cfg.e2e_start_fraction is None:
        return 0
    return min(total_steps, round(cfg.e2e_start_fraction * total_steps))


@dataclass(frozen=True)
class PhaseSchedule:
    """Which loss each step trains: `local_cfg` before `switch`, `cfg` from it on."""

    cfg: Any
    local_cfg: Any
    switch: int

    @classmethod
    def build(cls, cfg: E2ETrainingMixin, total_steps: int) -> PhaseSchedule:
        # Its own metadata: the copy's __post_init__ records "local" as the training strategy
        # there, which must not reach the run's config (runner_cfg.json).
        local = dataclasses.replace(
            cfg,  # type: ignore[type-var]
            metadata=copy.deepcopy(cfg.metadata),  # type: ignore[attr-defined]
            strategy="local",
            kl_coefficient=None,
            out_to_in_coefficient=None,
            in_to_orig_coefficient=None,
            e2e_start_fraction=None,
        )
        return cls(cfg, local, switch_step(cfg, total_steps))

    def config_at(self, step: int) -> Any:
        """The loss configuration of step `step` (0-based)."""
        return self.local_cfg if step < self.switch else self.cfg

    def phase_at(self, step: int) -> str:
        return self.config_at(step).strategy

    @property
    def label(self) -> str:
        """`local->e2e` style name of a scheduled run, else the strategy."""
        return f"local->{self.cfg.strategy}" if self.switch else self.cfg.strategy

    def starts_e2e_at(self, step: int) -> bool:
        """True for the first step of the configured strategy after a local phase."""
        return 0 < self.switch == step


def reset_adam_moments(optimizer: torch.optim.Optimizer) -> None:
    """Forget Adam's moments and step counts, as a fresh optimiser would have none."""
    optimizer.state.clear()
