"""Score GAN checkpoints with the offline metrics of ganzoo/metrics.py: one row per checkpoint.

    python evaluate.py runs/dcgan/<run>                    # a run directory or a checkpoint.pt
    python evaluate.py runs/compare --markdown t.md --json t.json   # every checkpoint below a folder
    python evaluate.py --real --dataset stacked-digits     # the real data against itself (the floor)
    python dcgan.py --eval-every 500                        # the same metrics during training
    python evaluate.py --nearest runs/dcgan/<run>           # is it copying its training images?
    python evaluate.py runs/dcgan/<run> --real --per-class  # which classes fall short, beside real images
    python evaluate.py runs/began/<run> --fid               # Inception FID, KID, IS, precision/recall (any data)
    python evaluate.py runs/began/<run> --fid --n 50000 --inception-weights weights-inception-2015-12-05-6726825d.pth

Works for checkpoints of any of the seven scripts trained on a labelled data set: digits,
mnist, mnist-5k, fashion-mnist, cifar10 and the stacked sets (the checkpoint names its
script; its config rebuilds the networks and names the data). A folder of images has no
labels, so no judge: --fid scores it (and any data set) with Inception FID, KID, IS and
precision/recall through torch-fidelity (pip install -r requirements-fid.txt; docs/evaluation.md
gives the protocol) against the run's training images through its training crop, instead of
the judge's metrics. A run directory gives one row per kept snapshot (--keep-every) and one
for checkpoint.pt, in step order, and a picture of the metrics against steps beside the
table (--markdown's FILE-curve.png, else eval-curve.png in the run directory).
Samples come from z drawn by a fixed generator (--seed),
in eval mode, as sample grids are, from G_ema where the run kept one (--ema), else G;
--no-ema samples G itself.

Columns: classes (of 10) or modes (stacked sets, of 1,000) covered, and confident_modes,
the modes covered by confidently classified samples only; kl: KL(generated || real class
histogram), against uniform on the stacked sets; confident: share of samples whose top class
probability is >= 0.9 (stacked: all three channels); fd and kid: Frechet and kernel distances
between the judge's features of generated and real images (lower is better; comparable
within this project only); precision, recall, density, coverage: the same features, k = 5
(Kynkaanniemi et al. 2019; Naeem et al. 2020). See ganzoo/metrics.py.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

import torch

from ganzoo import curves, fidelity, metrics, nearest
from ganzoo.checkpoint import checkpoint_path, load_checkpoint, model_from_checkpoint
from ganzoo.cli import HelpFormatter, image_size, positive_int
from ganzoo.data import STACKED, default_channels, default_image_size
from ganzoo.errors import UserError
from ganzoo.evaluation import (METRICS, evaluate_model, evaluate_model_fid, evaluate_real, evaluate_real_fid,
                               find_checkpoints, markdown, per_class_markdown, scorer)
from ganzoo.scale import pick_device

ROOT = Path(__file__).resolve().parent


def model_class(name: str):
    """The model class (a common.GAN subclass) of the script `name`.py, whose `name` is the script's."""
    if not name.isidentifier() or not (ROOT / f"{name}.py").is_file():
        raise UserError(f"the checkpoint's model {name!r} has no script {name}.py here")
    mod = importlib.import_module(name)
    for v in vars(mod).values():
        if isinstance(v, type) and getattr(v, "name", None) == name and callable(getattr(v, "train_step", None)):
            return v
    raise UserError(f"{name}.py defines no common.GAN subclass named {name!r}")


def load_model(path, device, ema: bool = True) -> tuple:
    """A checkpoint (or run directory) of any script -> its model, networks restored, and
    the checkpoint. ema=False drops a --ema run's moving average, so that G itself is sampled."""
    ckpt, p = load_checkpoint(path)
    model = model_from_checkpoint(model_class(ckpt["model"]), ckpt, p, device)
    if not ema:
        model.G_ema = None
    return model, ckpt


def evaluate_checkpoint(path, device=torch.device("cpu"), n: int | None = None, seed: int = 0,
                        ema: bool = True, per_class: bool = False, fid: bool = False, weights=None) -> dict:
    """One row: where, model, step, which generator (G_ema where the run kept one, unless
    ema=False), data, then the metrics of n samples (default: the data set's, 2,000 for digits
    and 26,000 for stacked-digits), and with per_class the same samples class by class; with
    fid the Inception metrics instead (default n 10,000; weights: the Inception file)."""
    model, ckpt = load_model(path, device, ema)
    if fid:
        return evaluate_model_fid(model, ckpt, str(checkpoint_path(path)), device, n, seed, weights)
    return evaluate_model(model, ckpt, str(checkpoint_path(path)), device, n, seed, per_class)


def real_config(args, paths) -> dict:
    """The data of the --fid --real row: the first checkpoint's, else --dataset, --path, --image-size."""
    if paths:
        return load_checkpoint(paths[0])[0]["config"]
    dataset = args.dataset or ("folder" if args.path else "digits")
    return {"dataset": dataset, "path": args.path, "image_size": args.image_size or default_image_size(dataset),
            "channels": default_channels(dataset), "crop": "aspect", "limit": None}


CURVE_METRICS = {"fid": fidelity.METRICS, "judge": ("kl", "fd", "precision", "recall")}


def curve_png(rows: list[dict], markdown_file) -> Path:
    """Where the curve goes: beside --markdown's file, else in the run directory (the runs'
    common folder when there are several)."""
    if markdown_file:
        return markdown_file.with_name(f"{markdown_file.stem}-curve.png")
    runs = sorted({str(Path(r["checkpoint"]).parent) for r in rows if r["model"] != "real data"})
    return Path(os.path.commonpath(runs)) / "eval-curve.png"


def draw_curve(rows: list[dict], metrics_: tuple, png: Path) -> Path:
    """One panel per metric against steps, one line per run directory (matplotlib: UserError
    when it is not installed)."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no backend, no global state
    except ImportError:
        raise UserError("no curve picture: matplotlib is not installed (pip install matplotlib)") from None
    runs = {}
    for r in rows:
        if r["model"] != "real data":
            runs.setdefault(Path(r["checkpoint"]).parent, []).append(r)
    fig = Figure(figsize=(4.2 * len(metrics_) + 1.0, 3.8), layout="constrained")
    dataset = rows[0]["dataset"]
    for ax, m in zip(fig.subplots(1, len(metrics_), squeeze=False)[0], metrics_):
        for i, (run, rs) in enumerate(runs.items()):
            rs = sorted(rs, key=lambda r: r["step"])
            ax.plot([r["step"] for r in rs], [r[m] for r in rs], "o-", color=f"C{i % 10}", ms=4,
                    label=f"{rs[0]['model']} {run.name}")
        for r in rows:
            if r["model"] == "real data":
                ax.axhline(r[m], ls="--", lw=1, color="0.35", label="real data")
        title, ylabel = curves.panel(m, dataset)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("generator updates (step)")
        ax.grid(alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), frameon=False, fontsize=8)
    n = rows[0]["n"]
    fig.suptitle(f"{dataset} at {rows[0]['image_size']}: {n:,} samples per point", fontsize=10)
    try:
        fig.savefig(png, dpi=100)
    except OSError as e:
        raise UserError(f"{png}: cannot write the curve ({e.strerror})") from None
    return png


def nearest_check(parser, args) -> int:
    try:
        device = pick_device(args.device)
        model, ckpt = load_model(args.nearest, device, not args.no_ema)
        out = checkpoint_path(args.nearest).parent / "nearest.png"
        r = nearest.check(model, ckpt["config"], device, out, n=args.n or 500, seed=args.seed)
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"nearest training image of {r['n']} samples and of {r['held_out']} held-out real images "
          f"({r['train_searched']} training images searched, {r['features']}):\n"
          f"  samples:  1% {r['samples_p1']:.4g}  5% {r['samples_p5']:.4g}  median {r['samples_median']:.4g}\n"
          f"  held-out: 1% {r['held_out_p1']:.4g}  5% {r['held_out_p5']:.4g}  median {r['held_out_median']:.4g}\n"
          f"  samples nearer than the nearest 1% of held-out images: {r['closer_than_held_out_p1']:.1%} "
          f"(about 1% when nothing is copied; far more: copies)\nwrote {out}")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("paths", nargs="*", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="checkpoints, run directories, or folders holding run directories")
    p.add_argument("--real", action="store_true", help="add a row scoring real images against the reference")
    p.add_argument("--fid", action="store_true",
                   help="Inception FID, KID, IS and precision/recall through torch-fidelity (pip install -r "
                        "requirements-fid.txt) against the run's training images, instead of the judge's metrics; "
                        "any data set, folders included; --n default 10,000 (papers: 50,000)")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="--fid's Inception weights file (torch-fidelity's weights-inception-2015-12-05-6726825d.pth) "
                        f"on a machine without internet (default: ${fidelity.WEIGHTS_ENV}, else torch-fidelity's "
                        "download into torch's hub folder)")
    p.add_argument("--dataset", choices=[*metrics.DATASETS, "folder"], default=None,
                   help="data set of the --real row (default: the first checkpoint's, else digits; folder: with --fid)")
    p.add_argument("--path", default=None, help="the --real row's data files, where its data set takes --path")
    p.add_argument("--image-size", type=image_size, default=None,
                   help="image size of the --real row (default: the first checkpoint's, else 32)")
    p.add_argument("--n", type=positive_int, default=None,
                   help="samples per checkpoint (default: 2,000 for digits, 26,000 for stacked-digits; --fid: 10,000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the z the samples are drawn from")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="auto picks cuda, then mps, then cpu")
    p.add_argument("--no-ema", action="store_true",
                   help="sample G itself, not the moving average of a --ema run (the same checkpoint scored both "
                        "ways shows what the average gives); the generator column says which was sampled")
    p.add_argument("--nearest", metavar="RUN", default=None,
                   help="the memorisation check of one run: RUN/nearest.png (16 samples, each beside its 5 nearest "
                        "training images) and the nearest-distance distribution of samples against held-out real "
                        "images; any data set, folders included")
    p.add_argument("--per-class", action="store_true",
                   help="also a table per checkpoint: each class's share of the samples and the confident share "
                        "among them, beside the real data's (where the confident share falls short; 10-class sets)")
    p.add_argument("--markdown", type=Path, default=None, metavar="FILE", help="also write the table here")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the rows here as JSON")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.nearest:
        return nearest_check(parser, args)
    try:
        if not args.paths and not args.real:
            raise UserError("name at least one run directory or checkpoint, or --real")
        if args.fid:
            fidelity.require()  # first: one line when the extra is not installed
            if args.per_class:
                raise UserError("--per-class goes with the judge's metrics, not with --fid")
        device = pick_device(args.device)
        paths = find_checkpoints(args.paths)
        rows = [evaluate_checkpoint(p, device, args.n, args.seed, not args.no_ema, args.per_class, args.fid,
                                    args.inception_weights) for p in paths]
        if args.real and args.fid:
            rows.append(evaluate_real_fid(real_config(args, paths), device, args.n, args.inception_weights))
        elif args.real:
            dataset = args.dataset or (rows[0]["dataset"] if rows else "digits")
            hw = args.image_size or (image_size(rows[0]["image_size"]) if rows else default_image_size(dataset))
            rows.append(evaluate_real(dataset, hw, device, args.n, path=args.path, per_class=args.per_class))
        table = fid_table(rows, args.inception_weights) if args.fid else judge_table(rows, device)
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(table, end="")
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    steps = {}
    for r in rows:
        if r["model"] != "real data":
            steps.setdefault(Path(r["checkpoint"]).parent, set()).add(r["step"])
    if any(len(s) > 1 for s in steps.values()):  # a run evaluated at two steps or more: its curve
        names = CURVE_METRICS["fid" if args.fid else "judge"]
        if not args.fid and rows[0]["dataset"] in STACKED:
            names = ("modes",) + names
        try:
            print(f"wrote {draw_curve(rows, names, curve_png(rows, args.markdown))} (the metrics against steps)",
                  file=sys.stderr)
        except UserError as e:
            print(f"{parser.prog}: {e}", file=sys.stderr)
    return 0


def judge_table(rows: list[dict], device) -> str:
    """The judge's table: the rows, each data set's judge and its accuracy, --per-class's tables."""
    for r in rows:
        s = scorer(r["dataset"], image_size(r["image_size"]), device, r.pop("path", None))
        r["classifier_accuracy"], r["judge"] = s.accuracy, s.source
    judges = sorted({(r["dataset"], r["image_size"], r["judge"], r["classifier_accuracy"]) for r in rows})
    table = markdown(rows, ("model", "step", "generator", "dataset", "image_size", "n") + METRICS + ("checkpoint",))
    table += "".join(f"\njudge for {d} at {s}: a {j} classifier, held-out accuracy {a:.1%}\n"
                     for d, s, j, a in judges)
    return table + "".join(per_class_markdown(r) for r in rows if "per_class" in r)


def fid_table(rows: list[dict], weights) -> str:
    """The --fid table: the rows (their reference set in each), then the protocol in one line."""
    p = fidelity.weights_path(weights)
    _, sha = fidelity.extractor(p.resolve())
    table = markdown(rows, ("model", "step", "generator", "dataset", "image_size", "n") + fidelity.METRICS
                     + ("reference", "checkpoint"))
    return table + f"\n{fidelity.protocol(p, sha)}\n"


if __name__ == "__main__":
    raise SystemExit(main())
