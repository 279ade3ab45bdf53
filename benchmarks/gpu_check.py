"""The device check: one command that measures everything a first GPU can show, in at most
8 minutes on one H100, and writes one markdown report (docs/gpu-check.md says what it is for).

    python benchmarks/gpu_check.py                     # on a CUDA machine: gpu_check.md
    python benchmarks/gpu_check.py --out report.md
    python benchmarks/gpu_check.py --sections speed --budget-scale 3   # one section, more time
    python benchmarks/gpu_check.py --cpu               # no GPU: the same code paths on tiny
                                                       # shapes (the kernels under Triton's
                                                       # interpreter), in about a minute

Sections, in the order they run, each with its time budget on the GPU (seconds; no new item
starts once a section's budget is spent, and an item still running at 1.25x the budget + 5 s
is stopped and reported as failed; what a section leaves unused goes to the next ones; the
whole check stops at 470 s):

    kernels   60   each Triton kernel against the PyTorch reference, forward and backward,
                   fp32/bf16/fp16, at the shapes the scripts produce, with the CPU tests'
                   tolerances (tests/test_kernels.py); kernels.last_path() must say "triton"
    timings   60   Triton against eager and torch.compile, GB/s against the device's bandwidth
                   (benchmarks/kernels.py, one call a row)
    folder    90   every script for 200 steps on a generated folder of 64x64 JPEGs, with the
                   defaults and with --amp fp16: syncs inside steps counted with
                   torch.cuda.set_sync_debug_mode("warn") (the goal is none), no NaN
    compile   90   BEGAN and DCGAN for 300 steps eager and with --compile on: the compile's
                   cost, the speed after it, and the steps it takes to pay back
    speed    110   every script's step at 64x64 and its paper batch size under --amp/
                   --channels-last/--compile auto and all off; DCGAN and BEGAN at 128x128
                   (benchmarks/train_speed.py's time_loop)
    torchrun  40   torchrun --nproc_per_node <GPUs> for DCGAN and WGAN-GP, 40 steps

A section (or one row of it) that fails is reported with its error in one line, and the others
still run; the exit status is 1 when anything failed, 0 otherwise (2: bad usage, no CUDA device
without --cpu). The report is rewritten after each section, so a check cut short still leaves
what it measured. Compile caches (inductor's, Triton's) and the decoded-folder cache start
empty in a temporary folder, so compile times are a first user's.

The scripts run in this process through their main(), with ganzoo.loop.one_step wrapped by
SyncCounter: the sync debug mode is "warn" only while a step runs, so the syncs of the log and
checkpoint points (which read scalars by design) are not counted.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import io
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

T0 = time.monotonic()
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODELS = ("dcgan", "lsgan", "wgan", "wgan_gp", "dragan", "ebgan", "began")
TOTAL_BUDGET_S = 470  # the whole check, from the start of the process: 8 minutes less a margin
SECTIONS = {  # name: (title, budget in seconds on the GPU)
    "kernels": ("Kernels against the PyTorch reference", 60),
    "timings": ("Kernel timings", 60),
    "folder": ("Every script on a folder of 64x64 JPEGs: syncs inside steps, no NaN", 90),
    "compile": ("--compile on: compile time and the speed after it", 90),
    "speed": ("Training step speed: auto and off", 110),
    "torchrun": ("torchrun", 40),
}
SYNC_TEXT = "synchronizing CUDA operation"  # c10's warning: "called a synchronizing CUDA operation"

# Shapes: the GPU's are the scripts' (WGAN-GP/DRAGAN gradients of 64x64 RGB at batch 64,
# 256x256 at 16, MNIST at 1,024; EBGAN/BEGAN codes), the CPU's tiny ones take the same paths.
PENALTY_SHAPES = {"gpu": [(64, 3, 64, 64), (16, 3, 256, 256), (1024, 1, 28, 28)],
                  "cpu": [(4, 3, 8, 8), (2, 3, 16, 16), (16, 1, 7, 7)]}
PULLAWAY_SHAPES = {"gpu": [(64, 64), (1024, 1024), (64, 65536)],
                   "cpu": [(6, 8), (40, 24), (4, 600)]}
DTYPES = ("float32", "bfloat16", "float16")


class SectionTimeout(BaseException):
    """Raised by SIGALRM when a section runs past its hard limit (a BaseException, so that no
    `except Exception` on the way swallows it)."""


class Section:
    def __init__(self, name, title, budget, hard, cfg):
        self.name, self.title, self.budget, self.hard, self.cfg = name, title, budget, hard, cfg
        self.status, self.error, self.lines, self.seconds = "not run", "", [], 0.0
        self.notes = []  # lines after the section's table: the items skipped for time
        self.own, self.extra = budget, 0.0  # the budget: its own, and what earlier sections left unused
        self.failures, self.skipped = 0, 0
        self.t0 = None

    def elapsed(self):
        return time.monotonic() - self.t0

    def may_start(self, what: str) -> bool:
        """Whether the next item may start: the section's budget and the whole check's are not
        spent. If not, the item is counted as skipped (one line says which)."""
        if self.elapsed() < self.budget and time.monotonic() - T0 < TOTAL_BUDGET_S - 5:
            return True
        self.skipped += 1
        why = (f"the section's budget ({self.budget:.0f} s)" if self.elapsed() >= self.budget
               else f"the check's budget ({TOTAL_BUDGET_S:.0f} s)")
        self.notes.append(f"- skipped {what}: {why} was spent")
        return False

    def fail(self, what: str, e: BaseException) -> str:
        """Count a failed item; returns its error in one line."""
        self.failures += 1
        return one_line(e)


def one_line(e: BaseException) -> str:
    if isinstance(e, SectionTimeout):
        return str(e)
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


def md_table(header, rows) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]


def cell(c) -> str:
    """A table cell: one line, its | escaped."""
    return " ".join(str(c).split()).replace("|", "\\|")


# --------------------------------------------------------------------------------------
# Sync counting: a wrapper of the loop's one_step
# --------------------------------------------------------------------------------------

class SyncCounter:
    """Wraps a step function: while it runs, the CUDA sync debug mode is "warn" (on CUDA) and
    every warning is caught; the sync warnings are counted, for the first step apart (one-time
    work happens there: cuDNN's autotuning, a compile, the optimizers' state) and for the later
    ones, with the line of this repository that made each (the innermost frame outside torch)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.steps, self.first, self.later = 0, 0, 0
        self.where, self.other = Counter(), Counter()
        self.step_s = []  # host time of each step

    def wrap(self, fn):
        def step(*args, **kwargs):
            caught = []

            def hook(message, category, filename, lineno, file=None, line=None):
                caught.append((str(message), _where(filename, lineno)))

            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.showwarning = hook
                if self.cuda:
                    import torch
                    torch.cuda.set_sync_debug_mode("warn")
                try:
                    return fn(*args, **kwargs)
                finally:
                    if self.cuda:
                        torch.cuda.set_sync_debug_mode("default")
                    self.step_s.append(time.perf_counter() - t)
                    syncs = [w for m, w in caught if SYNC_TEXT in m]
                    if self.steps == 0:
                        self.first += len(syncs)
                    else:
                        self.later += len(syncs)
                        self.where.update(syncs)
                    self.other.update(m.splitlines()[0][:120] for m, _ in caught if SYNC_TEXT not in m)
                    self.steps += 1
        return step


def _where(filename, lineno) -> str:
    """The line that raised a warning: the innermost frame of this repository's own code
    (outside this file) on the stack, else the warning's own file and line."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        p = Path(frame.filename).resolve()
        if ROOT in p.parents and ".venv" not in p.parts and p != Path(__file__).resolve():
            return f"{p.relative_to(ROOT)}:{frame.lineno}"
    return f"{Path(filename).name}:{lineno}"


# --------------------------------------------------------------------------------------
# The kernels against the reference (tolerances as tests/test_kernels.py's)
# --------------------------------------------------------------------------------------

def tolerance(ref, exact, dtype) -> float:
    """tests/test_kernels.py's assert_as_close_as_reference: the Triton result may be twice as far
    from the fp64 result as the same-precision reference is, plus one unit in the last place of
    the dtype times the largest magnitude of the fp64 result."""
    import torch
    exact = exact.double()
    return 2 * (ref.double() - exact).abs().max().item() + torch.finfo(dtype).eps * exact.abs().max().item()


def err_tol(out, ref, exact):
    """(max |out - exact|, its tolerance); out passes when the first is <= the second."""
    assert out.dtype == ref.dtype and out.shape == ref.shape, (out.dtype, ref.dtype, out.shape, ref.shape)
    return (out.double() - exact.double()).abs().max().item(), tolerance(ref, exact, out.dtype)


def value_and_grad(fn, x, go=0.75):
    import torch
    x = x.detach().requires_grad_()
    out = fn(x)
    out.backward(torch.tensor(go, dtype=out.dtype, device=out.device))
    return out.detach(), x.grad


def check_kernel(op, shape, dtype, device, triton_mode):
    """One op at one shape and dtype: the Triton path (GAN_KERNELS=triton_mode) against the
    same-dtype reference and the fp64 reference, forward and backward, and run twice
    (deterministic). Returns the report's row and whether it passed."""
    import torch
    import kernels
    fn, ref_fn = {"gradient_penalty": (kernels.gradient_penalty, kernels.gradient_penalty_reference),
                  "pullaway": (kernels.pullaway, kernels.pullaway_reference)}[op]
    n = shape[0]
    d = math.prod(shape[1:])
    g = torch.Generator(device="cpu").manual_seed(n * d)
    if op == "gradient_penalty":  # norms around 1.5, as a critic's might be
        x = 1.5 * torch.randn(shape, generator=g) / d ** 0.5
    else:  # an offset, so that cosines are not all near 0
        x = torch.randn(shape, generator=g) + 0.3
    x = x.to(device=device, dtype=getattr(torch, dtype))
    os.environ["GAN_KERNELS"] = triton_mode
    out, grad = value_and_grad(fn, x)
    path = kernels.last_path()
    out2, grad2 = value_and_grad(fn, x)
    os.environ["GAN_KERNELS"] = "reference"
    ref, ref_grad = value_and_grad(ref_fn, x)
    exact, exact_grad = value_and_grad(ref_fn, x.double())
    fe, ft = err_tol(out, ref, exact)
    be, bt = err_tol(grad, ref_grad, exact_grad)
    same = torch.equal(out, out2) and torch.equal(grad, grad2)
    finite = bool(torch.isfinite(grad).all())
    ok = path == "triton" and fe <= ft and be <= bt and same and finite
    why = [w for w, bad in [(f"path {path}", path != "triton"), ("forward", fe > ft), ("backward", be > bt),
                            ("not deterministic", not same), ("non-finite gradient", not finite)] if bad]
    row = [op, "x".join(map(str, shape)), dtype, path, f"{fe:.2e} / {ft:.2e}", f"{be:.2e} / {bt:.2e}",
           "yes" if same else "no", "ok" if ok else "FAILED: " + ", ".join(why)]
    return row, ok


def section_kernels(s: Section):
    import kernels
    cfg = s.cfg
    mode = "auto" if cfg.cuda else "triton"  # auto on CUDA: what a user gets must be the Triton path
    s.lines.append(f"GAN_KERNELS={mode} for the Triton path"
                   + (" (the default: a silent fall back to the reference would fail the row)" if cfg.cuda else
                      " (Triton's CPU interpreter: TRITON_INTERPRET=1)")
                   + "; error = max |result - fp64 reference|, tolerance = 2 x the same-dtype reference's "
                   "error + one ulp of the dtype x max |fp64 result| (tests/test_kernels.py); the input's "
                   "gradient for backward; run twice, bitwise equal for deterministic.")
    s.lines.append("")
    cases = [("gradient_penalty", sh) for sh in PENALTY_SHAPES[cfg.kind]]
    cases += [("pullaway", sh) for sh in PULLAWAY_SHAPES[cfg.kind]]
    rows = []
    saved = os.environ.get("GAN_KERNELS")
    try:
        for op, shape in cases:
            for dtype in DTYPES:
                what = f"{op} {'x'.join(map(str, shape))} {dtype}"
                if not s.may_start(what):
                    continue
                try:
                    row, ok = check_kernel(op, shape, dtype, cfg.device, mode)
                    if not ok:
                        s.failures += 1
                except Exception as e:  # noqa: BLE001 - one row fails, the others still run
                    row = [op, "x".join(map(str, shape)), dtype, "", "", "", "", "FAILED: " + s.fail(what, e)]
                rows.append(row)
    finally:
        _restore_env("GAN_KERNELS", saved)
    fallback = getattr(kernels, "fallback", None)  # kernels/fallback.py: Triton's first failure, said once
    broken = fallback.broken() if fallback and hasattr(fallback, "broken") else None
    if broken:
        s.lines.append(f"Triton failed, and every call since takes the reference: {broken}")
        s.lines.append("")
    s.lines += md_table(["op", "shape", "dtype", "path", "forward error / tolerance", "backward error / tolerance",
                         "deterministic", "result"], rows)


# --------------------------------------------------------------------------------------
# Kernel timings: benchmarks/kernels.py, one call a row
# --------------------------------------------------------------------------------------

def load_benchmark(name):
    """benchmarks/<name>.py as a module (by its path: benchmarks/kernels.py would shadow the
    kernels package if benchmarks/ were on sys.path)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def _cpu_compile(cfg):
    """In CPU mode, torch.compile with the aot_eager backend (the GPU's is inductor's)."""
    import functools
    import torch
    if cfg.cuda:
        yield
        return
    compile_ = torch.compile
    torch.compile = functools.partial(compile_, backend="aot_eager")
    try:
        yield
    finally:
        torch.compile = compile_


def section_timings(s: Section):
    bench = load_benchmark("kernels")
    cfg = s.cfg
    dtypes = ["float32", "bfloat16"] if cfg.cuda else ["float32"]
    if cfg.cuda:  # (N, D) of the kernels section's shapes
        pen = [(sh[0], math.prod(sh[1:])) for sh in PENALTY_SHAPES["gpu"]]
        pull = list(PULLAWAY_SHAPES["gpu"])
    else:  # one tiny shape each: the interpreter and a CPU compile are slow
        pen, pull = bench.CPU_PENALTY_SHAPES[:1], bench.CPU_PULLAWAY_SHAPES[:1]
    header, rows, first = None, [], None
    saved = os.environ.get("GAN_KERNELS")
    # the dtypes the scripts use first: the penalty takes fp32 gradients (an fp32 pass of D at x_hat),
    # the pull-away term bf16 codes under --amp auto
    order = [("gradient_penalty", sh, "float32") for sh in pen] + [("pullaway", sh, dtypes[-1]) for sh in pull]
    order += [("pullaway", sh, dt) for dt in dtypes[:-1] for sh in pull]
    order += [("gradient_penalty", sh, dt) for dt in dtypes if dt != "float32" for sh in pen]
    for op, shape, dtype in order:
        what = f"{op} {shape[0]}x{shape[1]} {dtype}"
        if not s.may_start(what):
            continue
        key = "CPU_" if not cfg.cuda else ""
        setattr(bench, key + "PENALTY_SHAPES", [shape] if op == "gradient_penalty" else [])
        setattr(bench, key + "PULLAWAY_SHAPES", [shape] if op == "pullaway" else [])
        argv = ["kernels.py", "--markdown", "--dtypes", dtype] + ([] if cfg.cuda else ["--cpu-check"])
        out = io.StringIO()
        old_argv = sys.argv
        try:
            sys.argv = argv
            with contextlib.redirect_stdout(out), _cpu_compile(cfg):
                bench.main()
            lines = out.getvalue().splitlines()
            first = first or lines[0]
            table = [l for l in lines if l.startswith("|")]
            header = header or table[0]
            rows += [l for l in table[2:]]
        except (Exception, SystemExit) as e:  # noqa: BLE001
            rows.append(f"| {op} | {shape[0]}x{shape[1]} | {dtype} | FAILED: {cell(s.fail(what, e))} |")
        finally:
            sys.argv = old_argv
            _restore_env("GAN_KERNELS", saved)
    s.lines.append("benchmarks/kernels.py, one call a row: " + (first or "(no row ran)"))
    if not cfg.cuda:
        s.lines.append("CPU mode: Triton's interpreter on tiny shapes, torch.compile with the aot_eager backend (no "
                       "C++ compile); the times are meaningless.")
    s.lines.append("")
    if header:
        s.lines += [header, "|" + "|".join("---" for _ in header.strip("|").split("|")) + "|"] + rows
    else:
        s.lines += rows


# --------------------------------------------------------------------------------------
# The scripts, in this process (main()), with the loop's step wrapped
# --------------------------------------------------------------------------------------

def run_script(name, argv, counter: SyncCounter):
    """Run `name`.py's main(argv) here with ganzoo.loop.one_step counted by `counter`.
    Returns (exit status, stdout + stderr, seconds)."""
    import importlib
    import common
    import evaluate
    import ganzoo.loop as loop
    import torch
    torch._dynamo.reset()  # each run compiles afresh: never the recompile limit's eager fall back
    mod = importlib.import_module(name)
    inner = loop.one_step
    loop.one_step = counter.wrap(inner)
    buf = io.StringIO()
    t = time.perf_counter()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            code = common.main(evaluate.model_class(name), mod.build_parser(), [str(a) for a in argv])
    finally:
        loop.one_step = inner
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    return code, buf.getvalue(), time.perf_counter() - t


def read_run(run_dir: Path):
    """(metrics rows, config) of a finished run; raises when a logged value is not finite."""
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    for r in rows:
        bad = [k for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise RuntimeError(f"step {r.get('step')}: {bad[0]} = {r[bad[0]]}")
    return rows, json.loads((run_dir / "config.json").read_text())


def folder_run(cfg, name, tag, steps, flags, counter: SyncCounter):
    """`name`.py for `steps` steps on the generated folder (the check's own flags, then `flags`),
    its step counted by `counter`: (seconds, metrics rows, config); raises on a non-zero exit."""
    out = cfg.tmp / "runs" / f"{name}-{tag}"
    argv = ["--path", cfg.folder, "--steps", steps, "--out", out, "--no-progress", "--seed", "0",
            "--log-every", cfg.log_every, *flags, *cfg.tiny, *cfg.model_flags.get(name, [])]
    code, text, secs = run_script(name, argv, counter)
    if code != 0:
        raise RuntimeError(f"exit status {code}: {last_error(text)}")
    return (secs, *read_run(out))


def ran_as(config) -> str:
    return f"amp {config.get('amp')}, cl {config.get('channels_last')}, compile {config.get('compile')}"


def last_error(text: str) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1][:300] if lines else "(no output)"


def make_folder(where: Path, n: int, size: int = 64) -> Path:
    """n smooth random RGB JPEGs of size x size (coarse colour noise, upsampled)."""
    import numpy as np
    from PIL import Image
    where.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        coarse = rng.integers(0, 256, (int(rng.integers(2, 9)),) * 2 + (3,), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        img.save(where / f"{i:05d}.jpg", quality=90)
    return where


def decode_folder(cfg) -> float:
    """Decode the folder once into the check's cache, as a first run would, so that no timed run
    pays for it (every run then memory-maps the decoded copy). Returns the seconds it took."""
    import dcgan
    from ganzoo.data import load_data, resolve_data_args
    t = time.perf_counter()
    args = dcgan.build_parser().parse_args(["--path", str(cfg.folder), *cfg.tiny])
    resolve_data_args(args)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        load_data(args)
    return time.perf_counter() - t


def section_folder(s: Section):
    cfg = s.cfg
    if cfg.cuda:
        s.lines.append('Syncs: torch.cuda.set_sync_debug_mode("warn") while each step runs (ganzoo.loop.one_step '
                       "wrapped); a sync after the first step fails the row, the first step's are shown apart.")
    else:
        s.lines.append("Sync counting skipped on the CPU: torch.cuda.set_sync_debug_mode needs a CUDA device "
                       "(the same wrapper runs and collects the steps' warnings).")
    s.lines.append(f"{cfg.folder_n} JPEGs of 64x64 in a generated folder; {cfg.steps} steps, "
                   + ("each script's defaults otherwise." if cfg.cuda else " ".join(cfg.tiny) + "."))
    s.lines.append("")
    rows = []
    for name in MODELS:
        for setting, extra in (("defaults", []), ("--amp fp16", ["--amp", "fp16"])):
            what = f"{name} {setting}"
            if not s.may_start(what):
                continue
            counter = SyncCounter(cfg.cuda)
            row = [name, setting]
            try:
                secs, metrics, config = folder_run(cfg, name, setting.strip("-").replace(" ", "-"), cfg.steps,
                                                   extra, counter)
                ips = metrics[-1].get("images_per_s")
                syncs = (f"{counter.first} / {counter.later} ({counter.later / max(1, counter.steps - 1):.2f} a step)"
                         if cfg.cuda else "n/a (CPU)")
                where = ", ".join(f"{w} x{c}" for w, c in counter.where.most_common(3))
                other = "; ".join(f"{m} (x{c})" for m, c in counter.other.most_common(2))
                ok = counter.later == 0
                if not ok:
                    s.failures += 1
                row += [ran_as(config), counter.steps, f"{secs:.1f}", ips, syncs, where, other,
                        "ok" if ok else "FAILED: syncs inside steps"]
            except SectionTimeout:
                raise
            except Exception as e:  # noqa: BLE001
                row += ["", counter.steps, "", "", "", "", "", "FAILED: " + s.fail(what, e)]
            rows.append(row)
    s.lines += md_table(["script", "setting", "ran as", "steps", "seconds", "images/s (last row)",
                         "syncs: first step / later steps", "where (later steps)", "other warnings in steps",
                         "result"], rows)


def compile_payback(eager, compiled):
    """(what compiling added in seconds, the steps after which the compiled run is ahead, None if
    it is never faster) from each run's (seconds, steps, steady seconds a step): the time each
    run spent beyond its steady pace, compiled minus eager (start-up, grids and checkpoints
    cancel out), over the time a compiled step saves."""
    (e_secs, e_steps, e_per), (c_secs, c_steps, c_per) = eager, compiled
    extra = (c_secs - c_steps * c_per) - (e_secs - e_steps * e_per)
    return extra, (extra / (e_per - c_per) if e_per > c_per else None)


def section_compile(s: Section):
    import ganzoo.scale as scale
    cfg = s.cfg
    backend = os.environ.get("GAN_COMPILE_BACKEND", "inductor")
    s.lines.append(f"Each script run for {cfg.compile_steps} steps eager (--compile off) and with --compile on "
                   f"(backend {backend}; the other flags their defaults), log rows every {cfg.log_every} steps. "
                   "Compile cost = (compiled run's seconds - steps x its steady seconds a step) - (the same for "
                   "the eager run): what compiling added, the grids' recompiles included. Steady speed: the median "
                   "images/s of the later half of the log rows. Payback: the steps after which the compiled run "
                   f"is ahead; --compile auto compiles CUDA runs of at least {scale.COMPILE_MIN_STEPS:,} steps.")
    s.lines.append("")
    rows = []
    for name in ("began", "dcgan"):
        res = {}
        for comp in ("off", "on"):
            what = f"{name} --compile {comp}"
            if not s.may_start(what):
                continue
            counter = SyncCounter(cfg.cuda)
            try:
                secs, metrics, config = folder_run(cfg, name, f"compile-{comp}", cfg.compile_steps,
                                                   ["--compile", comp], counter)
                later = metrics[len(metrics) // 2:] or metrics
                ips = statistics.median(r["images_per_s"] for r in later)
                res[comp] = dict(secs=secs, ips=ips, batch=config["batch_size"], first=counter.step_s[0],
                                 steps=counter.steps, syncs=counter.later, ran=ran_as(config))
            except SectionTimeout:
                raise
            except Exception as e:  # noqa: BLE001
                rows.append([name, comp, "", "", "", "", "", "", "", "", "FAILED: " + s.fail(what, e)])
        for comp, r in res.items():
            cost = pay = speedup = ""
            if comp == "on" and "off" in res:
                e = res["off"]
                extra, steps = compile_payback((e["secs"], e["steps"], e["batch"] / e["ips"]),
                                               (r["secs"], r["steps"], r["batch"] / r["ips"]))
                cost = f"{extra:.1f}"
                speedup = f"{r['ips'] / e['ips']:.2f}x"
                pay = "never (no faster)" if steps is None else f"{steps:,.0f}"
            syncs = r["syncs"] if cfg.cuda else "n/a (CPU)"
            rows.append([name, comp, r["ran"], f"{r['secs']:.1f}", f"{r['first']:.2f}", f"{r['ips']:.1f}",
                         speedup, cost, pay, syncs, "ok"])
    s.lines += md_table(["script", "--compile", "ran as", "run seconds", "first step s", "steady images/s",
                         "vs eager", "compile cost s", "payback steps", "syncs after step 1", "result"],
                        rows)


def section_speed(s: Section):
    import torch
    ts = load_benchmark("train_speed")
    cfg = s.cfg
    if cfg.cuda:
        torch.backends.cudnn.benchmark = True  # as a run sets it (ganzoo.loop.setup_device)
    warmup, steps, repeats = (5, 20, 3) if cfg.cuda else (1, 1, 1)
    small, large = (64, 128) if cfg.cuda else (16, 32)
    batch = None if cfg.cuda else 8  # None: each paper's
    s.lines.append(f"benchmarks/train_speed.py's time_loop: synthetic batches, {warmup} warm-up steps (and the "
                   f"compile) untimed, then the median of {repeats} rounds of {steps} steps; peak memory is "
                   "max_memory_allocated over the timed rounds; cuDNN benchmark on, as in a run. auto: the flags "
                   "as a folder run of the paper's length resolves them (--compile on for CUDA)."
                   + ("" if cfg.cuda else f" CPU mode: {small}x{small} and {large}x{large}, batch {batch}, "
                                          + " ".join(cfg.speed_flags) + "."))
    s.lines.append("")
    # the 64x64 rows first, DCGAN's and BEGAN's auto first among them (the compile section's graphs
    # may be in the compile cache: the same networks, batch and flags); then 128x128
    order = [(m, small, "off") for m in MODELS] + [(m, small, "auto") for m in ("dcgan", "began")]
    order += [(m, small, "auto") for m in MODELS if m not in ("dcgan", "began")]
    order += [(m, large, st) for m in ("dcgan", "began") for st in ("off", "auto")]
    res = {}
    for name, size, setting in order:
        what = f"{name} {size}x{size} {setting}"
        if not s.may_start(what):
            continue
        torch._dynamo.reset()
        t = time.perf_counter()
        try:
            ips, mem, B, chose = ts.time_loop(name, ts.SETTINGS[setting] + cfg.speed_flags, size, batch, cfg.device,
                                              warmup, steps, repeats)
            res[(name, size, setting)] = [chose, B, f"{statistics.median(ips):.1f}",
                                          f"{min(ips):.0f}-{max(ips):.0f}", "" if mem is None else f"{mem:.0f}",
                                          f"{time.perf_counter() - t:.1f}", "ok"]
        except SectionTimeout:
            raise
        except Exception as e:  # noqa: BLE001
            res[(name, size, setting)] = ["", "", "", "", "", f"{time.perf_counter() - t:.1f}",
                                          "FAILED: " + s.fail(what, e)]
        finally:
            if cfg.cuda:
                torch.cuda.empty_cache()
    rows = []
    for name in MODELS:
        for size in (small, large):
            for setting in ("auto", "off"):
                if (name, size, setting) in res:
                    r = res[(name, size, setting)]
                    off = res.get((name, size, "off"))
                    vs = f"{float(r[2]) / float(off[2]):.2f}x" if r[2] and off and off[2] else ""
                    rows.append([name, f"{size}x{size}", setting, *r[:3], vs, *r[3:]])
    s.lines += md_table(["script", "size", "setting", "ran as", "batch", "images/s", "vs off", "spread",
                         "peak MiB", "seconds (with build and compile)", "result"], rows)


def section_torchrun(s: Section):
    import torch
    cfg = s.cfg
    n = torch.cuda.device_count() if cfg.cuda else 2
    if cfg.cuda and n == 1:
        s.lines.append("One GPU: torchrun starts one process with WORLD_SIZE 1, so the loop runs without a process "
                       "group and NCCL is not exercised; this shows that the scripts run under the launcher.")
    elif not cfg.cuda:
        s.lines.append("CPU mode: 2 ranks with the gloo backend.")
    s.lines.append(f"{cfg.torchrun_steps} steps on the generated folder, one process a "
                   + ("GPU" if cfg.cuda else "rank") + "; run as a subprocess (syncs are not counted here).")
    s.lines.append("")
    rows = []
    for name in ("dcgan", "wgan_gp"):
        what = f"{name} x{n}"
        if not s.may_start(what):
            continue
        out = cfg.tmp / "runs" / f"{name}-torchrun"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
               str(ROOT / f"{name}.py"), "--path", str(cfg.folder), "--steps", str(cfg.torchrun_steps), "--out",
               str(out), "--no-progress", "--log-every", str(cfg.log_every), *map(str, cfg.tiny),
               *cfg.model_flags.get(name, [])]
        if not cfg.cuda:
            cmd += ["--device", "cpu"]
        t = time.perf_counter()
        try:
            left = max(5.0, s.hard - s.elapsed())
            code, text = run_subprocess(cmd, left)
            if code != 0:
                raise RuntimeError(f"exit status {code}: {last_error(text)}")
            metrics, config = read_run(out)
            rows.append([name, config.get("ranks"), config["batch_size"] * (config.get("ranks") or 1),
                         ran_as(config), metrics[-1]["step"], f"{time.perf_counter() - t:.1f}",
                         metrics[-1].get("images_per_s"), "ok"])
        except SectionTimeout:
            raise
        except Exception as e:  # noqa: BLE001
            rows.append([name, n, "", "", "", f"{time.perf_counter() - t:.1f}", "", "FAILED: " + s.fail(what, e)])
    s.lines += md_table(["script", "ranks", "global batch", "ran as", "steps", "seconds (with start-up)",
                         "images/s (last row, rank 0)", "result"], rows)


def run_subprocess(cmd, timeout):
    """(exit status, output) of cmd in a session of its own; the whole group is killed when it
    runs past timeout (torchrun's ranks included)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, out
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise


RUNNERS = {"kernels": section_kernels, "timings": section_timings, "folder": section_folder,
           "compile": section_compile, "speed": section_speed, "torchrun": section_torchrun}


# --------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------

def _restore_env(key, value):
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def _alarm(signum, frame):
    raise SectionTimeout("stopped: past the section's hard time limit")


def run_section(s: Section, inject: str | None) -> None:
    print(f"[{time.monotonic() - T0:5.0f} s] {s.name}: {s.title} (budget {s.budget:.0f} s)", flush=True)
    s.t0 = time.monotonic()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, s.hard))
    try:
        if inject == s.name:
            raise RuntimeError(f"injected failure (--inject-failure {s.name})")
        RUNNERS[s.name](s)
        s.status = "failed" if s.failures else "ok"
    except SectionTimeout as e:
        s.status, s.error = "failed", f"{e} ({s.hard:.0f} s); the rows above are those that finished"
    except BaseException as e:  # noqa: BLE001 - a section that fails is reported, the others still run
        if isinstance(e, KeyboardInterrupt):
            raise
        s.status, s.error = "failed", one_line(e)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        s.seconds = s.elapsed()
    print(f"[{time.monotonic() - T0:5.0f} s] {s.name}: {s.status}" + (f": {s.error}" if s.error else "")
          + (f" ({s.failures} row(s) failed)" if s.failures and not s.error else ""), flush=True)


def header_lines(cfg, argv) -> list[str]:
    import torch
    try:
        import triton
        tv = triton.__version__
    except ImportError:
        tv = "not installed"
    from ganzoo.scale import device_summary
    dev = device_summary(cfg.device)
    if cfg.cuda:
        p = torch.cuda.get_device_properties(cfg.device)
        dev += f", {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, {torch.cuda.device_count()} GPU(s)"
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.split()
            dev += f", driver {driver[0]}" if driver else ""
        except (OSError, subprocess.SubprocessError):
            pass
    mode = "GPU" if cfg.cuda else "CPU mode (--cpu): tiny shapes, the kernels under Triton's interpreter; " \
                                  "every time and speed in it is meaningless"
    return [
        f"# Device check: {mode.split(':')[0]}", "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- device: {dev}",
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version() if cfg.cuda else 'n/a'}), triton {tv}, Python {platform.python_version()}",
        f"- command: python benchmarks/gpu_check.py {shlex.join(argv)}".rstrip(),
        f"- mode: {mode}",
        f"- caches (inductor, Triton, decoded folders) start empty in {cfg.tmp}",
    ]


def write_report(path: Path, head, sections, done: bool) -> None:
    total = time.monotonic() - T0
    lines = list(head)
    lines.append(f"- total time: {total:.0f} s (budget {TOTAL_BUDGET_S:.0f} s)" + ("" if done else "; still running"))
    lines += ["", "## Summary", ""]
    lines += md_table(["section", "status", "seconds", "budget s (+ left over before)", "note"],
                      [[s.name, s.status, f"{s.seconds:.0f}" if s.t0 else "",
                        f"{s.own:.0f}" + (f" + {s.extra:.0f}" if s.extra >= 1 else ""),
                        s.error or "; ".join([f"{s.failures} row(s) failed"] * bool(s.failures)
                                             + [f"{s.skipped} item(s) skipped for time"] * bool(s.skipped))]
                       for s in sections])
    for i, s in enumerate(sections, 1):
        lines += ["", f"## {i}. {s.title}", ""]
        if s.status == "not run":
            lines.append("not run" + ("" if done else " yet"))
            continue
        lines.append(f"status: {s.status}, {s.seconds:.0f} s of a {s.budget:.0f} s budget"
                     + (f" ({s.extra:.0f} s of it left over by the sections before)" if s.extra >= 1 else ""))
        if s.error:
            lines.append(f"error: {s.error}")
        lines.append("")
        lines += s.lines
        if s.notes:
            lines += [""] + s.notes
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


class Config:
    pass


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="sections: " + ", ".join(SECTIONS))
    p.add_argument("--out", default="gpu_check.md", help="the report (default: %(default)s)")
    p.add_argument("--cpu", action="store_true",
                   help="no GPU: the same code paths on the CPU with tiny shapes and a few steps (for the tests)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated sections to run (default: all)")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiply every time budget, the whole check's included (default 1: 8 minutes on an H100)")
    p.add_argument("--inject-failure", metavar="SECTION", choices=list(SECTIONS),
                   help="for the tests: make SECTION fail at its start (the report and exit status must show it)")
    a = p.parse_args(argv)
    a.sections = [x.strip() for x in a.sections.split(",") if x.strip()]
    bad = [x for x in a.sections if x not in SECTIONS]
    if bad:
        p.error(f"--sections: unknown section {bad[0]!r} (choose from {', '.join(SECTIONS)})")
    if a.budget_scale <= 0:
        p.error("--budget-scale must be positive")
    return a


def main(argv=None) -> int:
    global TOTAL_BUDGET_S
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    # Before torch or triton is imported: the interpreter for the CPU mode (Triton reads it when
    # a kernel is defined), cold caches of the check's own, and a CPU compile backend that runs
    # AOTAutograd (donated buffers, retain_graph) without a C++ compile.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(tmp / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(tmp / "triton"))
    os.environ["GANZOO_CACHE"] = str(tmp / "ganzoo-cache")
    if a.cpu:
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ.setdefault("GAN_COMPILE_BACKEND", "aot_eager")
    # benchmarks/ (this file's folder) must not shadow the kernels package
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    sys.path.insert(0, str(ROOT))
    import torch

    if not a.cpu and not torch.cuda.is_available():
        print("gpu_check.py: error: no CUDA device here; run with --cpu to check the script on the CPU",
              file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
        return 2
    cfg = Config()
    cfg.cuda = not a.cpu
    cfg.kind = "gpu" if cfg.cuda else "cpu"
    cfg.device = torch.device("cuda" if cfg.cuda else "cpu")
    cfg.tmp = tmp
    if cfg.cuda:
        cfg.tiny, cfg.steps, cfg.compile_steps, cfg.torchrun_steps, cfg.log_every, cfg.folder_n = [], 200, 300, 40, 50, 1000
        cfg.model_flags, cfg.speed_flags = {}, []
    else:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        cfg.tiny = ["--image-size", "16", "--width", "4", "--batch-size", "8"]
        cfg.steps, cfg.compile_steps, cfg.torchrun_steps, cfg.log_every, cfg.folder_n = 2, 2, 2, 1, 40
        cfg.model_flags = {"wgan": ["--critic-warmup", "0"]}  # not 100 critic updates a step for 25 steps
        cfg.speed_flags = ["--width", "4"]
    TOTAL_BUDGET_S *= a.budget_scale
    sections = []
    for name in a.sections:
        title, budget = SECTIONS[name]
        sections.append(Section(name, title, budget * a.budget_scale, 0.0, cfg))
    try:
        return _check(a, argv, cfg, sections)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check(a, argv, cfg, sections) -> int:
    tmp = cfg.tmp
    out = Path(a.out)
    head = header_lines(cfg, argv)
    print(f"device check: {head[3][2:]}; report {out}", flush=True)
    if {"folder", "compile", "torchrun"} & set(a.sections):
        t = time.perf_counter()
        cfg.folder = make_folder(tmp / "jpegs", cfg.folder_n)
        made = time.perf_counter() - t
        head.append(f"- the folder: {cfg.folder_n} JPEGs of 64x64 written in {made:.1f} s, decoded once before "
                    f"the sections in {decode_folder(cfg):.1f} s (every run then maps the decoded copy)")
    slack = 0.0  # what the sections so far left unused of their budgets: the next ones may use it
    try:
        for s in sections:
            left = TOTAL_BUDGET_S - (time.monotonic() - T0)
            if left < 10:
                s.status, s.error = "skipped", "the check's whole budget was spent"
                continue
            s.extra = max(0.0, slack)
            s.budget = s.own + s.extra
            s.hard = min(1.25 * s.budget + 5, left - 5)
            run_section(s, a.inject_failure)
            slack += s.own - s.seconds
            write_report(out, head, sections, done=False)
    finally:
        write_report(out, head, sections, done=True)
    failed = [s.name for s in sections if s.status == "failed"]
    print(f"[{time.monotonic() - T0:5.0f} s] report: {out}; "
          + (f"FAILED: {', '.join(failed)}" if failed else "every section passed"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
