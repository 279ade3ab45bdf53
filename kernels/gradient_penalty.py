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

from .fallback import fail, quiet, reference_grad

try:
    import triton
    import triton.language as tl
except ImportError:  # macOS, Windows: no Triton
    triton = None
jit = triton.jit if triton else (lambda fn: fn)
# Sizes that are not strides are not specialized on (divisible by 16, equal to 1): one compiled
# kernel serves every batch size, and tests/test_kernels_compile.py compiles what runs.
jit_sizes = triton.jit(do_not_specialize=["n_rows", "n_chunks"]) if triton else (lambda fn: fn)

BLOCK_COLS = 2048  # elements per load, at most
PROGRAMS = 1024    # rows are split into chunks until there are about this many programs ...
MIN_CHUNK = 4096   # ... each reading at least this many elements
BLOCK_ROWS = 128   # rows of norms per step in the loss kernel
NUM_WARPS = 4
# Argument types of each kernel for ahead-of-time compiles ("*T": a pointer to the input's dtype)
SIGNATURES = {
    "_gp_fwd_kernel": dict(GRAD_ptr="*T", SUMSQ_ptr="*fp32", n_cols="i32", chunk_size="i32"),
    "_gp_loss_kernel": dict(SUMSQ_ptr="*fp32", NORM_ptr="*fp32", LOSS_ptr="*T", n_rows="i32", n_chunks="i32",
                            target="fp32"),
    "_gp_bwd_kernel": dict(GRAD_ptr="*T", NORM_ptr="*fp32", GRAD_OUT_ptr="*T", DGRAD_ptr="*T", n_rows="i32",
                           n_cols="i32", chunk_size="i32", target="fp32"),
}


def gradient_penalty_reference(grad: torch.Tensor, target: float = 1.0) -> torch.Tensor:
    """mean_i (||g_i||_2 - target)^2 in plain PyTorch (fp32 math for half inputs)."""
    g = grad.reshape(grad.shape[0], -1)  # (N, D)
    # vector_norm's backward is 0 at a zero row, not NaN
    norm = torch.linalg.vector_norm(g, dim=1, dtype=torch.promote_types(g.dtype, torch.float32))  # (N,)
    return (norm - target).square().mean().to(grad.dtype)


@jit
def _gp_fwd_kernel(
    GRAD_ptr,
    SUMSQ_ptr,
    n_cols,
    chunk_size,
    BLOCK: tl.constexpr,
):
    """sumsq[n, c] = sum_{j in chunk c} g[n, j]^2, in fp32.

    Grid (n_rows, n_chunks): program (n, c) reads columns [c * chunk_size, (c + 1) * chunk_size)
    of row n of g (n_rows, n_cols), contiguous, so n_cols is also its row stride.
    """
    n, c = tl.program_id(0), tl.program_id(1)
    row = GRAD_ptr + n.to(tl.int64) * n_cols
    start = c * chunk_size
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for off in range(start, tl.minimum(start + chunk_size, n_cols), BLOCK):
        cols = off + tl.arange(0, BLOCK)
        x = tl.load(row + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
        acc += x * x
    tl.store(SUMSQ_ptr + n * tl.num_programs(1) + c, tl.sum(acc))


@jit_sizes
def _gp_loss_kernel(
    SUMSQ_ptr,
    NORM_ptr,
    LOSS_ptr,
    n_rows,
    n_chunks,
    target,
    BLOCK_N: tl.constexpr,
):
    """norm[n] = sqrt(sum_c sumsq[n, c]);  loss = 1/n_rows sum_n (norm[n] - target)^2.

    One program. The norms are stored for the backward; the loss is stored in LOSS_ptr's dtype.
    """
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for off in range(0, n_rows, BLOCK_N):
        rows = off + tl.arange(0, BLOCK_N)
        mask = rows < n_rows
        sumsq = tl.zeros([BLOCK_N], dtype=tl.float32)
        for c in range(0, n_chunks):
            sumsq += tl.load(SUMSQ_ptr + rows * n_chunks + c, mask=mask, other=0.0)
        norm = tl.sqrt_rn(sumsq)
        tl.store(NORM_ptr + rows, norm, mask=mask)
        acc += tl.where(mask, (norm - target) * (norm - target), 0.0)
    tl.store(LOSS_ptr, (tl.sum(acc) / n_rows).to(LOSS_ptr.dtype.element_ty))


@jit_sizes
def _gp_bwd_kernel(
    GRAD_ptr,
    NORM_ptr,
    GRAD_OUT_ptr,
    DGRAD_ptr,
    n_rows,
    n_cols,
    chunk_size,
    target,
    BLOCK: tl.constexpr,
):
    """dg[n, j] = grad_out * 2 (norm[n] - target) / (n_rows * norm[n]) * g[n, j]  (0 where norm[n] = 0).

    Grid (n_rows, n_chunks): program (n, c) writes columns [c * chunk_size, (c + 1) * chunk_size)
    of row n; grad_out is the upstream scalar gradient, dg is stored in DGRAD_ptr's dtype.
    """
    n, c = tl.program_id(0), tl.program_id(1)
    norm = tl.load(NORM_ptr + n)
    go = tl.load(GRAD_OUT_ptr).to(tl.float32)
    scale = tl.where(norm > 0, go * 2 * (norm - target) / (n_rows * tl.where(norm > 0, norm, 1.0)), 0.0)
    row, drow = GRAD_ptr + n.to(tl.int64) * n_cols, DGRAD_ptr + n.to(tl.int64) * n_cols
    start = c * chunk_size
    for off in range(start, tl.minimum(start + chunk_size, n_cols), BLOCK):
        cols = off + tl.arange(0, BLOCK)
        x = tl.load(row + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
        tl.store(drow + cols, (scale * x).to(DGRAD_ptr.dtype.element_ty), mask=cols < n_cols)


# Triton decides when a kernel is defined (at import) whether it compiles it or interprets it.
INTERPRETED = triton is not None and type(_gp_fwd_kernel).__name__ == "InterpretedFunction"


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(n: int) -> int:
    """The smallest power of two >= n >= 1 (triton.next_power_of_2 without its wrapper's cost)."""
    return 1 << (n - 1).bit_length()


def plan(n_rows: int, n_cols: int) -> dict:
    """How the host functions launch the kernels for g (n_rows, n_cols): the chunking of the rows
    (block: elements per load, chunk_size: elements per program, n_chunks: programs per row)
    and each kernel's meta-parameters (constexprs and num_warps). Pure: the ahead-of-time
    compile test calls it over the shapes the scripts produce."""
    block = min(BLOCK_COLS, _pow2(n_cols))
    n_chunks = max(1, min(_cdiv(PROGRAMS, n_rows), _cdiv(n_cols, MIN_CHUNK)))
    chunk_size = _cdiv(_cdiv(n_cols, n_chunks), block) * block
    return dict(block=block, chunk_size=chunk_size, n_chunks=_cdiv(n_cols, chunk_size), meta={
        "_gp_fwd_kernel": dict(BLOCK=block, num_warps=NUM_WARPS),
        "_gp_loss_kernel": dict(BLOCK_N=BLOCK_ROWS, num_warps=NUM_WARPS),
        "_gp_bwd_kernel": dict(BLOCK=block, num_warps=NUM_WARPS)})


def configs(n_rows: int, n_cols: int) -> list:
    """[(kernel name, its integer arguments, its meta-parameters)] of every launch, forward and
    backward, for g (n_rows, n_cols): what the JIT specializes and compiles."""
    p = plan(n_rows, n_cols)
    ints = {"_gp_fwd_kernel": dict(n_cols=n_cols, chunk_size=p["chunk_size"]),
            "_gp_loss_kernel": dict(n_rows=n_rows, n_chunks=p["n_chunks"]),
            "_gp_bwd_kernel": dict(n_rows=n_rows, n_cols=n_cols, chunk_size=p["chunk_size"])}
    return [(name, ints[name], meta) for name, meta in p["meta"].items()]


def gradient_penalty_forward(g: torch.Tensor, target: float):
    """g: (N, D) contiguous. Returns the penalty (a scalar of g's dtype) and the norms (N,) fp32."""
    n_rows, n_cols = g.shape
    p = plan(n_rows, n_cols)
    sumsq = torch.empty(n_rows, p["n_chunks"], dtype=torch.float32, device=g.device)  # (N, C)
    _gp_fwd_kernel[(n_rows, p["n_chunks"])](g, sumsq, n_cols, p["chunk_size"], **p["meta"]["_gp_fwd_kernel"])
    norm = torch.empty(n_rows, dtype=torch.float32, device=g.device)  # (N,)
    loss = torch.empty((), dtype=g.dtype, device=g.device)
    _gp_loss_kernel[(1,)](sumsq, norm, loss, n_rows, p["n_chunks"], float(target), **p["meta"]["_gp_loss_kernel"])
    return loss, norm


def gradient_penalty_backward(go: torch.Tensor, g: torch.Tensor, norm: torch.Tensor, target: float):
    """d penalty / d g for the upstream scalar gradient go; g: (N, D), norm: (N,). Returns (N, D)."""
    n_rows, n_cols = g.shape
    p = plan(n_rows, n_cols)
    dg = torch.empty_like(g)  # (N, D)
    _gp_bwd_kernel[(n_rows, p["n_chunks"])](g, norm, go.contiguous(), dg, n_rows, n_cols, p["chunk_size"],
                                            float(target), **p["meta"]["_gp_bwd_kernel"])
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
        try:
            with quiet():
                dg = gradient_penalty_backward(go, g, norm, ctx.target)
        except Exception as err:  # a backward kernel that cannot run: the reference's gradient
            fail("gradient_penalty backward", err)
            dg = reference_grad(gradient_penalty_reference, g, go, ctx.target)
        return dg.view(ctx.shape), None
