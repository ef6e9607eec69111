"""One command that proves the GPU path on a GPU: tests, correctness, then speed and memory.

    python benchmarks/gpu_suite.py --out benchmarks/results/        # one H100/H200, < 8 min
    python benchmarks/gpu_suite.py --smoke --out /tmp/suite          # CPU, Triton interpreter

Sections, in order (each is written to the JSON as it finishes, so a run cut short keeps what
it measured; a section that fails records its error and the rest still run):

1. env: GPU, compute capability, torch / triton versions, TF32 flags.
2. gpu_tests: `pytest -m gpu tests/test_kernels.py` (the GPU kernel tests) in a subprocess.
3. correctness, before any timing: every kernel against PyTorch (fp32) at GPT-2 small's SAE
   shapes (16 x 1024 tokens, d_in 768, d_sae 46080): standard / TopK / JumpReLU, sparse and
   dense branch, fp32 with TF32 off and on, bf16; the KL at vocab 50257 and 256000.
4. sae: fused vs our own backend='torch' (the same maths, dx included) forward + backward
   for each activation at L0 16, 32, 64, 128, 512 and a dense start, fp32 (TF32 off/on) and
   bf16, latent firing rates Zipf-skewed (a few latents fire on most tokens): median ms,
   peak memory, speed-up, first-call time (compile + self-check) and the branch auto took.
5. kl: the fused KL vs PyTorch's log_softmax + kl_div, vocab 50257 and 256000: ms, peak MiB;
   decode: the sparse decode kernel alone at L0 32 and 128: GB/s and share of HBM bandwidth.
6. e2e_step: the whole e2e training step (fused kernels, bf16 autocast) vs the two-full-pass
   baseline (benchmarks/bench_train_step.py's) at GPT-2 small's shapes (random weights: no
   download), SAE at layer 6, the paper's batch of 16 x 1024 tokens: ms, peak memory,
   tokens/s, and the projected wall time of the paper's run (400k x 1024 tokens; the paper
   took 10-12.5 h on an A100). Needs transformer_lens and sae_lens on the machine.

--smoke runs the same code at tiny shapes on CPU under TRITON_INTERPRET=1 (the test suite
does, so the script cannot crash when it first reaches a GPU); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAPER_TOKENS = 400_000 * 1024


@dataclass(frozen=True)
class Shapes:
    tokens: int
    d_in: int
    d_sae: int
    l0s: tuple[int | str, ...]
    vocabs: tuple[tuple[int, int], ...]  # (vocab, tokens) for the KL
    precisions: tuple[str, ...]
    reps: int
    warmup: int
    model: dict[str, int]  # the e2e step's model (GPT-2 small's shape on a GPU)
    batch: tuple[int, int]  # (sequences, context) of the e2e step


GPU = Shapes(
    tokens=16 * 1024, d_in=768, d_sae=46080, l0s=(16, 32, 64, 128, 512, "dense"),
    vocabs=((50257, 16 * 1024), (256000, 4096)), precisions=("fp32", "tf32", "bf16"),
    reps=10, warmup=3,
    model={"n_layers": 12, "d_model": 768, "n_heads": 12, "d_mlp": 3072, "d_vocab": 50257},
    batch=(16, 1024),
)  # fmt: skip
SMOKE = Shapes(
    tokens=32, d_in=32, d_sae=128, l0s=(4, "dense"), vocabs=((500, 8), (1003, 4)),
    precisions=("tf32", "bf16"), reps=1, warmup=0,
    model={"n_layers": 2, "d_model": 32, "n_heads": 2, "d_mlp": 64, "d_vocab": 100},
    batch=(2, 16),
)  # fmt: skip
ACTIVATIONS = ("relu", "topk", "jumprelu")


class Suite:
    """The JSON being written: one key per section, rewritten after each section."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path, self.data = path, {"sections": {}}

    def section(self, name: str, fn: Callable[[], Any]) -> None:
        start = time.perf_counter()
        try:
            result, error = fn(), None
        except Exception as e:  # the other sections still run
            result, error = None, f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"
        seconds = round(time.perf_counter() - start, 2)
        self.data["sections"][name] = {"result": result, "error": error, "seconds": seconds}
        print(f"[{name}] {'FAILED: ' + error.splitlines()[0] if error else 'ok'} ({seconds} s)",
              flush=True)  # fmt: skip
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


# -- timing ---------------------------------------------------------------------------------
def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], shapes: Shapes) -> dict[str, float]:
    """First call (compile + self-check where first), then the median of reps after warm-up,
    and the peak memory of one call above what was allocated before it (CUDA)."""
    import torch

    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    for _ in range(shapes.warmup):
        fn()
    times = []
    for _ in range(shapes.reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    peak = None
    if torch.cuda.is_available():
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        sync()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    ms = [1e3 * t for t in times]
    return {"ms": statistics.median(ms), "ms_min": min(ms), "ms_max": max(ms),
            "first_call_s": first, "peak_mib": peak}  # fmt: skip


def precision(name: str):
    """(dtype, TF32 flag) of a precision name."""
    import torch

    return {"fp32": (torch.float32, False), "tf32": (torch.float32, True),
            "bf16": (torch.bfloat16, False)}[name]  # fmt: skip


def set_tf32(on: bool) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


# -- inputs ---------------------------------------------------------------------------------
def sae_inputs(shapes: Shapes, l0: int | str, dtype, activation: str, device):
    """x, W_enc, b_enc, W_dec, b_dec (+ threshold, k) whose latents fire at Zipf-skewed rates
    with mean L0 (ReLU/JumpReLU): pre-activation j is N(0, |W_enc[:, j]|^2) for x ~ N(0, I),
    so a bias (or threshold) of -|W_j| Phi^-1(1 - p_j) fires it with probability p_j."""
    import torch

    n, d, s = shapes.tokens, shapes.d_in, shapes.d_sae
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    W_enc = torch.randn(d, s, generator=g) / d**0.5
    W_dec = torch.randn(s, d, generator=g)
    b_dec = torch.zeros(d)
    if l0 == "dense":  # a fresh ReLU SAE: about half the latents fire
        p = torch.full((s,), 0.5)
    else:
        p = 1.0 / torch.arange(1, s + 1).float() ** 0.8  # Zipf-like: latent 0 fires most
        p = (p * (l0 / p.sum())).clamp(max=0.9)
        p = p[torch.randperm(s, generator=g)]
    cut = W_enc.norm(dim=0) * torch.special.ndtri(1 - p)
    b_enc, thr = -cut, None
    if activation == "jumprelu":
        b_enc, thr = torch.zeros(s), cut.clamp(min=0)
    k = None
    if activation == "topk":
        k = s // 2 if l0 == "dense" else int(l0)
    ps = [t.to(device=device, dtype=dtype) for t in (x, W_enc, b_enc, W_dec, b_dec)]
    return ps, None if thr is None else thr.to(device=device, dtype=dtype), k


def fwd_bwd(ps, activation, k, thr, backend, dth=None):
    """One SAE forward + backward as training runs it: the output feeds a loss, the codes a
    sparsity penalty, and the input needs a gradient (an SAE mid-model: dx included)."""
    from sae_lens_e2e.kernels import sae_forward

    ps = [p.detach().clone().requires_grad_() for p in ps]
    kw = {"activation": activation, "k": k, "threshold": thr, "backend": backend}
    if backend == "triton":
        kw["density_threshold"] = dth
    acts, out = sae_forward(*ps, **kw)
    (out.float().square().mean() + acts.float().abs().mean()).backward()
    return [acts.detach(), out.detach()] + [p.grad for p in ps]


# -- sections -------------------------------------------------------------------------------
def env() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.cuda.is_available(),
                            "interpret": os.environ.get("TRITON_INTERPRET")}  # fmt: skip
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError as e:
        info["triton"] = f"not importable: {e}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=props.total_memory / 2**30, sms=props.multi_processor_count,
                    hip=torch.version.hip)  # fmt: skip
    return info


def gpu_tests(smoke: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
           str(ROOT / "tests" / "test_kernels.py")]  # fmt: skip
    if smoke:  # on CPU every GPU test skips; collecting them is the check
        cmd.append("--collect-only")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    return {"returncode": proc.returncode, "summary": tail[-1] if tail else "", "tail": tail}


def correctness(shapes: Shapes, device) -> dict[str, Any]:
    """Max relative error of every output and gradient of the fused path against PyTorch in
    fp32, with the fused run's choice of active latents (sae_lens_e2e.kernels.selfcheck's
    reference), per activation x precision x branch; and the KL at each vocabulary."""
    import torch
    from sae_lens_e2e.kernels import kl_div, kl_div_torch, selfcheck

    rows, ok = [], True
    for name in shapes.precisions:
        dtype, tf32 = precision(name)
        set_tf32(tf32)
        for activation in ACTIVATIONS:
            ps, thr, k = sae_inputs(shapes, 64 if shapes is GPU else 4, dtype, activation, device)
            g = torch.Generator().manual_seed(1)
            n, s = shapes.tokens, shapes.d_sae
            grads = [torch.randn(n, s, generator=g).to(device),
                     torch.randn(n, shapes.d_in, generator=g).to(device)]  # fmt: skip
            for branch, dth in (("sparse", 2.0), ("dense", 0.0)):
                fused = functools.partial(_fused, activation=activation, k=k, thr=thr, dth=dth)
                got = selfcheck._forward_backward(fused, ps, grads)
                ref, flipped = selfcheck._reference(ps, grads, activation, k, thr,
                                                    (got[0] != 0).float())  # fmt: skip
                errs = {n: _rel(a, b) for n, a, b in zip(selfcheck._NAMES, got, ref, strict=True)}
                tol = selfcheck.tolerance(dtype)
                passed = flipped <= selfcheck.MAX_BAD and all(
                    selfcheck.mismatch(n, a, b, tol) is None
                    for n, a, b in zip(selfcheck._NAMES, got, ref, strict=True)
                )
                ok &= passed
                rows.append({"activation": activation, "precision": name, "branch": branch,
                             "max_rel_err": errs, "flipped": flipped, "tol": tol,
                             "passed": passed})  # fmt: skip
    set_tf32(False)
    for vocab, n in shapes.vocabs:
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator().manual_seed(0)
            new = (torch.randn(n, vocab, generator=g) * 3).to(device, dtype).requires_grad_()
            orig = (torch.randn(n, vocab, generator=g) * 3).to(device, dtype)
            ref_new = new.detach().float().requires_grad_()
            ref = kl_div_torch(ref_new, orig.float())
            ref.backward()
            got = kl_div(new, orig, backend="triton")
            got.backward()
            err = abs(got.item() - ref.item()) / max(ref.item(), 1e-6)
            gerr = _rel(new.grad, ref_new.grad)
            passed = err < 1e-2 and gerr < (1e-4 if dtype == torch.float32 else 3e-2)
            ok &= passed
            rows.append({"kernel": "kl", "vocab": vocab, "tokens": n, "dtype": str(dtype),
                         "rel_err": err, "grad_rel_err": gerr, "passed": passed})  # fmt: skip
            del new, orig, ref_new
    return {"all_passed": ok, "rows": rows}


def _fused(ps, *, activation, k, thr, dth):
    from sae_lens_e2e.kernels import sae_forward

    return sae_forward(*ps, activation=activation, k=k, threshold=thr, backend="triton",
                       density_threshold=dth)  # fmt: skip


def _rel(a, b) -> float:
    b = b.float()
    return ((a.float() - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


def sae_speed(shapes: Shapes, device) -> list[dict[str, Any]]:
    """Fused (auto branch) vs backend='torch', forward + backward, per activation, precision
    and L0; first_call_s of the fused run is its compile + self-check."""
    from sae_lens_e2e.kernels import dispatch

    rows = []
    for name in shapes.precisions:
        dtype, tf32 = precision(name)
        set_tf32(tf32)
        for activation in ACTIVATIONS:
            for l0 in shapes.l0s:
                ps, thr, k = sae_inputs(shapes, l0, dtype, activation, device)
                acts = fwd_bwd(ps, activation, k, thr, "torch")[0]
                measured = (acts != 0).float().sum(1).mean().item()
                row = {"activation": activation, "precision": name, "l0_target": l0,
                       "l0": measured, "auto_branch": "sparse" if dispatch.use_sparse(
                           int(measured * shapes.tokens), shapes.tokens * shapes.d_sae, dtype)
                       else "dense"}  # fmt: skip
                for backend in ("triton", "torch"):
                    step = functools.partial(fwd_bwd, ps, activation, k, thr, backend)
                    row[backend] = timed(step, shapes)
                row["speedup"] = row["torch"]["ms"] / row["triton"]["ms"]
                rows.append(row)
                print(f"  sae {name} {activation} L0 {measured:.0f} ({row['auto_branch']}): "
                      f"torch {row['torch']['ms']:.2f} ms, fused {row['triton']['ms']:.2f} ms, "
                      f"x{row['speedup']:.2f}", flush=True)  # fmt: skip
    set_tf32(False)
    return rows


def kl_speed(shapes: Shapes, device) -> list[dict[str, Any]]:
    import torch

    rows = []
    for vocab, n in shapes.vocabs:
        for dtype in (torch.float32, torch.bfloat16):
            g = torch.Generator().manual_seed(0)
            new = (torch.randn(n, vocab, generator=g) * 3).to(device, dtype).requires_grad_()
            orig = (torch.randn(n, vocab, generator=g) * 3).to(device, dtype)

            row = {"vocab": vocab, "tokens": n, "dtype": str(dtype),
                   "fused": timed(functools.partial(_kl_step, new, orig, True), shapes),
                   "torch": timed(functools.partial(_kl_step, new, orig, False), shapes)}  # fmt: skip
            row["speedup"] = row["torch"]["ms"] / row["fused"]["ms"]
            rows.append(row)
            del new, orig
    return rows


def _kl_step(new, orig, fused: bool) -> None:
    from sae_lens_e2e.kernels import kl_div, kl_div_torch

    new.grad = None
    if fused:
        kl_div(new, orig, backend="triton").backward()
    else:
        kl_div_torch(new.float(), orig.float()).backward()


#: HBM bandwidth by GPU name (bytes/s), for the decode kernel's share of it.
HBM = {"H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H200": 4.8e12,
       "A100-SXM4-80GB": 2.04e12, "A100-SXM4-40GB": 1.56e12}  # fmt: skip


def decode_speed(shapes: Shapes, device) -> list[dict[str, Any]]:
    """The sparse decode alone: bytes = gathered W_dec rows + indices/values + the output."""
    import torch
    from sae_lens_e2e.kernels import dispatch, sae, sae_triton

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    hbm = next((bw for key, bw in HBM.items() if key in gpu), None)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for l0 in shapes.l0s[:2]:
            x, W_enc, b_enc, W_dec, b_dec = sae_inputs(shapes, l0, dtype, "relu", device)[0]
            cfg = sae_triton.encode_config(dtype, True, dispatch.target_of(device))
            acts, cnt, _, _ = sae._encode(x, W_enc, b_enc, "relu", None, None, False, cfg)
            nnz = int(cnt.sum())
            rowptr, cols, vals, _ = sae._csr(acts, cnt, None, nnz)
            inv = 1.0 / W_dec.float().norm(dim=1)
            n, d = x.shape
            t = timed(functools.partial(sae_triton.decode, rowptr, cols, vals, W_dec, inv, b_dec,
                                        n), shapes)  # fmt: skip
            es = W_dec.element_size()
            gbps = (nnz * (d * es + 4 + es + 4) + n * d * es) / t["ms"] / 1e6
            rows.append({"dtype": str(dtype), "l0": nnz / n, **t, "GBps": gbps,
                         "hbm_frac": gbps * 1e9 / hbm if hbm else None})  # fmt: skip
    return rows


def e2e_step(shapes: Shapes, device) -> dict[str, Any]:
    """The trainer's whole step (fused kernels, bf16 autocast) vs the two-full-pass baseline,
    on a model of GPT-2 small's shape with random weights, SAE at layer 6 (or the last)."""
    import torch

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    import bench_train_step as bts

    m = shapes.model
    layer = min(6, m["n_layers"] - 1)
    # What a user gets on a GPU (auto); the smoke run takes the same path on the interpreter.
    kernels = "triton" if os.environ.get("TRITON_INTERPRET") == "1" else "auto"
    seqs, ctx = shapes.batch
    args = argparse.Namespace(d_model=m["d_model"], d_vocab=m["d_vocab"], context=ctx,
                              batch=seqs, expansion=shapes.d_sae // m["d_model"],
                              device=str(device), kernels=kernels, autocast=True,
                              n_heads=m["n_heads"], d_mlp=m["d_mlp"], l1=1.5,
                              repeats=shapes.reps, warmup=shapes.warmup)  # fmt: skip
    ours, base, first = bts.make_steps(m["n_layers"], layer, args)
    result = {"layer": layer, "tokens_per_step": seqs * ctx, "first_step_s": first}
    for name, fn in (("ours", ours), ("baseline", base)):
        result[name] = timed(fn, shapes)
    tokens_per_s = seqs * ctx / (result["ours"]["ms"] / 1e3)
    result.update(tokens_per_s=tokens_per_s, speedup=result["baseline"]["ms"] / result["ours"]["ms"],
                  paper_run_hours=PAPER_TOKENS / tokens_per_s / 3600,
                  paper_run_hours_baseline=PAPER_TOKENS / (seqs * ctx) * result["baseline"]["ms"]
                  / 1e3 / 3600)  # fmt: skip
    del ours, base
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (interpreter)")
    ap.add_argument("--sections", nargs="*", help="run only these sections")
    args = ap.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_suite: no CUDA GPU here; use --smoke for the CPU dry run (exiting 2)")
        return 2
    torch.set_grad_enabled(True)
    shapes, device = (SMOKE, torch.device("cpu")) if args.smoke else (GPU, torch.device("cuda"))
    args.out.mkdir(parents=True, exist_ok=True)
    name = "smoke" if args.smoke else torch.cuda.get_device_name().replace(" ", "-")
    suite = Suite(args.out / f"gpu_suite-{name}.json")
    suite.data.update(shapes=asdict(shapes), started=time.strftime("%Y-%m-%d %H:%M:%S"))
    sections = {
        "env": env,
        "gpu_tests": lambda: gpu_tests(args.smoke),
        "correctness": lambda: correctness(shapes, device),
        "sae": lambda: sae_speed(shapes, device),
        "kl": lambda: kl_speed(shapes, device),
        "decode": lambda: decode_speed(shapes, device),
        "e2e_step": lambda: e2e_step(shapes, device),
    }
    for key, fn in sections.items():
        if not args.sections or key in args.sections:
            suite.section(key, fn)
    failed = [k for k, v in suite.data["sections"].items() if v["error"]]
    print(f"wrote {suite.path}" + (f"; sections with errors: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
