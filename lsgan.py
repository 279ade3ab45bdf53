"""LSGAN — Mao, Li, Xie, Lau, Wang, Smolley 2016, "Least Squares Generative Adversarial
Networks" (arXiv:1611.04076), on the DCGAN networks, with the authors' code
(github.com/xudonmao/LSGAN) where the paper leaves a detail open.

    python lsgan.py                                   # built-in digits, 32x32, a few CPU minutes
    python lsgan.py --path data/lsun_church           # any folder of images, 64x64
    python lsgan.py --abc -1,1,0                      # the chi^2 setting (paper Eq. 8)
    python lsgan.py --resume runs/lsgan/<run> --steps 40000
    python lsgan.py --sample runs/lsgan/<run> --n 64 --out grid.png

Departures from the paper, each named where the code has it:
- The networks are the DCGAN ones (common.DCGANGenerator / DCGANDiscriminator, BatchNorm in
  both, D's output linear); the paper's own 112x112 networks (§3.3: a fully connected layer,
  then 3x3 deconvolutions) are built for LSUN scenes and are not implemented.
- The losses are means over the batch (½E[.]), as the paper writes them; the authors'
  code sums over the batch (tf.nn.l2_loss), which only rescales the gradients.
- On the small data sets (the digits, the MNIST family) the networks are narrower (width 32, not 64) and the run is
  2,500 generator updates, so that it takes minutes on a CPU. The paper gives no step count;
  a folder run defaults to 20,000 updates.
- On fashion-mnist the run is 6,000 generator updates: the fewest of 2,000, 4,000, 6,000 at which
  the development seeds 0-2 all drew the ten classes with KL <= 0.05 (README: "Fashion-MNIST:
  how many updates a run takes"). On stacked-mnist it stays 2,500: no length up to 24,000
  covered >= 900 of the 1,000 modes confidently on all of seeds 0-2 (607 / 878 / 934 at 24,000;
  README: "Stacked MNIST: how many updates a run takes").
- Both learning rates are 0.001, the authors' rate for LSUN scenes (train_lsun.py), on every
  data set; their rate for handwritten characters (train_chn.py) is 0.0002, with which G stayed
  at grey noise on the built-in digits for the first 500 updates while D separated real from
  fake (d_real 0.99, d_fake 0.03); at 0.001 digits form within 200 updates.
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
