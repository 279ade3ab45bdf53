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

Departures from the paper (and choices where it is silent), each named where the code has it:
- The margin. The paper sets m = 10 for MNIST (§4.1) and m = 20 for 64x64 CelebA (as
  khanrc/tf.gans-comparison reads its appendix), both on the L2 norm of Eq. 13. The default
  here keeps the per-value RMS error these stand for (10/√784 and 20/√12288) and scales it
  to the image size: m = rms·√(C·H·W) for --energy l2 (exactly the paper's m at the
  paper's sizes), m = rms² for --energy mse (the same reconstruction error in MSE units).
  MNIST's value is used for the digits and the MNIST family, CelebA's for folders and CIFAR-10.
  The paper does not say whether its MNIST pixels were in [0, 1] or [-1, 1]; here they
  are in [-1, 1]. --margin overrides.
- The networks. G is the DCGAN generator (§4.3 trains EBGAN and DCGAN "under the same
  configuration"); D's encoder is the paper's 64x64 one, (64)4c2s-(128)4c2s-(256)4c2s,
  its decoder the mirror image, BatchNorm on all but the first and last layer and
  LeakyReLU(0.2) (as khanrc/tf.gans-comparison reads the appendix); the three stride-2
  stages are kept at every image size whose sides halve three times, and two are used
  where they do not (28x28: 28 -> 14 -> 7). Batch 128 and z ~ N(0, I) of 100 dims are DCGAN's.
- On the small data sets (the digits, the MNIST family) the networks are narrower (width 32, not 64), the batch is 64
  and the run 2,000 generator updates, so that it takes minutes on a CPU. The paper gives
  no step count for faces; a folder run defaults to 20,000 updates.
- On fashion-mnist the run is 4,000 generator updates: the fewest of 2,000, 4,000, 6,000 at which
  the development seeds 0-2 all drew the ten classes with KL <= 0.05 (README: "Fashion-MNIST:
  how many updates a run takes").
- On stacked-mnist (three digits in each image, 1,000 modes) the width is the paper's 64: at
  2,000 updates on development seeds 0 / 1 / 2 it covers 910 / 885 / 884 modes confidently
  (KL 0.17 / 0.20 / 0.21), width 32 841 / 829 / 799 (KL 0.26 / 0.25 / 0.23), for about twice the time.
  The run there is 4,000 generator updates: the fewest of 2,000, 4,000 at which the development
  seeds all covered >= 900 modes confidently (940 / 948 / 929 at 4,000, KL 0.16 / 0.18 / 0.21;
  906 / 901 / 889 at 2,000 in these runs, on another machine than the figures above; README:
  "Stacked MNIST: how many updates a run takes").
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
                 "to the image size; see the module docstring)", type=float),
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
