"""The checks a run passes before any data is loaded or any file is written: every number
in its range, the networks and one batch within the machine's memory, the run directory
usable and owned by this process alone (a lock file with the owner's pid)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from .errors import UserError

RUN_FILES = ("checkpoint.pt", "metrics.jsonl", "config.json", "samples")  # what makes a folder a run's
LOCK = ".lock"


def check_values(args, min_batch: int = 1) -> None:
    """Every float finite; learning rates > 0, Adam's betas in [0, 1), the seed a 63-bit
    number, workers >= 0, the batch at least the model's smallest (EBGAN's pull-away term
    compares pairs: 2)."""
    for k, v in sorted(vars(args).items()):
        if k.startswith("_"):
            continue
        for x in v if isinstance(v, (list, tuple)) else (v,):
            if isinstance(x, float) and not math.isfinite(x):
                raise UserError(f"--{k.replace('_', '-')} {x}: not a finite number")
    for k in ("g_lr", "d_lr", "lr"):
        v = getattr(args, k, None)
        if v is not None and v <= 0:
            raise UserError(f"--{k.replace('_', '-')} {v}: a learning rate must be > 0")
    for k in ("beta1", "beta2"):
        v = getattr(args, k, None)
        if v is not None and not 0 <= v < 1:
            raise UserError(f"--{k} {v}: Adam's betas are in [0, 1)")
    if not 0 <= args.seed < 2 ** 63:
        raise UserError(f"--seed {args.seed}: a seed is a whole number from 0 to 2^63 - 1")
    if getattr(args, "workers", 0) < 0:
        raise UserError(f"--workers {args.workers}: 0 (decode in this process) or more")
    if args.batch_size < min_batch:
        raise UserError(f"--batch-size {args.batch_size}: this model needs at least {min_batch} images a batch")


def machine_memory(device: str) -> int:
    """Bytes of the memory the networks will live in: this GPU's, else the RAM."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 2 ** 30


def check_memory(model_cls, args, shape) -> None:
    """The networks built, and one batch run through G and D, on the meta device (no memory,
    no random numbers): their weights, gradients and two optimizer moments (4 x fp32 a
    parameter) and the activations of a batch (kept for backward, their gradients, real and
    fake passes: 12 bytes an element) must fit in the machine's memory."""
    acts = 0

    def count(module, inputs, output):
        nonlocal acts
        acts += sum(t.numel() for t in (output if isinstance(output, tuple) else (output,))
                    if isinstance(t, torch.Tensor))
    meta = torch.device("meta")
    try:
        with torch.device(meta):
            model = model_cls(args, tuple(shape), meta)
        params = sum(p.numel() for m in model.networks().values() for p in m.parameters())
        leaves = [m for net in model.networks().values() for m in net.modules() if not list(m.children())]
        hooks = [m.register_forward_hook(count) for m in leaves]
        with torch.no_grad():
            model.D(model.G(model.sample_z(args.batch_size, device=meta)))
        for h in hooks:
            h.remove()
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - the real construction reports its own error
        return
    need = 16 * params + 12 * acts
    have = machine_memory(args.device)
    if need > 0.8 * have:
        raise UserError(f"--image-size {'x'.join(map(str, args.image_size))}: the networks ({params / 1e6:,.0f}M "
                        f"parameters) and a batch of {args.batch_size} need about {need / 2**30:,.0f} GiB to train, "
                        f"this machine has {have / 2**30:,.0f} GiB; use a smaller --image-size, --width or --batch-size")


def check_run_dir(run_dir: Path, resumed: bool) -> None:
    """--out: a folder this process can create and write in; a new run does not go into a
    folder that holds another run (its checkpoint and metrics would be replaced)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir}: is a file, not a folder")
    if not resumed and run_dir.is_dir():
        held = [f for f in RUN_FILES if (run_dir / f).exists()]
        if held:
            raise UserError(f"--out {run_dir}: already holds a run ({held[0]}); continue it with --resume {run_dir}, "
                            "or give another --out")
    parent = run_dir
    while not parent.exists():  # the nearest folder that exists: it must let us create the rest
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {run_dir}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {run_dir}: cannot create it ({parent} is not writable)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class RunLock:
    """run_dir/.lock holds the pid of the one process that writes the run (the folder is
    created here). A lock whose process is gone (kill -9) is stale and taken over; a live one
    refuses."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {run_dir}: cannot create it ({e.strerror or e})")
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    raise UserError(f"--out {run_dir}: process {pid} is writing this run (its {LOCK}); "
                                    "wait for it to end, or give another --out")
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            return
        raise UserError(f"--out {run_dir}: cannot take its {LOCK}")

    def release(self) -> None:
        try:
            if int(self.path.read_text().strip() or 0) == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass
