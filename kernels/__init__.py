"""The two ops only GANs have, fused with Triton on CUDA, plain PyTorch elsewhere.

    gradient_penalty(grad, target=1.0)   WGAN-GP / DRAGAN: mean_i (||grad_i||_2 - target)^2
    pullaway(emb)                        EBGAN: mean squared cosine over pairs i != j

Both return a scalar of the input's dtype (the math is fp32, fp64 for fp64 input) and are
differentiable with respect to their input. Each module (gradient_penalty.py,
pullaway.py) holds its Triton kernels, their host functions, an autograd.Function and the
PyTorch reference.

Which path runs is decided at each call by the environment variable GAN_KERNELS:
    auto (default)   Triton for fp16/bf16/fp32 CUDA tensors when Triton imports; else the reference
    triton           always Triton (on CPU tensors: Triton's interpreter, TRITON_INTERPRET=1
                     set before `kernels` is imported)
    reference        always the PyTorch reference
last_path() says which one ran last: "triton", "reference", or None before any call.

A Triton failure (no C compiler or Python headers for Triton's launcher, a GPU Triton does not
support, any compile or launch error) never ends a run: the call returns the reference's result,
one line on stderr says why, and every later call takes the reference (fallback.py).
"""
import os

import torch

from . import fallback
from .gradient_penalty import GradientPenaltyFunction, gradient_penalty_reference
from .gradient_penalty import INTERPRETED, triton
from .pullaway import PullawayFunction, check_batch, pullaway_reference

__all__ = ["gradient_penalty", "pullaway", "last_path", "gradient_penalty_reference", "pullaway_reference"]

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def last_path():
    """"triton" or "reference": the path the last gradient_penalty/pullaway call took (a call whose
    Triton kernel failed and fell back says "reference")."""
    return fallback.last_path()


def _use_triton(x: torch.Tensor) -> bool:
    mode = os.environ.get("GAN_KERNELS", "auto")
    if mode == "auto":
        use = triton is not None and x.is_cuda and x.dtype in TRITON_DTYPES
    elif mode == "reference":
        use = False
    elif mode == "triton":
        if triton is None:
            raise RuntimeError("GAN_KERNELS=triton, but triton is not installed")
        if x.dtype not in TRITON_DTYPES:
            raise TypeError(f"GAN_KERNELS=triton: the kernels take float16, bfloat16 or float32, got {x.dtype}")
        if not x.is_cuda and not INTERPRETED:
            raise RuntimeError(f"GAN_KERNELS=triton with a {x.device.type} tensor needs Triton's interpreter: "
                               "set TRITON_INTERPRET=1 before importing kernels")
        use = True
    else:
        raise ValueError(f"GAN_KERNELS must be auto, triton or reference, got {mode!r}")
    use = use and fallback.broken() is None  # after a Triton failure: the reference, without retrying
    fallback.note("triton" if use else "reference")
    return use


def gradient_penalty(grad: torch.Tensor, target: float = 1.0) -> torch.Tensor:
    """mean_i (||grad_i||_2 - target)^2, each sample's norm over all its non-batch axes
    (Gulrajani et al. 2017, Eq. 3). grad: (N, ...), e.g. from autograd.grad(..., create_graph=True)."""
    if _use_triton(grad):
        try:
            with fallback.quiet():
                return GradientPenaltyFunction.apply(grad, target)
        except Exception as err:
            fallback.fail("gradient_penalty", err)
    return gradient_penalty_reference(grad, target)


def pullaway(emb: torch.Tensor) -> torch.Tensor:
    """1/(N(N-1)) sum_{i != j} cos(emb_i, emb_j)^2, rows flattened over all non-batch axes
    (Zhao et al. 2016, Eq. 14). emb: (N, ...), N >= 2."""
    check_batch(emb.shape[0])
    if _use_triton(emb):
        try:
            with fallback.quiet():
                return PullawayFunction.apply(emb)
        except Exception as err:
            fallback.fail("pullaway", err)
    return pullaway_reference(emb)
