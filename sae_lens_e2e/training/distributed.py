"""Data-parallel training on torch.distributed, as launched by torchrun.

Every rank walks the same token stream and keeps its own rows of each global micro-batch, so
which sequences make up a step does not depend on the world size. The SAEs are wrapped in
PyTorch's `DistributedDataParallel`, which averages their gradients; the frozen model is
replicated and never synchronised. Without torchrun (`WORLD_SIZE` unset or 1) nothing here
communicates and training is exactly the single-process code path.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sae_lens_e2e.training.losses import compute_loss_terms

logger = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 600.0


class SAELoss(nn.Module):
    """The SAEs as one module whose forward is the batch loss, so that DDP can wrap them.

    The model is held outside the module tree: it is frozen, and DDP must neither broadcast
    nor synchronise it.
    """

    def __init__(self, model: Any, saes: Mapping[str, nn.Module], cfg: Any) -> None:
        super().__init__()
        self.hooks = list(saes)
        self.saes = nn.ModuleList(saes.values())
        self.frozen = (model,)
        self.cfg = cfg

    def forward(self, tokens: torch.Tensor, all_terms: bool = True) -> dict[str, torch.Tensor]:
        saes = dict(zip(self.hooks, self.saes, strict=True))
        return compute_loss_terms(self.frozen[0], saes, tokens, self.cfg, all_terms=all_terms)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank 0 of 1 without torchrun."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0 alone shows progress, logs to wandb and writes checkpoints and outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def rows(self, batch: torch.Tensor, unit: int = 1) -> torch.Tensor:
        """This rank's contiguous share of a batch of sequences, in whole blocks of `unit`
        rows (evaluation batches), balanced over ranks; all of it on one process."""
        if not self.distributed:
            return batch
        blocks = -(-batch.shape[0] // unit)
        start, stop = (blocks * r // self.world_size for r in (self.rank, self.rank + 1))
        return batch[start * unit : stop * unit]

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP around `module` when there are several ranks; it broadcasts rank 0's weights."""
        if not self.distributed:
            return module
        device_ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def grad_sync(self, module: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP's `no_sync` for accumulation micro-batches whose gradients wait for the last."""
        if sync or not isinstance(module, DistributedDataParallel):
            return contextlib.nullcontext()
        return module.no_sync()

    def mean_terms(self, terms: Mapping[str, torch.Tensor]) -> tuple[dict[str, float], list[int]]:
        """Loss terms averaged over ranks, and the ranks whose loss is not finite.

        One small all-reduce per micro-batch: every rank learns of a NaN/Inf anywhere before
        anyone's backward, so all of them stop at the same point.
        """
        values = torch.stack([v.detach().float() for v in terms.values()]) / self.world_size
        bad = torch.zeros(self.world_size, device=values.device)
        bad[self.rank] = (~torch.isfinite(terms["loss"].detach())).float()
        packed = torch.cat([values, bad])
        if self.distributed:
            dist.all_reduce(packed)
        numbers = packed.tolist()
        bad_ranks = [r for r, flag in enumerate(numbers[len(terms) :]) if flag]
        return dict(zip(terms, numbers[: len(terms)], strict=True)), bad_ranks

    def sum_over_ranks(self, values: Mapping[Any, Any]) -> dict[Any, Any]:
        """Sum numbers and tensors key by key over ranks (in float64); the identity alone."""
        if not self.distributed:
            return dict(values)
        tensors = [torch.as_tensor(v).to(self.device, torch.float64) for v in values.values()]
        flat = torch.cat([t.flatten() for t in tensors])
        dist.all_reduce(flat)
        out: dict[Any, Any] = {}
        for (key, value), part in zip(
            values.items(), flat.split([t.numel() for t in tensors]), strict=True
        ):
            if isinstance(value, torch.Tensor):
                out[key] = part.view(value.shape).to(value.device, value.dtype)
            else:
                out[key] = type(value)(part.item())
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def checkpoint_fields(self, cfg: Any) -> dict[str, int]:
        """What a checkpoint records so that any world size can resume it."""
        return {
            "world_size": self.world_size,
            "train_batch_size_tokens": cfg.train_batch_size_tokens,
        }

    def check_resume(self, state: Mapping[str, Any], cfg: Any, path: Any) -> None:
        """Another world size resumes exactly (a step's sequences and averaged gradients do
        not depend on it); another global batch would not, so it is refused."""
        saved = state.get("train_batch_size_tokens", cfg.train_batch_size_tokens)
        if saved != cfg.train_batch_size_tokens:
            raise ValueError(
                f"checkpoint {path} was written with train_batch_size_tokens={saved}, this run "
                f"has {cfg.train_batch_size_tokens}: its steps and stream position would not "
                "line up; resume with the same global batch (any number of ranks is fine)"
            )
        world = int(state.get("world_size", 1))
        if world != self.world_size:
            logger.info(
                "resuming a %d-rank checkpoint on %d rank(s): exact, the global batch is the same",
                world,
                self.world_size,
            )


def check_split(cfg: Any, accumulation: int, n_eval_batches: int, ranks: Ranks) -> None:
    """The global batch must split evenly over accumulation x ranks; each rank evaluates
    whole evaluation batches (so per-batch statistics match one process), at least one."""
    sequences = cfg.train_batch_size_tokens // cfg.context_size
    parts = accumulation * ranks.world_size
    if sequences % parts:
        raise ValueError(
            f"train_batch_size_tokens={cfg.train_batch_size_tokens} is {sequences} sequences "
            f"of context_size={cfg.context_size} per step, which do not split evenly over "
            f"gradient_accumulation_steps={accumulation} x {ranks.world_size} ranks; use a "
            f"multiple of {parts * cfg.context_size} tokens"
        )
    if n_eval_batches < ranks.world_size:
        raise ValueError(
            f"n_eval_batches={n_eval_batches} cannot be shared by {ranks.world_size} ranks "
            f"(each evaluates whole batches); give at least {ranks.world_size}"
        )


def join_from_env(cfg: Any, timeout_s: float | None = None) -> Ranks:
    """Join torchrun's process group, creating it if the caller has not, on cuda:LOCAL_RANK.

    Reads RANK / WORLD_SIZE / LOCAL_RANK; NCCL on CUDA, gloo on CPU. `timeout_s` bounds every
    collective, so a dead or hung rank makes the others fail instead of waiting forever. A
    group this creates lives until the process exits (later runners reuse it).
    """
    joined = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if joined else _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Ranks(device=torch.device(cfg.device))
    rank = dist.get_rank() if joined else _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", rank)
    cuda = torch.device(cfg.device).type == "cuda"
    if cuda:
        _pin_gpu(cfg, local_rank)
    if not joined:
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            timeout=timedelta(seconds=timeout_s or DEFAULT_TIMEOUT_S),
            device_id=torch.device(cfg.device) if cuda else None,
        )
        atexit.register(_leave)
    elif timeout_s is not None:
        logger.warning("dist timeout ignored: the caller's process group keeps its own")
    # SAELens puts a random run id into each process's checkpoint_path: all use rank 0's.
    shared = [cfg.checkpoint_path]
    dist.broadcast_object_list(shared, src=0)
    cfg.checkpoint_path = shared[0]
    return Ranks(rank=rank, world_size=world, device=torch.device(cfg.device))


def _pin_gpu(cfg: Any, local_rank: int) -> None:
    """One GPU per rank: every CUDA device field of the run becomes cuda:LOCAL_RANK."""
    visible = torch.cuda.device_count()
    if local_rank >= visible:
        raise ValueError(f"LOCAL_RANK={local_rank}, but only {visible} CUDA device(s) are visible")
    for name in ("device", "llm_device", "act_store_device"):
        value = getattr(cfg, name, None)
        if value is not None and torch.device(value).type == "cuda":
            setattr(cfg, name, f"cuda:{local_rank}")
    torch.cuda.set_device(local_rank)


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ValueError(f"WORLD_SIZE is set but {name} is not; launch with torchrun")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
