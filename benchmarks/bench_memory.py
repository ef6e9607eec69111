"""Memory and time of the e2e KL without materialised logits, side by side with the unfused KL.

    python benchmarks/bench_memory.py [--out benchmarks/results/bench_memory.json] [--real]

1. memory: the peak of one e2e step (compute_loss_terms + backward) above the model, SAE and
   optimiser, in units of tokens x vocab x 4 bytes, at vocab 50257, 131072 and 262144
   (4 layers, d_model 128, 512 tokens, d_sae 1024), for
     ours      the KL from the final residuals, a token chunk at a time (training/logits.py);
     unfused   the same step with today's KL: the full logits, then logits_kl (fp32 copies);
     sparsify  the full logits, then EleutherAI sparsify's cross-entropy-form KL,
               -sum softmax(clean) * log_softmax(new) (same gradient, value off by the
               clean entropy).
   Each figure is its own fresh process: build model + SAE + Adam, run one step (Adam's
   state, caches), gc, read VmRSS, reset VmHWM (/proc/self/clear_refs), run one step, read
   VmHWM; the peak above that baseline is the step's.
2. time (one torch thread, process CPU time, interleaved repeats, median and min-max):
   the KL's forward + backward from the final residual (unembed included on both sides),
   ours vs sparsify's, at vocab 8192 and 50257; and the whole e2e step at GPT-2's vocab,
   ours vs today's unfused step.
3. --real: one step at GPT-2 small's shapes (12 layers, d_model 768, vocab 50257, d_sae
   46080, 2 x 1024 tokens) and at Gemma-2-2B's unembed shape (2 layers of d_model 2304, vocab
   256000, a 16k-latent JumpReLU SAE, 512 tokens), ours and unfused, each in a fresh process
   (--jobs 2: two at once where RAM allows), at those tokens and twice as many: peak memory and time, and the
   memory projected to the paper's 16 x 1024 tokens on a GPU (`project`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Any

OUT = pathlib.Path(__file__).resolve().parent / "results" / "bench_memory.json"
HOOK = "blocks.1.hook_resid_pre"
GPU_TOKENS = 16 * 1024


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def build(n_layers: int, d_model: int, vocab: int, tokens: int, d_sae: int, arch: str = "standard"):
    """(model, saes, tokens, cfg, optimizer): random weights, frozen model."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from sae_lens_e2e import E2EJumpReLUTrainingSAEConfig, E2EStandardTrainingSAEConfig
    from sae_lens_e2e.training.sae import E2EJumpReLUTrainingSAE, E2EStandardTrainingSAE

    torch.manual_seed(0)
    n_heads = max(1, d_model // 64)
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_ctx=1024, d_head=d_model // n_heads,
        n_heads=n_heads, d_vocab=vocab, act_fn="gelu", normalization_type="LN",
    )  # fmt: skip
    model = HookedTransformer(cfg).requires_grad_(False).eval()
    kw = {"d_in": d_model, "d_sae": d_sae, "strategy": "e2e", "kernels": "torch"}
    if arch == "jumprelu":
        sae_cfg: Any = E2EJumpReLUTrainingSAEConfig(**kw)
        sae: Any = E2EJumpReLUTrainingSAE(sae_cfg)
    else:
        sae_cfg = E2EStandardTrainingSAEConfig(l1_coefficient=1.5, **kw)
        sae = E2EStandardTrainingSAE(sae_cfg)
    context = min(tokens, 1024)
    toks = torch.randint(0, vocab, (tokens // context, context))
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    return model, {HOOK: sae}, toks, sae_cfg, optimizer


def step_fn(variant: str, model, saes, toks, cfg, optimizer):
    """One training step of `variant` (ours / unfused / sparsify)."""
    import torch

    from sae_lens_e2e.training import losses
    from sae_lens_e2e.training.logits import final_logits, residual_kl

    def head(resid):  # the logits of a final residual, as ours computes them per chunk
        return final_logits(model, resid)

    def unfused(model_, new, orig, **kw):
        return losses.logits_kl(head(new), head(orig).detach(), backend="torch")

    def sparsify(model_, new, orig, **kw):
        p_clean = head(orig).detach().float().softmax(-1)
        return -(p_clean * head(new).float().log_softmax(-1)).sum(-1).mean()

    kl = {"ours": residual_kl, "unfused": unfused, "sparsify": sparsify}[variant]

    def step() -> None:
        saved, losses.residual_kl = losses.residual_kl, kl
        try:
            optimizer.zero_grad(set_to_none=True)
            losses.compute_loss_terms(model, saes, toks, cfg)["loss"].backward()
            optimizer.step()
        finally:
            losses.residual_kl = saved

    torch.set_grad_enabled(True)
    return step


def worker(args: argparse.Namespace) -> None:
    """One fresh-process measurement: prints a JSON line."""
    import torch

    torch.set_num_threads(1)
    model, saes, toks, cfg, opt = build(args.layers, args.d_model, args.vocab, args.tokens,
                                        args.d_sae, args.arch)  # fmt: skip
    if args.chunk:
        cfg = dataclasses.replace(cfg, logits_chunk_tokens=args.chunk)
    step = step_fn(args.worker, model, saes, toks, cfg, opt)
    step()
    gc.collect()
    base = _status("VmRSS")
    pathlib.Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    start, cpu = time.perf_counter(), time.process_time()
    step()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = _status("VmHWM") - base
    unit = toks.numel() * args.vocab * 4
    print(json.dumps({"variant": args.worker, "vocab": args.vocab, "tokens": toks.numel(),
                      "d_model": args.d_model, "layers": args.layers, "d_sae": args.d_sae,
                      "arch": args.arch, "chunk": args.chunk, "peak_bytes": peak,
                      "unit_bytes": unit,
                      "units": peak / unit, "wall_s": wall, "cpu_s": cpu}))  # fmt: skip


def measure(variant: str, **shape: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", variant]
    for k, v in shape.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} {shape}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_section() -> list[dict[str, Any]]:
    rows = []
    for vocab in (50257, 131072, 262144):
        for variant in ("ours", "unfused", "sparsify"):
            r = measure(variant, vocab=vocab, tokens=512, d_model=128, layers=4, d_sae=1024)
            rows.append(r)
            print(f"memory vocab {vocab:>6} {variant:<8} {r['units']:.2f} units "
                  f"({r['peak_bytes'] / 2**20:.0f} MiB)", flush=True)  # fmt: skip
    return rows


def interleaved(fns: dict[str, Any], repeats: int) -> dict[str, dict[str, float]]:
    """Process CPU seconds of each fn, called in turn (A B A B ...), after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            gc.collect()
            t = time.process_time()
            fn()
            times[name].append(time.process_time() - t)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)}
            for k, v in times.items()}  # fmt: skip


def _kl_step(variant: str, model, new, clean) -> None:
    """The KL's forward + backward from final residuals: ours, or sparsify's CE form on the
    logits of the same residuals (the unembed and its backward on both sides)."""
    from sae_lens_e2e.training.logits import final_logits, residual_kl

    new.grad = None
    if variant == "ours":
        residual_kl(model, new, clean, backend="torch").backward()
        return
    p_clean = final_logits(model, clean).float().softmax(-1)
    logp = final_logits(model, new).float().log_softmax(-1)
    (-(p_clean * logp).sum(-1).mean()).backward()


def time_section(repeats: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    out: dict[str, Any] = {"threads": 1, "repeats": repeats, "kl": []}
    for vocab in (8192, 50257):
        model, *_ = build(1, 128, vocab, 512, 256)
        g = torch.Generator().manual_seed(0)
        clean = torch.randn(512, 128, generator=g)
        new = (clean + torch.randn(512, 128, generator=g)).requires_grad_()
        fns = {k: functools.partial(_kl_step, k, model, new, clean) for k in ("ours", "sparsify")}
        r = interleaved(fns, repeats)
        r["ratio_ours_over_sparsify"] = r["ours"]["median_s"] / r["sparsify"]["median_s"]
        out["kl"].append({"vocab": vocab, "tokens": 512, **r})
        print(f"KL fwd+bwd from the residual, vocab {vocab}: ours {r['ours']['median_s']*1e3:.1f} "
              f"ms, sparsify {r['sparsify']['median_s']*1e3:.1f} ms "
              f"(x{r['ratio_ours_over_sparsify']:.2f})", flush=True)  # fmt: skip
    parts = build(4, 128, 50257, 512, 1024)
    steps = {v: step_fn(v, *parts) for v in ("ours", "unfused")}
    r = interleaved(steps, repeats)
    r["ratio_ours_over_unfused"] = r["ours"]["median_s"] / r["unfused"]["median_s"]
    out["e2e_step"] = {"vocab": 50257, "tokens": 512, "layers": 4, "d_model": 128, **r}
    print(f"e2e step, vocab 50257: ours {r['ours']['median_s']*1e3:.0f} ms, today's "
          f"{r['unfused']['median_s']*1e3:.0f} ms (x{r['ratio_ours_over_unfused']:.2f})")  # fmt: skip
    return out


def _buffers(tokens: int, vocab: int, device: str, chunk: int = 0) -> int:
    """Bytes of the chunk buffers the KL holds at most (four [chunk, vocab] fp32 arrays)."""
    import torch

    from sae_lens_e2e.training.logits import chunk_tokens

    return chunk_tokens(tokens, vocab, torch.device(device), chunk or None) * vocab * 16


def project(small: dict[str, Any], large: dict[str, Any], chunk: int = 0) -> float:
    """Peak bytes at the paper's 16 x 1024 tokens on a GPU, fp32: the step's memory other
    than the chunk buffers is fitted as a + b * tokens through the two runs (the SAE's
    gradients and the like do not grow with tokens, activations do), then the buffers the
    chunk size chooses on a GPU are added. The unfused step has no chunk buffers."""

    def rest(r: dict[str, Any]) -> float:
        if r["variant"] != "ours":
            return r["peak_bytes"]
        return r["peak_bytes"] - _buffers(r["tokens"], r["vocab"], "cpu", chunk)

    slope = (rest(large) - rest(small)) / (large["tokens"] - small["tokens"])
    projected = rest(small) + slope * (GPU_TOKENS - small["tokens"])
    if small["variant"] == "ours":
        projected += _buffers(GPU_TOKENS, small["vocab"], "cuda", chunk)
    return projected


def real_section(jobs: int) -> list[dict[str, Any]]:
    """GPT-2 small's and Gemma-2-2B's unembed shapes, one step each at two token counts (the
    first's time is reported), and the memory projected to 16 x 1024 tokens on a GPU."""
    from concurrent.futures import ThreadPoolExecutor

    shapes = {
        "gpt2-small": dict(vocab=50257, tokens=2048, d_model=768, layers=12, d_sae=46080),
        "gemma-2-2b-unembed": dict(
            vocab=256000, tokens=512, d_model=2304, layers=2, d_sae=16384, arch="jumprelu"
        ),  # fmt: skip
    }
    runs = [(name, variant, {}) for name in shapes for variant in ("ours", "unfused")]
    runs.append(("gemma-2-2b-unembed", "ours", {"chunk": 128}))  # fewer re-reads of W_U
    todo = [
        (variant, {**shapes[name], **extra, "tokens": shapes[name]["tokens"] * scale})
        for name, variant, extra in runs
        for scale in (1, 2)
    ]
    # With --jobs 2, these pairs run at once (each pair finished before the next starts): a
    # small case next to a large one, never two unfused steps or two Gemma-sized models
    # beside an unfused one (24 GiB of RAM)
    groups = [[0, 3], [2, 1], [4], [7], [6], [5], [8, 9]] if jobs > 1 else [[i] for i in range(10)]
    done: dict[int, dict[str, Any]] = {}
    with ThreadPoolExecutor(2) as pool:
        for group in groups:
            results = pool.map(lambda i: measure(todo[i][0], **todo[i][1]), group)
            done.update(zip(group, results, strict=True))
    rows = []
    for i, (name, variant, extra) in enumerate(runs):
        small, large = done[2 * i], done[2 * i + 1]
        projected = project(small, large, extra.get("chunk", 0))
        small.update(shape=name, projected_gpu_bytes_16x1024=projected,
                     peak_bytes_at_2x_tokens=large["peak_bytes"])  # fmt: skip
        rows.append(small)
        print(f"{name} {variant}{extra or ''}: step {small['cpu_s']:.1f} s CPU, peak above "
              f"model+SAE {small['peak_bytes'] / 2**30:.2f} GiB ({small['units']:.2f} units; "
              f"{large['peak_bytes'] / 2**30:.2f} GiB at {large['tokens']} tokens); at 16 x 1024 "
              f"tokens on a GPU ~{projected / 2**30:.1f} GiB (fp32)", flush=True)  # fmt: skip
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=OUT)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--real", action="store_true", help="also GPT-2 small and Gemma shapes")
    ap.add_argument("--sections", nargs="*", default=["memory", "time"])
    ap.add_argument(
        "--jobs", type=int, default=1, help="2: --real's measurements two at once where RAM allows"
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    for name, default in (("vocab", 50257), ("tokens", 512), ("d-model", 128), ("layers", 4),
                          ("d-sae", 1024)):  # fmt: skip
        ap.add_argument(f"--{name}", type=int, default=default, help=argparse.SUPPRESS)
    ap.add_argument("--arch", default="standard", help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return 0
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": os.uname().machine,
                              "cpus": os.cpu_count()}  # fmt: skip
    if "memory" in args.sections:
        result["memory"] = memory_section()
    if "time" in args.sections:
        result["time"] = time_section(args.repeats)
    if args.real:
        result["real"] = real_section(args.jobs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
