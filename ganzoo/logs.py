"""What a run shows and writes as it goes: the progress bar, and the run directory's writer,
through which every metrics row goes (metrics.jsonl, TensorBoard, the bar, the --no-progress
log lines), with the sample grids and checkpoints. Ranks > 0 of a torchrun job get
NoWriter, which does nothing."""
from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

from .checkpoint import CHECKPOINT, save_checkpoint
from .images import save_png, write_timeline


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
    def close(self): pass
    def write(self, s): print(s, file=sys.stderr)


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


def tensorboard(run_dir):
    try:
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(str(run_dir))
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
        self.tb = tensorboard(run_dir)
        self.bar = NoBar()

    def start_bar(self, total: int, initial: int, desc: str) -> None:
        self.bar = progress(total=total, initial=initial, desc=desc, unit="step",
                            disable=True if self.quiet else None)

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
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in list(row.items())[1:5]}, refresh=False)
        if self.quiet:
            print(json.dumps(row))

    def grid(self, step: int, draw) -> None:
        """samples/step_NNNNNN.png (and TensorBoard's image) of draw(), a uint8 (H, W, C) grid."""
        img = draw()
        save_png(img, self.dir / "samples" / f"step_{step:06d}.png")
        if self.tb:
            self.tb.add_image("samples", img, step, dataformats="HWC")

    def checkpoint(self, model, step: int, batches, fixed_z) -> None:
        save_checkpoint(self.checkpoint_path, model, step, batches, fixed_z, self.config)

    def say(self, text: str) -> None:
        print(text, file=sys.stderr)

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
