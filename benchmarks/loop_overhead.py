"""The training loop's overhead: ganzoo.loop.train() against bare calls of the model's own
training step (DCGAN.train_step on batches sliced from a tensor, under the same autocast and
memory format as the run: no Batches, no metrics, no grids, no checkpoints).

    python benchmarks/loop_overhead.py                   # DCGAN defaults on the built-in digits
    python benchmarks/loop_overhead.py --steps 500 --device cuda
    python benchmarks/loop_overhead.py --amp off --channels-last off   # flags go to both

The loop's time per step is (T(short + steps) - T(short)) / steps, so start-up (data, model
build) cancels and every per-step cost the loop adds at its default intervals (metrics every
50 steps, grids every 250, checkpoints every 500) is counted. The two are interleaved,
--repeats times, and the best of each is taken.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import dcgan  # noqa: E402
from ganzoo.data import load_data, resolve_data_args, to_signed  # noqa: E402
from ganzoo.scale import autocast, channels_last, device_summary, prepare_model, resolve_speed  # noqa: E402


def bare(steps, device, argv):
    args = dcgan.build_parser().parse_args(["--device", device.type, *argv])
    resolve_data_args(args)
    resolve_speed(args, device, args.steps)
    data = load_data(args)
    torch.manual_seed(0)
    m = prepare_model(dcgan.DCGAN(args, data.shape, device), args, for_training=True)
    x_all = to_signed(data.x.to(device))
    if channels_last(args, device):
        x_all = x_all.contiguous(memory_format=torch.channels_last)
    B, amp = args.batch_size, autocast(args, device)
    t = time.perf_counter()
    for i in range(steps):
        j = (i * B) % (len(x_all) - B)
        with amp:
            m.train_step(lambda: x_all[j:j + B])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def looped(steps, argv):
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        common.main(dcgan.DCGAN, dcgan.build_parser(), argv + ["--steps", str(steps), "--out", d, "--no-progress"])
        return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--short", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    a, rest = p.parse_known_args()
    argv = ["--device", a.device, "--log-every", "50"] + rest
    device = torch.device(a.device)
    import contextlib, io
    b, l = [], []
    for _ in range(a.repeats):  # interleaved, best of each
        b.append(bare(a.steps, device, rest))
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            l.append((looped(a.short + a.steps, argv) - looped(a.short, argv)) / a.steps)
    tb, tl = min(b), min(l)
    print(f"bare step: {tb * 1e3:.1f} ms   loop step: {tl * 1e3:.1f} ms   overhead: {100 * (tl / tb - 1):+.1f} %"
          f"   ({a.steps} steps, best of {a.repeats}; {device_summary(device)})")


if __name__ == "__main__":
    main()
