"""WGAN — Arjovsky, Chintala, Bottou 2017, "Wasserstein GAN" (arXiv:1701.07875), Algorithm 1,
with the critic schedule of the authors' code (github.com/martinarjovsky/WassersteinGAN).

    python wgan.py                                    # built-in digits, 32x32, a few CPU minutes
    python wgan.py --path data/lsun_bedroom           # any folder of images, 64x64
    python wgan.py --resume runs/wgan/<run> --steps 40000
    python wgan.py --sample runs/wgan/<run> --n 64 --out grid.png

The critic f (the DCGAN discriminator with no sigmoid) maximises E[f(x)] - E[f(G(z))] over
weights clipped to [-c, c], n_critic RMSProp updates per generator update; the generator
minimises -E[f(G(z))]. The critic's objective, E[f(x)] - E[f(G(z))], estimates the Wasserstein
distance (up to a constant): it is logged as `wasserstein` and should fall as the samples
improve (Fig. 3 and 4 of the paper), once the critic has caught up.

Departures, each named where the code has it; the evidence: docs/models/wgan.md#departures
- The authors' warm-up: 100 critic updates for the first 25 generator updates and every 500th.
- Clipping after each critic update, as Algorithm 1 says (the authors' code clips before).
- Small data sets: width 32, 1,000 updates, rate 2e-4, no warm-up; a folder run: 100,000.
- fashion-mnist 6,000 updates, stacked-mnist both rates 1e-3: docs/models/wgan.md#small-data-values
- Sample grids use BatchNorm's running statistics (eval mode), as in dcgan.py.
"""

import torch

import common

# ---- hyperparameters: the paper's (Algorithm 1) and the authors' code -----------------
Hyper = common.Hyper
HYPERPARAMETERS = dict(
    batch_size=Hyper(64),  # Algorithm 1: m = 64
    steps=Hyper(100_000, small=1000, sets={"fashion-mnist": 6000}, source="not in the paper"),  # see the docstring
    z_dim=Hyper(100, source="the authors' code"),  # nz = 100, z ~ N(0, I)
    width=Hyper(64, small=32, source="the authors' code"),  # ngf = ndf = 64 (the DCGAN generator and critic)
    # Algorithm 1: alpha = 0.00005 (RMSProp); the small sets and stacked-mnist: see the docstring
    g_lr=Hyper(5e-5, small=2e-4, sets={"stacked-mnist": 1e-3}),
    d_lr=Hyper(5e-5, small=2e-4, sets={"stacked-mnist": 1e-3}),
    optimizer=Hyper("rmsprop"),  # Algorithm 1: RMSProp; the paper: Adam made the critic's training unstable
    beta1=Hyper(0.5, "Adam beta1, with --optimizer adam", source="DCGAN's"),
    beta2=Hyper(0.999, "Adam beta2, with --optimizer adam", source="Adam's default"),
    n_critic=Hyper(5, "critic updates per generator update", type=common.positive_int),  # Algorithm 1: n_critic = 5
    clip=Hyper(0.01, "every critic parameter is clipped to [-clip, clip]"),  # Algorithm 1: c = 0.01
    # the authors' code: Diters = 100 for the first 25 generator iterations and every 500th
    critic_warmup=Hyper(100, "critic updates for the first 25 generator updates and every 500th; 0: n_critic "
                        "throughout", small=0, source="the authors' code", type=common.non_negative_int, metavar="N"),
)


def build_parser():
    return common.make_parser(__doc__, HYPERPARAMETERS, "wgan")


class WGAN(common.GAN):
    name = "wgan"
    hyperparameters = HYPERPARAMETERS

    def __init__(self, args, shape, device):
        super().__init__(args, shape, device)
        C, H, W = shape
        # The DCGAN generator (BatchNorm + ReLU, tanh) and the DCGAN discriminator as the critic:
        # BatchNorm kept, as in the paper's experiments, and no sigmoid (f is a real-valued score).
        self.G = common.DCGANGenerator(args.z_dim, C, (H, W), self.g_width, norm="batch").to(device)
        self.D = common.DCGANDiscriminator(C, (H, W), self.d_width, norm="batch").to(device)
        # Algorithm 1: RMSProp (--optimizer); a momentum optimizer (Adam) on the critic made
        # training unstable, the paper says
        self.opt_g = self.optimizer(self.G.parameters(), args.g_lr)
        self.opt_d = self.optimizer(self.D.parameters(), args.d_lr)

    def critic_iters(self) -> int:
        # The authors' code: "if gen_iterations < 25 or gen_iterations % 500 == 0: Diters = 100"
        if self.args.critic_warmup and (self.step < 25 or self.step % 500 == 0):
            return self.args.critic_warmup
        return self.args.n_critic

    def train_step(self, real):
        n_critic = self.critic_iters()
        for _ in range(n_critic):
            x = real()                                   # (B, C, H, W) in [-1, 1], fresh each time
            B = len(x)
            with torch.no_grad():
                fake = self.G(self.sample_z(B))          # (B, C, H, W)
            # Critic: maximise E[f(x)] - E[f(G(z))]   (Arjovsky et al. 2017, Eq. 3; Algorithm 1, line 5)
            # i.e. minimise loss_d = E[f(G(z))] - E[f(x)]. Real and fake go through the critic
            # in separate batches, as in the authors' code (each BatchNorm sees one kind).
            wasserstein = self.D(self.aug(x)).mean() - self.D(self.aug(fake)).mean()
            loss_d = -wasserstein
            self.update(self.opt_d, loss_d)
            # Algorithm 1, line 7: w <- clip(w, -c, c), every parameter (BatchNorm's scale and shift too)
            with torch.no_grad():
                for p in self.D.parameters():
                    p.clamp_(-self.args.clip, self.args.clip)

        # Generator: minimise -E[f(G(z))]   (Algorithm 1, lines 9-11), a fresh batch of z
        z = self.sample_z(self.args.batch_size)          # (B, z_dim)
        loss_g = -self.D(self.aug(self.G(z))).mean()
        self.update(self.opt_g, loss_g)

        return {"wasserstein": wasserstein.detach(),     # E[f(x)] - E[f(G(z))], last critic update
                "loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
                # filled in on the device: torch.tensor(n, device=...) would be a copy the step waits for
                "n_critic": torch.full((), float(n_critic), device=self.device)}


if __name__ == "__main__":
    raise SystemExit(common.main(WGAN, build_parser()))
