"""DRAGAN — Kodali, Abernethy, Hays, Kira 2017, "On Convergence and Stability of GANs"
(arXiv:1705.07215), on the DCGAN networks, with the penalty as the authors' code
(github.com/kodalinaveen3/DRAGAN, DRAGAN.ipynb) computes it.

    python dragan.py                                  # built-in digits, 32x32, a few CPU minutes
    python dragan.py --path data/img_align_celeba     # any folder of images, 64x64
    python dragan.py --perturb paper --perturb-c 0.1  # the paper's Gaussian perturbation
    python dragan.py --resume runs/dragan/<run> --steps 40000
    python dragan.py --sample runs/dragan/<run> --n 64 --out grid.png

The algorithm: the standard GAN game (non-saturating G loss), and D also pays
λ·E[(‖∇D(x̂)‖₂ − 1)²] at points x̂ near the real data (not between real and fake, as in
WGAN-GP).
D has no BatchNorm: a per-sample gradient penalty is not valid with batch statistics.

Departures, each named where the code has it; the evidence: docs/models/dragan.md#departures
- x̂ = x + α·0.5·std(x)·U[0, 1) as the authors' code draws it; --perturb paper: x + N(0, c·I).
- D's first convolution and logit have no bias (dcgan.torch's; kept for old checkpoints).
- --augment: x̂ perturbs the un-augmented reals, D sees T(x̂), the gradient through T.
- Small data sets: width 32, 1,200 updates, rates 4e-4 (at 1e-4 so short a run leaves D at chance).
- fashion-mnist 6,000 updates, stacked-mnist 12,000: docs/models/dragan.md#small-data-values
"""
import math

import torch
import torch.nn.functional as F

import common
import kernels

# ---- hyperparameters: the paper's and its authors' code (DRAGAN.ipynb) -----------------
Hyper = common.Hyper
HYPERPARAMETERS = dict(
    batch_size=Hyper(128, source="the authors' code"),  # mb_size = 128
    steps=Hyper(20_000, small=1200, sets={"fashion-mnist": 6000, "stacked-mnist": 12_000},
                source="not in the paper"),  # see the docstring
    z_dim=Hyper(100, source="the authors' code"),  # z_dim = 100, z ~ U[-1, 1]
    width=Hyper(64, small=32, source="DCGAN's"),  # ngf = ndf = 64
    # the authors' code: Adam(learning_rate=1e-4, beta1=0.5, beta2=0.9) for both networks
    g_lr=Hyper(1e-4, small=4e-4, source="the authors' code"),  # small: see the docstring
    d_lr=Hyper(1e-4, small=4e-4, source="the authors' code"),
    optimizer=Hyper("adam", source="the authors' code"),  # Adam
    gp_lambda=Hyper(10.0, "weight λ of the gradient penalty (paper: λ ≈ 10)", source="the authors' code",
                    type=common.non_negative, aliases=("--lambda-gp",)),
    perturb=Hyper("authors", "x̂ = x + α·0.5·std(x)·U[0,1) as the authors' code, or x + N(0, c·I) as the "
                  "paper's Eq. 1", choices=("authors", "paper"), source="the authors' code"),
    perturb_c=Hyper(10.0, "with --perturb paper: the variance c of δ ~ N(0, c·I) (for the paper's data scale)",
                    type=common.non_negative),  # the paper: c ≈ 10
    beta1=Hyper(0.5, "Adam beta1", source="the authors' code"),
    beta2=Hyper(0.9, "Adam beta2", source="the authors' code"),
)


def build_parser():
    return common.make_parser(__doc__, HYPERPARAMETERS, "dragan")


class DRAGAN(common.GAN):
    name = "dragan"
    hyperparameters = HYPERPARAMETERS
    double_backward = True  # the penalty differentiates D twice: --compile leaves it eager
    z_prior = "uniform"  # the authors' code: z ~ U[-1, 1]

    def __init__(self, args, shape, device):
        super().__init__(args, shape, device)
        C, H, W = shape
        self.G = common.DCGANGenerator(args.z_dim, C, (H, W), self.g_width, norm="batch").to(device)
        # No BatchNorm in D: the penalty is per sample, and batch statistics would couple samples.
        self.D = common.DCGANDiscriminator(C, (H, W), self.d_width, norm="none").to(device)
        self.opt_g = self.optimizer(self.G.parameters(), args.g_lr)  # Adam (--optimizer)
        self.opt_d = self.optimizer(self.D.parameters(), args.d_lr)

    def perturb(self, x):
        """Points x̂ (B, C, H, W) near the real batch x, where the penalty is taken."""
        if self.args.perturb == "paper":
            # x̂ = x + δ, δ ~ N(0, c·I)                              (Kodali et al. 2017, Eq. 1)
            return x + math.sqrt(self.args.perturb_c) * self.randn(*x.shape)
        # The authors' code: x_p = x + 0.5·std(x)·U[0, 1) per element (std over the batch,
        # numpy's ddof=0), x̂ = x + α·(x_p − x) with α ~ U[0, 1] per sample; no clamping.
        # Under torchrun the std is the global batch's, from the ranks' mean moments.
        mean, sq = self.all_mean(torch.stack([x.mean(), x.square().mean()]))
        std = (sq - mean * mean).clamp(min=0).sqrt()                     # std(x), ddof=0
        delta = 0.5 * std * self.rand(*x.shape)                          # (B, C, H, W)
        alpha = self.rand(len(x), *[1] * (x.dim() - 1))                 # (B, 1, 1, 1)
        return x + alpha * delta

    def penalty(self, x_hat):
        """E[(‖∇D(x̂)‖₂ − 1)²] with its graph (so that it trains D), and the mean ‖∇D(x̂)‖₂."""
        x_hat = x_hat.detach().float().requires_grad_(True)
        # the gradient of the logit; summing over the batch gives each sample its own gradient,
        # since D has no batch statistics. Under --amp this pass runs in fp32 (an fp32 gradient).
        with common.full_precision(x_hat.device):
            grad, = torch.autograd.grad(self.D(self.aug(x_hat)).sum(), x_hat, create_graph=True)  # (B, C, H, W)
        # λ's factor: E[(‖∇D(x̂)‖₂ − 1)²], each norm over all of a sample's (C, H, W)
        gp = kernels.gradient_penalty(grad, target=1.0)
        with torch.no_grad():
            grad_norm = grad.flatten(1).norm(dim=1).mean()
        return gp, grad_norm

    def train_step(self, real):
        x = real()                                   # (B, C, H, W) in [-1, 1]
        B = len(x)
        fake = self.G(self.sample_z(B))              # (B, C, H, W)

        # D: min −E[log D(x)] − E[log(1 − D(G(z)))] + λ·E[(‖∇D(x̂)‖₂ − 1)²]
        # (Kodali et al. 2017, Eq. 1, on the GAN loss of Goodfellow et al. 2014, Eq. 1), on
        # logits for stability. Both terms are backpropagated: D's loss and the penalty train D.
        d_real = self.D(self.aug(x))                         # (B,) logits
        d_fake = self.D(self.aug(fake.detach()))             # (B,)
        gp, grad_norm = self.penalty(self.perturb(x))
        loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                  + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
                  + self.args.gp_lambda * gp)
        self.update(self.opt_d, loss_d)

        # G: the non-saturating loss, min −E[log D(G(z))] (Goodfellow et al. 2014 §3), on a
        # fresh z, as the authors' code does.
        d_gen = self.D(self.aug(self.G(self.sample_z(B))))   # (B,)
        loss_g = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
        self.update(self.opt_g, loss_g)

        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
                "gp": gp.detach(),                   # E[(‖∇D(x̂)‖ − 1)²], without λ
                "grad_norm": grad_norm,              # mean ‖∇D(x̂)‖, near 1 when the penalty holds
                "d_real": torch.sigmoid(d_real).mean().detach(),
                "d_fake": torch.sigmoid(d_fake).mean().detach()}


if __name__ == "__main__":
    raise SystemExit(common.main(DRAGAN, build_parser()))
