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
                           and squared row norms. N <= 128 is one tile; D is split into chunks
                           until there are enough programs to fill a GPU.
    _pullaway_cos_kernel   one program per tile: the chunk sums, norms, cosines, and the tile's
                           share of the loss
    _pullaway_bwd_kernel   one program per (row block, column block) of dS, from the saved
                           cosines G and norms rho (u = S / rho is formed on the fly, not stored)
"""
# The kernels' `tl.constexpr` annotations stay strings (Triton reads them as such), so this
# module imports where Triton is not installed; the reference path then runs alone.
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

try:
    import triton
    import triton.language as tl
except ImportError:  # macOS, Windows: no Triton
    triton = None
jit = triton.jit if triton else (lambda fn: fn)

EPS = 1e-12  # rows are divided by max(||S_i||, EPS): F.normalize's default
PROGRAMS = 256  # the forward splits D until it has about this many programs (split-K) ...
MIN_CHUNK = 512  # ... each reading at least this many elements of its rows


def check_batch(n: int):
    if n < 2:
        raise ValueError(f"pullaway needs at least 2 samples (it averages over pairs i != j), got N={n}")


def pullaway_reference(emb: torch.Tensor) -> torch.Tensor:
    """Eq. 14 in plain PyTorch (fp32 math for half inputs)."""
    N = emb.shape[0]
    check_batch(N)
    s = emb.reshape(N, -1).to(torch.promote_types(emb.dtype, torch.float32))  # (N, D)
    u = F.normalize(s, dim=1, eps=EPS)  # (N, D) unit rows
    cos2 = (u @ u.T).square()  # (N, N)
    off = cos2.masked_fill(torch.eye(N, dtype=torch.bool, device=emb.device), 0)  # i != j
    return (off.sum() / (N * (N - 1))).to(emb.dtype)


@jit
def _pullaway_fwd_kernel(S, DOTS, SQ, N, D, CHUNK, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # one tile of S S^T and the rows' squared norms over one chunk of D (split-K partial sums)
    pi, pj, k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i = pi * BLOCK_N + tl.arange(0, BLOCK_N)
    j = pj * BLOCK_N + tl.arange(0, BLOCK_N)
    dots = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float32)
    sq = tl.zeros([BLOCK_N], dtype=tl.float32)
    start = k * CHUNK
    for d0 in range(start, tl.minimum(start + CHUNK, D), BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        si = tl.load(S + i[:, None] * D + d[None, :], mask=(i[:, None] < N) & (d[None, :] < D), other=0.0)
        sj = tl.load(S + j[None, :] * D + d[:, None], mask=(j[None, :] < N) & (d[:, None] < D), other=0.0)
        si, sj = si.to(tl.float32), sj.to(tl.float32)  # (BN, BD), and rows j transposed (BD, BN)
        dots = tl.dot(si, sj, dots, input_precision="ieee")
        sq += tl.sum(si * si, axis=1)
    tl.store(DOTS + k * N * N + i[:, None] * N + j[None, :], dots, mask=(i[:, None] < N) & (j[None, :] < N))
    if pj == 0:
        tl.store(SQ + k * N + i, sq, mask=i < N)


@jit
def _pullaway_cos_kernel(DOTS, SQ, G, RHO, PARTIAL, N, SPLITS, scale, eps, BLOCK_N: tl.constexpr):
    # one tile of the cosines G_ij = S_i . S_j / (rho_i rho_j) from the chunk sums, and
    # scale * its squared off-diagonal sum
    pi, pj = tl.program_id(0), tl.program_id(1)
    i = pi * BLOCK_N + tl.arange(0, BLOCK_N)
    j = pj * BLOCK_N + tl.arange(0, BLOCK_N)
    inside = (i[:, None] < N) & (j[None, :] < N)
    dots = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float32)
    sq_i = tl.zeros([BLOCK_N], dtype=tl.float32)
    sq_j = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k in range(0, SPLITS):
        dots += tl.load(DOTS + k * N * N + i[:, None] * N + j[None, :], mask=inside, other=0.0)
        sq_i += tl.load(SQ + k * N + i, mask=i < N, other=0.0)
        sq_j += tl.load(SQ + k * N + j, mask=j < N, other=0.0)
    rho_i = tl.maximum(tl.sqrt_rn(sq_i), eps)
    rho_j = tl.maximum(tl.sqrt_rn(sq_j), eps)
    cos = dots / (rho_i[:, None] * rho_j[None, :])  # (BN, BN)
    tl.store(G + i[:, None] * N + j[None, :], cos, mask=inside)
    if pj == 0:
        tl.store(RHO + i, rho_i, mask=i < N)
    cos2 = tl.where(inside & (i[:, None] != j[None, :]), cos * cos, 0.0)
    tl.store(PARTIAL + pi * tl.num_programs(1) + pj, tl.sum(cos2) * scale)


@jit
def _pullaway_bwd_kernel(S, G, RHO, GO, DS, N, D, scale, eps,
                         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # one (BLOCK_N, BLOCK_D) tile of dS = k / rho_i * (sum_{j != i} G_ij u_j - s_i u_i)
    i = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)  # sum_{j != i} G_ij u_j
    s = tl.zeros([BLOCK_N], dtype=tl.float32)  # sum_{j != i} G_ij^2
    for j0 in range(0, N, BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        off = (i[:, None] < N) & (j[None, :] < N) & (i[:, None] != j[None, :])
        g = tl.load(G + i[:, None] * N + j[None, :], mask=off, other=0.0)  # (BN, BN)
        s += tl.sum(g * g, axis=1)
        rho_j = tl.load(RHO + j, mask=j < N, other=1.0)
        sj = tl.load(S + j[:, None] * D + d[None, :], mask=(j[:, None] < N) & (d[None, :] < D), other=0.0)
        acc = tl.dot(g / rho_j[None, :], sj.to(tl.float32), acc, input_precision="ieee")
    rho_i = tl.load(RHO + i, mask=i < N, other=1.0)
    si = tl.load(S + i[:, None] * D + d[None, :], mask=(i[:, None] < N) & (d[None, :] < D), other=0.0)
    s = tl.where(rho_i > eps, s, 0.0)  # inside the EPS clamp rho_i is constant: no radial term
    k = 4 * tl.load(GO).to(tl.float32) * scale
    ds = (k / rho_i)[:, None] * (acc - (s / rho_i)[:, None] * si.to(tl.float32))
    tl.store(DS + i[:, None] * D + d[None, :], ds.to(DS.dtype.element_ty),
             mask=(i[:, None] < N) & (d[None, :] < D))


def _block(n: int, cap: int) -> int:
    """A power-of-two block for n, at least 16 (tl.dot's smallest side), at most cap."""
    return max(16, min(cap, triton.next_power_of_2(n)))


def pullaway_forward(s: torch.Tensor):
    """s: (N, D) contiguous. Returns the loss (a scalar of s's dtype), the cosines G (N, N) and
    the clamped norms rho (N,), both fp32."""
    N, D = s.shape
    check_batch(N)
    block_n = _block(N, 128) if N <= 128 else 64  # one tile up to N = 128
    block_d = _block(D, 32 if block_n == 128 else 64)
    tiles = triton.cdiv(N, block_n)
    # split D so that tiles^2 * splits programs fill the GPU, each reading at least MIN_CHUNK
    splits = max(1, min(PROGRAMS // tiles**2, triton.cdiv(D, MIN_CHUNK)))
    chunk = triton.cdiv(triton.cdiv(D, splits), block_d) * block_d
    splits = triton.cdiv(D, chunk)
    f32 = dict(dtype=torch.float32, device=s.device)
    dots, sq = torch.empty(splits, N, N, **f32), torch.empty(splits, N, **f32)  # partial sums per chunk
    gram, rho = torch.empty(N, N, **f32), torch.empty(N, **f32)  # (N, N), (N,)
    partial = torch.empty(tiles, tiles, **f32)
    _pullaway_fwd_kernel[(tiles, tiles, splits)](s, dots, sq, N, D, chunk, BLOCK_N=block_n, BLOCK_D=block_d,
                                                 num_warps=8 if block_n == 128 else 4)
    _pullaway_cos_kernel[(tiles, tiles)](dots, sq, gram, rho, partial, N, splits, 1.0 / (N * (N - 1)), EPS,
                                         BLOCK_N=block_n, num_warps=8 if block_n == 128 else 4)
    return partial.sum().to(s.dtype), gram, rho


def pullaway_backward(go: torch.Tensor, s: torch.Tensor, gram: torch.Tensor, rho: torch.Tensor):
    """d loss / d s for the upstream scalar gradient go; s: (N, D). Returns (N, D)."""
    N, D = s.shape
    block_n, block_d = _block(N, 64), _block(D, 64)
    ds = torch.empty_like(s)  # (N, D)
    _pullaway_bwd_kernel[(triton.cdiv(N, block_n), triton.cdiv(D, block_d))](
        s, gram, rho, go.contiguous(), ds, N, D, 1.0 / (N * (N - 1)), EPS, BLOCK_N=block_n, BLOCK_D=block_d)
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
        return pullaway_backward(go, s, gram, rho).view(ctx.shape)
