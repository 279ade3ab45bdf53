"""The checks a run passes before any data is loaded or any file is written: every number
in its range, the networks and one batch within the machine's memory, the run directory
usable and owned by this process alone (a lock file with the owner's pid)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import weakref
from pathlib import Path
from unittest import mock

import torch

from .checkpoint import alive
from .errors import UserError
from .scale import cuda_index, distributed

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
    keep = getattr(args, "keep_every", 0) or 0
    if keep < 0 or keep % args.checkpoint_every:
        raise UserError(f"--keep-every {keep}: 0 (off) or a multiple of --checkpoint-every ({args.checkpoint_every}): "
                        "snapshots are kept at the checkpoints whose step is a multiple of it")


def machine_memory(device: str) -> int:
    """Bytes of the memory the networks will live in: this rank's GPU's (LOCAL_RANK modulo the
    GPUs this process sees, scale.cuda_index: not device 0 for every rank), else the RAM."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(cuda_index()).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 2 ** 30


class _Saved:
    """A tensor autograd keeps for backward, as the saved-tensor hooks hand it over."""
    __slots__ = ("t", "__weakref__")


def _autocast_off_on_meta(real):
    """torch.autocast, but a no-op for the meta device (autocast has no dtype for it): the
    measuring step runs the model's full_precision() regions on the meta device."""
    def autocast(device_type, *a, **kw):
        return contextlib.nullcontext() if device_type == "meta" else real(device_type, *a, **kw)
    return autocast


def _saved_bytes(model, fn) -> int:
    """The peak bytes of the tensors autograd keeps for backward while fn() runs (model's
    parameters not counted): each saved tensor counted from the moment it is saved until
    autograd lets it go (after its backward)."""
    params = {id(p) for m in model.networks().values() for p in m.parameters()}
    live = peak = 0

    def freed(n):
        nonlocal live
        live -= n

    def pack(t):
        nonlocal live, peak
        h = _Saved()
        h.t = t
        if id(t) not in params:
            n = t.numel() * t.element_size()
            live += n
            peak = max(peak, live)
            weakref.finalize(h, freed, n)
        return h

    with mock.patch.object(torch, "autocast", _autocast_off_on_meta(torch.autocast)), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.t):
        fn()
    return peak


def step_bytes(model, batch: int) -> int | None:
    """The peak bytes of the tensors one train_step of `model` (built on the meta device) keeps
    for backward, other than its parameters: the model's own step run on the meta device (no
    memory, no time, no random numbers). So it counts what the step really holds at once:
    BEGAN's D on 3B images (real, D's fakes and G's fakes in one graph), the double-backward
    graph of WGAN-GP's and DRAGAN's penalties, both passes of DCGAN's D. None where the step
    cannot run there."""
    if distributed():  # the step's all-reduce would run on meta tensors
        return None
    try:
        return _saved_bytes(model, lambda: model.train_step(
            lambda: torch.empty(batch, *model.shape, device=torch.device("meta"))))
    except Exception:  # noqa: BLE001 - an op without a meta kernel: forward_bytes instead
        return None


def forward_bytes(model, batch: int) -> int:
    """The estimate where the step cannot run on the meta device: the outputs of every layer
    of one pass D(G(z)) of the batch, 12 bytes an element (kept for backward, their gradients,
    real and fake passes)."""
    acts = 0

    def count(module, inputs, output):
        nonlocal acts
        acts += sum(t.numel() for t in (output if isinstance(output, tuple) else (output,))
                    if isinstance(t, torch.Tensor))
    leaves = [m for net in model.networks().values() for m in net.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model.D(model.G(model.sample_z(batch, device=torch.device("meta"))))
    finally:
        for h in hooks:
            h.remove()
    return 12 * acts


def on_gpu_bytes(data, have: int) -> int:
    """The bytes of a decoded data set that ganzoo.batches keeps on the GPU: an in-memory set
    (not a streamed folder, not a stacked set composed batch by batch) under a quarter of the
    GPU's memory (Batches asks for a quarter of the free memory: this counts every set it may keep)."""
    x = getattr(data, "x", None)
    if x is None or getattr(data, "triples", None) is not None:
        return 0
    n = x.numel() * x.element_size()
    return n if n < 0.25 * have else 0


def train_bytes(model_cls, args, shape) -> tuple[int, int] | None:
    """(parameters, activation bytes) of training the model on batches of args.batch_size:
    the networks built on the meta device (no memory, no random numbers), then one training step
    run there (step_bytes): twice the peak of the tensors the step keeps for backward (those and,
    during backward, their gradients); forward_bytes where the step cannot run there. None where
    the model cannot even be built there (the real construction reports its own error)."""
    meta = torch.device("meta")
    try:
        with torch.device(meta):
            model = model_cls(args, tuple(shape), meta)
        params = sum(p.numel() for m in model.networks().values() for p in m.parameters())
        saved = step_bytes(model, args.batch_size)
        return params, 2 * saved if saved is not None else forward_bytes(model, args.batch_size)
    except UserError:
        raise
    except Exception:  # noqa: BLE001
        return None


def check_memory(model_cls, args, shape, data=None) -> None:
    """The weights, gradients and two optimizer moments (4 x fp32 a parameter) and a step's
    activations (train_bytes), and with `data` on a GPU the data set kept there (on_gpu_bytes),
    must fit in 80 % of the memory they live in: this rank's GPU, else the RAM. Only a GPU can
    show how close the figure comes to torch.cuda.max_memory_allocated() (benchmarks/gpu_check.py)."""
    sizes = train_bytes(model_cls, args, shape)
    if sizes is None:
        return
    params, acts = sizes
    have = machine_memory(args.device)
    gpu = args.device in ("auto", "cuda") and torch.cuda.is_available()
    kept = on_gpu_bytes(data, have) if gpu and data is not None else 0
    need = 16 * params + acts + kept
    if need > 0.8 * have:
        with_data = f" and the {kept / 2**30:,.1f} GiB data set kept on the GPU" if kept else ""
        raise UserError(f"--image-size {'x'.join(map(str, args.image_size))}: the networks ({params / 1e6:,.0f}M "
                        f"parameters) and a batch of {args.batch_size}{with_data} need about {need / 2**30:,.1f} GiB "
                        f"to train, this {'GPU' if gpu else 'machine'} has {have / 2**30:,.0f} GiB; use a smaller "
                        "--image-size, --width or --batch-size")


def check_run_dir(run_dir: Path, resumed: bool, restart_of: str | None = None) -> None:
    """--out: a folder this process can create and write in; a new run does not go into a
    folder that holds another run (its checkpoint and metrics would be replaced). restart_of
    (--resume auto with no checkpoint in --out, the model's name): a folder whose run of that
    model never reached its first checkpoint (killed early, restarted) is started again."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir}: is a file, not a folder")
    if not resumed and run_dir.is_dir():
        held = [f for f in RUN_FILES if (run_dir / f).exists()]
        if held and restart_of and "checkpoint.pt" not in held:
            model = run_model(run_dir)
            if model not in (None, restart_of):
                raise UserError(f"--out {run_dir}: holds a {model} run (config.json); give another --out")
        elif held:
            raise UserError(f"--out {run_dir}: already holds a run ({held[0]}); continue it with --resume {run_dir}, "
                            "or give another --out")
    parent = run_dir
    while not parent.exists():  # the nearest folder that exists: it must let us create the rest
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {run_dir}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {run_dir}: cannot create it ({parent} is not writable)")


def run_model(run_dir: Path) -> str | None:
    """The model named by run_dir/config.json, None where it cannot be read."""
    try:
        return json.loads((run_dir / "config.json").read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        return None


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
                if pid and pid != os.getpid() and alive(pid):
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
