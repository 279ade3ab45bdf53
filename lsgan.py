"""LSGAN — Mao, Li, Xie, Lau, Wang, Smolley 2016, "Least Squares Generative Adversarial
Networks" (arXiv:1611.04076), on the DCGAN networks, with the authors' code
(github.com/xudonmao/LSGAN) where the paper leaves a detail open.

    python lsgan.py                                   # built-in digits, 32x32, a few CPU minutes
    python lsgan.py --path data/lsun_church           # any folder of images, 64x64
    python lsgan.py --abc -1,1,0                      # the chi^2 setting (paper Eq. 8)
    python lsgan.py --resume runs/lsgan/<run> --steps 40000
    python lsgan.py --sample runs/lsgan/<run> --n 64 --out grid.png

The algorithm (Eq. 2): D minimises ½E[(D(x) − b)²] + ½E[(D(G(z)) − a)²] with a linear output,
G minimises ½E[(D(G(z)) − c)²]; a = 0, b = c = 1 (Eq. 9, the paper's experiments). As the
authors' code: z ~ U[-1, 1] of 1,024 dims, batch 64, Adam beta1 0.5, G stepped on D's fakes.

Departures, each named where the code has it; the evidence: docs/models/lsgan.md#departures
- The DCGAN networks (BatchNorm in both); the paper's 112x112 LSUN networks are not built.
- Batch means, as the paper writes the losses (the authors' code sums: only a rescaling).
- Both rates 1e-3, the authors' LSUN rate, everywhere: their characters' 2e-4 stalls here.
- Small data sets: width 32 and 2,500 updates (minutes on a CPU); a folder run: 20,000 updates.
- fashion-mnist 6,000 updates, stacked-mnist keeps 2,500: docs/models/lsgan.md#small-data-values
"""
import argparse

import common

# ---- hyperparameters: the paper's (§3.2, §4.1) and its authors' code -------------------
def abc_labels(text):
    """'0,1,1' -> (a, b, c): the fake label, the real label, the label G wants for its fakes."""
    try:
        a, b, c = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not three numbers a,b,c, e.g. 0,1,1 or -1,1,0")
    return (a, b, c)


Hyper = common.Hyper
HYPERPARAMETERS = dict(
    batch_size=Hyper(64, source="the authors' code"),   # train_lsun.py, train_chn.py: batch_size 64
    steps=Hyper(20_000, small=2500, sets={"fashion-mnist": 6000}, source="not in the paper"),  # see the docstring
    z_dim=Hyper(1024),      # §3.3: the generator takes z of 1024 dims; the authors' code: z_dim 1024
    width=Hyper(64, small=32, source="DCGAN's"),  # ngf = ndf = 64 (the paper builds on a DCGAN implementation, §4.1)
    # the authors' code for LSUN scenes (train_lsun.py: 0.001): folder runs are scenes and faces;
    # their handwritten characters (train_chn.py) use 0.0002, which stalled on the digits (docstring)
    g_lr=Hyper(1e-3, source="the authors' code for LSUN scenes"),
    d_lr=Hyper(1e-3, source="the authors' code for LSUN scenes"),
    optimizer=Hyper("adam"),  # §4.1: Adam
    abc=Hyper((0.0, 1.0, 1.0), "labels: a for fakes and b for reals in D's loss, c in G's loss (the paper's Eq. 9, "
          "used in its experiments; --abc -1,1,0 is Eq. 8, minimising Pearson chi^2)",
          type=abc_labels, metavar="A,B,C"),
    beta1=Hyper(0.5, "Adam beta1"),  # §4.1: "beta1 = 0.5"
    beta2=Hyper(0.999, "Adam beta2", source="Adam's default"),
)


def build_parser():
    return common.make_parser(__doc__, HYPERPARAMETERS, "lsgan")


class LSGAN(common.GAN):
    name = "lsgan"
    hyperparameters = HYPERPARAMETERS
    z_prior = "uniform"  # the authors' code: z ~ U[-1, 1]

    def __init__(self, args, shape, device):
        super().__init__(args, shape, device)
        C, H, W = shape
        self.a, self.b, self.c = args.abc
        # DCGAN networks (paper §3.3 builds on DCGAN); D's output is linear: no sigmoid (§3.2)
        self.G = common.DCGANGenerator(args.z_dim, C, (H, W), self.g_width, norm="batch").to(device)
        self.D = common.DCGANDiscriminator(C, (H, W), self.d_width, norm="batch").to(device)
        self.opt_g = self.optimizer(self.G.parameters(), args.g_lr)  # Adam (--optimizer)
        self.opt_d = self.optimizer(self.D.parameters(), args.d_lr)

    def train_step(self, real):
        x = real()                                   # (B, C, H, W) in [-1, 1]
        z = self.sample_z(len(x))                    # (B, z_dim) ~ U[-1, 1]
        fake = self.G(z)                             # (B, C, H, W)

        # D: min ½ E_x[(D(x) − b)²] + ½ E_z[(D(G(z)) − a)²]        (Mao et al. 2016, Eq. 2)
        # mean of the squares over the batch, not the square of the mean
        d_real = self.D(self.aug(x))                         # (B,)
        d_fake = self.D(self.aug(fake.detach()))             # (B,)
        loss_d = 0.5 * (d_real - self.b).square().mean() + 0.5 * (d_fake - self.a).square().mean()
        self.update(self.opt_d, loss_d)

        # G: min ½ E_z[(D(G(z)) − c)²]                                (Mao et al. 2016, Eq. 2)
        # Same fake as above: the authors' code feeds G's step the same z.
        d_gen = self.D(self.aug(fake))                       # (B,)
        loss_g = 0.5 * (d_gen - self.c).square().mean()
        self.update(self.opt_g, loss_g)

        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
                "d_real": d_real.mean().detach(),    # D(x), heads to b
                "d_fake": d_fake.mean().detach()}    # D(G(z)) before D's update, between a and b


if __name__ == "__main__":
    raise SystemExit(common.main(LSGAN, build_parser()))
