"""Tokens/s of data-parallel e2e training: 1 process vs 2 gloo ranks on the same global batch.

    python benchmarks/bench_distributed.py [--steps 8] [--batch 8] [--d-model 128] ...

Each rank is started as torchrun would start it (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*
in its environment) and times the real step, `E2ETrainer.train_step`: its rows of the
global batch, the loss, DDP's gradient all-reduce, clip, Adam. One process runs with 1 thread
and with 2 (as many as the two ranks together); the three settings alternate for `--rounds`
rounds and each reports its median, so drift on a shared machine hits them alike. Each rank
also times one gloo all-reduce of the SAE's gradient size, the communication of one step.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

sys.path.insert(0, str(Path(__file__).parent))
from bench_train_step import FixedTokens, make_model  # noqa: E402

from sae_lens_e2e import E2EStandardTrainingSAE, E2EStandardTrainingSAEConfig  # noqa: E402
from sae_lens_e2e.training.distributed import join_from_env  # noqa: E402
from sae_lens_e2e.training.trainer import E2ETrainer  # noqa: E402


def rank_main(args: argparse.Namespace) -> None:
    """One rank: build the run, time `train_step`, and (rank 0) write the result."""
    torch.set_num_threads(args.threads)
    layer = args.layers - 2
    sae_cfg = E2EStandardTrainingSAEConfig(
        d_in=args.d_model, d_sae=args.expansion * args.d_model, strategy="e2e",
        l1_coefficient=1.5, kernels="torch",
    )  # fmt: skip
    cfg = LanguageModelSAERunnerConfig(
        sae=sae_cfg, hook_name=f"blocks.{layer}.hook_resid_pre", context_size=args.context,
        train_batch_size_tokens=args.batch * args.context, training_tokens=10**9,
        logger=LoggingConfig(log_to_wandb=False, wandb_log_frequency=10**9), verbose=False,
        checkpoint_path=None, device="cpu",
    )  # fmt: skip
    ranks = join_from_env(cfg, timeout_s=300)
    torch.manual_seed(0)
    model = make_model(args.layers, args.d_model, args.d_vocab, args.context, "cpu")
    tokens = torch.randint(0, args.d_vocab, (args.batch, args.context))
    sae = E2EStandardTrainingSAE(sae_cfg)
    trainer = E2ETrainer(cfg, model, {cfg.hook_name: sae}, FixedTokens(tokens), ranks=ranks)  # type: ignore[arg-type]
    for _ in range(args.warmup):
        trainer.train_step()
    times = []
    for _ in range(args.steps):
        ranks.barrier()
        start = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - start)
    grads = torch.zeros(sum(p.numel() for p in sae.parameters()))
    reduce_ms = []
    for _ in range(args.steps if ranks.distributed else 0):
        start = time.perf_counter()
        dist.all_reduce(grads)
        reduce_ms.append(1e3 * (time.perf_counter() - start))
    if ranks.is_main:
        step_s = statistics.median(times)
        result = {
            "world_size": ranks.world_size,
            "threads_per_rank": args.threads,
            "step_ms": 1e3 * step_s,
            "tokens_per_s": args.batch * args.context / step_s,
            "grad_bytes": grads.numel() * 4,
            "all_reduce_ms": statistics.median(reduce_ms) if reduce_ms else 0.0,
        }
        Path(args.result).write_text(json.dumps(result))


def launch(world: int, threads: int, args: argparse.Namespace, folder: Path) -> dict:
    """Start `world` ranks of this script, as torchrun would, and wait for them (bounded)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = folder / f"world{world}.json"
    argv = [sys.executable, __file__, "--rank-worker", "--result", str(result),
            "--threads", str(threads)] + [a for a in sys.argv[1:]]  # fmt: skip
    env = os.environ | {"WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port), "OMP_NUM_THREADS": str(threads)}  # fmt: skip
    procs = [
        subprocess.Popen(argv, env=env | {"RANK": str(r), "LOCAL_RANK": str(r)})
        for r in range(world)
    ]
    try:
        codes = [p.wait(timeout=args.timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(codes):
        raise SystemExit(f"a rank failed (exit codes {codes})")
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--d-vocab", type=int, default=512)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_worker:
        rank_main(args)
        return
    cores = len(os.sched_getaffinity(0))
    print(f"cpu cores {cores}, torch {torch.__version__}; model {args.layers} layers "
          f"d_model={args.d_model}, SAE x{args.expansion}; global batch "
          f"{args.batch}x{args.context} tokens")  # fmt: skip
    settings = [(1, 1), (1, 2), (2, 1)]  # (ranks, threads per rank)
    rounds: dict[tuple[int, int], list[dict]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for world, threads in settings:
                rounds[(world, threads)].append(launch(world, threads, args, Path(tmp)))
    print(f"{'ranks':>5}{'threads/rank':>13}{'step ms':>10}{'tokens/s':>10}{'all-reduce ms':>15}")
    median = {}
    for (world, threads), runs in rounds.items():
        median[world, threads] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        m = median[world, threads]
        print(f"{world:>5}{threads:>13}{m['step_ms']:>10.1f}{m['tokens_per_s']:>10.0f}"
              f"{m['all_reduce_ms']:>15.2f}")  # fmt: skip
    two = median[2, 1]["tokens_per_s"]
    print(f"2 ranks vs 1 process: {two / median[1, 1]['tokens_per_s']:.2f}x (1 thread), "
          f"{two / median[1, 2]['tokens_per_s']:.2f}x (2 threads) tokens/s; gradient "
          f"all-reduce of {median[2, 1]['grad_bytes'] / 2**20:.1f} MiB per step")  # fmt: skip


if __name__ == "__main__":
    main()
