"""Triton kernels for the SAE hot path. Imported lazily (TRITON_INTERPRET is read at @jit time).

Layouts: x [N, D], W_enc [D, S], W_dec [S, D] (rows = latents), W_encT = W_enc.T contiguous.
Sparse activations are CSR (rowptr [N+1] int64, cols int32, vals) over the nonzero latents;
the weight-gradient kernel walks the same entries in column order (CSC via a permutation),
so every gradient is a gather/reduce with no atomics (deterministic).
All arithmetic is fp32 (loads are cast), which also keeps the CPU interpreter happy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dispatch import interpret_mode
from .launch import Launch, run

INTERPRETED = interpret_mode()  # how the @triton.jit below were built

ACT_NONE, ACT_RELU, ACT_JUMPRELU = 0, 1, 2
#: The encoder epilogue per SAE activation (TopK selects afterwards, in torch).
ACTIVATIONS = {"topk": ACT_NONE, "relu": ACT_RELU, "jumprelu": ACT_JUMPRELU}


@triton.jit
def _encode_kernel(
    x_ptr, w_ptr, b_ptr, thr_ptr, out_ptr, cnt_ptr, N, D, S,
    ACT: tl.constexpr, PREC: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """out = act(x @ W_enc + b_enc); epilogue also counts nonzeros per row (L0) into cnt."""
    pid = tl.program_id(0)
    n_m, n_n = tl.cdiv(N, BM), tl.cdiv(S, BN)
    group = pid // (GROUP_M * n_n)  # grouped order: a band of x rows stays in L2
    first_m = group * GROUP_M
    size_m = min(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * n_n)) % size_m
    pid_n = (pid % (GROUP_M * n_n)) // size_m
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, D, BK):
        kk = k0 + rk
        a = tl.load(x_ptr + rm[:, None].to(tl.int64) * D + kk[None, :],
                    mask=(rm[:, None] < N) & (kk[None, :] < D), other=0.0)  # fmt: skip
        b = tl.load(w_ptr + kk[:, None].to(tl.int64) * S + rn[None, :],
                    mask=(kk[:, None] < D) & (rn[None, :] < S), other=0.0)  # fmt: skip
        if PREC == "ieee":  # fp32 operands (or the interpreter, which has no bf16 dot)
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PREC)
    acc += tl.load(b_ptr + rn, mask=rn < S, other=0.0).to(tl.float32)[None, :]
    if ACT == 1:
        acc = tl.maximum(acc, 0.0)
    if ACT == 2:
        thr = tl.load(thr_ptr + rn, mask=rn < S, other=0.0).to(tl.float32)
        acc = tl.where(acc > thr[None, :], acc, 0.0)
    # Epilogue kept lean (registers: benchmarks/results/kernel_resources.md): the store takes
    # int32 offsets from the tile's int64 base, and the nnz count is unmasked - columns past S
    # are exactly 0 (zero loads, bias and threshold) and rows past N are dropped by the
    # atomic's mask. It counts what is stored (fp16 can round tiny values to 0).
    res = acc.to(out_ptr.dtype.element_ty)
    tile = out_ptr + (pid_m * BM).to(tl.int64) * S + pid_n * BN
    offs = tl.arange(0, BM)[:, None] * S + tl.arange(0, BN)[None, :]
    tl.store(tile + offs, res, mask=(rm[:, None] < N) & (rn[None, :] < S))
    if ACT != 0:
        nz = tl.sum((res.to(tl.float32) != 0.0).to(tl.int32), axis=1)
        tl.atomic_add(cnt_ptr + rm, nz, mask=rm < N)


@triton.jit
def _decode_kernel(rowptr, cols, vals, w_ptr, inv_ptr, b_ptr, out_ptr, D,
                   BK: tl.constexpr, BD: tl.constexpr):  # fmt: skip
    """out[i] = sum_e vals[e] * W_dec[cols[e]] / ||W_dec[cols[e]]|| + b_dec (row i's entries)."""
    i = tl.program_id(0).to(tl.int64)
    rd = tl.arange(0, BD)
    md = rd < D
    start, end = tl.load(rowptr + i), tl.load(rowptr + i + 1)
    acc = tl.zeros([BD], dtype=tl.float32)
    for e0 in range(start, end, BK):
        e = e0 + tl.arange(0, BK)
        me = e < end
        j = tl.load(cols + e, mask=me, other=0).to(tl.int64)
        v = tl.load(vals + e, mask=me, other=0.0).to(tl.float32)
        v = v * tl.load(inv_ptr + j, mask=me, other=0.0)
        w = tl.load(w_ptr + j[:, None] * D + rd[None, :], mask=me[:, None] & md[None, :],
                    other=0.0).to(tl.float32)  # fmt: skip
        acc += tl.sum(v[:, None] * w, axis=0)
    acc += tl.load(b_ptr + rd, mask=md, other=0.0).to(tl.float32)
    tl.store(out_ptr + i * D + rd, acc.to(out_ptr.dtype.element_ty), mask=md)


@triton.jit
def _bwd_row_kernel(rowptr, cols, vals, gout, gacts, wdec, inv_ptr, wencT, dpre, dx, D, S,
                    HAS_GA: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr):  # fmt: skip
    """Per token i: d_pre[e] = [v != 0] (g_acts[i, j] + g_out[i] . W_dec_n[j]) for its entries,
    then dx[i] = sum_e d_pre[e] W_enc[:, j]."""
    i = tl.program_id(0).to(tl.int64)
    rd = tl.arange(0, BD)
    md = rd < D
    g = tl.load(gout + i * D + rd, mask=md, other=0.0).to(tl.float32)
    acc = tl.zeros([BD], dtype=tl.float32)
    start, end = tl.load(rowptr + i), tl.load(rowptr + i + 1)
    for e0 in range(start, end, BK):
        e = e0 + tl.arange(0, BK)
        me = e < end
        m2 = me[:, None] & md[None, :]
        j = tl.load(cols + e, mask=me, other=0).to(tl.int64)
        v = tl.load(vals + e, mask=me, other=0.0).to(tl.float32)
        w = tl.load(wdec + j[:, None] * D + rd[None, :], mask=m2, other=0.0).to(tl.float32)
        d = tl.sum(w * g[None, :], axis=1) * tl.load(inv_ptr + j, mask=me, other=0.0)
        if HAS_GA:
            d += tl.load(gacts + i * S + j, mask=me, other=0.0).to(tl.float32)
        d = tl.where(v != 0.0, d, 0.0)
        tl.store(dpre + e, d, mask=me)
        we = tl.load(wencT + j[:, None] * D + rd[None, :], mask=m2, other=0.0).to(tl.float32)
        acc += tl.sum(d[:, None] * we, axis=0)
    tl.store(dx + i * D + rd, acc.to(dx.dtype.element_ty), mask=md)


@triton.jit
def _bwd_col_kernel(colptr, rows, perm, vals, dpre, gout, x_ptr, wdec, dwdec, dwencT, dbenc,
                    D, EPS, BT: tl.constexpr, BD: tl.constexpr):  # fmt: skip
    """Per latent j over its active tokens: dW_dec[j] (through the row normalisation),
    dW_enc[:, j] = sum d_pre x[i], db_enc[j] = sum d_pre. Dead latents just write zeros."""
    j = tl.program_id(0).to(tl.int64)
    rd = tl.arange(0, BD)
    md = rd < D
    dwn = tl.zeros([BD], dtype=tl.float32)
    dwe = tl.zeros([BD], dtype=tl.float32)
    dbv = tl.zeros([BT], dtype=tl.float32)
    start, end = tl.load(colptr + j), tl.load(colptr + j + 1)
    for e0 in range(start, end, BT):
        e = e0 + tl.arange(0, BT)
        me = e < end
        m2 = me[:, None] & md[None, :]
        r = tl.load(rows + e, mask=me, other=0).to(tl.int64)
        p = tl.load(perm + e, mask=me, other=0)
        v = tl.load(vals + p, mask=me, other=0.0).to(tl.float32)
        d = tl.load(dpre + p, mask=me, other=0.0)
        go = tl.load(gout + r[:, None] * D + rd[None, :], mask=m2, other=0.0).to(tl.float32)
        dwn += tl.sum(v[:, None] * go, axis=0)
        xx = tl.load(x_ptr + r[:, None] * D + rd[None, :], mask=m2, other=0.0).to(tl.float32)
        dwe += tl.sum(d[:, None] * xx, axis=0)
        dbv += d
    w = tl.load(wdec + j * D + rd, mask=md, other=0.0).to(tl.float32)
    nrm = tl.sqrt(tl.sum(w * w, axis=0))
    r_ = tl.maximum(nrm, EPS)
    wn = w / r_
    proj = tl.sum(wn * dwn, axis=0)
    dw = tl.where(nrm > EPS, (dwn - wn * proj) / r_, dwn / EPS)  # F.normalize's backward
    tl.store(dwdec + j * D + rd, dw.to(dwdec.dtype.element_ty), mask=md)
    tl.store(dwencT + j * D + rd, dwe.to(dwencT.dtype.element_ty), mask=md)
    tl.store(dbenc + j, tl.sum(dbv, axis=0).to(dbenc.dtype.element_ty))


#: fp32 values per [entries, d] gather tile: bounds registers per program (tests shrink it
#: to exercise the multi-chunk loops at small shapes).
ROW_TILE = 8192


def _row_blocks(d: int) -> tuple[int, int, int]:
    """(BD, BK, num_warps): the whole d row per program, ROW_TILE values per tile."""
    bd = triton.next_power_of_2(d)
    return bd, max(1, ROW_TILE // bd), 4 if bd <= 512 else 8


def encode_config(dtype: torch.dtype, tf32: bool) -> dict | None:
    """Constexprs and options of the fused encoder, or None where it is not used.

    None: fp32 without TF32 on a GPU, where cuBLAS SGEMM beats a Triton FMA GEMM (sae.py then
    runs torch). The interpreter has no bf16 dot and is slow, hence ieee and small tiles there.
    """
    if interpret_mode():
        return {"PREC": "ieee", "BM": 32, "BN": 64, "BK": 32, "num_warps": 4}
    half = dtype in (torch.float16, torch.bfloat16)
    if not (half or tf32):
        return None
    return {"PREC": "tf32", "BM": 128, "BN": 128, "BK": 64 if half else 32, "num_warps": 8,
            "num_stages": 3}  # fmt: skip


def encode_launches(x, W_enc, b_enc, threshold, act: int, cfg: dict):
    """Fused GEMM + bias + activation: ([launch], (acts or pre-activations, per-row nnz))."""
    n, d = x.shape
    s = W_enc.shape[1]
    if cfg["BM"] * s >= 2**31:  # the epilogue's int32 offsets within a [BM, d_sae] band
        raise ValueError(f"d_sae={s} too large for the fused encoder (BM={cfg['BM']})")
    out = torch.empty(n, s, device=x.device, dtype=x.dtype)
    cnt = torch.zeros(n, device=x.device, dtype=torch.int32)
    cfg = dict(cfg)
    warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages", None)
    grid = (triton.cdiv(n, cfg["BM"]) * triton.cdiv(s, cfg["BN"]),)
    thr = threshold if threshold is not None else b_enc
    launch = Launch(_encode_kernel, grid, (x, W_enc, b_enc, thr, out, cnt, n, d, s),
                    {"ACT": act, **cfg, "GROUP_M": 8}, warps, stages)  # fmt: skip
    return [launch], (out, cnt)


def encode(x, W_enc, b_enc, threshold, act: int, cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the fused encoder with cfg = encode_config(...): (acts, per-row nnz)."""
    return run(*encode_launches(x, W_enc, b_enc, threshold, act, cfg))


def decode_launches(rowptr, cols, vals, W_dec, inv_norm, b_dec, n_rows: int):
    d = W_dec.shape[1]
    out = torch.empty(n_rows, d, device=W_dec.device, dtype=W_dec.dtype)
    bd, bk, warps = _row_blocks(d)
    launch = Launch(_decode_kernel, (n_rows,), (rowptr, cols, vals, W_dec, inv_norm, b_dec, out, d),
                    {"BK": bk, "BD": bd}, warps)  # fmt: skip
    return [launch], out


def decode(rowptr, cols, vals, W_dec, inv_norm, b_dec, n_rows: int) -> torch.Tensor:
    return run(*decode_launches(rowptr, cols, vals, W_dec, inv_norm, b_dec, n_rows))


def backward_launches(csr, csc, g_out, g_acts, x, W_encT, W_dec, inv_norm, eps: float):
    """Sparse backward: ([row launch, column launch], (dx, dW_encT, db_enc, dW_dec)).

    csr = (rowptr, cols, vals, nnz); csc = (perm, rows in column order, per-latent counts).
    """
    rowptr, cols, vals, nnz = csr
    perm, rows_c, counts = csc
    n, d = x.shape
    s = W_dec.shape[0]
    bd, bk, warps = _row_blocks(d)
    dpre = torch.empty(max(nnz, 1), device=x.device, dtype=torch.float32)
    dx = torch.empty_like(x)
    ga = g_acts if g_acts is not None else dpre
    row = Launch(_bwd_row_kernel, (n,),
                 (rowptr, cols, vals, g_out, ga, W_dec, inv_norm, W_encT, dpre, dx, d, s),
                 {"HAS_GA": g_acts is not None, "BK": bk, "BD": bd}, warps)  # fmt: skip
    colptr = torch.zeros(s + 1, device=x.device, dtype=torch.int64)
    colptr[1:] = torch.cumsum(counts, 0)
    if nnz == 0:
        perm, rows_c = perm.new_zeros(1), rows_c.new_zeros(1)
    dW_dec = torch.empty_like(W_dec)
    dW_encT = torch.empty(s, d, device=x.device, dtype=W_encT.dtype)
    db_enc = torch.empty(s, device=x.device, dtype=W_encT.dtype)
    col = Launch(_bwd_col_kernel, (s,),
                 (colptr, rows_c, perm, vals, dpre, g_out, x, W_dec, dW_dec, dW_encT, db_enc, d,
                  eps), {"BT": bk, "BD": bd}, warps)  # fmt: skip
    return [row, col], (dx, dW_encT, db_enc, dW_dec)


def backward(csr, csc, g_out, g_acts, x, W_encT, W_dec, inv_norm, eps: float):
    """Sparse backward: returns (dx, dW_encT, db_enc, dW_dec); see backward_launches."""
    return run(*backward_launches(csr, csc, g_out, g_acts, x, W_encT, W_dec, inv_norm, eps))
