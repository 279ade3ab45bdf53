"""Training speed of the seven scripts under each speed setting, on the current device.

    python benchmarks/train_speed.py                          # all seven, 64x64, paper batch sizes
    python benchmarks/train_speed.py --models dcgan --markdown
    python benchmarks/train_speed.py --models dcgan --image-size 32 --batch-size 64 --markdown
    python benchmarks/train_speed.py --device cuda --steps 50

Each row times the loop's own step (ganzoo.loop.one_step: the model's train_step under the
flags, the EMA when on, the scalars) on synthetic RGB batches drawn by Batches, after
warm-up steps (and compilation) that are not timed, in --repeats rounds of --steps steps:
the figure is the median round, the spread the slowest and fastest. The settings:

    auto              what a user gets: the scripts' defaults (--amp, --channels-last and
                      --compile auto), resolved for this device as a folder run of the
                      paper's step count resolves them (the row says what they became)
    off               everything forced off: fp32, contiguous layout, eager
    bf16 / fp16       --amp bf16 / fp16, the rest off
    channels_last     --channels-last on, the rest off
    compile           --compile on (G only for WGAN-GP and DRAGAN), the rest off
    bf16+cl           --amp bf16 --channels-last on
    bf16+cl+compile   all three
    reference         DCGAN only: the same networks stepped by a bare eager fp32 loop written
                      as pytorch/examples/dcgan writes it (.item() on the losses every step)

The first line names the machine (the GPU and its compute capability, or the CPU's threads
and its AVX2 / AVX512-BF16 / AMX features), which decides what auto picks. Steps are timed in
each script's steady state (past WGAN's critic warm-up). images/s counts real images per
generator update (WGAN and WGAN-GP draw n_critic batches per update; their figure counts all
of them). Peak memory is CUDA's max_memory_allocated; on the CPU it is not measured.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from evaluate import model_class  # noqa: E402
from ganzoo.batches import Batches  # noqa: E402
from ganzoo.data import Images, resolve_data_args  # noqa: E402
from ganzoo.loop import builds_group_norm, one_step  # noqa: E402
from ganzoo.scale import autocast, channels_last, device_summary, pick_device, prepare_model, resolve_speed  # noqa: E402

MODELS = ("dcgan", "lsgan", "wgan", "wgan_gp", "dragan", "ebgan", "began")


def _flags(amp="off", cl="off", comp="off"):
    return ["--amp", amp, "--channels-last", cl, "--compile", comp]


SETTINGS = {
    "auto": [],
    "off": _flags(),
    "bf16": _flags(amp="bf16"),
    "fp16": _flags(amp="fp16"),
    "channels_last": _flags(cl="on"),
    "compile": _flags(comp="on"),
    "bf16+cl": _flags(amp="bf16", cl="on"),
    "bf16+cl+compile": _flags(amp="bf16", cl="on", comp="on"),
}
SETTINGS["default"] = SETTINGS["auto"]  # the name of the row before auto existed


def build(name, flags, size, batch, device):
    import importlib
    mod = importlib.import_module(name)
    args = mod.build_parser().parse_args(["--image-size", str(size), "--device", device.type, *flags]
                                         + (["--batch-size", str(batch)] if batch else []))
    # filled in as for a folder of RGB images (the paper's values): there is no folder, the
    # batches are synthetic, so the path only stands in for one
    args.dataset, args.path, args.channels, args.image_size = "folder", "(synthetic)", 3, (size, size)
    resolve_data_args(args)
    cls = model_class(name)
    group_norm = device.type == "cuda" and args.channels_last == "auto" and builds_group_norm(cls, args)
    resolve_speed(args, device, args.steps, group_norm)  # as a folder run of the paper's length resolves them
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as a run sets it (ganzoo.loop.setup_device)
    torch.manual_seed(0)
    model = prepare_model(cls(args, (3, size, size), device), args, for_training=True)
    data = Images(torch.randint(0, 256, (max(1024, 4 * args.batch_size), 3, size, size), dtype=torch.uint8))
    batches = Batches(data, args.batch_size, 0, device, channels_last=channels_last(args, device))
    amp = autocast(args, device)
    return args, model, batches, amp


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# The steps are numbered from here: past WGAN's critic warm-up (100 critic updates for each of
# the first 25 generator updates), so that every script is timed in its steady state.
STEP0 = 26


def rounds(step, warmup, steps, repeats, device):
    """images/s of each of `repeats` rounds of `steps` calls of step() (which returns the
    images it used), after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out = []
    for _ in range(repeats):
        n, t = 0, time.perf_counter()
        for _ in range(steps):
            n += step()
        sync(device)
        out.append(n / (time.perf_counter() - t))
    return out


def time_loop(name, flags, size, batch, device, warmup, steps, repeats):
    """(images/s of each round, peak MiB, batch, what the speed flags were)."""
    args, model, batches, amp = build(name, flags, size, batch, device)
    state = {"i": STEP0, "bad": torch.full((), -1, dtype=torch.long, device=device)}

    def step():
        n0 = batches.images
        _, state["bad"] = one_step(model, args, batches, amp, state["i"], state["bad"])
        state["i"] += 1
        return batches.images - n0

    ips = rounds(step, warmup, steps, repeats, device)
    assert int(state["bad"]) < 0, f"{name} {flags}: non-finite scalars"
    chose = f"amp {args.amp}, channels_last {args.channels_last}, compile {args.compile}"
    return ips, _peak(device), args.batch_size, chose


def time_reference(size, batch, device, warmup, steps, repeats):
    """pytorch/examples/dcgan's loop on the DCGAN script's networks."""
    args, model, batches, _ = build("dcgan", SETTINGS["off"], size, batch, device)
    G, D, og, od = model.G, model.D, model.opt_g, model.opt_d
    B = args.batch_size

    def step():
        real = batches()
        D.zero_grad()
        out = D(real)
        err_real = F.binary_cross_entropy_with_logits(out, torch.ones(B, device=device))
        err_real.backward()
        fake = G(torch.randn(B, args.z_dim, device=device))
        out = D(fake.detach())
        err_fake = F.binary_cross_entropy_with_logits(out, torch.zeros(B, device=device))
        err_fake.backward()
        od.step()
        G.zero_grad()
        out = D(fake)
        err_g = F.binary_cross_entropy_with_logits(out, torch.ones(B, device=device))
        err_g.backward()
        og.step()
        (err_real + err_fake).item(), err_g.item()
        return B

    return rounds(step, warmup, steps, repeats, device), _peak(device), B, "fp32, eager"


def _peak(device):
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS) + ["reference"],
                   default=["reference", "auto", "off", "bf16", "fp16", "channels_last", "compile", "bf16+cl",
                            "bf16+cl+compile"])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=None, help="default: each paper's")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 10 on CUDA, 3 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps a round (default 50 on CUDA, 10 on CPU)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds; the median is reported (default 3)")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    a = p.parse_args(argv)
    device = pick_device(a.device)
    cuda = device.type == "cuda"
    warmup = a.warmup if a.warmup is not None else (10 if cuda else 3)
    steps = a.steps if a.steps is not None else (50 if cuda else 10)
    where = device_summary(device)
    what = (f"torch {torch.__version__}; {a.image_size}x{a.image_size} RGB; {warmup} warm-up steps, "
            f"then the median of {a.repeats} rounds of {steps} steps")
    print(f"device: {where}; {what}", flush=True)
    rows = []  # (model, setting, batch, [images/s per round], peak MiB, what it ran as)
    for name in a.models:
        for s in a.settings:
            if s == "reference" and name != "dcgan":
                continue
            try:
                if s == "reference":
                    ips, mem, B, chose = time_reference(a.image_size, a.batch_size, device, warmup, steps, a.repeats)
                else:
                    ips, mem, B, chose = time_loop(name, SETTINGS[s], a.image_size, a.batch_size, device, warmup,
                                                   steps, a.repeats)
            except Exception as e:  # noqa: BLE001 - a setting this device cannot run: say so, go on
                print(f"{name:8s} {s:16s} failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:100]}",
                      flush=True)
                rows.append((name, s, None, None, None, ""))
                continue
            rows.append((name, s, B, ips, mem, chose))
            print(f"{name:8s} {s:16s} batch {B:4d}  {statistics.median(ips):10.1f} images/s "
                  f"[{min(ips):.1f}-{max(ips):.1f}]  ({chose})"
                  + (f"  peak {mem:.0f} MiB" if mem is not None else ""), flush=True)
    med = {(n, s): statistics.median(ips) for n, s, _, ips, _, _ in rows if ips}
    print()
    if a.markdown:
        print(f"{where}; {what}\n")
        print("| model | setting | ran as | batch | images/s | spread | vs off | vs reference | peak memory (MiB) |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name, s, B, ips, mem, chose in rows:
        m = statistics.median(ips) if ips else None
        base, bare = med.get((name, "off")), med.get((name, "reference"))
        vs_o = f"{m / base:.2f}x" if m and base else ""
        vs_r = f"{m / bare:.2f}x" if m and bare else ""
        spread = f"{min(ips):.0f}-{max(ips):.0f}" if ips else ""
        if a.markdown:
            print(f"| {name} | {s} | {chose} | {B or ''} | {'failed' if m is None else f'{m:.1f}'} | {spread} | "
                  f"{vs_o} | {vs_r} | {'' if mem is None else f'{mem:.0f}'} |")
        elif m:
            print(f"{name:8s} {s:16s} {m:10.1f} images/s  {vs_o:>6s} of off  {vs_r:>6s} of reference")


if __name__ == "__main__":
    main()
