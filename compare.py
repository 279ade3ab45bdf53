"""Train the seven GANs on the same data and compare them by the numbers of evaluate.py.

    python compare.py --dataset stacked-digits --steps 2000 --seeds 3      # all seven
    python compare.py --models dcgan lsgan --steps 2000 --seeds 3 --out runs/cmp
    python compare.py --models dcgan wgan -- --eval-every 500             # flags after -- go to every script
    python compare.py --dataset fashion-mnist --steps 2000 --jobs 2       # two trainings at once
    python compare.py --steps 4000 --from runs/compare/stacked-digits-32-2000steps  # continue shorter runs
    python compare.py --curves runs/compare/stacked-mnist-28-8000steps --png curves.png   # learning curves
    python compare.py --dataset cifar10 --path cifar-10-batches-py --fid  # + Inception FID, KID, IS, P/R

Each script is run as a user would (python X.py --dataset D --image-size S --steps N --seed k
--out OUT/X/seed<k> --no-progress, output in OUT/X/seed<k>/train.log): the same data,
image size, number of generator updates and seeds for all, and every other setting the
script's own default on that data (batch size, width, learning rates, critic iterations
differ between scripts; the small data sets use each script's documented small-data
departures). Seeds 10..10+k-1 are used (--first-seed): seeds 0-2 are the ones the defaults
were chosen on, so a table never scores the runs its settings were tuned against. The LAST
checkpoint of each run is evaluated (no picking), then:

    OUT/results.md     the table: each metric as mean ± std over seeds, images/s, wall time
    OUT/results.json   the same, with every run's numbers
    OUT/gallery.png    one row of samples per model (and one of real images), from one fixed z seed

--fid adds Inception FID, KID, IS and precision/recall (torch-fidelity: pip install -r
requirements-fid.txt; 10,000 samples unless --n; docs/evaluation.md) of each last checkpoint
against the training split, as columns beside the judge's.

--jobs N trains N runs at once, each with its share of the CPU threads (OMP_NUM_THREADS,
unless set) or, with several GPUs, each on its own GPU in turn. Interrupted, the same
command continues: finished runs (checkpoint at --steps) are not
redone, an unfinished run resumes from its checkpoint, and evaluations are kept in each
run's eval.json. A run in OUT trained with other settings than the command gives now (a
script's default changed since, or other flags after --) is refused in one line before any
training, so that a table never mixes runs of old and new defaults.

--from OLD copies each run of an earlier comparison (OLD/X/seed<k>, same settings, fewer
steps) that OUT has not got yet into OUT, where it resumes: a 4,000-update table then
trains only the second halves of a 2,000-update one's runs, and OLD is left as it was.
Tables and galleries list the models in the order above (dcgan ... began), whatever the
order of --models.

--curves SRC... trains nothing: it draws learning curves (a metric against generator updates,
one line per model, the mean over seeds, ± one std shaded; matplotlib) into --png from what
comparisons recorded: a folder is a comparison's --out, whose runs give their --eval-every rows
(metrics.jsonl) and scored last checkpoints (eval.json); a file is a results.md of compare.py (or a
page keeping several), one point per table, so tables of --steps 2000, 4000, 8000 ... make a curve.
--metrics picks the panels (default: modes, confident_modes and kl on the stacked sets, else kl, fd).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from evaluate import evaluate_checkpoint, load_model
from ganzoo import curves, fidelity, metrics
from ganzoo.checkpoint import CHECKPOINT, load_checkpoint, plain, upgrade_config
from ganzoo.cli import HelpFormatter, image_size, positive_int, size_str
from ganzoo.data import LABELLED, default_image_size, load_data, resolve_data_args
from ganzoo.errors import UserError
from ganzoo.evaluation import METRICS, evaluate_real, evaluate_real_fid, fmt, scorer
from ganzoo.images import grid
from ganzoo.sample import generate_n
from ganzoo.scale import cpu_features, pick_device

MODELS = ("dcgan", "lsgan", "wgan", "wgan_gp", "dragan", "ebgan", "began")
ROOT = Path(__file__).resolve().parent


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                   help="scripts to compare (default: all seven)")
    p.add_argument("--dataset", choices=LABELLED, default="stacked-digits", help="data for every run")
    p.add_argument("--path", default=None, help="the data set's files, where it takes --path (see a script's --help)")
    p.add_argument("--image-size", type=image_size, default=None,
                   help="image size for every run (default: the data set's, 28 for the MNIST family, else 32)")
    p.add_argument("--steps", type=positive_int, default=2000, help="generator updates of every run")
    p.add_argument("--seeds", type=positive_int, default=3, help="runs per model")
    p.add_argument("--first-seed", type=int, default=10,
                   help="seeds FIRST..FIRST+SEEDS-1 (0-2 are the development seeds the defaults were chosen on)")
    p.add_argument("--n", type=positive_int, default=None,
                   help="samples per evaluation (default: 2,000 for digits, 26,000 for stacked-digits)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder of the runs and results (default runs/compare/<dataset>-<size>-<steps>)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="for training and evaluation")
    p.add_argument("--gallery-n", type=positive_int, default=12, help="samples per gallery row")
    p.add_argument("--jobs", type=positive_int, default=1, help="trainings run at once")
    p.add_argument("--from", dest="from_out", type=Path, default=None, metavar="OLD",
                   help="an earlier comparison's folder: its runs (same settings, fewer steps) are copied into "
                        "--out and resumed instead of trained from step 0; OLD is not changed")
    p.add_argument("--train-only", action="store_true", help="train (or resume) the runs and score nothing")
    p.add_argument("--fid", action="store_true",
                   help="also Inception FID, KID, IS and precision/recall of each last checkpoint (torch-fidelity: "
                        "pip install -r requirements-fid.txt), 10,000 samples unless --n")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help=f"--fid's Inception weights file offline (default: ${fidelity.WEIGHTS_ENV}, else torch-fidelity's "
                        "download)")
    g = p.add_argument_group("learning curves (--curves: nothing is trained)")
    g.add_argument("--curves", nargs="+", type=Path, metavar="SRC", default=None,
                   help="draw curves from comparisons' --out folders (their runs' metrics) and/or results.md files "
                        "(their tables)")
    g.add_argument("--metrics", nargs="+", choices=METRICS, default=None,
                   help="one panel each (default: modes confident_modes kl on the stacked sets, else kl fd)")
    g.add_argument("--png", type=Path, default=None,
                   help="the picture (default: curves.png in the first SRC folder, or SRC-curves.png beside a file)")
    return p


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_step(run_dir: Path, model: str) -> int | None:
    """The step of the run's checkpoint, or None when it has none yet."""
    if not (run_dir / CHECKPOINT).is_file():
        return None
    return int(load_checkpoint(run_dir, model)[0]["step"])


def fresh_command(seed: int, run_dir: Path, args, script_args) -> list[str]:
    """A script's flags for a new run of this comparison."""
    return [*map(str, ["--dataset", args.dataset, *(["--path", args.path] if args.path else []),
                       "--image-size", size_str(args.image_size), "--steps", args.steps, "--seed", seed,
                       "--out", run_dir, "--device", args.device]), *script_args]


# What a run trained with that the comparison holds fixed, besides the model's own hyperparameters
# (--steps aside: a resume extends it).
SETTINGS = ("dataset", "image_size", "seed", "g_width", "d_width", "limit", "augment", "augment_p", "lr_decay", "ema")


def check_settings(model: str, seed: int, run_dir: Path, args, script_args) -> int | None:
    """A run already in --out (or in --from) must be no further than --steps and have the
    settings a new run of this command would get now: a default changed since (a script's width
    on a data set, say) or other flags after -- would otherwise put old runs into a new table.
    Raises UserError naming the first difference; returns the run's step (None: no checkpoint)."""
    if not (run_dir / CHECKPOINT).is_file():
        return None
    ckpt = load_checkpoint(run_dir, model)[0]
    step = int(ckpt["step"])
    if step > args.steps:
        raise UserError(f"{run_dir} is at step {step}, past --steps {args.steps} (a longer comparison's run); "
                        "give that --steps, or another --out")
    mod = importlib.import_module(model)
    now = mod.build_parser().parse_args(fresh_command(seed, run_dir, args, script_args))
    resolve_data_args(now)
    then = upgrade_config(dict(ckpt["config"]), mod.HYPERPARAMETERS)
    for k in [*(k for k in mod.HYPERPARAMETERS if k != "steps"), *SETTINGS]:
        value = plain(getattr(now, k))  # None: a default the model derives when it is built (EBGAN's margin)
        if k in then and value is not None and value != then[k]:
            flag = "--" + k.replace("_", "-")
            raise UserError(f"{run_dir} was trained with {flag} {then[k]}, where a new run would get {value} "
                            f"(a changed default, or other flags after --); use another --out, or remove the run")
    return step


def train(model: str, seed: int, run_dir: Path, args, script_args, env=None) -> str | None:
    """Train (or resume, or skip) one run; returns None when it reached --steps, else why not."""
    step = run_step(run_dir, model)  # check_settings has refused one past --steps
    if step == args.steps:
        return None
    if step is None:
        cmd = fresh_command(seed, run_dir, args, script_args)
    else:
        cmd = ["--resume", run_dir, "--steps", args.steps, "--device", args.device]
    cmd = [sys.executable, str(ROOT / f"{model}.py"), "--no-progress", *map(str, cmd)]
    print(f"{model} seed {seed}: training {step or 0} -> {args.steps} steps (log {run_dir / 'train.log'})",
          file=sys.stderr, flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:  # the script saves a checkpoint on Ctrl-C too: let it finish
            proc.wait()
            raise
    if rc in (130, 143):
        raise KeyboardInterrupt  # the script was stopped (Ctrl-C, SIGTERM) and saved a checkpoint
    if rc != 0:
        lines = (run_dir / "train.log").read_text().strip().splitlines()
        return f"exit {rc}: {lines[-1] if lines else ''}"
    if run_step(run_dir, model) != args.steps:
        raise KeyboardInterrupt  # the script was stopped (Ctrl-C, SIGTERM) and saved a checkpoint
    return None


def speed(run_dir: Path) -> tuple[float, float]:
    """(images/s, seconds) of the training loop, from metrics.jsonl: each line gives the
    interval's speed, so its duration is steps / steps_per_s (start-up not counted)."""
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    rows = [r for r in rows if "steps_per_s" in r]  # not the --eval-every lines
    steps = np.diff([0] + [r["step"] for r in rows])
    secs = steps / np.array([r["steps_per_s"] for r in rows])
    return float((np.array([r["images_per_s"] for r in rows]) * secs).sum() / secs.sum()), float(secs.sum())


def fid_n(args) -> int:
    return args.n_given or fidelity.EVAL_N


def evaluation(run_dir: Path, args, device) -> dict:
    """The run's last checkpoint scored (cached in its eval.json); with --fid the Inception
    metrics too (the table's fid ... columns)."""
    key = {"step": args.steps, "n": args.n, "version": metrics.VERSION, "prdc_k": metrics.PRDC_K}
    if args.fid:
        key["fid"] = {"n": fid_n(args), "version": fidelity.VERSION}
    cache = run_dir / "eval.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved["key"] == key:
            return saved["row"]
    row = evaluate_checkpoint(run_dir, device, args.n)
    if args.fid:
        fid = evaluate_checkpoint(run_dir, device, fid_n(args), fid=True, weights=args.inception_weights)
        row.update({k: fid[k] for k in fidelity.METRICS}, fid_n=fid["n"], fid_reference=fid["reference"])
    cache.write_text(json.dumps({"key": key, "row": row}, indent=2) + "\n")
    return row


def mean_std(values) -> str:
    v = np.asarray(values, dtype=np.float64)
    return fmt(float(v.mean())) + (f" ± {v.std(ddof=1):.2g}" if len(v) > 1 else "")


def gallery(rows: list[tuple[str, torch.Tensor]], path: Path, label_w: int = 64) -> None:
    """One row of samples per (label, images (k, C, H, W) in [-1, 1]), the label on its left."""
    from PIL import Image, ImageDraw
    strips = []
    for label, x in rows:
        g = grid(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x, nrow=len(x))
        strip = Image.new("RGB", (label_w + g.shape[1], g.shape[0]))
        strip.paste(Image.fromarray(g), (label_w, 0))
        ImageDraw.Draw(strip).text((4, g.shape[0] // 2 - 5), label, fill=(255, 255, 255))
        strips.append(strip)
    out = Image.new("RGB", (strips[0].width, sum(s.height for s in strips)))
    for i, s in enumerate(strips):
        out.paste(s, (0, sum(t.height for t in strips[:i])))
    out.save(path)


def summary(runs: list[dict], models, keys) -> dict:
    """Per model: how many runs finished, and each key's mean, std and values over them."""
    out = {}
    for model in models:
        ok = [r for r in runs if r["model"] == model and not r["failed"]]
        out[model] = {"runs": len(ok), "of": sum(r["model"] == model for r in runs)}
        for k in keys if ok else ():
            v = [r[k] for r in ok]
            out[model][k] = {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                             "values": v}
    return out


WAYS = ("", "", "Two", "Three", "Four", "Five", "Six", "Seven")


def title(models) -> str:
    """The table's title: "Seven-way comparison", "Two-way comparison (dcgan, lsgan)", "wgan alone"."""
    if len(models) == 1:
        return f"{models[0]} alone"
    return f"{WAYS[len(models)]}-way comparison" + (f" ({', '.join(models)})" if len(models) < len(MODELS) else "")


def draw_curves(args) -> Path:
    """--curves: the learning curves of the comparisons' records, written to --png."""
    data = curves.read(args.curves)
    first = args.curves[0]
    png = args.png or (first / "curves.png" if first.is_dir() else first.with_name(f"{first.stem}-curves.png"))
    return curves.draw(data, args.metrics or curves.default_metrics(data.dataset), png, models=args.models)


def report(args, argv, script_args, runs, real, judge) -> tuple[str, dict]:
    """results.md's text and results.json's content."""
    hw, seeds = "x".join(map(str, args.image_size)), sorted({r["seed"] for r in runs})
    stacked = judge.stacked
    cover = ["modes", "confident_modes"] if stacked else ["classes"]
    quality = cover + ["kl", "confident", "fd", "kid", "precision", "recall", "density", "coverage"]
    quality += list(fidelity.METRICS) if args.fid else []
    keys = quality + ["images_per_s", "wall_s"]
    results = summary(runs, args.models, keys)
    command = shlex.join(["python", "compare.py", *argv])
    device = judge.device
    machine = (f"{cpu_name()}, {os.cpu_count()} cores, {cpu_features()}; torch {torch.__version__}; device {device}"
               + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    date = datetime.date.today().isoformat()
    lines = [
        f"# {title(args.models)}: {args.dataset} at {hw}, {args.steps} generator updates, "
        f"seeds {', '.join(map(str, seeds))}", "",
        f"- Command: `{command}`", f"- Date: {date}", f"- Machine: {machine}",
        "- Every run has the same data, image size, number of generator updates and seeds; everything "
        "else is each script's own default on this data (its paper's values, with the departures its "
        "docstring names for the small data sets), so batch sizes, widths, learning rates and critic "
        "iterations differ" + (f"; flags given to every script: `{shlex.join(script_args)}`" if script_args else "")
        + ".",
        f"- The last checkpoint of each run is scored (no picking) from {args.n:,} samples; each cell is "
        f"the mean ± std over the seeds. Judge: a {judge.source} classifier at {hw}, held-out accuracy "
        f"{judge.accuracy:.1%}; every metric is in its classes or features (comparable within this project only).",
        f"- {cover[0]}: covered, of {1000 if stacked else 10}"
        + ("; confident_modes: covered by samples whose three channels are classified with "
           f"p >= {metrics.CONFIDENT}" if stacked else "")
        + f"; kl: KL(generated || {'uniform' if stacked else 'real class histogram'}); confident: share of "
        f"samples classified with p >= {metrics.CONFIDENT}; precision, recall, density, coverage: k = "
        f"{metrics.PRDC_K}; images/s: real images a run consumed per second (critic iterations included); "
        "wall time: a run's training loop."
        + (f" fid, kid_inception, is, precision_inception, recall_inception: Inception metrics of "
           f"{fid_n(args):,} samples against {real.get('fid_reference', '')} ({fidelity.protocol(*fidelity_weights(args))})."
           if args.fid else ""), "",
        "| model | " + " | ".join(quality) + " | images/s | wall time (min) | runs |",
        "|---|" + "---|" * (len(quality) + 3)]
    for model, res in results.items():
        if not res["runs"]:
            lines.append(f"| {model} | failed |" + " |" * (len(quality) + 1) + f" 0/{res['of']} |")
            continue
        cells = [mean_std(res[k]["values"]) for k in quality]
        cells += [f"{res['images_per_s']['mean']:.0f}", f"{res['wall_s']['mean'] / 60:.1f}"]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {res['runs']}/{res['of']} |")
    lines.append("| real data | " + " | ".join(fmt(real[k]) for k in quality) + " | | | |")
    failed = [f"- {r['model']} seed {r['seed']} failed ({r['failed']})" for r in runs if r["failed"]]
    text = "\n".join(lines + ([""] + failed if failed else [])) + "\n"
    return text, {"command": command, "date": date, "machine": machine, "dataset": args.dataset,
                  "image_size": hw, "steps": args.steps, "seeds": seeds, "n": args.n, "script_args": script_args,
                  "judge": judge.source, "classifier_accuracy": judge.accuracy, "models": results, "real": real,
                  "runs": runs}


def fidelity_weights(args) -> tuple:
    """(the Inception weights file, its sha256), checked (UserError in one line)."""
    p = fidelity.weights_path(args.inception_weights)
    return p, fidelity.extractor(p.resolve())[1]


def job_env(i: int, jobs: int) -> dict | None:
    """The environment of the i-th of `jobs` concurrent trainings: its share of the CPU
    threads (unless OMP_NUM_THREADS is set), and one GPU of several in turn."""
    if jobs == 1:
        return None
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
    return env


def copy_from(todo, args, script_args) -> None:
    """--from: each run of the earlier comparison that --out lacks is checked (check_settings:
    its settings, a step no later than --steps), all before any is copied, then copied into
    --out. The checkpoint is copied last and renamed into place, so an interrupted copy is a
    run that has none yet."""
    if not args.from_out.is_dir():
        raise UserError(f"--from {args.from_out}: no such folder (an earlier comparison's --out)")
    copies = []
    for model, seed, run_dir in todo:
        old = args.from_out / model / f"seed{seed}"
        if (run_dir / CHECKPOINT).is_file() or old.resolve() == run_dir.resolve():
            continue
        step = check_settings(model, seed, old, args, script_args)
        if step is not None:
            copies.append((model, seed, old, run_dir, step))
    for model, seed, old, run_dir, step in copies:
        shutil.copytree(old, run_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(CHECKPOINT, "eval.json"))
        shutil.copyfile(old / CHECKPOINT, run_dir / (CHECKPOINT + ".part"))
        os.replace(run_dir / (CHECKPOINT + ".part"), run_dir / CHECKPOINT)
        print(f"{model} seed {seed}: copied at step {step} from {old}", file=sys.stderr, flush=True)


def train_all(args, script_args) -> list[dict]:
    """Every (model, seed) run trained, resumed or skipped, --jobs at a time."""
    todo = [(model, seed, args.out / model / f"seed{seed}") for model in args.models
            for seed in range(args.first_seed, args.first_seed + args.seeds)]
    for model, seed, run_dir in todo:  # before any training: a stale run fails the command at once
        check_settings(model, seed, run_dir, args, script_args)
    if args.from_out:
        copy_from(todo, args, script_args)
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(train, model, seed, run_dir, args, script_args, job_env(i, args.jobs))
                   for i, (model, seed, run_dir) in enumerate(todo)]
        failed = [f.result() for f in futures]
    return [{"model": m, "seed": k, "run_dir": str(d), "failed": why} for (m, k, d), why in zip(todo, failed)]


def check_data(args) -> None:
    """Fail in one line before any training when the data set cannot be read."""
    ns = argparse.Namespace(dataset=args.dataset, path=args.path, image_size=args.image_size, channels=None,
                            batch_size=1, workers=0, data_memory_gb=None)
    resolve_data_args(ns)
    load_data(ns)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    own, script_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = build_parser()
    args = parser.parse_args(own)
    args.models = [m for m in MODELS if m in args.models]  # the table's order, whatever the command's
    if args.curves:
        try:
            print(f"wrote {draw_curves(args)}")
            return 0
        except UserError as e:
            print(f"{parser.prog}: error: {e}", file=sys.stderr)
            return 2
    args.image_size = tuple(args.image_size or default_image_size(args.dataset))
    hw = args.image_size
    args.out = args.out or Path("runs/compare") / f"{args.dataset}-{size_str(hw)}-{args.steps}steps"
    args.n_given = args.n
    try:
        device = pick_device(args.device)
        check_data(args)  # first: a bad setting fails before hours of training
        if args.fid and not args.train_only:
            fidelity.require()
            fidelity_weights(args)  # the weights checked before any training
        runs = train_all(args, script_args)
        if args.train_only:
            done = sum(not r["failed"] for r in runs)
            print(f"{parser.prog}: {done} of {len(runs)} runs trained to step {args.steps} in {args.out}")
            return 0 if done == len(runs) else 1
        judge = scorer(args.dataset, hw, device, args.path)
        args.n = args.n or judge.n
        for run in runs:
            if not run["failed"]:
                run.update(evaluation(Path(run["run_dir"]), args, device))
                run["images_per_s"], run["wall_s"] = speed(Path(run["run_dir"]))
        real = evaluate_real(args.dataset, hw, device, args.n, path=args.path)
        done = [r for r in runs if not r["failed"]]
        if args.fid and done:
            fid = evaluate_real_fid(load_checkpoint(done[0]["run_dir"])[0]["config"], device, fid_n(args),
                                    args.inception_weights)
            real.update({k: fid[k] for k in fidelity.METRICS}, fid_reference=fid["reference"])
        pictures = []  # the same z (generate_n's fixed seed) for every model, from its first finished run
        for model in args.models:
            done = [r for r in runs if r["model"] == model and not r["failed"]]
            if done:
                pictures.append((model, generate_n(load_model(done[0]["run_dir"], device)[0],
                                                          args.gallery_n)))
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    gallery([("real", judge.real(args.gallery_n, seed=1))] + pictures, args.out / "gallery.png")
    text, data = report(args, argv, script_args, runs, real, judge)
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    print(text + f"\nwrote {args.out / 'results.md'}, results.json and gallery.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
