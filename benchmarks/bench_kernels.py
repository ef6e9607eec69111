"""Benchmark the fused SAE / KL kernels against plain PyTorch on one CUDA GPU.

Baseline: SAELens's StandardTrainingSAE.training_forward_pass + backward (plain PyTorch).
Fused: sae_lens_e2e.kernels.sae_forward (backend='triton') with the same loss on its outputs.
Cases: GPT-2 small shapes (8192 tokens, d_in 768, d_sae 46080), L0 in {32, 64, 128, 512, 4096,
dense}, fp32 and bf16; KL at vocab 50257. Prints time, peak memory and achieved TFLOP/s or GB/s,
and writes benchmarks/results/<gpu-name>.json. Without a CUDA GPU it says so and exits 0.

    python benchmarks/bench_kernels.py [--tokens 8192] [--reps 10]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import statistics
import sys

import torch
import torch.nn.functional as F

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
L0S: list[int | str] = [32, 64, 128, 512, 4096, "dense"]
HBM_BYTES_PER_S = {"H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H200": 4.8e12,
                   "A100-SXM4-80GB": 2.04e12, "A100-SXM4-40GB": 1.56e12}  # fmt: skip


def timed(fn, reps: int) -> tuple[float, float]:
    """(median ms, peak MiB allocated above the starting point) of fn()."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), (torch.cuda.max_memory_allocated() - base) / 2**20


def make_sae_inputs(n: int, d: int, s: int, l0: int | str, dtype: torch.dtype):
    """Random SAE whose shared encoder bias gives the requested mean L0 (ReLU)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, d, device="cuda", generator=g)
    W_enc = torch.randn(d, s, device="cuda", generator=g) / d**0.5
    W_dec = F.normalize(torch.randn(s, d, device="cuda", generator=g), dim=-1)
    pre = (x[:256] @ W_enc).flatten()
    rho = 0.5 if l0 == "dense" else l0 / s
    sample = pre[torch.randint(0, pre.numel(), (2**24,), device="cuda", generator=g)]
    b = -torch.quantile(sample, 1 - rho).item()
    b_enc = torch.full((s,), b, device="cuda")
    b_dec = torch.zeros(d, device="cuda")
    return [t.to(dtype) for t in (x, W_enc, b_enc, W_dec, b_dec)]


def baseline_step(sae_in, dtype):
    """SAELens StandardTrainingSAE forward + backward, exactly as its trainer runs it."""
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

    x, W_enc, b_enc, W_dec, b_dec = sae_in
    d, s = W_enc.shape
    cfg = StandardTrainingSAEConfig(
        d_in=d, d_sae=s, dtype=str(dtype).split(".")[-1], device=str(x.device)
    )
    sae = StandardTrainingSAE(cfg)
    with torch.no_grad():
        for name, t in zip(("W_enc", "b_enc", "W_dec", "b_dec"), sae_in[1:], strict=True):
            getattr(sae, name).copy_(t)
    step_in = TrainStepInput(x, {"l1": 1.0}, None, 0, False)

    def step():
        sae.zero_grad(set_to_none=True)
        sae.training_forward_pass(step_in).loss.backward()

    return step


def fused_step(sae_in, density_threshold):
    """Same loss as SAELens's (MSE sum-mean + L1 of acts * ||W_dec row||) on the fused forward."""
    from sae_lens_e2e.kernels import sae_forward

    params = [t.clone().requires_grad_() for t in sae_in[1:]]
    x = sae_in[0]

    def step():
        for p in params:
            p.grad = None
        acts, out = sae_forward(x, *params, backend="triton", density_threshold=density_threshold)
        mse = (out - x).pow(2).sum(-1).mean()
        l1 = (acts * params[2].norm(dim=1)).norm(p=1, dim=-1).mean()
        (mse + l1).backward()

    return step


def bench_sae(n, d, s, l0, dtype, reps) -> dict:
    from sae_lens_e2e.kernels import dispatch

    sae_in = make_sae_inputs(n, d, s, l0, dtype)
    with torch.no_grad():
        measured_l0 = (torch.relu(sae_in[0] @ sae_in[1] + sae_in[2]) != 0).sum().item() / n
    flops = 6 * 2 * n * d * s  # dense-equivalent work: encoder + 5 GEMMs of the step
    row = {"dtype": str(dtype), "l0_target": l0, "l0": measured_l0,
           "path_auto": "sparse" if measured_l0 / s < dispatch.density_threshold(dtype) else "dense"}  # fmt: skip
    for name, step in [("torch_saelens", baseline_step(sae_in, dtype)),
                       ("fused_auto", fused_step(sae_in, None)),
                       ("fused_sparse", fused_step(sae_in, 2.0)),
                       ("fused_dense", fused_step(sae_in, 0.0))]:  # fmt: skip
        ms, mib = timed(step, reps)
        row[name] = {"ms": ms, "peak_mib": mib, "tflops_dense_equiv": flops / ms / 1e9}
        del step
        torch.cuda.empty_cache()
    row["speedup_auto"] = row["torch_saelens"]["ms"] / row["fused_auto"]["ms"]
    return row


def bench_kl(n, v, dtype, reps, hbm) -> dict:
    from sae_lens_e2e.kernels import kl_div

    g = torch.Generator(device="cuda").manual_seed(0)
    new = (torch.randn(n, v, device="cuda", generator=g) * 3).to(dtype).requires_grad_()
    orig = (torch.randn(n, v, device="cuda", generator=g) * 3).to(dtype)

    def torch_step():
        new.grad = None
        F.kl_div(F.log_softmax(new, -1), F.log_softmax(orig, -1), log_target=True,
                 reduction="batchmean").backward()  # fmt: skip

    def fused_step_():
        new.grad = None
        kl_div(new, orig, backend="triton").backward()

    nbytes = 5 * n * v * new.element_size()  # fwd reads 2, bwd reads 2 + writes 1
    row = {"dtype": str(dtype), "tokens": n, "vocab": v}
    for name, fn in [("torch_f_kl_div", torch_step), ("fused", fused_step_)]:
        ms, mib = timed(fn, reps)
        gbps = nbytes / ms / 1e6
        row[name] = {"ms": ms, "peak_mib": mib, "GBps": gbps,
                     "hbm_frac": gbps * 1e9 / hbm if hbm else None}  # fmt: skip
    row["mem_ratio"] = row["torch_f_kl_div"]["peak_mib"] / max(row["fused"]["peak_mib"], 1e-9)
    row["speedup"] = row["torch_f_kl_div"]["ms"] / row["fused"]["ms"]
    return row


def bench_decode(n, d, s, l0, dtype, reps, hbm) -> dict:
    """Sparse decode kernel alone: bytes = gathered W_dec rows + indices/values + output."""
    from sae_lens_e2e.kernels import sae, sae_triton

    x, W_enc, b_enc, W_dec, b_dec = make_sae_inputs(n, d, s, l0, dtype)
    acts, cnt, _ = sae._encode(x, W_enc, b_enc, "relu", None, None)
    rowptr, cols, vals, _ = sae._csr(acts, cnt, None)
    inv = 1.0 / W_dec.float().norm(dim=1)
    ms, _ = timed(lambda: sae_triton.decode(rowptr, cols, vals, W_dec, inv, b_dec, n), reps)
    es = W_dec.element_size()
    nbytes = cols.numel() * (d * es + 4 + es + 4) + n * d * es
    gbps = nbytes / ms / 1e6
    return {"dtype": str(dtype), "l0_target": l0, "ms": ms, "GBps": gbps,
            "hbm_frac": gbps * 1e9 / hbm if hbm else None}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=46080)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA GPU on this machine; nothing to benchmark (exiting 0).")
        return 0
    try:
        import triton
    except ImportError:
        print("bench_kernels: triton is not installed; the fused path cannot run (exiting 0).")
        return 0
    gpu = torch.cuda.get_device_name()
    hbm = next((bw for key, bw in HBM_BYTES_PER_S.items() if key in gpu), None)
    res = {"gpu": gpu, "torch": torch.__version__, "triton": triton.__version__,
           "tf32": torch.backends.cuda.matmul.allow_tf32, "shapes": vars(args),
           "sae": [], "kl": [], "decode": []}  # fmt: skip
    n, d, s = args.tokens, args.d_in, args.d_sae
    for dtype in (torch.float32, torch.bfloat16):
        for l0 in L0S:
            r = bench_sae(n, d, s, l0, dtype, args.reps)
            res["sae"].append(r)
            a, t = r["fused_auto"], r["torch_saelens"]
            print(f"SAE {dtype} L0={r['l0']:.0f} ({r['path_auto']}): "
                  f"torch {t['ms']:.2f} ms {t['peak_mib']:.0f} MiB | "
                  f"fused {a['ms']:.2f} ms {a['peak_mib']:.0f} MiB "
                  f"{a['tflops_dense_equiv']:.0f} TFLOP/s-equiv | x{r['speedup_auto']:.2f} "
                  f"(sparse {r['fused_sparse']['ms']:.2f} / dense {r['fused_dense']['ms']:.2f} ms)")  # fmt: skip
        for l0 in (32, 128):
            r = bench_decode(n, d, s, l0, dtype, args.reps, hbm)
            res["decode"].append(r)
            print(f"decode {dtype} L0={l0}: {r['ms']:.3f} ms {r['GBps']:.0f} GB/s")
        r = bench_kl(n, args.vocab, dtype, args.reps, hbm)
        res["kl"].append(r)
        print(f"KL {dtype}: F.kl_div {r['torch_f_kl_div']['ms']:.2f} ms "
              f"{r['torch_f_kl_div']['peak_mib']:.0f} MiB | fused {r['fused']['ms']:.2f} ms "
              f"{r['fused']['peak_mib']:.0f} MiB {r['fused']['GBps']:.0f} GB/s | "
              f"mem x{r['mem_ratio']:.1f} speed x{r['speedup']:.2f}")  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / (re.sub(r"[^A-Za-z0-9._-]+", "-", gpu).strip("-") + ".json")
    path.write_text(json.dumps(res, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
