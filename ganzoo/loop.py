"""The training loop: a new run or a resumed one (--resume auto: the run in --out if it holds
one), one generator update a step, and every few steps a metrics row, a grid, an evaluation, a
checkpoint; Ctrl-C and SIGTERM save, draw the last grid and stop (exit 130, 143), a NaN stops
without overwriting the last good checkpoint. Under torchrun every rank runs this same loop,
the ranks agree every step on a stop and stop together; only rank 0 writes (the others get
logs.NoWriter); a lost rank stops the others with one line each. Side jobs come in as
callbacks: the loop never imports what it calls for --eval-every."""
from __future__ import annotations

import json
import signal
import sys
import time
from contextlib import closing, contextmanager
from pathlib import Path

import torch

from .batches import Batches
from .checks import RunLock, check_memory, check_run_dir, check_values
from .checkpoint import CHECKPOINT, load_checkpoint, plain, restore, restore_rng, upgrade_config
from .cli import RESUMABLE_FLAGS
from .data import load_data, resolve_data_args
from .errors import Diverged, RankLost, UserError
from .images import grid
from .logs import NoWriter, RunWriter, new_run_dir
from .sample import generate, generate_n
from .scale import (StopVote, agree, autocast, channels_last, collective_failure, cpu_has_native, ema_update, finite,
                    has_group_norm, init_distributed, lost_ranks, pick_device, prepare_model, rank, resolve_speed,
                    same_on_all_ranks, wait_for_all, world)


def train(model_cls, args, explicit: set[str], make_evaluator=None) -> int:
    """Train `model_cls` (a common.GAN) on the data the arguments name; returns the exit
    status. make_evaluator(args, device), when given, makes the --eval-every callback:
    evaluator(sample_fn) -> {metric: value}, sample_fn(n) -> n generated images; its optional
    make_evaluator.check(args) raises UserError for a run it cannot evaluate."""
    ckpt, ckpt_file = resume_settings(model_cls, args, explicit)  # (None, None) for a new run
    resolve_data_args(args)
    check_values(args, getattr(model_cls, "min_batch", 1))  # before any data is loaded or file written
    if args.eval_every and make_evaluator and hasattr(make_evaluator, "check"):
        make_evaluator.check(args)  # refuses, in one line, a data set it cannot score (before any data is loaded)
    check_memory(model_cls, args, (args.channels, *args.image_size))
    device = setup_device(args, args.steps - (int(ckpt["step"]) if ckpt else 0), model_cls)
    try:
        return _prepare_and_train(model_cls, args, ckpt, ckpt_file, device, make_evaluator)
    except RuntimeError as e:  # under torchrun, before the loop (which says more): another rank is gone
        if not collective_failure(e):
            raise
        line = f"{model_cls.name}: rank {rank()}: lost contact with another rank before training; stopped"
        print(line, file=sys.stderr, flush=True)
        raise RankLost(line) from None


def _prepare_and_train(model_cls, args, ckpt, ckpt_file, device, make_evaluator) -> int:
    """The run directory checked and locked (rank 0), the data loaded, then _train."""
    if not same_on_all_ranks(int(ckpt["step"]) if ckpt else -1):  # each rank looked in --out alone
        raise UserError(f"--resume {args.resume}: the ranks found different checkpoints in {args.out} "
                        "(was it written while they started?); start the job again")
    run_dir = Path(args.out) if args.out else new_run_dir(model_cls.name)
    lead = rank() == 0  # the rank that logs, draws grids, evaluates and writes checkpoints
    restart_of = model_cls.name if args.resume == "auto" else None  # --resume auto, nothing to resume
    if lead:
        check_run_dir(run_dir, ckpt is not None, restart_of)
    data = load_data(args)
    check_same_data(ckpt, data, ckpt_file)
    if device.type == "cuda":  # again, with the data set that Batches keeps on the GPU
        check_memory(model_cls, args, (args.channels, *args.image_size), data)
    lock = RunLock(run_dir) if lead else None  # the first file of the run
    try:
        if lead:
            check_run_dir(run_dir, ckpt is not None, restart_of)  # again, now that this process holds the folder
        return _train(model_cls, args, ckpt, ckpt_file, device, data, run_dir, lead, make_evaluator)
    finally:
        if lock:
            lock.release()


def _train(model_cls, args, ckpt, ckpt_file, device, data, run_dir, lead, make_evaluator) -> int:
    model = prepare_model(model_cls(args, tuple(data.shape), device), args, for_training=True)
    start, fixed_z = restore_run(model, ckpt, ckpt_file)
    batches = Batches(data, args.batch_size, args.seed, device, state=ckpt["data"] if ckpt else None,
                      channels_last=channels_last(args, device, has_group_norm(model)),
                      flip=getattr(args, "flip", False))
    amp = autocast(args, device)
    out = RunWriter(run_dir, run_config(args, model, data), start, ckpt is not None, args.no_progress) \
        if lead else NoWriter()
    # The judge is made ready now (rank 0 trains it on first use: minutes on a CPU) while the other
    # ranks wait with a timeout of hours (scale.wait_for_all), not in the first step's all-reduce,
    # where NCCL's 10-minute timeout would abort them.
    evaluator = make_evaluator(args, device) if lead and args.eval_every and make_evaluator else None
    if args.eval_every and make_evaluator:
        wait_for_all()
    out.say(describe(model, args, data, device, start, run_dir))
    for line in getattr(args, "_auto", []):
        out.say(f"{model.name}: {line}")
    if start >= args.steps:
        out.say(f"the checkpoint is at step {start}, already at --steps {args.steps}; nothing to train")
        return 0

    step, meter, last_good = start, Meter(batches), (start if ckpt else None)
    bad_step = torch.full((), -1, dtype=torch.long, device=device)  # first step with a non-finite scalar
    last_grid = None  # the step of the last grid drawn

    def due(every):
        return step % every == 0 or step == args.steps

    def save() -> bool:  # never overwrites a good checkpoint with a diverged model
        nonlocal last_good
        if int(bad_step) >= 0 or not finite(model):
            return False
        out.checkpoint(model, step, batches, fixed_z)
        last_good = step
        return True

    def draw():
        nonlocal last_grid
        out.grid(step, lambda: grid(generate(model, fixed_z)))
        last_grid = step

    def diverged() -> str:
        where = f"{out.checkpoint_path} (step {last_good})" if last_good is not None else "none was written yet"
        return (f"{model.name}: a loss became NaN or infinite at step {int(bad_step)} (stopped at step {step}); "
                f"last good checkpoint: {where}. Start a new run with a lower --g-lr/--d-lr or another --seed "
                f"(a resumed run keeps its settings)")

    out.start_bar(args.steps, start, model.name)
    vote, signum = StopVote(), 0  # signum: the signal the ranks agreed to stop on (0: none)
    with StopFlag() as stop, closing(out):
        try:
            while step < args.steps:
                scalars, bad_step = one_step(model, args, batches, amp, step, bad_step)
                step += 1
                meter.add(scalars)
                out.bar.update(1)
                if due(args.log_every) or due(args.checkpoint_every):  # the only points that wait for the device
                    bad_step = agree(bad_step)
                    if int(bad_step) >= 0:
                        raise Diverged(diverged())
                if due(args.log_every):
                    out.row(meter.row(step, model))
                if due(args.sample_every):
                    draw()
                if evaluator and due(args.eval_every):
                    with out.bar.paused(), meter.paused():  # the speeds they show are the training's
                        scores = evaluator(lambda n: generate_n(model, n, args.seed))
                    out.row({"step": step, **scores}, tag="eval/")
                if due(args.checkpoint_every) and not save():
                    raise Diverged(diverged())
                signum = vote(stop.signum, last=step == args.steps)  # the same on every rank
                if signum:
                    break
            if signum and step < args.steps:
                bad_step = agree(bad_step)  # every rank saves, or refuses to, alike
                if last_good != step and not save():
                    raise Diverged(diverged())
        except RuntimeError as e:
            if not collective_failure(e):
                raise
            line = lost_rank_line(model.name, step, last_good, run_dir)
            print(line, file=sys.stderr, flush=True)  # now: torchrun's SIGTERM to this rank may follow
            raise RankLost(line) from None
        if last_grid != step:  # a run never ends without a grid of its last step
            draw()
    return finish(out, model.name, args, run_dir, step, signum if step < args.steps else 0)


def finish(out, name: str, args, run_dir: Path, step: int, signum: int) -> int:
    """The run's last line (each rank's when stopped by a signal) and its exit status: 0 when
    it reached --steps, 128 + the signal's number when stopped (130 SIGINT, 143 SIGTERM)."""
    if not signum:
        out.finish(f"{name}: done, step {step}; {samples_where(run_dir)}, checkpoint {out.checkpoint_path}")
        return 0
    sig = signal.Signals(signum).name
    if rank() == 0:
        out.finish(f"{name}: interrupted by {sig} at step {step} of {args.steps}; saved {out.checkpoint_path}, "
                   f"{samples_where(run_dir)}. {continue_hint(args, run_dir)}")
    else:
        print(f"{name}: rank {rank()}: interrupted by {sig} at step {step} with the other ranks; rank 0 saved "
              f"{run_dir / CHECKPOINT}", file=sys.stderr)
    return 128 + signum


def samples_where(run_dir: Path) -> str:
    """'samples in RUN/samples', or 'no sample grid' where the folder holds none."""
    samples = run_dir / "samples"
    return f"samples in {samples}" if any(samples.glob("step_*.png")) else "no sample grid"


def continue_hint(args, run_dir: Path) -> str:
    """How to continue an interrupted run: a command given --resume continues as it is; one
    given --out, with --resume auto added; else --resume RUN."""
    if args.resume and args.resume != "auto":
        return "Continue with the same command"
    if args.out:
        return f"Continue with the same command plus --resume auto (or --resume {run_dir} --steps {args.steps})"
    return f"Continue with --resume {run_dir} --steps {args.steps}"


def lost_rank_line(name: str, step: int, last_good, run_dir: Path) -> str:
    """Under torchrun, this rank's one line when a collective failed because another rank is
    gone: which one (when this node shows it), where the last checkpoint is."""
    lost = lost_ranks()
    who = (f"rank {lost[0]}" if lost and len(lost) == 1 else f"ranks {', '.join(map(str, lost))}" if lost
           else "another rank")
    why = "its process ended" if lost else "a rank on another node, or its connection, failed"
    ckpt = f"{run_dir / CHECKPOINT} (step {last_good})" if last_good is not None else "none was written yet"
    return (f"{name}: rank {rank()}: lost {who} at step {step} ({why}); stopped. Last checkpoint: {ckpt}; "
            "a restart with --resume auto continues from it")


def resume_settings(model_cls, args, explicit: set[str]):
    """With --resume: the checkpoint and its path, and args set to the checkpoint's settings
    (except the flags a resumed run may change); a changed setting is refused. --resume auto:
    the same with --out's checkpoint when --out holds one. Else (None, None). Under torchrun
    each rank decides alone, before any rank writes (train checks that they agree)."""
    if not args.resume:
        return None, None
    if args.resume == "auto":
        if not args.out:
            raise UserError("--resume auto: continues the run in --out, or starts it there; give --out")
        if not (Path(args.out) / CHECKPOINT).is_file():
            return None, None  # a new run (train: check_run_dir's restart_of)
    ckpt, ckpt_file = load_checkpoint(args.out if args.resume == "auto" else args.resume, model_cls.name)
    saved = upgrade_config(ckpt["config"], model_cls.hyperparameters)
    if "path" in explicit and not saved.get("path") and args.path:
        raise UserError(f"{ckpt_file}: was trained on {saved.get('dataset')} without --path; a resumed run keeps "
                        "its data (drop --path, or start a new run)")
    changed = sorted(k for k in explicit - RESUMABLE_FLAGS if k in saved and plain(getattr(args, k)) != plain(saved[k]))
    if changed:
        raise UserError(f"{ckpt_file}: was trained with --{changed[0].replace('_', '-')} "
                        f"{saved[changed[0]]!r}; a resumed run keeps its settings (drop the flag, or start a new run)")
    for k, v in saved.items():
        if k not in explicit or k not in RESUMABLE_FLAGS:
            setattr(args, k, tuple(v) if k == "image_size" and v is not None else v)
    args.resume = str(ckpt_file)
    if "out" not in explicit:
        args.out = str(ckpt_file.parent)
    return ckpt, ckpt_file


def check_same_data(ckpt, data, ckpt_file) -> None:
    """A resumed run trains on the data it was trained on: a moved folder may be given with
    --path, but one that holds another number of images is another data set."""
    if ckpt is None:
        return
    was = ckpt["config"].get("data_size")
    if was is not None and was != len(data):
        raise UserError(f"{ckpt_file}: was trained on {was} images, {data.source} has {len(data)}; "
                        "a resumed run keeps its data (start a new run for other data)")


def setup_device(args, steps_to_run: int, model_cls=None) -> torch.device:
    """This process's device (its rank's under torchrun); each 'auto' speed flag resolved for
    it and for model_cls's networks (args._auto: what was chosen and why, for the run's first
    lines); the --amp checks; the seed."""
    device = init_distributed(args) or pick_device(args.device)
    group_norm = (model_cls is not None and getattr(args, "channels_last", None) == "auto" and device.type == "cuda"
                  and builds_group_norm(model_cls, args))
    args._auto = resolve_speed(args, device, steps_to_run, group_norm)
    if args.amp != "off" and device.type == "mps":
        raise UserError("--amp: autocast on Apple GPUs is not supported here (use --amp off)")
    if args.amp != "off" and device.type == "cpu" and rank() == 0 and not cpu_has_native(args.amp):
        print(f"warning: --amp {args.amp}: this CPU has no native {args.amp} arithmetic, so autocast emulates it "
              "and trains far slower than fp32 (DCGAN about 20x slower on an AVX2 processor; benchmarks/train_speed.py)",
              file=sys.stderr)
    torch.manual_seed(args.seed)  # the same on every rank: the ranks draw one global stream
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def builds_group_norm(model_cls, args) -> bool:
    """Whether the model the arguments describe has a GroupNorm (scale.has_group_norm), built on
    the meta device (no memory, no time) before the device's speed flags are chosen."""
    meta = torch.device("meta")
    with meta:
        return has_group_norm(model_cls(args, (args.channels, *args.image_size), meta))


def restore_run(model, ckpt, ckpt_file):
    """(first step, the fixed z of the grids): 0 and a fresh z, or the checkpoint's with its
    networks, optimizers and random state restored."""
    g = torch.Generator().manual_seed(model.args.seed + 1)
    fixed_z = model.sample_z(64, generator=g, device=torch.device("cpu"))
    if ckpt is None:
        return 0, fixed_z.to(model.device)
    if list(ckpt["shape"]) != list(model.shape):
        raise UserError(f"{ckpt_file}: trained on images of shape {tuple(ckpt['shape'])}, "
                        f"this data gives {tuple(model.shape)}")
    restore(model, ckpt, ckpt_file)
    restore_rng(ckpt, model.device)
    return int(ckpt["step"]), ckpt["fixed_z"].to(model.device)


def run_config(args, model, data) -> dict:
    """config.json and the checkpoint's config: every flag, and what the run was (plain values only)."""
    config = {k: plain(v) for k, v in vars(args).items() if not k.startswith("_")}
    config.update(model=model.name, shape=list(model.shape), data_size=len(data), torch=str(torch.__version__),
                  ranks=world())
    return json.loads(json.dumps(config))  # plain values only: weights_only loading accepts them


def describe(model, args, data, device, start, run_dir) -> str:
    info = (f"{model.name}: {len(data)} images {tuple(data.shape)} from {data.source}, device {device}, "
            f"steps {start}->{args.steps}, run dir {run_dir}")
    if args.compile == "on" and model.double_backward:
        info += "; --compile: G only (the gradient penalty differentiates D twice, which compiled graphs cannot)"
    if world() > 1:
        info += f"; {world()} ranks of batch {args.batch_size} (global batch {world() * args.batch_size})"
    if data.skipped:
        info += f"; skipped {data.skipped} unreadable image(s)"
    if getattr(data, "note", ""):
        info += f"; {data.note}"
    return info


def decayed_lr(args, base: float, step: int) -> float:
    """The rate at generator update `step` (0-based) of an optimizer whose --g-lr / --d-lr is
    base: base (--lr-decay none, the papers'), or base·max(0, 1 − step/steps) (linear: the
    WGAN-GP authors' CIFAR-10 code, gan_cifar_resnet.py: LR·decay, decay = max(0, 1 −
    iteration/ITERS)). A run resumed to a larger --steps decays to its new total."""
    if getattr(args, "lr_decay", "none") == "linear":
        return base * max(0.0, 1.0 - step / args.steps)
    return base


def set_learning_rates(model, args) -> None:
    """Both optimizers' rates for this step: model.learning_rate(--g-lr / --d-lr), which is
    decayed_lr() unless the model has a schedule of its own (BEGAN's halvings)."""
    for name, base in (("G", args.g_lr), ("D", args.d_lr)):
        for group in model.optimizers()[name].param_groups:
            group["lr"] = model.learning_rate(base)


def one_step(model, args, batches: Batches, amp, step: int, bad_step: torch.Tensor):
    """Generator update number step + 1 (with the EMA after it). Returns the scalars {name:
    0-d fp32 tensor} and bad_step: the first step whose scalars were not finite (-1: none),
    kept on the device so that no step waits for it."""
    model.step = step  # generator updates done so far (schedules read it)
    set_learning_rates(model, args)
    with amp:
        scalars = model.train_step(batches)
    if model.G_ema is not None:
        # the decay ramps up as in TensorFlow's ExponentialMovingAverage(num_updates): at 0.999 a
        # fixed decay would still hold 37 % of the initial weights after 1,000 steps
        ema_update(model.G_ema, model.G, min(args.ema, (1 + step) / (10 + step)))
    vals = torch.stack([v.detach().float().reshape(()) for v in scalars.values()])
    # step + 1 as a Python number: filled in on the device (torch.tensor(step + 1, device=...)
    # would copy it from pageable host memory, a copy the step waits for on a GPU)
    bad_step = torch.where((bad_step < 0) & ~torch.isfinite(vals).all(), step + 1, bad_step)
    return dict(zip(scalars, vals)), bad_step


class Meter:
    """Each scalar's sum since the last row (on the device: read only when a row is made),
    and the images and time since then."""

    def __init__(self, batches: Batches):
        self.batches = batches
        self.reset()

    def reset(self):
        self.sums, self.n, self.t0, self.images0 = {}, 0, time.perf_counter(), self.batches.images

    @contextmanager
    def paused(self):
        """A side job's time is left out of images/s and steps/s."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.t0 += time.perf_counter() - t

    def add(self, scalars: dict) -> None:
        for k, v in scalars.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.n += 1

    def row(self, step: int, model) -> dict:
        """The metrics row: each scalar's mean, the learning rates, images/s, steps/s; then reset."""
        dt = time.perf_counter() - self.t0
        row = {"step": step, **{k: round(float(v) / self.n, 6) for k, v in self.sums.items()}}
        for name, opt in model.optimizers().items():
            row[f"lr_{name.lower()}"] = opt.param_groups[0]["lr"]
        row["images_per_s"] = round((self.batches.images - self.images0) / dt, 1)
        row["steps_per_s"] = round(self.n / dt, 3)
        if self.batches.skipped:
            row["skipped_images"] = self.batches.skipped
        self.reset()
        return row


class StopFlag:
    """Ctrl-C (SIGINT) or SIGTERM sets signum (the first signal's); the loop saves a checkpoint
    after the step in flight (under torchrun, the step the ranks agree on) and returns 128 +
    signum. A second Ctrl-C stops at once."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    @property
    def hit(self) -> bool:
        return self.signum != 0

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def _handler(self, signum, frame):
        if self.hit and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
