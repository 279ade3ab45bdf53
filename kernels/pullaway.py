"""The pull-away term of EBGAN, fused: Triton forward and backward, and the PyTorch reference.

Zhao, Mathieu, LeCun 2016, "Energy-based Generative Adversarial Network"
(arXiv:1609.03126), Eq. 14, over the encoder's embeddings S (N, D) of a generated batch:

    f_PT(S) = 1 / (N (N - 1)) * sum_i sum_{j != i} (S_i . S_j / (||S_i|| ||S_j||))^2

the mean squared cosine over ordered pairs (squared, and normalized along the feature axis:
two known bugs). Rows are divided by max(||S_i||, EPS), as F.normalize does, so a zero row
has zero cosines and a zero gradient instead of NaN.

With u_i = S_i / rho_i, rho_i = max(||S_i||, EPS), G = u u^T (cosines), k = 4 go / (N (N - 1)):

    dL/du_i = k sum_{j != i} G_ij u_j
    dL/dS_i = k / rho_i * (sum_{j != i} G_ij u_j - s_i u_i),  s_i = sum_{j != i} G_ij^2
              (no s_i term for a row inside the EPS clamp, where rho_i is constant)

Triton path, fp32 math whatever the input dtype (dot products in IEEE fp32, not TF32), no
atomics (deterministic):
    _pullaway_fwd_kernel   one program per (tile of S S^T, chunk of D): partial dot products
                           and squared row norms. Tiles are 16, 32 or 64 rows square (N <= 64
                           is one tile); D is split into chunks until there are enough programs
                           to fill a GPU (split-K), summed in a fixed order by the next kernel.
    _pullaway_cos_kernel   one program per (32, 32) tile of G: the chunk sums, norms, cosines,
                           and the tile's share of the loss
    _pullaway_bwd_kernel   one program per (row block, 64 columns) of dS, from the saved
                           cosines G and norms rho (u = S / rho is formed on the fly, not stored)
"""
# The kernels' `tl.constexpr` annotations stay strings (Triton reads them as such), so this
# module imports where Triton is not installed; the reference path then runs alone.
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .fallback import fail, quiet, reference_grad

try:
    import triton
    import triton.language as tl
except ImportError:  # macOS, Windows: no Triton
    triton = None
# The batch size and the number of splits are not specialized on (divisible by 16, equal to 1):
# one compiled kernel serves every batch size, and tests/test_kernels_compile.py compiles what runs.
jit = triton.jit(do_not_specialize=["n_rows", "n_splits"]) if triton else (lambda fn: fn)

EPS = 1e-12  # rows are divided by max(||S_i||, EPS): F.normalize's default
PROGRAMS = 256  # the forward splits D until it has about this many programs (split-K) ...
MIN_CHUNK = 512  # ... each reading at least this many elements of its rows
# Tiles: fp32 IEEE tl.dot runs on the FMA units, each thread holding its rows' and columns'
# slices of both operands for a whole K block, so K blocks stay short and the warps grow with
# the tile (8 to 16 outputs a thread): no configuration spills on sm_80 ... sm_120 in any dtype
# (benchmarks/kernel_compile.py; docs/kernels.md has the table).
FWD_TILES = {16: (16, 1), 32: (16, 4), 64: (8, 8)}  # BLOCK_N: (BLOCK_K, warps) for a tile of S S^T
COS_BLOCK, COS_WARPS = 32, 4  # (32, 32) tiles of the cosine matrix
BWD_BLOCK_J, BWD_BLOCK_COLS = 16, 64  # a (BLOCK_N, 64) tile of dS, 16 rows j a step, BLOCK_N / 8 warps
# Argument types of each kernel for ahead-of-time compiles ("*T": a pointer to the input's dtype)
SIGNATURES = {
    "_pullaway_fwd_kernel": dict(EMB_ptr="*T", DOTS_ptr="*fp32", SUMSQ_ptr="*fp32", n_rows="i32", n_cols="i32",
                                 chunk_size="i32"),
    "_pullaway_cos_kernel": dict(DOTS_ptr="*fp32", SUMSQ_ptr="*fp32", COS_ptr="*fp32", RHO_ptr="*fp32",
                                 PARTIAL_ptr="*fp32", n_rows="i32", n_splits="i32", scale="fp32", eps="fp32"),
    "_pullaway_bwd_kernel": dict(EMB_ptr="*T", COS_ptr="*fp32", RHO_ptr="*fp32", GRAD_OUT_ptr="*T", DEMB_ptr="*T",
                                 n_rows="i32", n_cols="i32", scale="fp32", eps="fp32"),
}


def check_batch(n: int):
    if n < 2:
        raise ValueError(f"pullaway needs at least 2 samples (it averages over pairs i != j), got N={n}")


def pullaway_reference(emb: torch.Tensor) -> torch.Tensor:
    """Eq. 14 in plain PyTorch (fp32 math for half inputs, also inside an autocast region:
    autocast would run u @ u.T, a matmul, in bf16/fp16 whatever the dtype of u)."""
    N = emb.shape[0]
    check_batch(N)
    with torch.autocast(emb.device.type, enabled=False):
        s = emb.reshape(N, -1).to(torch.promote_types(emb.dtype, torch.float32))  # (N, D)
        u = F.normalize(s, dim=1, eps=EPS)  # (N, D) unit rows
        cos2 = (u @ u.T).square()  # (N, N)
        off = cos2.masked_fill(torch.eye(N, dtype=torch.bool, device=emb.device), 0)  # i != j
        return (off.sum() / (N * (N - 1))).to(emb.dtype)


@jit
def _pullaway_fwd_kernel(
    EMB_ptr,
    DOTS_ptr,
    SUMSQ_ptr,
    n_rows,
    n_cols,
    chunk_size,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """dots[k, i, j] = sum_{d in chunk k} s[i, d] s[j, d];  sumsq[k, i] = sum_{d in chunk k} s[i, d]^2.

    Split-K partial sums in fp32 (IEEE dot products) over s (n_rows, n_cols), contiguous.
    Grid (tiles, tiles, n_splits): program (pi, pj, k) computes one (BLOCK_N, BLOCK_N) tile of
    s s^T over columns [k * chunk_size, (k + 1) * chunk_size), BLOCK_K columns at a time; the
    pj == 0 column also stores sumsq.
    """
    pi, pj, k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i = pi * BLOCK_N + tl.arange(0, BLOCK_N)
    j = pj * BLOCK_N + tl.arange(0, BLOCK_N)
    dots = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float32)
    sq = tl.zeros([BLOCK_N], dtype=tl.float32)
    start = k * chunk_size
    for d0 in range(start, tl.minimum(start + chunk_size, n_cols), BLOCK_K):
        d = d0 + tl.arange(0, BLOCK_K)
        si = tl.load(EMB_ptr + i[:, None] * n_cols + d[None, :],
                     mask=(i[:, None] < n_rows) & (d[None, :] < n_cols), other=0.0)
        sj = tl.load(EMB_ptr + j[None, :] * n_cols + d[:, None],
                     mask=(j[None, :] < n_rows) & (d[:, None] < n_cols), other=0.0)
        si, sj = si.to(tl.float32), sj.to(tl.float32)  # (BN, BK), and rows j transposed (BK, BN)
        dots = tl.dot(si, sj, dots, input_precision="ieee")
        sq += tl.sum(si * si, axis=1)
    tl.store(DOTS_ptr + k * n_rows * n_rows + i[:, None] * n_rows + j[None, :], dots,
             mask=(i[:, None] < n_rows) & (j[None, :] < n_rows))
    if pj == 0:
        tl.store(SUMSQ_ptr + k * n_rows + i, sq, mask=i < n_rows)


@jit
def _pullaway_cos_kernel(
    DOTS_ptr,
    SUMSQ_ptr,
    COS_ptr,
    RHO_ptr,
    PARTIAL_ptr,
    n_rows,
    n_splits,
    scale,
    eps,
    BLOCK_N: tl.constexpr,
):
    """rho[i] = max(sqrt(sum_k sumsq[k, i]), eps);  cos[i, j] = sum_k dots[k, i, j] / (rho[i] rho[j]);
    partial[pi, pj] = scale * sum_{(i, j) in tile (pi, pj), i != j} cos[i, j]^2.

    Grid (tiles, tiles): program (pi, pj) stores one (BLOCK_N, BLOCK_N) tile of cos (n_rows, n_rows)
    and its share of the loss; the pj == 0 column also stores rho. The split-K sums are added in
    the order k = 0, 1, ... (deterministic).
    """
    pi, pj = tl.program_id(0), tl.program_id(1)
    i = pi * BLOCK_N + tl.arange(0, BLOCK_N)
    j = pj * BLOCK_N + tl.arange(0, BLOCK_N)
    inside = (i[:, None] < n_rows) & (j[None, :] < n_rows)
    tile = i[:, None] * n_rows + j[None, :]  # (BN, BN) offsets into an (n_rows, n_rows) matrix
    dots = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float32)
    sq_i = tl.zeros([BLOCK_N], dtype=tl.float32)
    sq_j = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k in range(0, n_splits):
        dots += tl.load(DOTS_ptr + k * n_rows * n_rows + tile, mask=inside, other=0.0)
        sq_i += tl.load(SUMSQ_ptr + k * n_rows + i, mask=i < n_rows, other=0.0)
        sq_j += tl.load(SUMSQ_ptr + k * n_rows + j, mask=j < n_rows, other=0.0)
    rho_i = tl.maximum(tl.sqrt_rn(sq_i), eps)
    rho_j = tl.maximum(tl.sqrt_rn(sq_j), eps)
    cos = dots / (rho_i[:, None] * rho_j[None, :])  # (BN, BN)
    tl.store(COS_ptr + tile, cos, mask=inside)
    if pj == 0:
        tl.store(RHO_ptr + i, rho_i, mask=i < n_rows)
    cos2 = tl.where(inside & (i[:, None] != j[None, :]), cos * cos, 0.0)
    tl.store(PARTIAL_ptr + pi * tl.num_programs(1) + pj, tl.sum(cos2) * scale)


@jit
def _pullaway_bwd_kernel(
    EMB_ptr,
    COS_ptr,
    RHO_ptr,
    GRAD_OUT_ptr,
    DEMB_ptr,
    n_rows,
    n_cols,
    scale,
    eps,
    BLOCK_N: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    """ds[i, d] = k / rho[i] * (sum_{j != i} cos[i, j] u[j, d] - c2[i] u[i, d]),
    with u = s / rho, k = 4 grad_out scale, c2[i] = sum_{j != i} cos[i, j]^2 (0 where rho[i] <= eps).

    Grid (cdiv(n_rows, BLOCK_N), cdiv(n_cols, BLOCK_COLS)): one (BLOCK_N, BLOCK_COLS) tile of ds,
    stored in DEMB_ptr's dtype, summing over j BLOCK_J rows at a time (IEEE fp32 dot products);
    grad_out is the upstream scalar gradient.
    """
    i = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    acc = tl.zeros([BLOCK_N, BLOCK_COLS], dtype=tl.float32)  # sum_{j != i} cos_ij u_j
    c2 = tl.zeros([BLOCK_N], dtype=tl.float32)  # sum_{j != i} cos_ij^2
    for j0 in range(0, n_rows, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        off = (i[:, None] < n_rows) & (j[None, :] < n_rows) & (i[:, None] != j[None, :])
        cos = tl.load(COS_ptr + i[:, None] * n_rows + j[None, :], mask=off, other=0.0)  # (BN, BJ)
        c2 += tl.sum(cos * cos, axis=1)
        rho_j = tl.load(RHO_ptr + j, mask=j < n_rows, other=1.0)
        sj = tl.load(EMB_ptr + j[:, None] * n_cols + d[None, :],
                     mask=(j[:, None] < n_rows) & (d[None, :] < n_cols), other=0.0)  # (BJ, BC)
        acc = tl.dot(cos / rho_j[None, :], sj.to(tl.float32), acc, input_precision="ieee")
    rho_i = tl.load(RHO_ptr + i, mask=i < n_rows, other=1.0)
    si = tl.load(EMB_ptr + i[:, None] * n_cols + d[None, :],
                 mask=(i[:, None] < n_rows) & (d[None, :] < n_cols), other=0.0)
    c2 = tl.where(rho_i > eps, c2, 0.0)  # inside the EPS clamp rho_i is constant: no radial term
    k = 4 * tl.load(GRAD_OUT_ptr).to(tl.float32) * scale
    ds = (k / rho_i)[:, None] * (acc - (c2 / rho_i)[:, None] * si.to(tl.float32))
    tl.store(DEMB_ptr + i[:, None] * n_cols + d[None, :], ds.to(DEMB_ptr.dtype.element_ty),
             mask=(i[:, None] < n_rows) & (d[None, :] < n_cols))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(n: int) -> int:
    """The smallest power of two >= n >= 1 (triton.next_power_of_2 without its wrapper's cost)."""
    return 1 << (n - 1).bit_length()


def _block(n: int, cap: int) -> int:
    """A power-of-two block for n, at least 16 (tl.dot's smallest side), at most cap."""
    return max(16, min(cap, _pow2(n)))


def plan(n_rows: int, n_cols: int) -> dict:
    """How the host functions launch the kernels for S (n_rows, n_cols): the tiles, the split of D
    (n_splits chunks of chunk_size columns) and each kernel's meta-parameters (constexprs and
    num_warps). Pure: the ahead-of-time compile test calls it over the shapes the scripts produce."""
    block_n = _block(n_rows, 64)  # (block_n, block_n) tiles of S S^T
    tiles = _cdiv(n_rows, block_n)
    # split D so that tiles^2 * n_splits programs fill the GPU, each reading at least MIN_CHUNK
    n_splits = max(1, min(PROGRAMS // tiles**2, _cdiv(n_cols, MIN_CHUNK)))
    block_k, fwd_warps = FWD_TILES[block_n]
    step = max(16, block_k)  # chunks start at multiples of 16 elements: aligned, vectorized loads
    chunk_size = _cdiv(_cdiv(n_cols, n_splits), step) * step
    bwd_cols = _block(n_cols, BWD_BLOCK_COLS)
    return dict(tiles=tiles, n_splits=_cdiv(n_cols, chunk_size), chunk_size=chunk_size,
                cos_tiles=_cdiv(n_rows, COS_BLOCK),
                bwd_grid=(_cdiv(n_rows, block_n), _cdiv(n_cols, bwd_cols)), meta={
        "_pullaway_fwd_kernel": dict(BLOCK_N=block_n, BLOCK_K=block_k, num_warps=fwd_warps),
        "_pullaway_cos_kernel": dict(BLOCK_N=COS_BLOCK, num_warps=COS_WARPS),
        "_pullaway_bwd_kernel": dict(BLOCK_N=block_n, BLOCK_J=BWD_BLOCK_J, BLOCK_COLS=bwd_cols,
                                     num_warps=max(1, block_n * bwd_cols // 512))})


def configs(n_rows: int, n_cols: int) -> list:
    """[(kernel name, its integer arguments, its meta-parameters)] of every launch, forward and
    backward, for S (n_rows, n_cols): what the JIT specializes and compiles."""
    p = plan(n_rows, n_cols)
    ints = {"_pullaway_fwd_kernel": dict(n_rows=n_rows, n_cols=n_cols, chunk_size=p["chunk_size"]),
            "_pullaway_cos_kernel": dict(n_rows=n_rows, n_splits=p["n_splits"]),
            "_pullaway_bwd_kernel": dict(n_rows=n_rows, n_cols=n_cols)}
    return [(name, ints[name], meta) for name, meta in p["meta"].items()]


def pullaway_forward(s: torch.Tensor):
    """s: (N, D) contiguous. Returns the loss (a scalar of s's dtype), the cosines G (N, N) and
    the clamped norms rho (N,), both fp32."""
    n_rows, n_cols = s.shape
    check_batch(n_rows)
    p = plan(n_rows, n_cols)
    tiles, n_splits, cos_tiles = p["tiles"], p["n_splits"], p["cos_tiles"]
    f32 = dict(dtype=torch.float32, device=s.device)
    dots, sq = torch.empty(n_splits, n_rows, n_rows, **f32), torch.empty(n_splits, n_rows, **f32)  # per chunk
    gram, rho = torch.empty(n_rows, n_rows, **f32), torch.empty(n_rows, **f32)  # (N, N), (N,)
    partial = torch.empty(cos_tiles, cos_tiles, **f32)
    _pullaway_fwd_kernel[(tiles, tiles, n_splits)](s, dots, sq, n_rows, n_cols, p["chunk_size"],
                                                   **p["meta"]["_pullaway_fwd_kernel"])
    _pullaway_cos_kernel[(cos_tiles, cos_tiles)](dots, sq, gram, rho, partial, n_rows, n_splits,
                                                 1.0 / (n_rows * (n_rows - 1)), EPS, **p["meta"]["_pullaway_cos_kernel"])
    return partial.sum().to(s.dtype), gram, rho


def pullaway_backward(go: torch.Tensor, s: torch.Tensor, gram: torch.Tensor, rho: torch.Tensor):
    """d loss / d s for the upstream scalar gradient go; s: (N, D). Returns (N, D)."""
    n_rows, n_cols = s.shape
    p = plan(n_rows, n_cols)
    ds = torch.empty_like(s)  # (N, D)
    _pullaway_bwd_kernel[p["bwd_grid"]](s, gram, rho, go.contiguous(), ds, n_rows, n_cols,
                                        1.0 / (n_rows * (n_rows - 1)), EPS, **p["meta"]["_pullaway_bwd_kernel"])
    return ds


class PullawayFunction(torch.autograd.Function):
    """The Triton path as one autograd node."""

    @staticmethod
    def forward(ctx, emb: torch.Tensor):
        s = emb.reshape(emb.shape[0], -1).contiguous()  # (N, D)
        loss, gram, rho = pullaway_forward(s)
        ctx.save_for_backward(s, gram, rho)
        ctx.shape = emb.shape
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, go):
        s, gram, rho = ctx.saved_tensors
        try:
            with quiet():
                ds = pullaway_backward(go, s, gram, rho)
        except Exception as err:  # a backward kernel that cannot run: the reference's gradient
            fail("pullaway backward", err)
            ds = reference_grad(pullaway_reference, s, go)
        return ds.view(ctx.shape)
