"""What happens when a Triton kernel cannot run: the PyTorch reference instead, said once.

Triton builds a small C launcher on first use (it needs a C compiler and Python's headers),
compiles each kernel for the GPU at hand (an unsupported GPU, a ptxas error) and launches
it; any of these can fail on a user's machine. The first failure prints one line on stderr;
from then on every call takes the reference (no retry at each step), and
kernels.last_path() says "reference".
"""
import contextlib
import io
import os
import sys
import tempfile

import torch

_error = None  # the first Triton failure, as one line; None while Triton works
_last_path = None  # "triton" or "reference": the path the last call took
_worked = False  # a Triton call has succeeded in this process (its C launcher is built)
_held_stderr = ""  # what the C compiler printed on stderr during the failed call


def broken():
    """The first Triton failure's line, or None."""
    return _error


def note(path: str):
    global _last_path
    _last_path = path


def last_path():
    return _last_path


def fail(where: str, err: Exception):
    """Record a Triton failure in `where` (e.g. "pullaway backward"): one stderr line the first
    time, and the reference from now on. Out-of-memory is not Triton's failure: re-raised."""
    global _error
    if isinstance(err, torch.OutOfMemoryError):
        raise err
    note("reference")
    if _error is None:
        first = (str(err).strip().splitlines() or [""])[0][:200]
        _error = f"{type(err).__name__}: {first}" if first else type(err).__name__
        # the compiler's own reason (e.g. "fatal error: Python.h: No such file or directory")
        said = [line.strip() for line in _held_stderr.splitlines() if line.strip()]
        said = [line for line in said if "error" in line.lower()] or said
        if said:
            _error += f" [{said[0][:200]}]"
        print(f"kernels: Triton failed in {where} ({_error}); using the PyTorch reference from now on "
              "(GAN_KERNELS=reference skips Triton)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet():
    """Hold what Triton prints while it compiles and launches: stdout always (a failed ptxas
    prints the whole PTX there), and, until a first call has worked, file descriptor 2 (the C
    compiler that builds Triton's launcher writes its errors there). Passed on if the call
    succeeds; dropped if it fails, fail() saying why in one line."""
    global _worked, _held_stderr
    held = io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(held))
        err = None if _worked else stack.enter_context(_fd2_held())
        try:
            yield
        except BaseException:
            _held_stderr = err.read() if err else ""
            raise
        said = err.read() if err else ""
    _worked = True
    sys.stdout.write(held.getvalue())
    if said:
        sys.stderr.write(said)


class _Held:
    def __init__(self, file):
        self.file = file

    def read(self) -> str:
        self.file.seek(0)
        return self.file.read().decode(errors="replace")


@contextlib.contextmanager
def _fd2_held():
    """File descriptor 2 into a temporary file for the duration (C code and subprocesses write there)."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as file:
        saved = os.dup(2)
        os.dup2(file.fileno(), 2)
        try:
            yield _Held(file)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def reference_grad(reference, x: torch.Tensor, go: torch.Tensor, *args) -> torch.Tensor:
    """d(go * reference(x, *args)) / dx: a backward whose Triton kernel failed."""
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        grad, = torch.autograd.grad(reference(x, *args), x, go)
    return grad
