"""Does `auto` change what a model learns? Each script's default digits run (`python X.py
--seed k`, its digits defaults) with the speed flags at their defaults (auto) and with
everything forced off (--amp off --channels-last off --compile off), for two or more seeds,
each scored by evaluate.py on its last checkpoint.

    python benchmarks/auto_quality.py --jobs 2                    # all seven, seeds 1 and 2
    python benchmarks/auto_quality.py --models dcgan began --seeds 1 2 3

For each model and metric the table gives the auto and off means, the difference between them,
and the seed-to-seed spread (the largest |seed a - seed b| within either setting): a difference
no larger than the spread is within seed-to-seed noise. `loop s` is the training loop's own
time (metrics.jsonl, start-up not counted). Runs go to OUT/<model>/<auto|off>/seed<k>;
interrupted, the same command continues (finished runs are kept, scores cached in eval.json).
"""
import argparse
import concurrent.futures
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from compare import MODELS, evaluation, job_env, run_step, speed  # noqa: E402
from ganzoo.errors import UserError  # noqa: E402
from ganzoo.scale import cpu_features, pick_device  # noqa: E402
from train_speed import SETTINGS as SPEED_SETTINGS  # noqa: E402

SETTINGS = {"auto": SPEED_SETTINGS["auto"], "off": SPEED_SETTINGS["off"]}
METRICS = ("classes", "kl", "confident", "fd", "kid")


def finished(run_dir: Path, model: str) -> int | None:
    """The run's last step when its checkpoint is at the step count it was started with."""
    cfg = run_dir / "config.json"
    step = run_step(run_dir, model)
    if step is None or not cfg.is_file():
        return None
    return step if step == json.loads(cfg.read_text())["steps"] else None


def train(model, setting, seed, run_dir: Path, env) -> str | None:
    if finished(run_dir, model):
        return None
    cmd = [sys.executable, str(ROOT / f"{model}.py"), "--seed", str(seed), "--no-progress", *SETTINGS[setting]]
    cmd += ["--resume", str(run_dir)] if run_step(run_dir, model) is not None else ["--out", str(run_dir)]
    print(f"{model} {setting} seed {seed}: training (log {run_dir}.log)", file=sys.stderr, flush=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with open(f"{run_dir}.log", "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        return f"exit {rc}, see {run_dir}.log"
    (run_dir / "wall.json").write_text(json.dumps({"wall_s": time.perf_counter() - t}) + "\n")
    return None


def spread(values_by_setting) -> float:
    return max((max(v) - min(v) for v in values_by_setting if len(v) > 1), default=float("nan"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    p.add_argument("--jobs", type=int, default=1, help="trainings at once, each with its share of the threads")
    p.add_argument("--n", type=int, default=2000, help="samples per evaluation")
    p.add_argument("--out", type=Path, default=Path("runs/auto_quality"))
    a = p.parse_args(argv)
    todo = [(m, s, k, a.out / m / s / f"seed{k}") for m in a.models for s in SETTINGS for k in a.seeds]
    with concurrent.futures.ThreadPoolExecutor(max_workers=a.jobs) as pool:
        failed = list(pool.map(lambda job: train(*job[1][:3], job[1][3], job_env(job[0], a.jobs)),
                               enumerate(todo)))
    device = pick_device("cpu")
    scored = {}
    for (m, s, k, d), why in zip(todo, failed):
        if why:
            print(f"{m} {s} seed {k}: {why}", file=sys.stderr)
            continue
        ev = argparse.Namespace(steps=finished(d, m), n=a.n)
        try:
            scored[m, s, k] = {**evaluation(d, ev, device), "loop_s": speed(d)[1]}
        except UserError as e:
            print(f"{m} {s} seed {k}: {e}", file=sys.stderr)
    threads = (job_env(0, a.jobs) or {}).get("OMP_NUM_THREADS", "all")
    lines = [f"CPU {cpu_features()}; {a.jobs} training(s) at once, {threads} thread(s) each; seeds "
             f"{', '.join(map(str, a.seeds))}; {a.n} samples per evaluation",
             "", "| model | metric | auto | off | auto - off | seed-to-seed | within noise |",
             "|---|---|---:|---:|---:|---:|---|"]
    for m in a.models:
        for key in (*METRICS, "loop_s"):
            vals = {s: [scored[m, s, k][key] for k in a.seeds if (m, s, k) in scored] for s in SETTINGS}
            if not all(vals.values()):
                continue
            mean = {s: float(np.mean(v)) for s, v in vals.items()}
            diff, noise = mean["auto"] - mean["off"], spread(vals.values())
            verdict = "" if key == "loop_s" else ("yes" if abs(diff) <= noise else "no")
            per_seed = {s: " / ".join(f"{x:.3g}" for x in v) for s, v in vals.items()}
            lines.append(f"| {m} | {key} | {per_seed['auto']} | {per_seed['off']} | {diff:+.3g} | {noise:.3g} | "
                         f"{verdict} |")
    text = "\n".join(lines) + "\n"
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.md").write_text(text)
    (a.out / "results.json").write_text(json.dumps({f"{m}/{s}/seed{k}": v for (m, s, k), v in scored.items()},
                                                   indent=2) + "\n")
    print(text + f"\nwrote {a.out / 'results.md'} and results.json")
    return 0 if not any(failed) else 1


if __name__ == "__main__":
    raise SystemExit(main())
