"""Learning curves: a metric against generator updates, one line per model (the mean over
seeds) with the spread over seeds (± one standard deviation) shaded, drawn with matplotlib.

The points come from either record a comparison keeps (compare.py's folder layout,
OUT/<model>/seed<k>/):

    read_runs(folder)      each run's --eval-every rows in metrics.jsonl and its scored last
                           checkpoint (eval.json, which wins at its step: it is the table's number)
    read_tables(md_file)   the markdown compare.py writes (results.md, or docs pages that keep
                           several of them): one point per table, at its number of updates

A table's heading names its data set, updates and seeds ("...: stacked-mnist at 28x28, 4000
generator updates, seeds 10, 11, 12"); its cells are "mean ± std" (or one number for one seed),
and rows of a "| model | seed |" table, or cells "a / b / c" (one per seed of the heading),
give single runs. A table under a heading that calls it earlier or replaced (kept for the
record) is skipped. Nothing is interpolated: a model scored at two budgets is a two-point line.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError
from .evaluation import METRICS

PANELS = {  # metric -> (panel title, y label); {kl} is what KL is taken against
    "modes": ("Modes covered", "modes (of 1,000)"),
    "confident_modes": ("Confident modes", "modes covered with p >= 0.9 (of 1,000)"),
    "classes": ("Classes covered", "classes (of 10)"),
    "kl": ("KL to {kl}", "KL(generated || {kl}), lower is better"),
    "fd": ("Fréchet distance", "FD in the judge's features, lower is better"),
    "confident": ("Confident share", "share of samples with p >= 0.9"),
}


@dataclass(frozen=True)
class Point:
    """One model's metric at one number of generator updates, over n seeds."""
    step: int
    mean: float
    std: float  # over the seeds (ddof 1, as compare.py's tables); 0 for one seed
    n: int
    values: tuple = ()  # per seed, where the record gives them


@dataclass
class Curves:
    dataset: str
    image_size: str
    lines: dict = field(default_factory=dict)  # (model, metric) -> [Point], by step
    seeds: set = field(default_factory=set)
    real: dict = field(default_factory=dict)  # metric -> the real data's value, where a table gives it
    sources: list = field(default_factory=list)  # (kind, path)

    def models(self) -> list[str]:
        return list(dict.fromkeys(m for m, _ in self.lines))

    def describe(self) -> str:
        """Where the points come from: "compare.py's tables in a.md, b.md and the runs in OUT"."""
        kinds = {}
        for kind, where in self.sources:
            kinds.setdefault(kind, []).append(where)
        return " and ".join(f"{kind} {', '.join(w)}" for kind, w in kinds.items())


def default_metrics(dataset: str) -> list[str]:
    """The stacked sets' published protocol (modes, KL to uniform) and confident modes; else KL and FD."""
    return ["modes", "confident_modes", "kl"] if dataset.startswith("stacked") else ["kl", "fd"]


def point(step: int, values) -> Point:
    v = np.asarray(values, dtype=np.float64)
    return Point(step, float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v), tuple(values))


def _merge(dataset: str, image_size: str, found: Curves | None, where) -> Curves:
    if found is None:
        return Curves(dataset, image_size)
    if (dataset, image_size) != (found.dataset, found.image_size):
        raise UserError(f"{where} is {dataset} at {image_size}, where the first source is {found.dataset} at "
                        f"{found.image_size}: curves of one data set at a time")
    return found


def read_runs(folder, curves: Curves | None = None) -> Curves:
    """The scores a comparison's runs recorded (OUT/<model>/seed<k>/: metrics.jsonl's
    --eval-every rows, eval.json's last checkpoint), one point per model and step over seeds."""
    folder = Path(folder)
    scores = {}  # (model, metric, step) -> {seed: value}
    runs = sorted(p.parent for p in folder.rglob("config.json") if (p.parent / "metrics.jsonl").is_file())
    if not runs:
        raise UserError(f"{folder}: no run below it (a folder with config.json and metrics.jsonl, as "
                        "compare.py's OUT/<model>/seed<k>)")
    for run in runs:
        cfg = json.loads((run / "config.json").read_text())
        size = "x".join(map(str, cfg["image_size"])) if isinstance(cfg["image_size"], list) else str(cfg["image_size"])
        curves = _merge(cfg["dataset"], size, curves, run)
        rows = []
        if (run / "eval.json").is_file():  # first: the table's score of its step wins over an eval row
            rows.append(json.loads((run / "eval.json").read_text())["row"])
        for line in (run / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if set(row) & set(METRICS):  # an --eval-every row, not a training one
                rows.append(row)
        for row in rows:
            for k in METRICS:
                if isinstance(row.get(k), (int, float)):
                    scores.setdefault((cfg["model"], k, int(row["step"])), {}).setdefault(cfg["seed"], row[k])
        curves.seeds.add(cfg["seed"])
    for (model, metric, step), by_seed in scores.items():
        curves.lines.setdefault((model, metric), []).append(point(step, [by_seed[s] for s in sorted(by_seed)]))
    curves.sources.append(("the runs in", str(folder)))
    return _sorted(curves)


HEADING = re.compile(r"^(#+)\s+(.*)$")
TABLE_OF = re.compile(r"([\w-]+) at (\d+x\d+), (\d+) generator updates, seeds? ([\d, ]+)")
NUMBER = r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _sections(text: str):
    """(dataset, image size, steps, seeds, the section's table lines) per table heading; a
    heading that calls its part earlier or replaced skips what follows, to a table heading no
    deeper than it."""
    section, skip_level = None, None
    for line in text.splitlines():
        m = HEADING.match(line)
        if m:
            level, title, table = len(m.group(1)), m.group(2), TABLE_OF.search(m.group(2))
            if table and (skip_level is None or level <= skip_level):
                if section:
                    yield section
                skip_level = None
                section = (table[1], table[2], int(table[3]), [int(s) for s in table[4].replace(",", " ").split()], [])
            elif re.search(r"\b(earlier|replaced)\b", title, re.I):
                skip_level = min(level, skip_level or level)
                if section:
                    yield section
                section = None
        elif section and line.lstrip().startswith("|"):
            section[4].append(line)
        elif section and section[4] and section[4][-1] is not None:
            section[4].append(None)  # the end of a table
    if section:
        yield section


def _tables(lines):
    """The table lines of a section, split into tables: [(header, rows)]."""
    out, cur = [], []
    for line in lines + [None]:
        if line is None:
            if len(cur) > 2:
                out.append((_cells(cur[0]), [_cells(l) for l in cur[2:]]))
            cur = []
        else:
            cur.append(line)
    return out


def _cell(text: str, seeds: list[int]):
    """A cell -> ("mean", mean, std), ("seeds", [one value per seed]), ("one", value), or None
    (empty, "failed", or a / b cells that do not match the heading's seeds)."""
    text = text.replace("**", "").strip()
    if m := re.fullmatch(rf"({NUMBER})\s*±\s*({NUMBER})", text):
        return "mean", float(m[1]), float(m[2])
    if re.fullmatch(rf"{NUMBER}(\s*/\s*{NUMBER})+", text):
        values = [float(v) for v in text.split("/")]
        return ("seeds", values) if len(values) == len(seeds) else None
    if re.fullmatch(NUMBER, text):
        return "one", float(text)
    return None


def read_tables(path, curves: Curves | None = None) -> Curves:
    """The tables of a markdown file compare.py wrote (or a page that keeps several)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror})") from None
    means, singles, found = {}, {}, False  # (model, metric, step) -> Point / {seed: value}
    for dataset, size, steps, seeds, lines in _sections(text):
        curves, found = _merge(dataset, size, curves, path), True
        curves.seeds.update(seeds)  # a mean is over those of them whose runs finished ("runs": 2/3)
        for header, rows in _tables(lines):
            if not header or header[0] != "model":
                continue
            per_seed = len(header) > 1 and header[1] == "seed"
            for row in rows:
                cells = dict(zip(header, row))
                model = cells["model"]
                if model == "real data":
                    curves.real.update({k: _cell(v, seeds)[1] for k, v in cells.items()
                                        if k in METRICS and _cell(v, seeds)})
                    continue
                n = int(cells["runs"].split("/")[0]) if re.fullmatch(r"\d+/\d+", cells.get("runs", "")) else 1
                for k in (k for k in header if k in METRICS):
                    c = _cell(cells.get(k, ""), seeds)
                    key = (model, k, steps)
                    if c is None:
                        continue
                    if per_seed:
                        singles.setdefault(key, {})[int(cells["seed"])] = c[1]
                    elif c[0] == "seeds":
                        singles.setdefault(key, {}).update(zip(seeds, c[1]))
                    else:
                        if key in means:
                            raise UserError(f"{path}: two tables give {model}'s {k} at {steps} updates")
                        means[key] = Point(steps, c[1], c[2] if c[0] == "mean" else 0.0, n)
    if not found:
        raise UserError(f"{path}: no table of compare.py in it (a heading '...: DATASET at HxW, N generator "
                        "updates, seeds ...')")
    for key in {**means, **singles}:
        by_seed = singles.get(key, {})
        values = tuple(by_seed[s] for s in sorted(by_seed))
        p = means.get(key)
        p = Point(p.step, p.mean, p.std, p.n, values) if p else point(key[2], values)
        curves.lines.setdefault(key[:2], []).append(p)
    curves.sources.append(("compare.py's tables in", str(path)))
    return _sorted(curves)


def _sorted(curves: Curves) -> Curves:
    for key, points in curves.lines.items():
        by_step = {}
        for p in points:
            by_step.setdefault(p.step, p)  # the first source read wins at a step
        curves.lines[key] = [by_step[s] for s in sorted(by_step)]
    return curves


def read(sources) -> Curves:
    """Each source a comparison's folder (its runs) or a markdown file (its tables), merged."""
    curves = None
    for src in map(Path, sources):
        if src.is_dir():
            curves = read_runs(src, curves)
        elif src.is_file():
            curves = read_tables(src, curves)
        else:
            raise UserError(f"{src}: no such file or folder (a comparison's --out folder, or a results.md)")
    return curves


def _matplotlib():
    """matplotlib's Figure, Line2D and NullLocator (imported here: only the curves need it)."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no backend, no global state
        from matplotlib.lines import Line2D
        from matplotlib.ticker import NullLocator
    except ImportError:
        raise UserError("drawing curves needs matplotlib (pip install matplotlib)") from None
    return Figure, Line2D, NullLocator


def panel(metric: str, dataset: str) -> tuple[str, str]:
    """A metric's panel title and y-axis label."""
    kl = "uniform" if dataset.startswith("stacked") else "the real classes"
    return tuple(t.format(kl=kl) for t in PANELS.get(metric, (metric, metric)))


def tick_steps(steps) -> list[int]:
    """The steps to label on a log axis: the last, and each before it at least 1.3x below the
    next one labelled (16k, 20k, 24k would overprint)."""
    out = []
    for s in sorted(steps, reverse=True):
        if not out or out[-1] >= 1.3 * s:
            out.append(s)
    return out[::-1]


def _line(ax, pts, colour, label) -> None:
    """A model's line: the means, ± std shaded over each stretch of points of two seeds or more
    (an error bar where such a point stands alone), a hollow marker at a point of one seed."""
    x, m, s = (np.array([getattr(p, k) for p in pts]) for k in ("step", "mean", "std"))
    ax.plot(x, m, "-", color=colour, lw=1.8, label=label)
    many = [p.n > 1 for p in pts] + [False]
    i = 0
    while i < len(pts):
        j = i
        while many[j]:
            j += 1
        if j - i > 1:
            ax.fill_between(x[i:j], m[i:j] - s[i:j], m[i:j] + s[i:j], color=colour, alpha=0.18, lw=0)
        elif j - i == 1:
            ax.errorbar(x[i], m[i], yerr=s[i], color=colour, capsize=3, lw=1.2)
        i = j + 1
    for p in pts:
        ax.plot(p.step, p.mean, "o", ms=5, color=colour, mfc=colour if p.n > 1 else "white", mew=1.4)


def draw(curves: Curves, metrics, path, models=None, title: str | None = None) -> Path:
    """One panel per metric, one line per model (its colour from its place in `models`, so that
    every picture gives a model the same one: _line), the real data's value dashed where a table
    gives it; generator updates on a log axis when they span 4x or more. Returns the path."""
    Figure, Line2D, NullLocator = _matplotlib()
    order = list(models or curves.models())
    fig = Figure(figsize=(4.6 * len(metrics) + 2.0, 4.2), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    steps = sorted({p.step for pts in curves.lines.values() for p in pts})
    for ax, metric in zip(axes, metrics):
        for i, model in enumerate(order):
            if curves.lines.get((model, metric)):
                _line(ax, curves.lines[(model, metric)], f"C{i % 10}", model)
        if metric in curves.real:
            ax.axhline(curves.real[metric], ls="--", lw=1, color="0.35", label="real data")
        if steps and steps[-1] >= 4 * steps[0]:
            ax.set_xscale("log", base=2)
        ticks = tick_steps(steps) if ax.get_xscale() == "log" else steps
        ax.set_xticks(ticks, [f"{s / 1000:g}k" if s >= 1000 else str(s) for s in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("generator updates")
        ax.set_title(panel(metric, curves.dataset)[0])
        ax.set_ylabel(panel(metric, curves.dataset)[1])
        ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in axes:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    handles += [Line2D([], [], ls="", marker="o", color="0.3", ms=5),
                Line2D([], [], ls="", marker="o", color="0.3", mfc="white", ms=5, mew=1.4)]
    labels += ["mean over seeds,\n± std (band or bar)", "one seed only"]
    fig.legend(handles, labels, loc="outside right center", frameon=False)
    fig.suptitle(title or f"{curves.dataset} at {curves.image_size}, seeds {', '.join(map(str, sorted(curves.seeds)))}"
                 f"; from {curves.describe()}", fontsize=10)
    path = Path(path)
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise UserError(f"{path}: cannot write it ({e.strerror})") from None
    return path
