"""The gradient penalty of WGAN-GP and DRAGAN, fused: Triton forward and backward, and the
PyTorch reference.

Gulrajani, Ahmed, Arjovsky, Dumoulin, Courville 2017, "Improved Training of Wasserstein
GANs" (arXiv:1704.00028), Eq. 3:

    L = E[D(x~)] - E[D(x)] + lambda * E_x^[(||grad_x^ D(x^)||_2 - 1)^2]

This module computes the last expectation over a batch of gradients g (N, ...), each
sample g_i flattened over ALL its non-batch axes (a norm over one axis is a known bug):

    gradient_penalty(g, t) = 1/N sum_i (||g_i|| - t)^2
    d/dg_i                 = 2 (||g_i|| - t) / (N ||g_i||) * g_i     (0 where ||g_i|| = 0)

Triton path, fp32 accumulation whatever the input dtype, no atomics (bitwise deterministic):
    _gp_fwd_kernel    one program per (sample, chunk of D): the chunk's sum of squares
    _gp_loss_kernel   one program: the norms from the chunk sums, then the batch mean
    _gp_bwd_kernel    one program per (sample, chunk of D): dg_i = scale_i * g_i
Rows are split into chunks until there are enough programs to fill a GPU, so any D works and
a small batch of large images still uses every SM.
"""
# The kernels' `tl.constexpr` annotations stay strings (Triton reads them as such), so this
# module imports where Triton is not installed; the reference path then runs alone.
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

try:
    import triton
    import triton.language as tl
except ImportError:  # macOS, Windows: no Triton
    triton = None
jit = triton.jit if triton else (lambda fn: fn)

BLOCK_D = 2048     # elements per load
PROGRAMS = 1024    # rows are split into chunks until there are about this many programs ...
MIN_CHUNK = 4096   # ... each reading at least this many elements


def gradient_penalty_reference(grad: torch.Tensor, target: float = 1.0) -> torch.Tensor:
    """mean_i (||g_i||_2 - target)^2 in plain PyTorch (fp32 math for half inputs)."""
    g = grad.reshape(grad.shape[0], -1)  # (N, D)
    # vector_norm's backward is 0 at a zero row, not NaN
    norm = torch.linalg.vector_norm(g, dim=1, dtype=torch.promote_types(g.dtype, torch.float32))  # (N,)
    return (norm - target).square().mean().to(grad.dtype)


@jit
def _gp_fwd_kernel(G, SUMSQ, D, CHUNK, BLOCK: tl.constexpr):
    # sum of squares of one chunk of one row of g, in fp32
    n, c = tl.program_id(0), tl.program_id(1)
    row = G + n.to(tl.int64) * D
    start = c * CHUNK
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(start, tl.minimum(start + CHUNK, D), BLOCK):
        cols = off + tl.arange(0, BLOCK)
        x = tl.load(row + cols, mask=cols < D, other=0.0).to(tl.float32)
        acc += x * x
    tl.store(SUMSQ + n * tl.num_programs(1) + c, tl.sum(acc))


@jit
def _gp_loss_kernel(SUMSQ, NORM, LOSS, N, C, target, BLOCK_N: tl.constexpr):
    # the norms ||g_i|| from the chunk sums (saved for the backward), then mean_i (||g_i|| - t)^2
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for off in range(0, N, BLOCK_N):
        rows = off + tl.arange(0, BLOCK_N)
        mask = rows < N
        sumsq = tl.zeros([BLOCK_N], dtype=tl.float32)
        for c in range(0, C):
            sumsq += tl.load(SUMSQ + rows * C + c, mask=mask, other=0.0)
        norm = tl.sqrt_rn(sumsq)
        tl.store(NORM + rows, norm, mask=mask)
        acc += tl.where(mask, (norm - target) * (norm - target), 0.0)
    tl.store(LOSS, (tl.sum(acc) / N).to(LOSS.dtype.element_ty))


@jit
def _gp_bwd_kernel(G, NORM, GO, DG, N, D, CHUNK, target, BLOCK: tl.constexpr):
    # dg_i = go * 2 (||g_i|| - t) / (N ||g_i||) * g_i over one chunk of one row (0 for a zero row)
    n, c = tl.program_id(0), tl.program_id(1)
    norm = tl.load(NORM + n)
    go = tl.load(GO).to(tl.float32)
    scale = tl.where(norm > 0, go * 2 * (norm - target) / (N * tl.where(norm > 0, norm, 1.0)), 0.0)
    row, drow = G + n.to(tl.int64) * D, DG + n.to(tl.int64) * D
    start = c * CHUNK
    for off in range(start, tl.minimum(start + CHUNK, D), BLOCK):
        cols = off + tl.arange(0, BLOCK)
        x = tl.load(row + cols, mask=cols < D, other=0.0).to(tl.float32)
        tl.store(drow + cols, (scale * x).to(DG.dtype.element_ty), mask=cols < D)


def _chunks(N: int, D: int):
    """(elements per load, elements per program, programs per row) for N rows of length D."""
    block = min(BLOCK_D, triton.next_power_of_2(D))
    n_chunks = max(1, min(triton.cdiv(PROGRAMS, N), triton.cdiv(D, MIN_CHUNK)))
    chunk = triton.cdiv(triton.cdiv(D, n_chunks), block) * block
    return block, chunk, triton.cdiv(D, chunk)


def gradient_penalty_forward(g: torch.Tensor, target: float):
    """g: (N, D) contiguous. Returns the penalty (a scalar of g's dtype) and the norms (N,) fp32."""
    N, D = g.shape
    block, chunk, n_chunks = _chunks(N, D)
    sumsq = torch.empty(N, n_chunks, dtype=torch.float32, device=g.device)  # (N, C)
    _gp_fwd_kernel[(N, n_chunks)](g, sumsq, D, chunk, BLOCK=block)
    norm = torch.empty(N, dtype=torch.float32, device=g.device)  # (N,)
    loss = torch.empty((), dtype=g.dtype, device=g.device)
    _gp_loss_kernel[(1,)](sumsq, norm, loss, N, n_chunks, float(target),
                          BLOCK_N=min(1024, triton.next_power_of_2(N)))
    return loss, norm


def gradient_penalty_backward(go: torch.Tensor, g: torch.Tensor, norm: torch.Tensor, target: float):
    """d penalty / d g for the upstream scalar gradient go; g: (N, D), norm: (N,). Returns (N, D)."""
    N, D = g.shape
    block, chunk, n_chunks = _chunks(N, D)
    dg = torch.empty_like(g)  # (N, D)
    _gp_bwd_kernel[(N, n_chunks)](g, norm, go.contiguous(), dg, N, D, chunk, float(target), BLOCK=block)
    return dg


class GradientPenaltyFunction(torch.autograd.Function):
    """The Triton path as one autograd node; its backward feeds the create_graph graph of g."""

    @staticmethod
    def forward(ctx, grad: torch.Tensor, target: float):
        g = grad.reshape(grad.shape[0], -1).contiguous()  # (N, D)
        loss, norm = gradient_penalty_forward(g, target)
        ctx.save_for_backward(g, norm)
        ctx.target, ctx.shape = target, grad.shape
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, go):
        g, norm = ctx.saved_tensors
        return gradient_penalty_backward(go, g, norm, ctx.target).view(ctx.shape), None
