"""Training speed of the seven scripts under each speed flag, on the current device.

    python benchmarks/train_speed.py                          # all seven, 64x64, paper batch sizes
    python benchmarks/train_speed.py --models dcgan --markdown
    python benchmarks/train_speed.py --device cuda --steps 50

Each row times the loop's own step (ganzoo.loop.one_step: the model's train_step under the
flags, the EMA when on, the scalars) on synthetic 64x64 RGB batches drawn by Batches,
after warm-up steps (and compilation) that are not timed. The settings:

    default           what the script does with no speed flag on this device
                      (fp32; channels_last only on CUDA)
    bf16 / fp16       --amp bf16 / --amp fp16
    channels_last     --channels-last on (the CUDA default already)
    compile           --compile (G only for WGAN-GP and DRAGAN)
    bf16+cl+compile   --amp bf16 --channels-last on --compile
    reference         DCGAN only: the same networks stepped by a bare eager fp32 loop written
                      as pytorch/examples/dcgan writes it (.item() on the losses every step)

Steps are timed in each script's steady state (past WGAN's critic warm-up).
images/s counts real images per generator update (WGAN and WGAN-GP draw n_critic batches per
update; their figure counts all of them). Peak memory is CUDA's max_memory_allocated; on
the CPU it is not measured.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from evaluate import model_class  # noqa: E402
from ganzoo.batches import Batches  # noqa: E402
from ganzoo.data import Images  # noqa: E402
from ganzoo.loop import one_step  # noqa: E402
from ganzoo.scale import autocast, channels_last, pick_device, prepare_model  # noqa: E402

MODELS = ("dcgan", "lsgan", "wgan", "wgan_gp", "dragan", "ebgan", "began")
SETTINGS = {
    "default": [],
    "bf16": ["--amp", "bf16"],
    "fp16": ["--amp", "fp16"],
    "channels_last": ["--channels-last", "on"],
    "compile": ["--compile"],
    "bf16+cl+compile": ["--amp", "bf16", "--channels-last", "on", "--compile"],
}


def build(name, flags, size, batch, device):
    import importlib
    mod = importlib.import_module(name)
    args = mod.build_parser().parse_args(["--image-size", str(size), "--device", device.type, *flags]
                                         + (["--batch-size", str(batch)] if batch else []))
    args.dataset, args.channels, args.image_size = "folder", 3, (size, size)
    for k, v in args._small.items():  # the paper's values, as on a folder of images
        if getattr(args, k) is None:
            setattr(args, k, args._paper[k])
    torch.manual_seed(0)
    model = prepare_model(model_class(name)(args, (3, size, size), device), args, for_training=True)
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


def time_loop(name, flags, size, batch, device, warmup, steps):
    args, model, batches, amp = build(name, flags, size, batch, device)
    bad = torch.full((), -1, dtype=torch.long, device=device)
    for i in range(STEP0, STEP0 + warmup):
        _, bad = one_step(model, args, batches, amp, i, bad)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    n0, t = batches.images, time.perf_counter()
    for i in range(STEP0 + warmup, STEP0 + warmup + steps):
        _, bad = one_step(model, args, batches, amp, i, bad)
    sync(device)
    dt = time.perf_counter() - t
    assert int(bad) < 0, f"{name} {flags}: non-finite scalars"
    return (batches.images - n0) / dt, _peak(device), args.batch_size


def time_reference(size, batch, device, warmup, steps):
    """pytorch/examples/dcgan's loop on the DCGAN script's networks."""
    args, model, batches, _ = build("dcgan", ["--channels-last", "off"], size, batch, device)
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
        return (err_real + err_fake).item(), err_g.item()

    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * B / (time.perf_counter() - t), _peak(device), B


def _peak(device):
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS) + ["reference"],
                   default=["reference", "default", "bf16", "fp16", "channels_last", "compile", "bf16+cl+compile"])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=None, help="default: each paper's")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 10 on CUDA, 2 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 50 on CUDA, 5 on CPU)")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    a = p.parse_args(argv)
    device = pick_device(a.device)
    cuda = device.type == "cuda"
    warmup = a.warmup if a.warmup is not None else (10 if cuda else 2)
    steps = a.steps if a.steps is not None else (50 if cuda else 5)
    where = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {where}; torch {torch.__version__}; {a.image_size}x{a.image_size} RGB; "
          f"{warmup} warm-up + {steps} timed steps", flush=True)
    rows = []  # (model, setting, batch, images/s, peak MiB)
    for name in a.models:
        for s in a.settings:
            if s == "reference" and name != "dcgan":
                continue
            try:
                if s == "reference":
                    ips, mem, B = time_reference(a.image_size, a.batch_size, device, warmup, steps)
                else:
                    ips, mem, B = time_loop(name, SETTINGS[s], a.image_size, a.batch_size, device, warmup, steps)
            except Exception as e:  # noqa: BLE001 - a setting this device cannot run: say so, go on
                print(f"{name:8s} {s:16s} failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:100]}",
                      flush=True)
                rows.append((name, s, None, None, None))
                continue
            rows.append((name, s, B, ips, mem))
            print(f"{name:8s} {s:16s} batch {B:4d}  {ips:10.1f} images/s"
                  + (f"  peak {mem:.0f} MiB" if mem is not None else ""), flush=True)
    ref = {(n, s): ips for n, s, _, ips, _ in rows}
    print()
    if a.markdown:
        print(f"{where}, torch {torch.__version__}, {a.image_size}x{a.image_size}, "
              f"{warmup} warm-up + {steps} timed steps\n")
        print("| model | setting | batch | images/s | vs default | vs reference | peak memory (MiB) |")
        print("|---|---|---:|---:|---:|---:|---:|")
    for name, s, B, ips, mem in rows:
        base, bare = ref.get((name, "default")), ref.get((name, "reference"))
        vs_d = f"{ips / base:.2f}x" if ips and base else ""
        vs_r = f"{ips / bare:.2f}x" if ips and bare else ""
        if a.markdown:
            print(f"| {name} | {s} | {B or ''} | {'failed' if ips is None else f'{ips:.1f}'} | {vs_d} | {vs_r} | "
                  f"{'' if mem is None else f'{mem:.0f}'} |")
        elif ips:
            print(f"{name:8s} {s:16s} {ips:10.1f} images/s  {vs_d:>6s} of default  {vs_r:>6s} of reference")

if __name__ == "__main__":
    main()
