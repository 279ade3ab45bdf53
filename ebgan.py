"""EBGAN — Zhao, Mathieu, LeCun 2016, "Energy-based Generative Adversarial Network"
(arXiv:1609.03126): D is an autoencoder and the energy of an image its reconstruction
error; a hinge at margin m pushes the energy of fakes up; the pull-away term (EBGAN-PT)
spreads the encoder codes of a generated batch.

    python ebgan.py                                   # built-in digits, 32x32, a few CPU minutes
    python ebgan.py --path data/img_align_celeba      # any folder of images, 64x64
    python ebgan.py --pt-weight 0                     # plain EBGAN, no pull-away term
    python ebgan.py --energy mse                      # the per-sample MSE most implementations use
    python ebgan.py --resume runs/ebgan/<run> --steps 40000
    python ebgan.py --sample runs/ebgan/<run> --n 64 --out grid.png

The algorithm: D(x) = ||Dec(Enc(x)) − x|| (Eq. 13); D minimises D(x) + [m − D(G(z))]⁺ (Eq. 1),
G minimises D(G(z)) + λ_PT·f_PT(S) (Eq. 2, 14), f_PT the mean squared cosine similarity of
the encoder codes S of G's batch; Adam at 1e-3 for both.

Departures (and choices where the paper is silent), each named where the code has it; the
evidence: docs/models/ebgan.md#departures
- The margin: the paper's m (10 on MNIST, 20 on CelebA) as an RMS error, scaled to the size.
- G is DCGAN's (batch 128, z of 100 dims); D the paper's 64x64 encoder, 2 stages at 28x28.
- Small data sets: width 32, batch 64 and 2,000 updates; a folder run: 20,000 updates.
- fashion-mnist 4,000 updates, stacked-mnist 4,000 at width 64: docs/models/ebgan.md#small-data-values
"""
import math

import torch.nn as nn

import common
import kernels

# ---- hyperparameters: the paper's (§2, §4) unless noted ----------------------------------
Hyper = common.Hyper
HYPERPARAMETERS = dict(
    # not stated for EBGAN; DCGAN's 128 (§4.3: "under the same configuration")
    batch_size=Hyper(128, small=64, source="DCGAN's"),
    steps=Hyper(20_000, small=2000, sets={"fashion-mnist": 4000, "stacked-mnist": 4000},
                source="not in the paper"),  # see the docstring
    z_dim=Hyper(100, source="DCGAN's"),
    # appendix (64x64): encoder (64)4c2s-(128)4c2s-(256)4c2s; 32 on the small sets, but the paper's 64 on
    # stacked-mnist (three digits an image; see the docstring)
    width=Hyper(64, small=32, sets={"stacked-mnist": 64}),
    g_lr=Hyper(1e-3),  # §4.1: "learning rate 0.001 and Adam ... for both G and D"
    d_lr=Hyper(1e-3),
    optimizer=Hyper("adam"),  # §4.1: Adam
    energy=Hyper("l2", "D(x): 'l2' the norm ||Dec(Enc(x)) - x|| of the paper's Eq. 13, or 'mse' the per-sample "
                 "mean squared error most implementations use (no square root)", choices=("l2", "mse")),
    margin=Hyper(None, "hinge margin m in units of --energy (default: the paper's m for the data set, scaled "
                 "to the image size: docs/models/ebgan.md#departures)", type=float),
    pt_weight=Hyper(0.1, "weight λ_PT of the pull-away term in G's loss; 0 turns it off"),  # §2.4
    beta1=Hyper(0.5, "Adam beta1", source="DCGAN's"),
    beta2=Hyper(0.999, "Adam beta2", source="Adam's default"),
)
# The paper's margins as the per-value RMS reconstruction error they allow: m = 10 on 28x28
# MNIST (§4.1), m = 20 on 64x64x3 CelebA (appendix), both L2 norms (Eq. 13).
MARGIN_RMS = {"mnist": 10 / math.sqrt(28 * 28), "celeba": 20 / math.sqrt(3 * 64 * 64)}
MNIST_LIKE = ("digits", "stacked-digits", "mnist", "mnist-5k", "stacked-mnist", "fashion-mnist", "stacked-fashion-mnist")


def build_parser():
    return common.make_parser(__doc__, HYPERPARAMETERS, "ebgan")


def default_margin(dataset, shape, energy):
    """The paper's margin for this data set in units of `energy` (see the docstring)."""
    rms = MARGIN_RMS["mnist" if dataset in MNIST_LIKE else "celeba"]
    return rms * math.sqrt(math.prod(shape)) if energy == "l2" else rms ** 2


def stages(hw, most: int = 3) -> int:
    """The paper's three stride-2 stages where both sides halve exactly three times; fewer
    where they do not (28x28: two, 28 -> 14 -> 7, since 7 cannot be halved)."""
    n = 0
    while n < most and all(side % 2 ** (n + 1) == 0 for side in hw):
        n += 1
    return n


class AutoEncoderD(nn.Module):
    """image (B, C, H, W) -> reconstruction (B, C, H, W) and encoder code S (B, 4w, H/8, W/8).
    The paper's 64x64 D (appendix): encoder (64)4c2s-(128)4c2s-(256)4c2s, decoder
    (128)4c2s-(64)4c2s-(C)4c2s; LeakyReLU(0.2), BatchNorm but on the first and last layer,
    linear output. At 28x28 the last stage of each is dropped (see stages()): the code is
    (B, 2w, 7, 7)."""

    def __init__(self, channels, width=64, hw=(64, 64)):
        super().__init__()
        S, w = stages(hw), width
        enc = [nn.Conv2d(channels, w, 4, 2, 1), nn.LeakyReLU(0.2, True)]                 # (B, w, H/2, W/2)
        for i in range(1, S):                                                            # (B, 2^i w, H/2^(i+1), ...)
            enc += [nn.Conv2d(w * 2 ** (i - 1), w * 2 ** i, 4, 2, 1, bias=False), nn.BatchNorm2d(w * 2 ** i),
                    nn.LeakyReLU(0.2, True)]
        self.encoder = nn.Sequential(*enc)                                               # (B, 4w, H/8, W/8)
        dec = []
        for i in range(S - 1, 0, -1):
            dec += [nn.ConvTranspose2d(w * 2 ** i, w * 2 ** (i - 1), 4, 2, 1, bias=False),
                    nn.BatchNorm2d(w * 2 ** (i - 1)), nn.LeakyReLU(0.2, True)]
        dec.append(nn.ConvTranspose2d(w, channels, 4, 2, 1))                             # (B, C, H, W)
        self.decoder = nn.Sequential(*dec)
        common.dcgan_init(self)

    def forward(self, x):
        s = self.encoder(x)
        return self.decoder(s), s


class EBGAN(common.GAN):
    name = "ebgan"
    hyperparameters = HYPERPARAMETERS
    min_batch = 2  # the pull-away term (Eq. 14) compares pairs of codes

    def __init__(self, args, shape, device):
        super().__init__(args, shape, device)
        C, H, W = shape
        if args.margin is None:  # resolved here, so that config.json records the value used
            args.margin = default_margin(args.dataset, shape, args.energy)
        self.G = common.DCGANGenerator(args.z_dim, C, (H, W), self.g_width, norm="batch").to(device)
        self.D = AutoEncoderD(C, self.d_width, (H, W)).to(device)
        self.opt_g = self.optimizer(self.G.parameters(), args.g_lr)  # Adam (--optimizer)
        self.opt_d = self.optimizer(self.D.parameters(), args.d_lr)

    def energy(self, x):
        """D(x) per sample (B,) and the encoder code S (B, 4w, h, w)."""
        x = self.aug(x)                              # --augment: the energy of the augmented image
        recon, s = self.D(x)
        err = (recon.float() - x).flatten(1)         # (B, C*H*W), fp32 under --amp
        # D(x) = ||Dec(Enc(x)) − x||   (Zhao et al. 2016, Eq. 13); 'mse': ||.||² / (C·H·W)
        e = err.norm(dim=1) if self.args.energy == "l2" else err.square().mean(1)
        return e, s

    def train_step(self, real):
        x = real()                                   # (B, C, H, W) in [-1, 1]
        z = self.sample_z(len(x))                    # (B, z_dim) ~ N(0, I)
        fake = self.G(z)                             # (B, C, H, W)

        # L_D(x, z) = D(x) + [m − D(G(z))]⁺   (Eq. 1), the hinge per sample, then the batch mean.
        # Real and fake go through D's BatchNorm in separate batches, as in DCGAN.
        e_real, _ = self.energy(x)                   # (B,)
        e_fake, _ = self.energy(fake.detach())       # (B,)
        hinge = (self.args.margin - e_fake).clamp(min=0)
        loss_d = e_real.mean() + hinge.mean()
        self.update(self.opt_d, loss_d)

        # L_G(z) = D(G(z)) + λ_PT·f_PT(S)   (Eq. 2 and §2.4; the pull-away term in G's loss only)
        # f_PT(S) = 1/(N(N−1)) Σ_i Σ_{j≠i} (S_iᵀS_j / (‖S_i‖‖S_j‖))²   (Eq. 14), S the codes of G(z)
        e_gen, s = self.energy(fake)                 # (B,), (B, 4w, h, w)
        pt = kernels.pullaway(s)                      # under torchrun: over this rank's B codes (N = B)
        loss_g = e_gen.mean() + self.args.pt_weight * pt
        self.update(self.opt_g, loss_g)

        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
                "d_real": e_real.mean().detach(),    # D(x): the energy of real images, kept low
                "d_fake": e_fake.mean().detach(),    # D(G(z)) before D's update, pushed towards m
                "hinge": hinge.mean().detach(),      # [m − D(G(z))]⁺: 0 when D puts every fake above m
                "pt": pt.detach()}                   # f_PT: 0 orthogonal codes, 1 identical


if __name__ == "__main__":
    raise SystemExit(common.main(EBGAN, build_parser()))
