"""Speed and scale, none of which changes a model's equations: the device, torchrun ranks
(gradients averaged in one all-reduce), autocast, channels_last, --compile, --sync-bn and the
EMA of G's weights."""
from __future__ import annotations

import copy
import datetime
import os

import torch
import torch.nn as nn

from .errors import UserError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (try --device auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps: no Apple GPU is available here (try --device auto)")
    return torch.device(name)


# ---- several processes (torchrun): one process per device, gradients averaged ----------

def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if distributed() else 0


def world() -> int:
    return torch.distributed.get_world_size() if distributed() else 1


def init_distributed(args) -> torch.device | None:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on CUDA, gloo otherwise)
    and return this rank's device; None for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or distributed():
        return None
    cuda = args.device in ("auto", "cuda") and torch.cuda.is_available()
    if args.device == "mps":
        raise UserError("torchrun: several processes need CUDA or the CPU (--device cuda|cpu)")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return torch.device("cuda", local) if cuda else torch.device("cpu")


def all_reduce_grads(params) -> None:
    """Average the gradients of `params` over the ranks, in one flat buffer (one all-reduce).
    This is DistributedDataParallel's arithmetic without its wrapper: the wrapper cannot follow
    torch.autograd.grad(create_graph=True), which the gradient penalties need."""
    if world() == 1:
        return
    grads = []
    for p in params:
        if p.grad is None:  # every rank must send the same buffer
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch._utils._flatten_dense_tensors(grads)
    torch.distributed.all_reduce(flat)
    flat /= world()
    for g, f in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(f)


def all_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of t over the ranks (t itself in one process)."""
    if world() == 1:
        return t
    t = t.detach().clone()
    torch.distributed.all_reduce(t)
    return t / world()


def agree(bad_step: torch.Tensor, stop_hit: bool):
    """Under torchrun the ranks agree, at each log and checkpoint step, on divergence and on a
    stop request (the latest of them), so that all stop at the same step: rank 0 refuses to
    save a diverged model, and the others must know it at the same step."""
    if world() == 1:
        return bad_step, stop_hit
    t = torch.stack([bad_step, torch.tensor(int(stop_hit), device=bad_step.device)])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t[0], bool(t[1])


def leave_together(timeout_s: float = 120.0) -> None:
    """Under torchrun, at the end of a run: wait until every rank is done (rank 0 writes the
    last checkpoint and the timeline after the others' last step), so that no rank tears
    down the process group while another still uses its connections (with gloo, a rank
    that left first sometimes died in C++ with 'terminate called without an active
    exception'). A rank that does not come within the timeout is not waited for."""
    if world() == 1:
        return
    try:
        if torch.distributed.get_backend() == "gloo":
            torch.distributed.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s))
        else:
            torch.distributed.barrier()
    except RuntimeError:
        pass


# ---- precision ---------------------------------------------------------------------------

def full_precision(device: torch.device):
    """A region where autocast is off: ops run in the dtype of their inputs (fp32)."""
    return torch.autocast(device.type, enabled=False)


def cpu_has_native(dtype_name: str) -> bool:
    """Whether oneDNN runs bf16/fp16 natively on this CPU (AVX512-BF16, AMX, AVX512-FP16);
    without it, CPU autocast emulates the half type and is much slower than fp32."""
    check = getattr(torch.ops.mkldnn, f"_is_mkldnn_{dtype_name}_supported", None)
    try:
        return bool(check()) if check else False
    except RuntimeError:
        return False


def autocast(args, device: torch.device):
    """The region train_step runs in: --amp's autocast, or a no-op for --amp off. Its weight
    cache is off: autocast keeps the half-precision copy of a parameter until the outermost
    region ends, and a train_step steps D (n_critic times for WGAN) before it uses D again,
    so a cached copy would run the second forward pass on the weights before the update."""
    return torch.autocast(device.type, dtype=torch.bfloat16 if args.amp == "bf16" else torch.float16,
                          enabled=args.amp != "off", cache_enabled=False)


# ---- the model's networks ----------------------------------------------------------------

def channels_last(args, device) -> bool:
    v = getattr(args, "channels_last", "auto")
    return v == "on" or (v == "auto" and device.type == "cuda")


def prepare_model(model, args, for_training: bool):
    """Apply the shared speed flags to a freshly built model (a common.GAN): --sync-bn, --ema,
    channels_last, the fp16 gradient scalers, --compile. None changes the model's equations."""
    device = model.device
    if for_training and world() > 1 and getattr(args, "sync_bn", False):
        if device.type != "cuda":
            raise UserError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only)")
        model.G = nn.SyncBatchNorm.convert_sync_batchnorm(model.G)
        model.D = nn.SyncBatchNorm.convert_sync_batchnorm(model.D)
    if getattr(args, "ema", 0):
        model.G_ema = copy.deepcopy(model.G).requires_grad_(False)
    if channels_last(args, device):
        for m in model.networks().values():
            m.to(memory_format=torch.channels_last)
    if for_training and getattr(args, "amp", "off") == "fp16":
        model.scalers = {k: torch.amp.GradScaler(device.type) for k in model.optimizers()}
    if for_training and getattr(args, "compile", False):
        backend = os.environ.get("GAN_COMPILE_BACKEND", "inductor")  # tests use "eager" (no C++ compiler run)
        model.G.compile(backend=backend)
        if not model.double_backward:
            model.D.compile(backend=backend)
    return model


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, beta: float) -> None:
    """ema <- beta·ema + (1 − beta)·net for the weights; buffers (BatchNorm's statistics) copied."""
    e = [p for p in ema.parameters()]
    torch._foreach_lerp_(e, [p.detach() for p in net.parameters()], 1.0 - beta)
    for b, nb in zip(ema.buffers(), net.buffers()):
        b.copy_(nb)


def finite(model) -> bool:
    """Whether every weight and buffer (BatchNorm's running statistics) of every network of
    the model is finite."""
    return all(torch.isfinite(t).all() for m in model.networks().values()
               for t in (*m.parameters(), *m.buffers()) if t.is_floating_point())
