"""Time one e2e training step: our trainer vs a straightforward two-full-pass implementation.

Both train the same SAE on the same frozen model and batch, in one process, interleaved. The
baseline is what the reference code does per step: a clean forward over the whole model
(no grad), a second whole forward with the SAE spliced in, the loss, backward, Adam. Ours is
`E2ETrainer.train_step` (shared prefix, start_at_layer suffixes) with the configured kernels
(`--kernels auto`: the fused Triton kernels on an NVIDIA GPU, PyTorch elsewhere). With
`--autocast` both run under bf16 autocast. Memory is CUDA peak allocation on a GPU; on CPU it
is the bytes autograd saves for backward (deterministic). benchmarks/gpu_suite.py runs the
same steps at GPT-2 small's shapes.

    python benchmarks/bench_train_step.py            # CPU or the current CUDA device
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_lens_e2e import E2EStandardTrainingSAE, E2EStandardTrainingSAEConfig
from sae_lens_e2e.training.trainer import E2ETrainer

CASES = [  # (n_layers, sae layer): the two settings the issue names
    (4, 2),
    (12, 10),
]


class FixedTokens:
    """Token source that always returns the same batch (no data loading in the timing)."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens, self.n_sequences = tokens, 0

    def next(self, n: int) -> torch.Tensor:
        return self.tokens[:n]


def make_model(
    n_layers: int,
    d_model: int,
    d_vocab: int,
    n_ctx: int,
    device: str,
    n_heads: int | None = None,
    d_mlp: int | None = None,
) -> HookedTransformer:
    n_heads = n_heads or d_model // 32
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_ctx=n_ctx, d_head=d_model // n_heads,
        n_heads=n_heads, d_mlp=d_mlp, d_vocab=d_vocab, act_fn="gelu", normalization_type="LN",
        device=device,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    return model.requires_grad_(False).eval()


def baseline_step(model, sae, hook, tokens, optimizer, l1: float) -> None:
    """The reference's recipe: two full passes, e2e loss (KL + sparsity), backward, Adam."""
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        clean_logits = model(tokens)
    codes: list[torch.Tensor] = []

    def splice(act: torch.Tensor, hook: Any) -> torch.Tensor:
        c = torch.relu(act @ sae.W_enc + sae.b_enc)
        codes.append(c)
        return c @ F.normalize(sae.W_dec, dim=-1) + sae.b_dec

    new_logits = model.run_with_hooks(tokens, fwd_hooks=[(hook, splice)])
    kl = F.kl_div(
        F.log_softmax(new_logits.flatten(0, 1), -1),
        F.log_softmax(clean_logits.flatten(0, 1), -1),
        log_target=True,
        reduction="batchmean",
    )
    sparsity = codes[0].norm(p=1, dim=-1).mean() / sae.cfg.d_in
    (kl + l1 * sparsity).backward()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    optimizer.step()


def saved_bytes(step: Callable[[], None]) -> int:
    """Bytes of tensors autograd keeps for backward during one step (CPU memory proxy)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return total


def measure(step: Callable[[], None], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_memory(step: Callable[[], None], device: str) -> tuple[str, int]:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return "cuda peak", torch.cuda.max_memory_allocated()
    return "saved for backward", saved_bytes(step)


def make_steps(n_layers: int, layer: int, args: argparse.Namespace):
    """(ours, baseline, ours' first step in s): two step functions training the same SAE from
    the same weights on the same model and batch; the first step includes compiles."""
    torch.manual_seed(0)
    model = make_model(n_layers, args.d_model, args.d_vocab, args.context, args.device,
                       getattr(args, "n_heads", None), getattr(args, "d_mlp", None))  # fmt: skip
    hook = f"blocks.{layer}.hook_resid_pre"
    tokens = torch.randint(0, args.d_vocab, (args.batch, args.context), device=args.device)
    sae_cfg = E2EStandardTrainingSAEConfig(
        d_in=args.d_model, d_sae=args.expansion * args.d_model, strategy="e2e",
        l1_coefficient=1.5, kernels=args.kernels, device=args.device,
    )  # fmt: skip
    run_cfg = LanguageModelSAERunnerConfig(
        sae=sae_cfg, hook_name=hook, context_size=args.context, device=args.device,
        train_batch_size_tokens=args.batch * args.context, training_tokens=10**9,
        logger=LoggingConfig(log_to_wandb=False, wandb_log_frequency=10**9), verbose=False,
        checkpoint_path=None, autocast=args.autocast,
    )  # fmt: skip
    ours_sae = E2EStandardTrainingSAE(sae_cfg)
    base_sae = E2EStandardTrainingSAE(sae_cfg)
    base_sae.load_state_dict(ours_sae.state_dict())
    trainer = E2ETrainer(run_cfg, model, {hook: ours_sae}, FixedTokens(tokens))  # type: ignore[arg-type]
    base_opt = torch.optim.Adam(base_sae.parameters(), lr=run_cfg.lr)
    autocast = torch.autocast(torch.device(args.device).type, torch.bfloat16, enabled=args.autocast)

    def base() -> None:
        with autocast:
            baseline_step(model, base_sae, hook, tokens, base_opt, 1.5)

    start = time.perf_counter()
    measure(trainer.train_step, args.device)
    return trainer.train_step, base, time.perf_counter() - start


def run_case(n_layers: int, layer: int, args: argparse.Namespace) -> dict[str, float]:
    ours, base, _ = make_steps(n_layers, layer, args)
    for _ in range(args.warmup):
        ours(), base()
    t_ours, t_base = [], []
    for _ in range(args.repeats):  # interleaved so drift hits both alike
        t_base.append(measure(base, args.device))
        t_ours.append(measure(ours, args.device))
    mem_kind, mem_base = peak_memory(base, args.device)
    _, mem_ours = peak_memory(ours, args.device)
    trainer = ours.__self__
    ckpt_cfg = dataclasses.replace(
        trainer.cfg, sae=dataclasses.replace(trainer.cfg.sae, gradient_checkpointing=True)
    )
    ckpt = E2ETrainer(ckpt_cfg, trainer.model, trainer.saes, trainer.tokens)
    _, mem_ckpt = peak_memory(ckpt.train_step, args.device)
    return {
        "baseline_ms": 1e3 * statistics.median(t_base),
        "ours_ms": 1e3 * statistics.median(t_ours),
        "speedup": statistics.median(t_base) / statistics.median(t_ours),
        "mem_kind": mem_kind,  # type: ignore[dict-item]
        "baseline_mb": mem_base / 2**20,
        "ours_mb": mem_ours / 2**20,
        "ckpt_mb": mem_ckpt / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--d-vocab", type=int, default=512)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    # Small enough that the model, not the SAE (the same cost on both sides), dominates.
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--kernels", choices=("auto", "triton", "torch"), default="auto")
    parser.add_argument("--autocast", action="store_true", help="bf16 autocast for both")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"model d_model={args.d_model} d_vocab={args.d_vocab}; batch {args.batch}x{args.context}")
    header = f"{'case':<22}{'baseline ms':>12}{'ours ms':>10}{'speedup':>9}  memory (MiB)"
    print(header)
    for n_layers, layer in CASES:
        r = run_case(n_layers, layer, args)
        print(
            f"{f'layer {layer} of {n_layers}':<22}{r['baseline_ms']:>12.1f}{r['ours_ms']:>10.1f}"
            f"{r['speedup']:>8.2f}x  {r['mem_kind']}: baseline {r['baseline_mb']:.1f}, "
            f"ours {r['ours_mb']:.1f}, ours + gradient checkpointing {r['ckpt_mb']:.1f}"
        )


if __name__ == "__main__":
    main()
