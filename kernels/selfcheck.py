"""First use of each fused kernel: check it against PyTorch, and fall back where it fails.

kernels='auto' must never crash or be silently wrong on a GPU nobody has run us on. The first
time a kernel family is used for a (device, dtype, TF32 setting, shape class), it runs on a
small problem of that class - the real d_in and vocabulary (they set the block sizes), the
same 16-divisibility of tokens and d_sae (Triton specialises on it), a latent active on every
token with short column segments (so the split column backward runs), and both the sparse and
the dense branch, so the sparse kernels compile now rather than hours into a run when the
density first drops - and is compared with the PyTorch reference in fp32. A kernel that fails
to compile, raises or disagrees is replaced by PyTorch for that class, with one WARNING line
naming the kernel, the GPU and the reason. kernels='triton' runs the same check and raises.

Cost: one small forward+backward per class (milliseconds on a GPU, plus the compiles a run
needs anyway).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import dispatch
from .reference import kl_div_torch, sae_forward_torch

log = logging.getLogger("sae_lens_e2e.kernels")

#: Share of elements allowed past the tolerance (a rounding-boundary flip of one activation
#: moves a whole row/column of a gradient); a broken kernel is off nearly everywhere.
MAX_BAD = 0.01


@dataclass(frozen=True)
class SAEVerdict:
    """Which fused SAE kernels a call may use (the others run PyTorch)."""

    encoder: bool = True
    sparse: bool = True


_SAE: dict[tuple, SAEVerdict] = {}
_KL: dict[tuple, bool] = {}


def clear() -> None:
    """Forget every verdict (tests; a changed kernel module)."""
    _SAE.clear()
    _KL.clear()


def tolerance(dtype: torch.dtype) -> float:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return 1e-4
    return 3e-2 if dtype == torch.bfloat16 else 1e-2


def mismatch(name: str, got: torch.Tensor, ref: torch.Tensor, tol: float) -> str | None:
    """Why `got` is not `ref` within tol x ref's scale (all but MAX_BAD of it), or None."""
    if got.shape != ref.shape:
        return f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    got = got.float()
    if not torch.isfinite(got).all():
        return f"{name}: non-finite values"
    scale = ref.abs().max().clamp_min(1e-6)
    bad = ((got - ref).abs() > tol * scale).float().mean().item()
    return f"{name}: {bad:.1%} of elements off by > {tol:g} x max" if bad > MAX_BAD else None


def _report(explicit: bool, kernel: str, device, what: str, reason: str) -> None:
    gpu = dispatch.target_of(torch.device(device)).name
    reason = " ".join(str(reason).split())[:300]
    msg = f"{kernel} failed its self-check on {gpu} ({what}): {reason}"
    if explicit:
        raise RuntimeError(f"kernels='triton': {msg}")
    log.warning("%s; using PyTorch for it", msg)


def _classed(n: int, size: int) -> int:
    """A size no larger than n with the same 16-divisibility."""
    return min(n, size if n % 16 == 0 else size + 3)


def sae_kernels(backend, device, dtype, d_in, d_sae, n_tokens, activation, k) -> SAEVerdict:
    """The verdict for this call's class, checking it on first use."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    key = (str(device), dtype, tf32, activation, d_in, d_sae % 16 == 0, n_tokens % 16 == 0)
    if key not in _SAE:
        what = f"{str(dtype).removeprefix('torch.')}, d_in {d_in}, {activation}"
        with torch.enable_grad(), torch.autocast(torch.device(device).type, enabled=False):
            _SAE[key] = _check_sae(backend == "triton", torch.device(device), dtype, d_in,
                                   _classed(d_sae, 48), _classed(n_tokens, 16), activation, k,
                                   what)  # fmt: skip
    return _SAE[key]


def _problem(device, dtype, n, d, s):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    W_enc = torch.randn(d, s, generator=g) / d**0.5
    b_enc = torch.randn(s, generator=g) * 0.5 - 0.5
    b_enc[0] = 100.0  # one latent active on every token: a long column
    W_dec = torch.randn(s, d, generator=g) * (1 + torch.rand(s, 1, generator=g))
    b_dec = torch.randn(d, generator=g)
    thr = torch.rand(s, generator=g) * 0.5
    grads = torch.randn(n, s, generator=g), torch.randn(n, d, generator=g)
    ps = [t.to(device=device, dtype=dtype) for t in (x, W_enc, b_enc, W_dec, b_dec)]
    return ps, thr.to(device=device, dtype=dtype), [t.to(device) for t in grads]


def _forward_backward(fn, ps, grads):
    """(acts, out, dx, dW_enc, db_enc, dW_dec) of a random linear functional of fn's outputs."""
    ps = [p.detach().clone().requires_grad_() for p in ps]
    acts, out = fn(ps)[:2]
    loss = (acts.float() * grads[0]).sum() + (out.float() * grads[1]).sum()
    loss.backward()
    return [acts.detach(), out.detach()] + [p.grad for p in ps[:4]]


def _reference(ps, grads, activation, k, thr, support):
    """The PyTorch formula in fp32 with the fused run's choice of active latents: a latent at
    a rounding boundary (bf16 pre-activations, TopK near-ties) may go either way, and the
    gradients follow the choice. How often the choice differs from fp32's is checked apart."""

    def masked(p):
        pre = p[0] @ p[1] + p[2]
        acts = (pre if activation == "jumprelu" else pre.relu()) * support
        return acts, acts @ F.normalize(p[3], dim=-1) + p[4]

    ref = _forward_backward(masked, [p.float() for p in ps], grads)
    exact = sae_forward_torch(*[p.float() for p in ps], activation=activation, k=k,
                              threshold=None if thr is None else thr.float())[0]  # fmt: skip
    return ref, ((exact != 0) != support).float().mean().item()


_NAMES = ("acts", "out", "dx", "dW_enc", "db_enc", "dW_dec")


def _check_sae(explicit, device, dtype, d, s, n, activation, k, what) -> SAEVerdict:
    """Encoder first (dense branch: the rest is torch), then the sparse branch on top of it."""
    kt = dispatch.kernel_module("sae_triton")
    ps, thr, grads = _problem(device, dtype, n, d, s)
    kw = {"activation": activation, "k": None if k is None else max(1, min(k, s // 4))}
    kw["threshold"] = thr if activation == "jumprelu" else None
    tf32 = torch.backends.cuda.matmul.allow_tf32
    encoder = kt.encode_config(dtype, tf32, dispatch.target_of(device)) is not None
    # JumpReLU: the epilogue-gated encoder (sae_forward) and the pre-activation one
    # (return_pre, which training uses) are different builds.
    pre_modes = (False, True) if activation == "jumprelu" else (False,)
    for return_pre in pre_modes if encoder else ():
        failed = _compare(SAEVerdict(True, False), 0.0, return_pre, ps, grads, kw, n, dtype)
        if failed:
            _report(explicit, "_encode_kernel", device, what, failed[1])
            encoder = False
            break
    failed = _compare(SAEVerdict(encoder, True), 2.0, activation == "jumprelu", ps, grads, kw,
                      n, dtype)  # fmt: skip
    if failed:
        _report(explicit, failed[0], device, what, failed[1])
    return SAEVerdict(encoder, failed is None)


#: Launcher (sae_triton / kl_triton function) -> the kernel it runs, to name a failure.
_LAUNCHERS = {"encode": "_encode_kernel", "decode": "_decode_kernel",
              "backward": "sparse backward kernels", "sampled_dot": "_bwd_row_kernel",
              "kl_forward": "_kl_fwd_kernel", "kl_backward": "_kl_bwd_kernel"}  # fmt: skip


def failing_kernel(exc: BaseException) -> str:
    """The kernel a compile/launch error came from: the launch that raised it (innermost),
    else the launcher it came through."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        launch = frame.f_locals.get("self")
        if frame.f_code.co_name == "__call__" and hasattr(launch, "kernel"):
            return getattr(launch.kernel, "__name__", "a kernel")
        if frame.f_code.co_name in _LAUNCHERS:
            return _LAUNCHERS[frame.f_code.co_name]
    return "sparse backward kernels"


def _compare(verdict, dth, return_pre, ps, grads, kw, n, dtype) -> tuple[str, str] | None:
    """(kernel, why) the fused path (this verdict, density threshold, short column segments)
    disagrees with the reference, or None; a compile/launch error is a reason too."""
    from .sae import run_fused  # sae.py imports this module

    def fused(p):
        return run_fused(*p, kw["threshold"], activation=kw["activation"], k=kw["k"],
                         density_threshold=dth, return_pre=return_pre, verdict=verdict,
                         segment=max(1, n // 2))  # fmt: skip

    try:
        got = _forward_backward(fused, ps, grads)
    except Exception as e:
        return failing_kernel(e), f"{type(e).__name__}: {e}"
    ref, flipped = _reference(ps, grads, kw["activation"], kw["k"], kw["threshold"],
                              (got[0] != 0).float())  # fmt: skip
    if flipped > MAX_BAD:
        why = f"acts: {flipped:.1%} of latents active where fp32 has them inactive or back"
        return "_encode_kernel", why
    tol = tolerance(dtype)
    for name, a, b in zip(_NAMES, got, ref, strict=True):
        why = mismatch(name, a, b, tol)
        if why:
            return {"acts": "_encode_kernel", "out": "_decode_kernel"}.get(
                name, "sparse backward kernels"), why  # fmt: skip
    return None


def kl_kernels(backend, device, dtype, vocab: int) -> bool:
    """Whether the fused KL may run for this (device, dtype, vocabulary), checked first."""
    key = (str(device), dtype, vocab)
    if key not in _KL:
        with torch.enable_grad(), torch.autocast(torch.device(device).type, enabled=False):
            _KL[key] = _check_kl(backend == "triton", torch.device(device), dtype, vocab)
    return _KL[key]


def _check_kl(explicit: bool, device, dtype, vocab: int) -> bool:
    from .kl import kl_fused

    g = torch.Generator().manual_seed(0)
    new, orig = (torch.randn(4, vocab, generator=g) * 3 for _ in range(2))
    new, orig = new.to(device, dtype), orig.to(device, dtype)
    ref_new = new.float().clone().requires_grad_()
    ref = kl_div_torch(ref_new, orig.float())
    ref.backward()
    try:
        got_new = new.clone().requires_grad_()
        got = kl_fused(got_new, orig)
        got.backward()
        why = mismatch("kl", got.detach().reshape(1), ref.detach().reshape(1), tolerance(dtype))
        why = why or mismatch("d logits", got_new.grad, ref_new.grad, tolerance(dtype))
    except Exception as e:
        kernel, why = failing_kernel(e), f"{type(e).__name__}: {e}"
    else:
        kernel = "_kl_fwd_kernel" if why and why.startswith("kl:") else "_kl_bwd_kernel"
    if why:
        what = f"{str(dtype).removeprefix('torch.')}, vocab {vocab}"
        _report(explicit, kernel, device, what, why)
    return why is None
