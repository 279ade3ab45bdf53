"""Speed and scale, none of which changes a model's equations: the device, torchrun ranks
(gradients averaged in one all-reduce), autocast, channels_last, --compile, --sync-bn and the
EMA of G's weights."""
from __future__ import annotations

import collections
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
    index = cuda_index() if cuda else None
    if cuda:
        torch.cuda.set_device(index)
    backend = "nccl" if cuda else "gloo"
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        torch.distributed.init_process_group(backend)
    else:
        # torchrun's restarted workers share the store of the first attempt (torch 2.13), where the
        # dead attempt's addresses are still found: a restarted rank could connect to one (gloo:
        # 'Connection refused', then a hang). Each attempt gets keys of its own.
        store, r, n = next(torch.distributed.rendezvous("env://"))
        store = torch.distributed.PrefixStore(f"ganzoo/attempt{attempt}", store)
        torch.distributed.init_process_group(backend, store=store, rank=r, world_size=n)
    patient_group()  # now, while every rank is here to make it (a group is made by all ranks at once)
    vote_group()
    return torch.device("cuda", index) if cuda else torch.device("cpu")


def local_ranks() -> tuple[int, int]:
    """(this process's rank on its node, the ranks on its node): torchrun's LOCAL_RANK and
    LOCAL_WORLD_SIZE, (0, 1) where the launcher sets neither."""
    return int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def cuda_index(local: int | None = None, count: int | None = None) -> int:
    """This rank's CUDA device: LOCAL_RANK modulo the GPUs this process sees. torchrun shows
    every rank all of the node's GPUs (rank r takes GPU r); a launcher that shows each task only
    its own GPU (Slurm's --gpus-per-task, CUDA_VISIBLE_DEVICES per task) leaves one visible,
    device 0, whatever LOCAL_RANK is, and set_device(LOCAL_RANK) would fail there. Only a GPU
    node can show the device each rank ends up on (benchmarks/gpu_check.py's torchrun run)."""
    local = local_ranks()[0] if local is None else local
    count = torch.cuda.device_count() if count is None else count
    return local % count if count > 0 else 0


# How long ranks wait, before training, for a rank that does a long job alone: local rank 0
# decoding a large folder (ganzoo.data), rank 0 training the judge on first use (minutes on a
# CPU; ganzoo.metrics). NCCL's default timeout (10 minutes) would abort the waiting ranks.
LEAD_WAIT_S = 4 * 3600
_patient = None


def patient_group():
    """A gloo group over all ranks whose barrier waits up to LEAD_WAIT_S (None in one process).
    Made right after the process group (init_distributed): making a group is itself a wait on
    every rank, which must not happen while one rank is busy."""
    global _patient
    if _patient is None and distributed():
        _patient = torch.distributed.new_group(backend="gloo", timeout=datetime.timedelta(seconds=LEAD_WAIT_S))
    return _patient


def wait_for_all() -> None:
    """Under torchrun: wait until every rank is here, for up to LEAD_WAIT_S (not the process
    group's timeout): the ranks that have nothing to do wait here, and not in the first step's
    all-reduce, while one rank decodes a folder or trains the judge. A rank that exits (an error)
    ends the wait of the others at once; only a hung one costs the whole LEAD_WAIT_S."""
    if world() > 1:
        torch.distributed.barrier(group=patient_group())


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


def agree(bad_step: torch.Tensor) -> torch.Tensor:
    """Under torchrun the ranks agree, at each log and checkpoint step, on divergence (the
    earliest bad step any rank saw), so that all stop at the same step: rank 0 refuses to save
    a diverged model, and the others must know it at the same step. This reads a device value:
    the only waits for the device, so not every step."""
    if world() == 1:
        return bad_step
    t = bad_step.clone()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t


_votes = None


def vote_group():
    """A gloo group over all ranks for StopVote's all-reduce of host values (None in one process);
    made with the others in init_distributed. Its timeout is gloo's default (30 minutes)."""
    global _votes
    if _votes is None and distributed():
        _votes = torch.distributed.new_group(backend="gloo")
    return _votes


class StopVote:
    """Whether the ranks were asked to stop (SIGINT, SIGTERM), agreed every step without
    waiting for the device. Each step every rank posts the signal it got (0: none) in an
    all-reduce (MAX) of a host tensor on a gloo group, run in the background, and reads the
    result of the one posted `lag` steps before: every rank learns of a stop at the same step,
    `lag` steps after the signal, and the host waits only for a rank that lags that far behind.

        vote = StopVote()
        signum = vote(stop.signum, last=step == steps)   # after each step; nonzero: stop now
    """

    def __init__(self, lag: int = 2):
        self.lag, self.posted = lag, collections.deque()

    def __call__(self, signum: int, last: bool = False) -> int:
        if world() == 1:
            return signum
        if not last:
            buf = torch.tensor([signum], dtype=torch.int32)
            self.posted.append((buf, torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.MAX,
                                                                   group=vote_group(), async_op=True)))
        agreed = 0
        while len(self.posted) > (0 if last else self.lag):
            agreed = max(agreed, self.read())
        if agreed:  # every rank posted the same ones: read them all, nothing is left outstanding
            while self.posted:
                self.read()
        return agreed

    def read(self) -> int:
        buf, work = self.posted.popleft()
        work.wait()
        return int(buf[0])


def same_on_all_ranks(value: int) -> bool:
    """Whether every rank holds the same integer (True in one process): a check, before
    training, of what each rank decided alone (the checkpoint --resume auto found)."""
    if world() == 1:
        return True
    t = torch.tensor([value, -value], dtype=torch.int64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=patient_group())
    return int(t[0]) == value and int(t[1]) == -value


def collective_failure(e: BaseException) -> bool:
    """Whether an exception raised under torchrun is a collective that failed because another
    rank is gone (gloo: 'Connection reset/closed by peer'; NCCL: a watchdog or remote error):
    torch raises these as RuntimeError, some as torch.distributed.DistError."""
    if world() == 1 or not isinstance(e, RuntimeError):
        return False
    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(e, dist_error):
        return True
    text = str(e)
    return any(s in text for s in ("gloo", "Gloo", "NCCL", "by peer", "Connection reset", "Broken pipe"))


def lost_ranks() -> list[int] | None:
    """The ranks of this node whose process is gone, read from /proc: torchrun starts a node's
    ranks as children of one agent process, each with RANK in its environment. [] when every
    rank of this node lives (the lost one was on another node, or only its connection failed);
    None where this cannot be read (not torchrun, not Linux)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not os.path.isdir("/proc"):
        return None
    parent, alive = os.getppid(), set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            if int(ppid) != parent or state == "Z":  # Z: exited, not yet reaped by the agent
                continue
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
            alive.update(int(e[5:]) for e in env if e.startswith(b"RANK="))
        except (OSError, ValueError, IndexError):
            continue
    if rank() not in alive:  # this process is not where the scan expects it: no answer
        return None
    local, n = local_ranks()
    first = rank() - local
    return [r for r in range(first, first + n) if r not in alive]


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
    amp = resolve_amp(device)[0] if args.amp == "auto" else args.amp
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16,
                          enabled=amp != "off", cache_enabled=False)


# ---- what "auto" picks: --amp, --channels-last, --compile ------------------------------------
# Each rule is decided from what the device reports (CPU flags, CUDA compute capability), so
# that the detection functions can be fed synthetic values in tests.

COMPILE_MIN_STEPS = 10_000  # --compile auto: the shortest run (steps still to train) on CUDA that compiles
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16")


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The CPU's feature flags (the 'flags' line of /proc/cpuinfo), or None where the system
    does not say (no /proc/cpuinfo: macOS, Windows)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def cpu_features(flags: set[str] | None = None) -> str:
    """'features: ...', those of CPU_FEATURES (the ones that decide the speed rules) this CPU
    has, for a line that says which machine a figure is from."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return "features not reported"
    return f"features: {', '.join(f for f in CPU_FEATURES if f in flags) or 'none of ' + ', '.join(CPU_FEATURES)}"


def device_summary(device: torch.device, flags: set[str] | None = None) -> str:
    """The machine in words, for a benchmark's first line: the GPU's name and compute
    capability, or the CPU's threads and the features that decide the speed rules."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    n = torch.get_num_threads()
    return f"CPU, {n} thread{'s' * (n > 1)}, {cpu_features(flags)}"


def resolve_amp(device: torch.device, flags: set[str] | None = None,
                capability: tuple[int, int] | None = None) -> tuple[str, str]:
    """(--amp auto's choice, why): bf16 where the hardware computes bf16 natively (CUDA with
    compute capability >= 8.0; a CPU with AVX512-BF16 or AMX), else off. Never fp16: it needs a
    gradient scaler and its range is too narrow for some losses (EBGAN's energies, WGAN's
    critic), so it is only ever a user's explicit choice."""
    if device.type == "cuda":
        capability = capability or torch.cuda.get_device_capability(device)
        if tuple(capability) >= (8, 0):
            return "bf16", f"compute capability {capability[0]}.{capability[1]} computes bf16 natively"
        return "off", f"compute capability {capability[0]}.{capability[1]} < 8.0 has no native bf16"
    if device.type == "cpu":
        flags = cpu_flags() if flags is None else flags
        if flags is None:  # the system does not list them: ask oneDNN
            return ("bf16", "oneDNN reports native bf16") if cpu_has_native("bf16") else \
                ("off", "oneDNN reports no native bf16 (it would be emulated)")
        native = sorted(f for f in ("avx512_bf16", "amx_bf16") if f in flags)
        if native:
            return "bf16", f"the CPU has {' and '.join(n.upper().replace('_', '-') for n in native)}"
        return "off", "the CPU has no AVX512-BF16 or AMX (bf16 would be emulated, many times slower)"
    return "off", f"autocast is not used on {device.type}"


def resolve_channels_last(device: torch.device, group_norm: bool = False) -> tuple[str, str]:
    """(--channels-last auto's choice, why): on with CUDA (cuDNN's NHWC kernels) and on the CPU
    where oneDNN runs the convolutions (measured on an AVX512 CPU: DCGAN 1.15x in fp32, 1.13x
    with bf16; on an AVX2-only CPU 1.25x: benchmarks/train_speed.py); off elsewhere (MPS).
    Off with CUDA for a model with a GroupNorm (group_norm: WGAN-GP's layer-normalised critics):
    PyTorch's CUDA GroupNorm runs in NCHW only, so each normalised layer would convert the
    layout there and back, in the penalty's double backward too (the CPU's keeps channels_last).
    What that costs only a GPU can measure (benchmarks/gpu_check.py: WGAN-GP's step with
    --channels-last on against auto)."""
    if device.type == "cuda":
        if group_norm:
            return "off", ("CUDA, but a network normalises with GroupNorm, which runs in NCHW only on CUDA: "
                           "every such layer would convert the layout there and back")
        return "on", "CUDA"
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        return "on", "oneDNN's convolutions are faster in channels_last on the CPU"
    return "off", f"not measured faster on {device.type}"


def resolve_compile(device: torch.device, steps_to_run: int, has_triton: bool | None = None) -> tuple[str, str]:
    """(--compile auto's choice, why): on only with CUDA (and Triton, which inductor's GPU
    code needs) for a run with at least COMPILE_MIN_STEPS steps still to train, where a compile
    of a minute or so is a small share of the run; off on the CPU, where compiling DCGAN
    took 16 s and gave no speed (546 vs 585 images/s with bf16 and channels_last, one thread
    of an AVX512 CPU), and off for a short run (a test must not wait for a compile)."""
    if device.type != "cuda":
        return "off", ("on the CPU a compile costs more than it saves: DCGAN measured no faster compiled"
                       if device.type == "cpu" else f"not measured on {device.type}")
    if steps_to_run < COMPILE_MIN_STEPS:
        return "off", f"{steps_to_run:,} steps to run, under {COMPILE_MIN_STEPS:,} (the compile would not pay back)"
    if has_triton is None:
        try:
            from torch.utils._triton import has_triton as _has
            has_triton = _has()
        except ImportError:
            has_triton = False
    if not has_triton:
        return "off", "Triton is not installed (inductor needs it on CUDA)"
    return "on", f"CUDA, {steps_to_run:,} steps to run"


def resolve_speed(args, device: torch.device, steps_to_run: int, group_norm: bool = False) -> list[str]:
    """Replace each 'auto' among --amp, --channels-last and --compile in args by its choice on
    this device (config.json then records the choice, and a resumed run keeps it); group_norm:
    whether the model has a GroupNorm (has_group_norm). Returns one line per choice made, saying why."""
    said = []
    for flag, rule in (("amp", lambda: resolve_amp(device)),
                       ("channels_last", lambda: resolve_channels_last(device, group_norm)),
                       ("compile", lambda: resolve_compile(device, steps_to_run))):
        if getattr(args, flag, None) == "auto":
            value, why = rule()
            setattr(args, flag, value)
            said.append(f"--{flag.replace('_', '-')} auto: {value} ({why})")
    return said


# ---- the model's networks ----------------------------------------------------------------

def has_group_norm(model) -> bool:
    """Whether a network of the model (a common.GAN) normalises with GroupNorm (WGAN-GP's
    layer-normalised critics): --channels-last auto leaves CUDA runs of it in NCHW."""
    return any(isinstance(m, nn.GroupNorm) for net in model.networks().values() for m in net.modules())


def channels_last(args, device, group_norm: bool = False) -> bool:
    v = getattr(args, "channels_last", "auto")
    return v == "on" or (v == "auto" and resolve_channels_last(device, group_norm)[0] == "on")


def allow_retain_graph() -> None:
    """Let a compiled network's backward keep its graph for a second backward (retain_graph=True:
    BEGAN's D, whose one pass feeds both losses). AOTAutograd's donated buffers (on by default since
    torch 2.6) let the compiled backward reuse the memory of the activations it saved, and refuse
    retain_graph ("compiled with non-empty donated buffers which requires ... retain_graph=False");
    torch 2.6-2.8 decide them when the graph compiles, whatever the first backward asks. Turned off
    for the process (they only save memory); torch before 2.6 has no such setting and needs none.
    The CPU tests run AOTAutograd with the aot_eager backend; inductor's GPU code for BEGAN, under
    the torch a GPU machine has, only benchmarks/gpu_check.py's --compile on run shows."""
    try:
        import torch._functorch.config as aot_config
    except ImportError:
        return
    if hasattr(aot_config, "donated_buffer"):
        aot_config.donated_buffer = False


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
    if channels_last(args, device, has_group_norm(model)):
        for m in model.networks().values():
            m.to(memory_format=torch.channels_last)
    if for_training and getattr(args, "amp", "off") == "fp16":
        model.scalers = {k: torch.amp.GradScaler(device.type) for k in model.optimizers()}
    if for_training and getattr(args, "compile", "off") == "on":
        # tests use "eager" (no AOTAutograd, no C++ compiler run) and "aot_eager" (AOTAutograd's
        # backward, donated buffers included, without inductor's code generation)
        backend = os.environ.get("GAN_COMPILE_BACKEND", "inductor")
        if getattr(model, "retains_graph", False):
            allow_retain_graph()
        model.G.compile(backend=backend)
        if not model.double_backward:
            model.D.compile(backend=backend)
    return model


def match_optimizer_layout(opt: torch.optim.Optimizer) -> None:
    """Each state tensor of the optimizer (Adam's exp_avg and exp_avg_sq, RMSProp's square_avg...)
    in its parameter's memory format, the values unchanged. A checkpoint's state keeps the strides
    it was saved with; a run resumed with another --channels-last has its parameters in the other
    layout, and CUDA's fused Adam refuses state whose strides differ from its parameter's (the
    unfused optimizers only run slower). The CPU shows the strides; only a GPU shows fused Adam's
    step after such a resume (benchmarks/gpu_check.py)."""
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p, {})
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


# ---- host to device ------------------------------------------------------------------------

def pins(device: torch.device) -> bool:
    """Whether host tensors bound for `device` are staged in page-locked (pinned) memory: CUDA only."""
    return device.type == "cuda"


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """t on `device` without making the host wait for it. A host tensor bound for a GPU is copied
    from pinned memory with non_blocking=True, which only queues the copy; from pageable memory
    the copy is synchronous and the step would wait for the device (the GPU-side count of such
    waits is benchmarks/gpu_check.py's, under torch.cuda.set_sync_debug_mode). A tensor that is
    not pinned (one batch, one epoch's order) is copied into pinned memory first: the caching host
    allocator keeps that block until the copy is done, so it may be dropped at once."""
    if t.device.type != "cpu" or device.type == "cpu":
        return t.to(device)
    if pins(device) and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def room_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether a data set of nbytes fits in a quarter of the GPU's free memory (kept there, each
    batch is gathered on the GPU); never for another device."""
    return device.type == "cuda" and nbytes < 0.25 * torch.cuda.mem_get_info(device)[0]


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
