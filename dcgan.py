"""DCGAN — Radford, Metz, Chintala 2015, "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks" (arXiv:1511.06434), as the authors' code
(github.com/soumith/dcgan.torch) does it.

    python dcgan.py                                   # built-in digits, 32x32, a few CPU minutes
    python dcgan.py --path data/img_align_celeba      # any folder of images, 64x64
    python dcgan.py --resume runs/dcgan/<run> --steps 4000
    python dcgan.py --sample runs/dcgan/<run> --n 64 --out grid.png
    python dcgan.py --sample runs/dcgan/<run> --interpolate --out walk.gif

Which code: the paper's own (Theano, github.com/Newmu/dcgan_code) draws z ~ U[-1, 1] and
uses 5x5 kernels, a base width of 128 and an L2 weight decay of 1e-5; this script follows
dcgan.torch, the code the paper's authors published for Torch and that pytorch/examples and
most comparisons copy (z ~ N(0, I), 4x4 kernels, width 64, no weight decay).

Departures from the paper, each named where the code has it:
- Update order: G's step takes a fresh D forward pass on the same fakes after D's update;
  dcgan.torch reuses the output of D's forward pass from before D's update (G is stepped
  against the old D). The fresh pass is what a reader of Goodfellow et al.'s Algorithm 1
  expects and what pytorch/examples does.
- On the small data sets (the digits, the MNIST family) the networks are narrower (width 32, not 64) and the run is
  2,000 generator updates, so that it takes minutes on a CPU. On any other data the
  paper's width is used; the paper gives no step count for faces, so a folder run defaults
  to 20,000 updates (about 13 CelebA epochs at batch 128).
- On fashion-mnist the run is 4,000 generator updates: the fewest of 2,000, 4,000, 6,000 at which
  the development seeds 0-2 all drew the ten classes with KL <= 0.05 (README: "Fashion-MNIST:
  how many updates a run takes").
- On stacked-mnist (three digits in each image, 1,000 modes) the width is the code's 64: at
  2,000 updates on development seeds 0 / 1 / 2 it covers 417 / 442 / 449 modes confidently
  (KL 0.64 / 0.62 / 0.56), width 32 241 / 246 / 257 (KL 0.89 / 0.83 / 0.90); a table run
  took 8.3 minutes of one thread against 3.9 (it ran beside the test suite).
  The run there is 6,000 generator updates: the fewest of 2,000, 4,000, 6,000, 8,000 at which
  the development seeds all covered >= 900 modes confidently (913 / 931 / 913 at 6,000, KL
  0.22 / 0.20 / 0.20; 772 / 772 / 790 at 4,000; README: "Stacked MNIST: how many updates a run takes").
- Samples in grids use BatchNorm's running statistics (eval mode); the authors' code
  samples with batch statistics. Eval mode makes a grid change nothing in the run.
"""
import torch
import torch.nn.functional as F

import common

# ---- hyperparameters: the paper's (§4 "Details of adversarial training") unless noted ---
Hyper = common.Hyper
HYPERPARAMETERS = dict(
    batch_size=Hyper(128),  # "mini-batch stochastic gradient descent with a mini-batch size of 128"
    steps=Hyper(20_000, small=2000, sets={"fashion-mnist": 4000, "stacked-mnist": 6000},
                source="not in the paper"),  # see the docstring
    z_dim=Hyper(100),       # Fig. 1: a 100-dimensional uniform distribution Z (the authors' code: N(0, I))
    # ngf = ndf = 64; 32 on the small sets, but 64 on stacked-mnist (three digits an image; see the docstring)
    width=Hyper(64, small=32, sets={"stacked-mnist": 64}, source="the authors' code"),
    g_lr=Hyper(2e-4),       # "learning rate of 0.0002"
    d_lr=Hyper(2e-4),
    optimizer=Hyper("adam"),  # §4: Adam
    beta1=Hyper(0.5, "Adam beta1 (0.9 'resulted in training oscillation')"),  # "momentum term beta1 at 0.5"
    beta2=Hyper(0.999, "Adam beta2", source="Adam's default"),
)


def build_parser():
    return common.make_parser(__doc__, HYPERPARAMETERS, "dcgan")


class DCGAN(common.GAN):
    name = "dcgan"
    hyperparameters = HYPERPARAMETERS

    def __init__(self, args, shape, device):
        super().__init__(args, shape, device)
        C, H, W = shape
        # Generator: fractionally-strided convs, BatchNorm + ReLU, tanh output (paper Fig. 1)
        self.G = common.DCGANGenerator(args.z_dim, C, (H, W), self.g_width, norm="batch").to(device)
        # Discriminator: strided convs, LeakyReLU(0.2), BatchNorm on all layers but the first
        self.D = common.DCGANDiscriminator(C, (H, W), self.d_width, norm="batch").to(device)
        self.opt_g = self.optimizer(self.G.parameters(), args.g_lr)  # Adam (--optimizer)
        self.opt_d = self.optimizer(self.D.parameters(), args.d_lr)

    def train_step(self, real):
        x = real()                                   # (B, C, H, W) in [-1, 1]
        B = len(x)
        z = self.sample_z(B)                         # (B, z_dim) ~ N(0, I)
        fake = self.G(z)                             # (B, C, H, W)

        # D maximises log D(x) + log(1 − D(G(z)))   (Goodfellow et al. 2014, Eq. 1)
        # i.e. minimises BCE(D(x), 1) + BCE(D(G(z)), 0), computed on logits for stability.
        # Real and fake go through D in separate batches, as the authors' code does (so each
        # BatchNorm sees one kind of image).
        d_real = self.D(self.aug(x))                         # (B,) logits
        d_fake = self.D(self.aug(fake.detach()))             # (B,)
        loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        self.update(self.opt_d, loss_d)

        # G: the non-saturating loss, max log D(G(z)) instead of min log(1 − D(G(z)))
        # (Goodfellow et al. 2014 §3), i.e. minimise BCE(D(G(z)), 1). Same fake as above,
        # as in the authors' code, through the updated D (dcgan.torch: D's output before its
        # update; see the docstring).
        d_gen = self.D(self.aug(fake))                       # (B,)
        loss_g = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
        self.update(self.opt_g, loss_g)

        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
                "d_real": torch.sigmoid(d_real).mean().detach(),   # D(x), should stay below 1
                "d_fake": torch.sigmoid(d_fake).mean().detach()}   # D(G(z)) before D's update


if __name__ == "__main__":
    raise SystemExit(common.main(DCGAN, build_parser()))
