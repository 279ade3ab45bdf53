"""What happens when a Triton kernel cannot run: the PyTorch reference instead, said once.

Triton builds a small C launcher on first use (it needs a C compiler and Python's headers),
compiles each kernel for the GPU at hand (an unsupported GPU, a ptxas error) and launches
it; any of these can fail on a user's machine. The first failure prints one line on stderr;
from then on every call takes the reference (no retry at each step), and
kernels.last_path() says "reference".
"""
import contextlib
import io
import sys

import torch

_error = None  # the first Triton failure, as one line; None while Triton works
_last_path = None  # "triton" or "reference": the path the last call took


def broken():
    """The first Triton failure's line, or None."""
    return _error


def note(path: str):
    global _last_path
    _last_path = path


def last_path():
    return _last_path


def fail(where: str, err: Exception):
    """Record a Triton failure in `where` (e.g. "pullaway forward"): one stderr line the first
    time, and the reference from now on. Out-of-memory is not Triton's failure: re-raised."""
    global _error
    if isinstance(err, torch.OutOfMemoryError):
        raise err
    note("reference")
    if _error is None:
        first = (str(err).strip().splitlines() or [""])[0][:200]
        _error = f"{type(err).__name__}: {first}" if first else type(err).__name__
        print(f"kernels: Triton failed in {where} ({_error}); using the PyTorch reference from now on "
              "(GAN_KERNELS=reference skips Triton)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet():
    """Hold what Triton prints to stdout while it compiles and launches (a failed ptxas prints the
    whole PTX there): passed on if the call succeeds, dropped if it fails (fail() says why)."""
    held = io.StringIO()
    with contextlib.redirect_stdout(held):
        yield
    sys.stdout.write(held.getvalue())


def reference_grad(reference, x: torch.Tensor, go: torch.Tensor, *args) -> torch.Tensor:
    """d(go * reference(x, *args)) / dx: a backward whose Triton kernel failed."""
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        grad, = torch.autograd.grad(reference(x, *args), x, go)
    return grad
