"""Does D memorise a --limit run's training images? D's outputs on the N images the run
trained on against N images of the same split that it never saw (the ones past the limit),
and on N samples; a D that memorises scores its own training images as more real than
held-out ones. The same readout as ADA's overfitting heuristic r_t = E[sign(D(x))] (Karras
et al. 2020, §3), computed here on trained and on held-out images.

    python benchmarks/d_memorisation.py runs/dcgan/<run>          # a run trained with --limit N
    python benchmarks/d_memorisation.py RUN --eval                # D in eval mode (running BatchNorm statistics)

D runs as in training: train mode (each batch normalised by its own statistics, one kind of
image a batch, of the run's batch size), fp32, no gradients. For scripts whose D gives one
logit or critic value per image (dcgan, lsgan, wgan, wgan_gp, dragan); the autoencoder Ds
of ebgan and began are refused. D's outputs swing from one update to the next (DCGAN on 1,000
Fashion-MNIST images: D(x) 0.45, 0.91, 0.49 at steps 6,001-6,003), so read the gap between the
trained and the held-out rows of one checkpoint, not their level.
"""
import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluate import load_model  # noqa: E402
from ganzoo.data import load_run_split, to_signed  # noqa: E402
from ganzoo.errors import UserError  # noqa: E402
from ganzoo.sample import generate_n  # noqa: E402


def readout(model, cfg: dict, train_mode: bool = True, seed: int = 5) -> dict:
    """{'trained' | 'held_out' | 'samples': (mean D output, its sigmoid's mean, E[sign])}."""
    data, n = load_run_split(cfg)  # the run trained on the first n
    if n == len(data) or 2 * n > len(data):
        raise UserError(f"needs a run trained with --limit N where 2N <= the data set's {len(data)} images")
    D = copy.deepcopy(model.D).float().train(train_mode)
    B = cfg["batch_size"]
    g = torch.Generator().manual_seed(seed)

    def d(x):
        return torch.cat([D(b).float().flatten() for b in x.split(B)])

    def real(idx):
        return to_signed(data.batch(idx))

    with torch.no_grad():
        out = {"trained": d(real(torch.randperm(n, generator=g))),
               "held_out": d(real(n + torch.randperm(n, generator=g))),
               "samples": d(generate_n(model, n, 0))}
    return {k: (float(v.mean()), float(torch.sigmoid(v).mean()), float(torch.sign(v).mean())) for k, v in out.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run directory or checkpoint of a --limit run")
    p.add_argument("--eval", action="store_true", help="D in eval mode instead of train mode")
    args = p.parse_args(argv)
    try:
        model, ckpt = load_model(args.run, torch.device("cpu"))
        if ckpt["model"] in ("ebgan", "began"):
            raise UserError(f"{ckpt['model']}'s D is an autoencoder: no per-image logit to read")
        r = readout(model, ckpt["config"], not args.eval)
    except UserError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"{ckpt['model']} step {ckpt['step']}, {ckpt['config']['limit']} images each, D in "
          f"{'eval' if args.eval else 'train'} mode:")
    for k, (mean, sig, sign) in r.items():
        print(f"  {k:9s} D {mean:+.3f}  sigmoid {sig:.3f}  E[sign] {sign:+.3f}")
    gap = r["trained"][0] - r["held_out"][0]
    print(f"  trained - held-out: {gap:+.3f} (about 0 when D has not memorised its training images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
