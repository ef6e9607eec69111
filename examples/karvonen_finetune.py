"""The Karvonen (2025) recipe on the offline quickstart model: train an SAE `local`, then give it
a short KL + MSE fine-tune on the last tokens of the budget (arXiv 2503.17272).

    python examples/karvonen_finetune.py                  # CPU, offline, a few minutes
    python examples/karvonen_finetune.py --lambda 1 --finetune-fraction 0.1

The recipe as an `E2EStandardTrainingSAEConfig` (README, "The Karvonen recipe"): strategy
`e2e` with `kl_balance="per_step"` (KL and MSE weighed equally at every step:
loss = (alpha * KL + MSE) / 2, alpha = (MSE / KL).detach()), the local run's lambda, a warm
start from the local SAE (`override_sae`, `from_pretrained_path` or a SAELens release), a
small LR decaying linearly to 0 and grad clip 1.0. It also prints alpha at the warm start.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
from typing import Any

import torch

from sae_lens_e2e import E2ESAETrainingRunner, compute_loss_terms, evaluate
from sae_lens_e2e.pipelines.quickstart.config import QuickstartConfig
from sae_lens_e2e.pipelines.quickstart.runner_config import build_runner_config
from sae_lens_e2e.pipelines.quickstart.workload import tiny_workload
from sae_lens_e2e.pipelines.store import quiet_store_warnings
from sae_lens_e2e.preflight import resolve_device


def _run(cfg: Any, work: Any, dataset: Any, warm: Any = None) -> E2ESAETrainingRunner:
    with quiet_store_warnings(), contextlib.redirect_stdout(io.StringIO()):
        runner = E2ESAETrainingRunner(
            cfg, override_dataset=dataset, override_model=work.model, override_sae=warm
        )
        runner.run()
    return runner


def _ce_and_l0(work: Any, sae: Any) -> tuple[float, float]:
    metrics = evaluate(work.model, {work.hook: sae}, work.eval_tokens, batch_size=16)
    return metrics["ce_loss_increase"], metrics[f"l0/{work.hook}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lambda", dest="lam", type=float, default=3.0, help="local lambda")
    parser.add_argument("--finetune-fraction", type=float, default=0.05)
    parser.add_argument("--training-tokens", type=int, default=2**18)
    args = parser.parse_args()

    qs = QuickstartConfig(training_tokens=args.training_tokens, device="cpu")
    device = resolve_device(qs.device)
    work = tiny_workload(qs, device)
    n_rows = len(work.train_dataset)
    tokens_per_row = qs.context_size
    finetune_tokens = int(args.training_tokens * args.finetune_fraction)
    finetune_tokens -= finetune_tokens % qs.train_batch_size_tokens
    local_tokens = args.training_tokens - finetune_tokens

    # 1. local SAE on the first (1 - f) of the tokens
    local_cfg = build_runner_config(qs, work.hook, work.d_in, "local", args.lam, None, device, True)
    local_cfg.training_tokens = local_tokens
    local = _run(local_cfg, work, work.train_dataset).saes[work.hook]

    # 2. the fine-tune: e2e with KL and MSE weighed equally at every step, on the rows the
    # local run did not see
    sae_cfg = dataclasses.replace(local_cfg.sae, strategy="e2e", kl_balance="per_step")
    probe = work.eval_tokens[:16].to(device)
    with torch.no_grad():
        alpha = compute_loss_terms(work.model, {work.hook: local}, probe, sae_cfg)["kl_alpha"]
    ft_cfg = dataclasses.replace(
        local_cfg,
        sae=sae_cfg,
        training_tokens=finetune_tokens,
        lr=qs.lr / 10,
        lr_scheduler_name="constant",
        lr_warm_up_steps=0,
        lr_decay_steps=finetune_tokens // qs.train_batch_size_tokens,
        lr_end=0.0,
    )
    ft_cfg.checkpoint_path = None
    rest = work.train_dataset.select(range(local_tokens // tokens_per_row, n_rows))
    tuned = _run(ft_cfg, work, rest, warm=local).saes[work.hook]

    before, after = _ce_and_l0(work, local), _ce_and_l0(work, tuned)
    print(f"alpha = MSE / KL at the warm start: {alpha.item():.4g} (recomputed every step)")
    print(f"local ({local_tokens:,} tokens): CE increase {before[0]:.4f} at L0 {before[1]:.1f}")
    print(
        f"+ KL+MSE fine-tune ({finetune_tokens:,} tokens): CE increase {after[0]:.4f} at L0 {after[1]:.1f}"
    )


if __name__ == "__main__":
    main()
