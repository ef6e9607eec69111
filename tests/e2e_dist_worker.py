"""One rank of the data-parallel tests; the tests also import it for the one-process reference.

    python tests/e2e_dist_worker.py OUT_DIR CASE [CASE ...]    # with RANK, WORLD_SIZE, LOCAL_RANK,
                                                           # MASTER_ADDR/PORT set, as torchrun does

Each case trains a tiny run in OUT_DIR/<case>/ (shared by the ranks: rank 0's checkpoints are
there to resume) and saves what this rank saw to OUT_DIR/<case>/rank<r>.pt: final weights,
the token rows it trained on, wandb calls, files written, the error if training stopped.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import signal
import sys
from pathlib import Path
from typing import Any
from unittest import mock

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU only, as in conftest
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
import wandb  # noqa: E402
import yaml  # noqa: E402
from conftest import make_tiny_model, make_token_dataset  # noqa: E402
from e2e_helpers import runner_config  # noqa: E402
from sae_lens import LoggingConfig, TopKSAE, TopKSAEConfig  # noqa: E402

from sae_lens_e2e import E2ESAETrainingRunner, NonFiniteLossError  # noqa: E402
from sae_lens_e2e.training import checkpoints, distributed, runner, trainer  # noqa: E402

HOOK = "blocks.1.hook_resid_pre"
TIMEOUT_S = 30.0
CASES: dict[str, dict[str, Any]] = {
    "plain": dict(steps=3, eval_every=2),
    "accum": dict(
        steps=3,
        train_batch_size_tokens=128,
        training_tokens=3 * 128,
        sae={"gradient_accumulation_steps": 2},
    ),
    "two_saes": dict(
        steps=3,
        strategy="e2e_ds",
        sae={"additional_hook_names": ["blocks.2.hook_resid_pre"], "gradient_checkpointing": True},
        n_eval_batches=3,
        eval_batch_size_prompts=2,  # 1 + 2 batches: the reduction must weight by tokens
    ),
    "topk_warm": dict(steps=3, architecture="topk", warm_start=True),
    "full": dict(steps=4, n_checkpoints=2),
    "resumed": dict(steps=4, resume_from="full/ckpt/step_000000002"),
    "nan": dict(steps=4, n_checkpoints=2, poison=(1, 3)),
    "kill": dict(steps=50, kill=(1, 2)),
}


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _stock_topk() -> TopKSAE:
    torch.manual_seed(5)
    sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=64, k=8))
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(sae.W_dec, dim=-1))
        sae.b_dec.normal_()
    return sae


@contextlib.contextmanager
def _spies(record: dict[str, Any]):
    """Record training token rows, files written and wandb calls of this rank."""
    tokens, writes, logged = record["tokens"], record["writes"], record["logged"]

    def loss_spy(model, saes, batch, cfg, **kw):
        tokens.append(batch.detach().cpu().clone())
        return compute(model, saes, batch, cfg, **kw)

    def write_spy(real):
        def spy(path, *a, **kw):
            writes.append(str(path))
            return real(path, *a, **kw)

        return spy

    class FakeRun:
        def finish(self) -> None:
            logged.append(("finish", {}))

    compute = distributed.compute_loss_terms
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(distributed, "compute_loss_terms", loss_spy))
        for module, name in [(runner, "atomic_directory"), (runner, "atomic_file"),
                             (checkpoints, "atomic_directory")]:  # fmt: skip
            spy = write_spy(getattr(module, name))
            stack.enter_context(mock.patch.object(module, name, spy))
        stack.enter_context(
            mock.patch.object(wandb, "init", lambda **kw: logged.append(("init", {})) or FakeRun())
        )
        stack.enter_context(
            mock.patch.object(wandb, "log", lambda values, step: logged.append((step, values)))
        )
        yield


def _sabotage(spec: dict[str, Any]) -> contextlib.AbstractContextManager[Any]:
    """Poison (NaN weights) or kill this rank at the start of a given step."""
    poison, kill = spec.get("poison"), spec.get("kill")
    original = trainer.E2ETrainer.train_step

    def step(self):
        if poison and poison[0] == _rank() and self.step + 1 == poison[1]:
            with torch.no_grad():
                next(iter(self.saes.values())).b_dec.fill_(float("nan"))
        if kill and kill[0] == _rank() and self.step + 1 == kill[1]:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self)

    return mock.patch.object(trainer.E2ETrainer, "train_step", step)


def run_case(out: Path, case: str, **overrides: Any) -> dict[str, Any]:
    """Train `case` in `out/<case>/` on however many ranks the environment says."""
    spec = {**CASES[case], **overrides}
    folder = out / case
    resume = spec.pop("resume_from", None)
    if resume is not None:
        spec["resume_from_checkpoint"] = str(Path(out, resume))
    kwargs: dict[str, Any] = {}
    if spec.pop("warm_start", False):
        kwargs["override_sae"] = _stock_topk()
    if not torch.distributed.is_initialized():
        kwargs["dist_timeout"] = TIMEOUT_S  # the first runner creates the group
    # wandb (faked) logs every step; periodic evaluation only where a case asks for it.
    logger = LoggingConfig(
        log_to_wandb=True, wandb_log_frequency=1, eval_every_n_wandb_logs=spec.pop("eval_every", 99)
    )
    cfg_fields = {"n_eval_batches": 2, "eval_batch_size_prompts": 2} | {
        k: v for k, v in spec.items() if k not in ("poison", "kill")
    }
    cfg = runner_config(folder, logger=logger, **cfg_fields)
    record: dict[str, Any] = {"tokens": [], "writes": [], "logged": [], "error": None}
    with _spies(record), _sabotage(spec):
        run = E2ESAETrainingRunner(
            cfg, override_model=make_tiny_model(), override_dataset=make_token_dataset(), **kwargs
        )
        try:
            run.run()
        except NonFiniteLossError as err:
            record["error"] = str(err)
    record["weights"] = {
        h: {n: p.detach().clone() for n, p in sae.named_parameters()} for h, sae in run.saes.items()
    }
    record["eval"] = {k: v for k, v in run.eval_results.items() if isinstance(v, (int, float))}
    return record


def run_cli(out: Path) -> dict[str, Any]:
    """`python -m sae_lens_e2e train CONFIG.yaml` in this process, with the tiny model and data."""
    folder = out / "cli"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yaml"
    raw = runner_config(folder).to_dict()
    fields = ["model_name", "hook_name", "context_size", "train_batch_size_tokens",
              "training_tokens", "store_batch_size_prompts", "n_eval_batches", "lr", "device",
              "is_dataset_tokenized", "prepend_bos", "streaming", "output_path", "seed"]  # fmt: skip
    text = {k: raw[k] for k in fields} | {"dataset_path": "tiny", "logger": {"log_to_wandb": False}}
    text["sae"] = {"architecture": "e2e_standard", "d_in": 16, "d_sae": 64, "l1_coefficient": 0.5}
    config.write_text(yaml.safe_dump(text))
    store = runner.ActivationsStore.from_config

    def from_config(model, cfg, override_dataset=None):
        return store(model, cfg, override_dataset=make_token_dataset())

    argv = ["sae_lens_e2e", "train", str(config), "--dist-timeout", str(TIMEOUT_S)]
    with (
        mock.patch.object(runner, "load_model", lambda *a, **kw: make_tiny_model()),
        mock.patch.object(runner.ActivationsStore, "from_config", from_config),
        mock.patch.object(sys, "argv", argv),
    ):
        try:
            runpy.run_module("sae_lens_e2e", run_name="__main__", alter_sys=True)
        except SystemExit as done:
            return {"exit": done.code}
    return {"exit": None}


def main(out: Path, cases: list[str]) -> None:
    for case in cases:
        record = run_cli(out) if case == "cli" else run_case(out, case)
        torch.save(record, out / case / f"rank{_rank()}.pt")
        print(f"case {case} done", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
