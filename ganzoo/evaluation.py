"""Scoring with the metrics of ganzoo.metrics (the judges of the labelled sets) or of
ganzoo.fidelity (Inception FID and the rest, any data set): a model's samples or the real data,
one row each; the --eval-every callback of the training loop; a run's checkpoints and
snapshots in step order; rows as a markdown table."""
from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import torch

from . import fidelity, metrics
from .checkpoint import CHECKPOINT, SNAPSHOT_GLOB, checkpoint_path
from .cli import size_str
from .data import LABELLED
from .errors import UserError
from .sample import generate_batches, generate_n

METRICS = ("classes", "modes", "confident_modes", "kl", "confident", "fd", "kid",
           "precision", "recall", "density", "coverage")


@functools.lru_cache(maxsize=None)
def scorer(dataset: str, hw: tuple, device: torch.device, path=None) -> metrics.Scorer:
    """One Scorer per data set, size and device in a process (its reference is costly)."""
    return metrics.Scorer(dataset, hw, device, path=path)


def training_evaluator(args, device):
    """The --eval-every callback of ganzoo.loop.train(): evaluator(sample_fn) -> {metric:
    float}, where sample_fn(n) returns n generated images (n, C, H, W) in [-1, 1]. A labelled
    set gets its judge's metrics; a folder Inception FID, KID, IS and precision/recall of
    fidelity.TRAINING_N samples, named with that n (fid_2k, ...: fewer than evaluate.py's
    10,000, so higher than its figures; a curve within the run, not a figure to quote)."""
    if args.dataset in LABELLED:
        s = scorer(args.dataset, tuple(args.image_size), device, getattr(args, "path", None))
        return lambda sample_fn: s(sample_fn(s.n))
    f = fidelity.fidelity(vars(args), fidelity.TRAINING_N, getattr(args, "inception_weights", None), device)
    tag = f"_{f.n // 1000}k" if f.n % 1000 == 0 else f"_{f.n}"
    return lambda sample_fn: {k + tag: v for k, v in f(sample_fn(f.n)).items()}


def _check_training_evaluator(args) -> None:
    """Before any data is loaded: UserError, in one line, for a run training_evaluator cannot
    score (a folder without torch-fidelity, torchvision or Inception weights)."""
    if args.dataset in LABELLED:
        return
    try:
        fidelity.require()
        fidelity.extractor(fidelity.weights_path(getattr(args, "inception_weights", None)).resolve())
    except UserError as e:
        raise UserError(f"--eval-every on a folder logs Inception FID: {e}") from None


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


def model_features(model, n: int, f: fidelity.Fidelity, seed: int = 0, chunk: int = 500) -> tuple:
    """The Inception features (pool, logits) of generate_n(model, n, seed)'s samples, generated
    and scored `chunk` at a time (50,000 samples never sit in memory at once)."""
    pools, logits = zip(*(f.features(x) for x in generate_batches(model, n, seed, chunk)))
    return torch.cat(pools), torch.cat(logits)


def evaluate_model_fid(model, ckpt: dict, where: str, device, n: int | None = None, seed: int = 0,
                       weights=None) -> dict:
    """One row of Inception metrics (ganzoo.fidelity): where, model, step, generator, data, n
    (default 10,000), the reference set, then FID, KID, IS, precision and recall of n samples of
    the model restored from `ckpt` against the run's training images."""
    cfg = ckpt["config"]
    n = n or fidelity.EVAL_N
    f = fidelity.fidelity(cfg, n, weights, device)
    return {"checkpoint": where, "model": ckpt["model"], "step": ckpt["step"],
            "generator": "G_ema" if model.G_ema is not None else "G", "dataset": cfg["dataset"],
            "image_size": size_str(cfg["image_size"]), "n": n, "reference": f.reference,
            **f.score(*model_features(model, n, f, seed))}


def evaluate_real_fid(cfg: dict, device, n: int | None = None, weights=None, seed: int = 1) -> dict:
    """The Inception sanity row: n training images of another draw (seed) against the
    reference; where the data set has fewer than 2n images the two draws overlap (all of a
    small folder: 0)."""
    n = n or fidelity.EVAL_N
    f = fidelity.fidelity(cfg, n, weights, device)
    x, _ = fidelity.reference_images(cfg, n, seed)
    return {"checkpoint": "(real data)", "model": "real data", "step": 0, "dataset": cfg["dataset"],
            "image_size": size_str(cfg["image_size"]), "n": len(x), "reference": f.reference,
            **f.score(*fidelity.features(f.fe, x, f.device))}


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


def _step(p: Path) -> int | None:
    """A checkpoint's step: a snapshot's from its name, checkpoint.pt's read from the file (its
    tensors memory-mapped, not read); None where it cannot be read (it fails later, in one line)."""
    m = re.fullmatch(r"checkpoint_step_(\d+)\.pt", p.name)
    if m:
        return int(m.group(1))
    try:
        return int(torch.load(p, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:  # noqa: BLE001
        return None


def run_checkpoints(run_dir: Path) -> list[Path]:
    """A run directory's step-stamped snapshots (--keep-every) and its checkpoint.pt, in step
    order; a snapshot at checkpoint.pt's own step is left out (the same weights)."""
    last = run_dir / CHECKPOINT
    found = [(s, p) for p in run_dir.glob(SNAPSHOT_GLOB) if (s := _step(p)) is not None]
    end = _step(last) if last.is_file() else None
    found = sorted(x for x in found if x[0] != end)
    return [p for _, p in found] + ([last] if last.is_file() else [])


def find_checkpoints(paths) -> list[Path]:
    """Each path: a checkpoint, a run directory (its snapshots and checkpoint.pt, in step
    order), or a folder searched for run directories."""
    out = []
    for p in map(Path, paths):
        if p.is_dir() and not (p / CHECKPOINT).is_file():
            found = sorted(p.rglob(CHECKPOINT))
            if not found:
                raise UserError(f"{p}: no {CHECKPOINT} in it or below it")
            out += [c for f in found for c in run_checkpoints(f.parent)]
        elif p.is_dir():
            out += run_checkpoints(p)
        else:
            out.append(checkpoint_path(p))
    return out
