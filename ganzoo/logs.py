"""What a run shows and writes as it goes: its progress (the bar in a terminal, plain lines in
a job log, the estimated time of the whole run), and the run directory's writer, through which
every metrics row goes (metrics.jsonl, TensorBoard, the bar, the --no-progress log lines),
with the sample grids, checkpoints and --keep-every snapshots. Ranks > 0 of a torchrun job get
NoWriter, which does nothing."""
from __future__ import annotations

import datetime
import json
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from .checkpoint import CHECKPOINT, keep_snapshot, remove_stale_temporaries, save_checkpoint
from .errors import UserError
from .images import save_png, write_timeline

INTERVAL = 30.0  # seconds between the job log's progress lines ($GANZOO_LOG_INTERVAL overrides)
WARMUP_STEPS = 2  # not timed: a run's first steps build kernels, compile, tune cuDNN
ESTIMATE_STEPS, ESTIMATE_SECONDS, ESTIMATE_WAIT = 10, 5.0, 30.0  # when the estimate line comes (Progress.ready)
PRACTICAL_HOURS = 8  # a run estimated at a day or more is shown the --steps that end in this time


def progress(it=None, **kw):
    """A tqdm bar over `it` (or a manual one); without tqdm, `it` itself or a bar that does nothing."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in requirements.txt; run on without it
        return it if it is not None else NoBar()
    kw.setdefault("dynamic_ncols", True)
    kw.setdefault("disable", None)  # None: off when stderr is not a terminal
    return tqdm(it, **kw)


class NoBar:
    def update(self, n=1): pass
    def set_postfix(self, *a, **k): pass
    def at_row(self, row): pass
    def close(self): pass
    def write(self, s): print(s, file=sys.stderr, flush=True)
    def paused(self): return nullcontext()


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def log_interval() -> float:
    v = os.environ.get("GANZOO_LOG_INTERVAL", "")
    if not v:
        return INTERVAL
    try:
        x = float(v)
    except ValueError:
        x = -1.0
    if not 0 < x < float("inf"):
        raise UserError(f"GANZOO_LOG_INTERVAL={v}: seconds between progress lines, a number > 0")
    return x


def duration(seconds: float) -> str:
    """12s, 4m10s, 2h08m, 34d17h."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def size(n: int) -> str:
    """812 bytes, 3.9 KiB, 52.4 MiB, 1.2 GiB."""
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def round_down(x: float) -> int:
    """x to two significant digits, rounded down (4873 -> 4800), at least 1."""
    n = max(1, int(x))
    unit = 10 ** max(0, len(str(n)) - 2)
    return n // unit * unit


def losses(row: dict) -> str:
    """The row's model scalars (not the step, rates and speeds), at most four: 'loss_d 0.41 loss_g 2.3'."""
    skip = ("step", "images_per_s", "steps_per_s", "skipped_images")
    vals = [(k, v) for k, v in row.items() if k not in skip and not k.startswith("lr_") and isinstance(v, (int, float))]
    return " ".join(f"{k} {v:.3g}" for k, v in vals[:4])


def faster_device(config: dict) -> str:
    import torch
    dev = config.get("device", "auto")
    if dev == "cuda" or dev == "auto" and torch.cuda.is_available():
        return "more GPUs (torchrun, README)"
    return "a GPU"


class Progress:
    """Where the run is: tqdm's bar in a terminal (mode "bar"); on a stderr that is not one (a
    job log, nohup, > log 2>&1; mode "lines") a plain line every log_interval() seconds and at
    each metrics row; and in every mode (also "quiet", --no-progress) one early line with the
    time the run takes at this speed. Speed is wall time over steps counted here: reading it
    never waits for the device."""

    def __init__(self, total: int, initial: int, desc: str, mode: str, config: dict, clock=time.monotonic):
        self.total, self.n, self.start, self.desc, self.config = total, initial, initial, desc, config
        self.inner = progress(total=total, initial=initial, desc=desc, unit="step") if mode == "bar" else None
        self.lines, self.interval, self.clock = mode == "lines", log_interval(), clock
        self.t_line = clock()
        self.t0 = self.n0 = None  # the timed steps: those after WARMUP_STEPS
        self.estimated, self.last = False, ""

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.inner is not None:
            self.inner.update(n)
        now = self.clock()
        if self.t0 is None and self.n - self.start >= WARMUP_STEPS:
            self.t0, self.n0 = now, self.n
        if not self.estimated and self.ready(now):
            self.estimated = True
            self.write(self.estimate(now))
        if self.lines and now - self.t_line >= self.interval and not self.row_soon(now):
            self.line(now)

    def row_soon(self, now: float) -> bool:
        """A metrics row (and its line) comes at this step, or within a quarter of the interval:
        the line waits for it rather than printing the same step twice."""
        every = self.config.get("log_every") or 0
        if self.n >= self.total or (every and self.n % every == 0):
            return True
        r = self.rate(now)
        return bool(every and r and (every - self.n % every) / r < self.interval / 4)

    def ready(self, now: float) -> bool:
        """Enough timed steps for the estimate: ESTIMATE_STEPS over ESTIMATE_SECONDS (no more than
        the interval of the lines), or any 2 after ESTIMATE_WAIT seconds (a slow run)."""
        if self.t0 is None or self.n >= self.total:
            return False
        steps, secs = self.n - self.n0, now - self.t0
        return steps >= 2 and (secs >= ESTIMATE_WAIT or
                               steps >= ESTIMATE_STEPS and secs >= min(ESTIMATE_SECONDS, self.interval))

    def rate(self, now: float) -> float | None:
        """Steps a second over the timed steps (None before the first: warm-up is no speed)."""
        if self.t0 is None or self.n <= self.n0 or now <= self.t0:
            return None
        return (self.n - self.n0) / (now - self.t0)

    def estimate(self, now: float) -> str:
        r = self.rate(now)
        secs = (self.total - self.start) / r
        text = f"{self.desc}: estimate: steps {self.start}->{self.total} take about {duration(secs)} " \
               f"at {r:.3g} steps/s on this device"
        if secs >= 86400:
            more = round_down(r * PRACTICAL_HOURS * 3600)
            text += f"; --steps {self.start + more} would end in about {PRACTICAL_HOURS} hours at this speed, " \
                    f"or train on {faster_device(self.config)}"
        return text

    def line(self, now: float) -> None:
        parts = [f"{self.desc}: step {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.1f}%)"]
        r = self.rate(now)
        if r:
            parts += [f"{r:.3g} steps/s", f"{duration((self.total - self.n) / r)} left"]
        self.write(", ".join(parts + [self.last] if self.last else parts))
        self.t_line = now

    @contextmanager
    def paused(self):
        """A side job (an --eval-every evaluation): its time is not counted in the speed and the
        time left, which are the training's."""
        t = self.clock()
        try:
            yield
        finally:
            if self.t0 is not None:
                self.t0 += self.clock() - t

    def at_row(self, row: dict) -> None:
        """A training metrics row: the bar's postfix, and in a job log a line with its losses."""
        if self.inner is not None:
            self.inner.set_postfix({k: f"{v:.3g}" for k, v in list(row.items())[1:5]}, refresh=False)
        self.last = losses(row)
        if self.lines:
            self.line(self.clock())

    def set_postfix(self, *a, **k) -> None:
        if self.inner is not None:
            self.inner.set_postfix(*a, **k)

    def write(self, s: str) -> None:
        if self.inner is not None:
            self.inner.write(s, file=sys.stderr)
        else:
            print(s, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


def new_run_dir(name: str) -> Path:
    """runs/<name>/<timestamp>, with -1, -2, ... when that exists."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / name / stamp
    d, i = base, 1
    while d.exists():
        d, i = Path(f"{base}-{i}"), i + 1
    return d


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop the lines a crashed run wrote after its last checkpoint."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            pass
    path.write_text("".join(k + "\n" for k in keep))


def tensorboard(run_dir, purge_step=None):
    """TensorBoard's writer; purge_step (a resumed run's step): TensorBoard drops the earlier files'
    events from that step on, which the crashed or preempted run wrote after its checkpoint."""
    try:
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(str(run_dir), purge_step=purge_step)
    except Exception:  # noqa: BLE001 - tensorboard is optional at run time
        return None


class RunWriter:
    """The lead rank's run directory: config.json, metrics.jsonl (continued after the step of
    the checkpoint on resume), samples/, checkpoint.pt and TensorBoard's event files."""

    def __init__(self, run_dir: Path, config: dict, start: int, resumed: bool, quiet: bool):
        self.dir, self.config, self.quiet = run_dir, config, quiet
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        self.metrics = run_dir / "metrics.jsonl"
        truncate_metrics(self.metrics, start) if resumed else self.metrics.write_text("")
        self.checkpoint_path = run_dir / CHECKPOINT
        self.tb = tensorboard(run_dir, start + 1 if resumed else None)
        self.bar = NoBar()
        removed, freed = remove_stale_temporaries(run_dir)  # the lock is held: no other writer here
        if removed:
            self.say(f"{config.get('model', 'run')}: removed {removed} temporary file(s) of writers that were "
                     f"killed mid-write in {run_dir} ({size(freed)} freed)")

    def start_bar(self, total: int, initial: int, desc: str) -> Progress:
        """The run's Progress, as self.bar: the bar in a terminal, lines in a job log."""
        mode = "quiet" if self.quiet else "bar" if stderr_is_terminal() else "lines"
        self.bar = Progress(total, initial, desc, mode, self.config)
        return self.bar

    def row(self, row: dict, tag: str = "") -> None:
        """One metrics row {"step": s, name: value, ...}: a line of metrics.jsonl, TensorBoard
        scalars (named tag + name), the bar's postfix (training rows), a log line (--no-progress)."""
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(tag + k, v, row["step"])
        if not tag:
            self.bar.at_row(row)
        if self.quiet:
            print(json.dumps(row))

    def grid(self, step: int, draw) -> None:
        """samples/step_NNNNNN.png (and TensorBoard's image) of draw(), a uint8 (H, W, C) grid."""
        img = draw()
        save_png(img, self.dir / "samples" / f"step_{step:06d}.png")
        if self.tb:
            self.tb.add_image("samples", img, step, dataformats="HWC")

    def checkpoint(self, model, step: int, batches, fixed_z) -> None:
        """checkpoint.pt, and with --keep-every N a snapshot (checkpoint_step_NNNNNNN.pt) at each
        checkpoint whose step is a multiple of N (checks.check_values: N a multiple of
        --checkpoint-every, so that each multiple is a checkpoint's step)."""
        save_checkpoint(self.checkpoint_path, model, step, batches, fixed_z, self.config)
        keep = self.config.get("keep_every") or 0
        if keep > 0 and step % keep == 0:
            keep_snapshot(self.checkpoint_path, step)

    def say(self, text: str) -> None:
        self.bar.write(text)

    def finish(self, text: str) -> None:
        """The end of a run: timeline.gif of the grids, and the last line."""
        write_timeline(self.dir)
        self.say(text)

    def close(self) -> None:
        self.bar.close()
        if self.tb:
            self.tb.close()


class NoWriter(RunWriter):
    """Ranks > 0 under torchrun: the same calls, no files and no output."""

    def __init__(self):
        self.bar, self.tb, self.checkpoint_path = NoBar(), None, None

    def start_bar(self, total, initial, desc): pass
    def row(self, row, tag=""): pass
    def grid(self, step, draw): pass
    def checkpoint(self, model, step, batches, fixed_z): pass
    def say(self, text): pass
    def finish(self, text): pass
