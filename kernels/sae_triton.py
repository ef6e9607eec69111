"""Triton kernels for the SAE hot path. Imported lazily (TRITON_INTERPRET is read at @jit time).

Layouts: x [N, D], W_enc [D, S], W_dec [S, D] (rows = latents), W_encT = W_enc.T contiguous.
Sparse activations are CSR (rowptr [N+1] int64, cols int32, vals) over the nonzero latents;
the weight-gradient kernel walks the same entries in column order (CSC via a permutation),
so every gradient is a gather/reduce with no atomics (deterministic).
All arithmetic is fp32 (loads are cast), which also keeps the CPU interpreter happy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .dispatch import Target, interpret_mode
from .launch import Launch, run

INTERPRETED = interpret_mode()  # how the @triton.jit below were built

ACT_NONE, ACT_RELU, ACT_JUMPRELU = 0, 1, 2
#: The encoder epilogue per SAE activation (TopK selects afterwards, in torch).
ACTIVATIONS = {"topk": ACT_NONE, "relu": ACT_RELU, "jumprelu": ACT_JUMPRELU}


@triton.jit
def _encode_kernel(
    x_ptr, w_ptr, b_ptr, thr_ptr, out_ptr, cnt_ptr, N, D, S,
    ACT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
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
        if UPCAST:  # the interpreter has no bf16 dot
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
                    HAS_GA: tl.constexpr, WANT_DX: tl.constexpr, BK: tl.constexpr,
                    BD: tl.constexpr):  # fmt: skip
    """Per token i: d_pre[e] = [v != 0] (g_acts[i, j] + g_out[i] . W_dec_n[j]) for its entries,
    then (WANT_DX) dx[i] = sum_e d_pre[e] W_enc[:, j]. With vals all nonzero and no g_acts it
    is a sampled product: d[e] = g_out[i] . W_dec[j] * inv[j] at the given entries."""
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
        if WANT_DX:
            we = tl.load(wencT + j[:, None] * D + rd[None, :], mask=m2, other=0.0)
            acc += tl.sum(d[:, None] * we.to(tl.float32), axis=0)
    if WANT_DX:
        tl.store(dx + i * D + rd, acc.to(dx.dtype.element_ty), mask=md)


@triton.jit
def _finish_latent(j, dwn, dwe, db, wdec, dwdec, dwencT, dbenc, D, EPS, rd, md):
    """Store latent j's gradients: dW_dec[j] through F.normalize's backward, dW_enc[:, j],
    db_enc[j], from the sums over its active tokens."""
    w = tl.load(wdec + j * D + rd, mask=md, other=0.0).to(tl.float32)
    nrm = tl.sqrt(tl.sum(w * w, axis=0))
    r_ = tl.maximum(nrm, EPS)
    wn = w / r_
    proj = tl.sum(wn * dwn, axis=0)
    dw = tl.where(nrm > EPS, (dwn - wn * proj) / r_, dwn / EPS)
    tl.store(dwdec + j * D + rd, dw.to(dwdec.dtype.element_ty), mask=md)
    tl.store(dwencT + j * D + rd, dwe.to(dwencT.dtype.element_ty), mask=md)
    tl.store(dbenc + j, db.to(dbenc.dtype.element_ty))


@triton.jit
def _bwd_col_kernel(seg_col, seg_part, colptr, rows, perm, vals, dpre, gout, x_ptr, wdec,
                    part_base, part_n, part_e, part_b, dwdec, dwencT, dbenc, D, SEG, EPS,
                    BT: tl.constexpr, BD: tl.constexpr):  # fmt: skip
    """One program per column segment (at most SEG of a latent's active tokens, so a latent
    that fires on most tokens does not serialise the launch): sums v g_out (for dW_dec),
    d_pre x (dW_enc[:, j]) and d_pre (db_enc[j]) over its tokens. A latent with one segment
    (dead latents included) is finished here; a longer one leaves per-segment partial sums
    at part_base[j] + p for _bwd_col_finish_kernel. Padding programs (seg_col < 0) idle."""
    g = tl.program_id(0)
    j = tl.load(seg_col + g).to(tl.int64)
    if j >= 0:
        p = tl.load(seg_part + g).to(tl.int64)
        rd = tl.arange(0, BD)
        md = rd < D
        dwn = tl.zeros([BD], dtype=tl.float32)
        dwe = tl.zeros([BD], dtype=tl.float32)
        dbv = tl.zeros([BT], dtype=tl.float32)
        start, end = tl.load(colptr + j), tl.load(colptr + j + 1)
        s0 = start + p * SEG
        s1 = tl.minimum(s0 + SEG, end)
        for e0 in range(s0, s1, BT):
            e = e0 + tl.arange(0, BT)
            me = e < s1
            m2 = me[:, None] & md[None, :]
            r = tl.load(rows + e, mask=me, other=0).to(tl.int64)
            q = tl.load(perm + e, mask=me, other=0)
            v = tl.load(vals + q, mask=me, other=0.0).to(tl.float32)
            d = tl.load(dpre + q, mask=me, other=0.0)
            go = tl.load(gout + r[:, None] * D + rd[None, :], mask=m2, other=0.0).to(tl.float32)
            dwn += tl.sum(v[:, None] * go, axis=0)
            xx = tl.load(x_ptr + r[:, None] * D + rd[None, :], mask=m2, other=0.0).to(tl.float32)
            dwe += tl.sum(d[:, None] * xx, axis=0)
            dbv += d
        if end - start <= SEG:
            _finish_latent(j, dwn, dwe, tl.sum(dbv, axis=0), wdec, dwdec, dwencT, dbenc, D, EPS,
                           rd, md)  # fmt: skip
        else:
            k = tl.load(part_base + j) + p
            tl.store(part_n + k * D + rd, dwn, mask=md)
            tl.store(part_e + k * D + rd, dwe, mask=md)
            tl.store(part_b + k, tl.sum(dbv, axis=0))


@triton.jit
def _bwd_col_finish_kernel(long_cols, colptr, part_base, part_n, part_e, part_b, wdec, dwdec,
                           dwencT, dbenc, D, SEG, EPS, BD: tl.constexpr):  # fmt: skip
    """One program per latent longer than SEG: adds its segments' partial sums in segment
    order (deterministic) and finishes it. Padding entries (long_cols < 0) idle."""
    j = tl.load(long_cols + tl.program_id(0)).to(tl.int64)
    if j >= 0:
        rd = tl.arange(0, BD)
        md = rd < D
        dwn = tl.zeros([BD], dtype=tl.float32)
        dwe = tl.zeros([BD], dtype=tl.float32)
        db = 0.0
        k0 = tl.load(part_base + j)
        n_parts = tl.cdiv(tl.load(colptr + j + 1) - tl.load(colptr + j), SEG)
        for k in range(k0, k0 + n_parts):
            dwn += tl.load(part_n + k * D + rd, mask=md, other=0.0)
            dwe += tl.load(part_e + k * D + rd, mask=md, other=0.0)
            db += tl.load(part_b + k)
        _finish_latent(j, dwn, dwe, db, wdec, dwdec, dwencT, dbenc, D, EPS, rd, md)


#: fp32 values per [entries, d] gather tile: bounds registers per program (tests shrink it
#: to exercise the multi-chunk loops at small shapes).
ROW_TILE = 8192
#: At most this many of a latent's active tokens per program of the column backward: a
#: latent that fires on most tokens would otherwise hold one program for the whole launch.
#: A runtime argument, so the self-check and tests split tiny columns with the same build.
COL_SEGMENT = 1024
#: AMD GPUs whose Triton backend takes input_precision="tf32" (MI300); others reject it.
HIP_TF32 = ("gfx942",)


def _row_blocks(d: int) -> tuple[int, int, int]:
    """(BD, BK, num_warps): the whole d row per program, ROW_TILE values per tile."""
    bd = triton.next_power_of_2(d)
    return bd, max(1, ROW_TILE // bd), 4 if bd <= 512 else 8


def encode_config(dtype: torch.dtype, tf32: bool, target: Target) -> dict | None:
    """Constexprs and options of the fused encoder on `target`, or None where torch's GEMM runs
    instead (sae.py then uses addmm + the activation):

    - fp32 without TF32 (or on an AMD GPU that has no TF32 in Triton): cuBLAS/hipBLAS SGEMM
      beats a Triton FMA GEMM;
    - NVIDIA before sm_80: the encoder fails to assemble on sm_60 and spills kilobytes per
      thread on sm_70/75 (kernels/gpu_build.py cross-compiles them), and those GPUs have no
      bf16 tensor cores for it to use.

    input_precision only concerns fp32 operands, so half dtypes pass "ieee" (AMD's backend
    rejects "tf32" except on gfx942). The interpreter takes the same decisions with small
    tiles, computing in fp32 (it has no bf16 dot).
    """
    half = dtype in (torch.float16, torch.bfloat16)
    tf32_ok = target.backend != "hip" or target.arch in HIP_TF32
    if not (half or (tf32 and tf32_ok)):
        return None
    if target.backend == "cuda" and int(target.arch) < 80:
        return None
    prec = "ieee" if half else "tf32"
    if target.backend == "interpreter":
        return {"PREC": "ieee", "UPCAST": True, "BM": 32, "BN": 64, "BK": 32, "num_warps": 4}
    return {"PREC": prec, "UPCAST": False, "BM": 128, "BN": 128, "BK": 64 if half else 32,
            "num_warps": 8, "num_stages": 3}  # fmt: skip


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


@dataclass(frozen=True)
class Columns:
    """The sparse entries in latent order, cut into segments of at most `segment` entries.

    perm: CSR index of each latent-ordered entry; rows: its token (int32); colptr [S+1];
    seg_col / seg_part: latent (-1: padding) and segment number of each column program;
    part_base [S]: first partial-sum row of a latent longer than one segment; long_cols:
    those latents (-1: padding); n_parts: partial-sum rows to allocate.
    """

    perm: torch.Tensor
    rows: torch.Tensor
    colptr: torch.Tensor
    seg_col: torch.Tensor
    seg_part: torch.Tensor
    part_base: torch.Tensor
    long_cols: torch.Tensor
    n_parts: int
    segment: int


def _nonzero_static(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Indices of the True entries of a 1-d mask, padded with -1 to `size`, without asking the
    device how many there are (torch.nonzero would wait for it)."""
    try:
        return torch.nonzero_static(mask, size=size, fill_value=-1).squeeze(1)
    except (NotImplementedError, RuntimeError):  # pragma: no cover - older torch / backends
        idx = mask.nonzero().squeeze(1)[:size]
        return torch.cat([idx, idx.new_full((size - idx.numel(),), -1)])


def columns(cols: torch.Tensor, rows: torch.Tensor, d_sae: int, segment: int | None = None):
    """Column order and segments of the CSR entries (cols, rows), on the device, with no host
    sync: every size comes from nnz (a latent has >segment entries for at most
    nnz // (segment + 1) latents, and those take fewer than 2 nnz / segment partial rows)."""
    seg = segment or COL_SEGMENT
    nnz, dev, s = cols.numel(), cols.device, d_sae
    perm = torch.argsort(cols, stable=True)
    rows_c = rows[perm].to(torch.int32)
    colptr = torch.searchsorted(cols[perm], torch.arange(s + 1, device=dev, dtype=cols.dtype))
    n_long = min(s, nnz // (seg + 1))
    if n_long == 0:  # every latent fits one segment: one program per latent, as before
        ar = torch.arange(s, device=dev)
        none = torch.full((1,), -1, device=dev, dtype=torch.int64)
        return Columns(perm, rows_c, colptr, ar, torch.zeros_like(ar), ar, none, 0, seg)
    counts = colptr[1:] - colptr[:-1]
    nseg = counts.add(seg - 1).div(seg, rounding_mode="floor").clamp_min(1)
    ends = torch.cumsum(nseg, 0)
    g = torch.arange(s + nnz // seg, device=dev)
    col = torch.searchsorted(ends, g, right=True)
    within = col.clamp_max(s - 1)
    seg_part = g - (ends[within] - nseg[within])
    seg_col = torch.where(col < s, col, -1)
    long = counts > seg
    long_n = torch.where(long, nseg, 0)
    part_base = torch.cumsum(long_n, 0) - long_n
    n_parts = 2 * nnz // seg + 1
    return Columns(perm, rows_c, colptr, seg_col, seg_part, part_base,
                   _nonzero_static(long, n_long), n_parts, seg)  # fmt: skip


def backward_launches(csr, cc: Columns, g_out, g_acts, x, W_encT, W_dec, inv_norm, eps: float):
    """Sparse backward: ([row, column(, finish)] launches, (dx, dW_encT, db_enc, dW_dec)).

    csr = (rowptr, cols, vals, nnz); cc = columns(...). W_encT None: nothing needs dx (the
    SAE's input has no gradient), so the row kernel skips it and dx is None.
    """
    rowptr, cols, vals, nnz = csr
    n, d = x.shape
    s = W_dec.shape[0]
    bd, bk, warps = _row_blocks(d)
    want_dx = W_encT is not None
    dpre = torch.empty(max(nnz, 1), device=x.device, dtype=torch.float32)
    dx = torch.empty_like(x) if want_dx else None
    ga = g_acts if g_acts is not None else dpre
    row = Launch(_bwd_row_kernel, (n,),
                 (rowptr, cols, vals, g_out, ga, W_dec, inv_norm,
                  W_encT if want_dx else W_dec, dpre, dx if want_dx else x, d, s),
                 {"HAS_GA": g_acts is not None, "WANT_DX": want_dx, "BK": bk, "BD": bd},
                 warps)  # fmt: skip
    perm, rows_c = (cc.perm, cc.rows) if nnz else (cc.perm.new_zeros(1), cc.rows.new_zeros(1))
    dW_dec = torch.empty_like(W_dec)
    dW_encT = torch.empty(s, d, device=x.device, dtype=W_dec.dtype)
    db_enc = torch.empty(s, device=x.device, dtype=W_dec.dtype)
    parts = [torch.empty(max(cc.n_parts, 1), *shape, device=x.device, dtype=torch.float32)
             for shape in ((d,), (d,), ())]  # fmt: skip
    col = Launch(_bwd_col_kernel, (cc.seg_col.numel(),),
                 (cc.seg_col, cc.seg_part, cc.colptr, rows_c, perm, vals, dpre, g_out, x, W_dec,
                  cc.part_base, *parts, dW_dec, dW_encT, db_enc, d, cc.segment, eps),
                 {"BT": bk, "BD": bd}, warps)  # fmt: skip
    launches = [row, col]
    if cc.n_parts:
        launches.append(Launch(_bwd_col_finish_kernel, (cc.long_cols.numel(),),
                               (cc.long_cols, cc.colptr, cc.part_base, *parts, W_dec, dW_dec,
                                dW_encT, db_enc, d, cc.segment, eps), {"BD": bd}, warps))  # fmt: skip
    return launches, (dx, dW_encT, db_enc, dW_dec)


def backward(csr, cc: Columns, g_out, g_acts, x, W_encT, W_dec, inv_norm, eps: float):
    """Sparse backward: returns (dx or None, dW_encT, db_enc, dW_dec); see backward_launches."""
    return run(*backward_launches(csr, cc, g_out, g_acts, x, W_encT, W_dec, inv_norm, eps))


def sampled_dot_launches(ptr, idx, a, b, b_scale):
    """A sampled product through the row kernel: for each row r of `a` and each entry e in
    ptr[r]:ptr[r+1], out[e] = a[r] . b[idx[e]] * b_scale[idx[e]] (fp32)."""
    n, d = a.shape
    nnz = idx.numel()
    bd, bk, warps = _row_blocks(d)
    out = torch.empty(max(nnz, 1), device=a.device, dtype=torch.float32)
    ones = torch.ones(max(nnz, 1), device=a.device, dtype=torch.float32)  # no activity mask
    launch = Launch(_bwd_row_kernel, (n,),
                    (ptr, _pad(idx), ones, a, out, b, b_scale, b, out, a, d, b.shape[0]),
                    {"HAS_GA": False, "WANT_DX": False, "BK": bk, "BD": bd}, warps)  # fmt: skip
    return [launch], out[:nnz]


def sampled_dot(ptr, idx, a, b, b_scale) -> torch.Tensor:
    return run(*sampled_dot_launches(ptr, idx, a, b, b_scale))


def _pad(t: torch.Tensor) -> torch.Tensor:
    return t if t.numel() > 0 else t.new_zeros(1)
