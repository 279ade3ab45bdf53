"""The training loop's overhead: ganzoo.loop.train() against a bare training step of the same
networks, written the way pytorch/examples/dcgan writes it (no logging, no grids, no
checkpoints, batches sliced from a tensor).

    python benchmarks/loop_overhead.py                   # DCGAN defaults on the built-in digits
    python benchmarks/loop_overhead.py --steps 500 --device cuda

The loop's time per step is (T(short + steps) - T(short)) / steps, so start-up (data, model
build) cancels and every per-step cost the loop adds at its default intervals (metrics,
grids every 250 steps, checkpoints every 500) is counted.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402
import dcgan  # noqa: E402
from ganzoo.data import load_data, resolve_data_args  # noqa: E402


def bare(steps, device, argv):
    args = dcgan.build_parser().parse_args(argv)
    resolve_data_args(args)
    data = load_data(args)
    torch.manual_seed(0)
    m = dcgan.DCGAN(args, data.shape, device)
    G, D, og, od = m.G, m.D, m.opt_g, m.opt_d
    x_all = data.x.to(device).float() / 127.5 - 1
    B = args.batch_size
    t = time.perf_counter()
    for i in range(steps):
        j = (i * B) % (len(x_all) - B)
        x = x_all[j:j + B]
        fake = G(torch.randn(B, args.z_dim, device=device))
        d_real, d_fake = D(x), D(fake.detach())
        loss_d = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real)) + \
            F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        od.zero_grad()
        loss_d.backward()
        od.step()
        out = D(fake)
        loss_g = F.binary_cross_entropy_with_logits(out, torch.ones_like(out))
        og.zero_grad()
        loss_g.backward()
        og.step()
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
          f"   ({a.steps} steps, best of {a.repeats}, device {a.device}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
