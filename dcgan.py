"""DCGAN — Radford, Metz, Chintala 2015, "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks" (arXiv:1511.06434), as the authors' code
(github.com/soumith/dcgan.torch) does it.

    python dcgan.py                                   # built-in digits, 32x32, a few CPU minutes
    python dcgan.py --path data/img_align_celeba      # any folder of images, 64x64
    python dcgan.py --resume runs/dcgan/<run> --steps 4000
    python dcgan.py --sample runs/dcgan/<run> --n 64 --out grid.png
    python dcgan.py --sample runs/dcgan/<run> --interpolate --out walk.gif

The algorithm: G (fractionally-strided convolutions, BatchNorm, ReLU, tanh output) and D
(strided convolutions, LeakyReLU(0.2), BatchNorm) play Goodfellow et al.'s game: D minimises
BCE(D(x), 1) + BCE(D(G(z)), 0) on logits, G the non-saturating BCE(D(G(z)), 1); Adam at 2e-4,
beta1 0.5, batch 128, weights from N(0, 0.02).

Which code: dcgan.torch (z ~ N(0, I), 4x4 kernels, width 64, no weight decay), which
pytorch/examples copies, not the paper's Theano code (github.com/Newmu/dcgan_code: z ~ U[-1, 1],
5x5 kernels, width 128, L2 weight decay 1e-5).

Departures, each named where the code has it; the evidence: docs/models/dcgan.md#departures
- G's step runs D afresh after D's update, as pytorch/examples (dcgan.torch reuses D's output).
- Small data sets: width 32 and 2,000 updates (minutes on a CPU); a folder run: 20,000 updates.
- fashion-mnist 4,000 updates, stacked-mnist 6,000 at width 64: docs/models/dcgan.md#small-data-values
- Sample grids use BatchNorm's running statistics (eval mode): drawing one changes nothing.
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
