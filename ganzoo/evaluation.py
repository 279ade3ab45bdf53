"""Scoring with the metrics of ganzoo.metrics: a model's samples or the real data, one row
each; the --eval-every callback of the training loop; rows as a markdown table."""
from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from . import metrics
from .checkpoint import CHECKPOINT, checkpoint_path
from .cli import size_str
from .data import LABELLED
from .errors import UserError
from .sample import generate_n

METRICS = ("classes", "modes", "confident_modes", "kl", "confident", "fd", "kid",
           "precision", "recall", "density", "coverage")


@functools.lru_cache(maxsize=None)
def scorer(dataset: str, hw: tuple, device: torch.device, path=None) -> metrics.Scorer:
    """One Scorer per data set, size and device in a process (its reference is costly)."""
    return metrics.Scorer(dataset, hw, device, path=path)


def training_evaluator(args, device):
    """The --eval-every callback of ganzoo.loop.train(): evaluator(sample_fn) -> {metric:
    float}, where sample_fn(n) returns n generated images (n, C, H, W) in [-1, 1]. Raises
    UserError when the data set has no labels (a folder)."""
    s = scorer(args.dataset, tuple(args.image_size), device, getattr(args, "path", None))
    return lambda sample_fn: s(sample_fn(s.n))


def _check_training_evaluator(args) -> None:
    """Before any data is loaded: UserError for a run training_evaluator cannot score."""
    if args.dataset not in LABELLED:
        raise UserError(f"--eval-every: no quality metric for --dataset {args.dataset}: the metrics need a judge "
                        "classifier trained on labelled images, and a folder has no labels")


training_evaluator.check = _check_training_evaluator


def evaluate_model(model, ckpt: dict, where: str, device, n: int | None = None, seed: int = 0,
                   per_class: bool = False) -> dict:
    """One row: where, model, step, data, then the metrics of n samples of the model restored
    from `ckpt` (default n: the data set's, 2,000 for digits and 26,000 for stacked-digits);
    per_class: also the same samples class by class (metrics.Scorer.per_class) as "per_class"."""
    cfg = ckpt["config"]
    s = scorer(cfg["dataset"], tuple(cfg["image_size"]), device, cfg.get("path"))
    n = n or s.n
    return {"checkpoint": where, "model": ckpt["model"], "step": ckpt["step"],
            "generator": "G_ema" if model.G_ema is not None else "G",
            "dataset": cfg["dataset"], "image_size": size_str(cfg["image_size"]), "n": n, "path": cfg.get("path"),
            **s(generate_n(model, n, seed), per_class)}


def evaluate_real(dataset: str, hw, device=torch.device("cpu"), n: int | None = None, seed: int = 1,
                  path=None, per_class: bool = False) -> dict:
    """The sanity row: n real images drawn at random (another draw than the reference's)
    scored against the reference: the best a generator can expect at this n."""
    s = scorer(dataset, tuple(hw), device, path)
    n = n or s.n
    return {"checkpoint": "(real data)", "model": "real data", "step": 0, "dataset": dataset,
            "image_size": size_str(hw), "n": n, "path": path, **s(s.real(n, seed), per_class)}


def per_class_markdown(row: dict) -> str:
    """A row's "per_class" figures as a table: each class's share of the samples and the
    confident share among them, each beside the real data's."""
    head = (f"\nper class, {row['model']} at step {row['step']} ({row['checkpoint']}): the share of samples "
            f"classified into each class, and the share of those with p >= {metrics.CONFIDENT}, beside the real "
            f"data's\n\n")
    lines = ["| class | share | real share | confident | real confident |", "|---|---|---|---|---|"]
    lines += [f"| {c['class']} | " + " | ".join("-" if math.isnan(c[k]) else f"{c[k]:.3f}"  # NaN: no sample there
                                               for k in ("share", "real_share", "confident", "real_confident"))
              + " |" for c in row["per_class"]]
    return head + "\n".join(lines) + "\n"


def fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown(rows: list[dict], columns) -> str:
    cols = [c for c in columns if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def find_checkpoints(paths) -> list[Path]:
    """Each path: a checkpoint, a run directory, or a folder searched for checkpoints."""
    out = []
    for p in map(Path, paths):
        if p.is_dir() and not (p / CHECKPOINT).is_file():
            found = sorted(p.rglob(CHECKPOINT))
            if not found:
                raise UserError(f"{p}: no {CHECKPOINT} in it or below it")
            out += found
        else:
            out.append(checkpoint_path(p))
    return out
