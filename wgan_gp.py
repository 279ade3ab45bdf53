"""WGAN-GP — Gulrajani, Ahmed, Arjovsky, Dumoulin, Courville 2017, "Improved Training of
Wasserstein GANs" (arXiv:1704.00028), Algorithm 1, with the networks of the authors' code
(github.com/igul222/improved_wgan_training, gan_64x64.py).

    python wgan_gp.py                                 # built-in digits, 32x32, a few CPU minutes
    python wgan_gp.py --path data/lsun_bedroom        # any folder of images, 64x64
    python wgan_gp.py --path data/lsun_bedroom --arch resnet   # the paper's ResNet (appendix)
    python wgan_gp.py --resume runs/wgan_gp/<run> --steps 40000
    python wgan_gp.py --sample runs/wgan_gp/<run> --n 64 --out grid.png

The critic D minimises E[D(G(z))] - E[D(x)] + lambda E[(||grad D(x^)||_2 - 1)^2] at points x^
drawn uniformly on lines between real and generated samples; the generator minimises
-E[D(G(z))]. Logged: `wasserstein` (E[D(x)] - E[D(G(z))], which should fall as samples
improve), `gp` (the penalty, before lambda) and `grad_norm` (the mean ||grad D(x^)||, which
sits near 1 in a healthy run). --arch dcgan: the DCGAN stack, layer normalisation in the
critic (the default, the cheaper on a CPU); --arch resnet: the authors' 64x64 "Good" ResNet.

Departures, each named where the code has it; the evidence: docs/models/wgan_gp.md#departures
- --arch dcgan is common.py's DCGAN stack (4x4 kernels), not the authors' TensorFlow variant.
- Its critic's first convolution and output have no bias (dcgan.torch's; the output's cancels).
- --augment: x^ between the un-augmented images, the critic sees T(x^), the gradient through T.
- Small data sets: width 32 and 600 updates (minutes on a CPU); a folder run: 200,000 updates.
- fashion-mnist 3,000 updates, stacked-mnist 4,000 at width 64: docs/models/wgan_gp.md#small-data-values
- Sample grids use BatchNorm's running statistics (eval mode), as in dcgan.py.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import kernels

# ---- hyperparameters: the paper's (Algorithm 1) and the authors' code (gan_64x64.py) -----
Hyper = common.Hyper
HYPERPARAMETERS = dict(
    batch_size=Hyper(64),  # Algorithm 1's m; the authors' code: BATCH_SIZE = 64
    # ITERS = 200000 generator iterations; the small sets, fashion-mnist and stacked-mnist: see the docstring
    steps=Hyper(200_000, small=600, sets={"fashion-mnist": 3000, "stacked-mnist": 4000}, source="the authors' code"),
    z_dim=Hyper(128, source="the authors' code"),  # noise = tf.random_normal([n_samples, 128])
    # DIM = 64; 32 on the small sets, but 64 on stacked-mnist (three digits an image; see the docstring)
    width=Hyper(64, small=32, sets={"stacked-mnist": 64}, source="the authors' code"),
    g_lr=Hyper(1e-4),  # Algorithm 1: alpha = 0.0001 (Adam)
    d_lr=Hyper(1e-4),
    optimizer=Hyper("adam"),  # Algorithm 1: Adam
    arch=Hyper("dcgan", "networks: the DCGAN stack, or the paper's ResNet (appendix; the authors' gan_64x64.py)",
               choices=("dcgan", "resnet"), source="not the paper's ResNet: the cheaper of the two on a CPU"),
    critic_norm=Hyper("layer", "normalisation in the critic (never BatchNorm)", choices=("layer", "none")),  # §4
    gp_lambda=Hyper(10.0, "gradient penalty weight lambda"),  # Algorithm 1: lambda = 10
    n_critic=Hyper(5, "critic updates per generator update", type=common.positive_int),  # Algorithm 1: n_critic = 5
    beta1=Hyper(0.0, "Adam beta1"),  # Algorithm 1: beta1 = 0, beta2 = 0.9
    beta2=Hyper(0.9, "Adam beta2"),
)


def build_parser():
    return common.make_parser(__doc__, HYPERPARAMETERS, "wgan-gp")


# ---- the paper's ResNet (appendix; gan_64x64.py GoodGenerator / GoodDiscriminator) ----

def _tf_init(layer: nn.Module, he: bool) -> nn.Module:
    """The authors' tflib initialisation of a conv or linear layer: uniform with std
    sqrt(4 / (fan_in + fan_out)) ('he') or sqrt(2 / (fan_in + fan_out)) (Glorot), the fans
    counting the kernel's area; zero biases."""
    k = layer.weight[0, 0].numel() if layer.weight.dim() == 4 else 1
    fan_in, fan_out = layer.weight.shape[1] * k, layer.weight.shape[0] * k
    std = math.sqrt((4.0 if he else 2.0) / (fan_in + fan_out))
    nn.init.uniform_(layer.weight, -std * math.sqrt(3), std * math.sqrt(3))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _conv(cin, cout, k, he=True, bias=True):
    return _tf_init(nn.Conv2d(cin, cout, k, 1, k // 2, bias=bias), he)


class ResBlock(nn.Module):
    """gan_64x64.py ResidualBlock, resample 'up' or 'down' (pre-activation):
    out = shortcut(x) + conv2(relu(norm2(conv1(relu(norm1(x))))))
      up:   conv1 = upsample (nearest, x2) then 3x3 conv;  conv2 = 3x3 conv;  shortcut = upsample, 1x1 conv
      down: conv1 = 3x3 conv;  conv2 = 3x3 conv then 2x2 mean pool;  shortcut = mean pool, 1x1 conv"""

    def __init__(self, cin, cout, resample, norm):
        super().__init__()
        self.resample = resample
        mid = cout if resample == "up" else cin
        self.norm1, self.norm2 = common.norm2d(norm, cin), common.norm2d(norm, mid)
        self.conv1 = _conv(cin, mid, 3, bias=False)
        self.conv2 = _conv(mid, cout, 3)
        self.shortcut = _conv(cin, cout, 1, he=False)

    def forward(self, x):                                     # (B, cin, h, w)
        if self.resample == "up":
            up = F.interpolate(x, scale_factor=2, mode="nearest")  # (B, cin, 2h, 2w)
            h = self.conv1(F.interpolate(F.relu(self.norm1(x)), scale_factor=2, mode="nearest"))
            return self.shortcut(up) + self.conv2(F.relu(self.norm2(h)))        # (B, cout, 2h, 2w)
        h = self.conv1(F.relu(self.norm1(x)))
        h = F.avg_pool2d(self.conv2(F.relu(self.norm2(h))), 2)
        return self.shortcut(F.avg_pool2d(x, 2)) + h                            # (B, cout, h/2, w/2)


def _resnet_channels(width, L):
    """Channels of the maps from the smallest (index 0) to the image size (index L): double
    at each halving of the size, at most 8 x width. At 64x64: 8w, 8w, 4w, 2w, w (the authors')."""
    return [width * min(8, 2 ** (L - j)) for j in range(L + 1)]


class ResNetGenerator(nn.Module):
    """gan_64x64.py GoodGenerator: z -> linear -> (8w, 4, 4) -> one 'up' residual block per
    doubling -> BatchNorm, ReLU, 3x3 conv, tanh."""

    def __init__(self, z_dim, channels, hw, width=64):
        super().__init__()
        L = common.levels(hw)
        self.h0, self.w0 = hw[0] >> L, hw[1] >> L
        ch = _resnet_channels(width, L)
        self.input = _tf_init(nn.Linear(z_dim, ch[0] * self.h0 * self.w0), he=False)
        self.blocks = nn.Sequential(*[ResBlock(ch[j], ch[j + 1], "up", "batch") for j in range(L)])
        self.out = nn.Sequential(nn.BatchNorm2d(ch[L]), nn.ReLU(), _conv(ch[L], channels, 3), nn.Tanh())

    def forward(self, z):                                     # (B, z_dim)
        x = self.input(z).view(len(z), -1, self.h0, self.w0)  # (B, 8w, h0, w0)
        return self.out(self.blocks(x))                       # (B, C, H, W)


class ResNetCritic(nn.Module):
    """gan_64x64.py GoodDiscriminator: 3x3 conv to w channels -> one 'down' residual block per
    halving -> linear to one score (B,). Layer normalisation in the blocks, as the authors'
    code does for WGAN-GP (or none)."""

    def __init__(self, channels, hw, width=64, norm="layer"):
        super().__init__()
        L = common.levels(hw)
        ch = _resnet_channels(width, L)[::-1]                 # w, 2w, 4w, 8w, 8w at 64x64
        self.input = _conv(channels, ch[0], 3, he=False)
        self.blocks = nn.Sequential(*[ResBlock(ch[j], ch[j + 1], "down", norm) for j in range(L)])
        self.head = _tf_init(nn.Linear(ch[L] * (hw[0] >> L) * (hw[1] >> L), 1), he=False)

    def forward(self, x):                                     # (B, C, H, W)
        h = self.blocks(self.input(x))                        # (B, 8w, h0, w0)
        return self.head(h.flatten(1)).view(len(x)).float()   # (B,), fp32 under --amp


class WGANGP(common.GAN):
    name = "wgan_gp"
    hyperparameters = HYPERPARAMETERS
    double_backward = True  # the penalty differentiates the critic twice: --compile leaves it eager

    def __init__(self, args, shape, device):
        super().__init__(args, shape, device)
        C, H, W = shape
        if args.arch == "resnet":
            self.G = ResNetGenerator(args.z_dim, C, (H, W), self.g_width).to(device)
            self.D = ResNetCritic(C, (H, W), self.d_width, norm=args.critic_norm).to(device)
        else:
            # The generator keeps BatchNorm; the critic must not have it (§4: the penalty is per
            # sample, and batch statistics make each sample's score depend on the others).
            self.G = common.DCGANGenerator(args.z_dim, C, (H, W), self.g_width, norm="batch").to(device)
            self.D = common.DCGANDiscriminator(C, (H, W), self.d_width, norm=args.critic_norm).to(device)
        self.opt_g = self.optimizer(self.G.parameters(), args.g_lr)  # Adam (--optimizer)
        self.opt_d = self.optimizer(self.D.parameters(), args.d_lr)

    def penalty(self, x, fake):
        """The penalty (before lambda) at x^ between x and x~, and each sample's gradient norm (B,)."""
        # Algorithm 1, lines 4-6: eps ~ U[0, 1], one per sample (not per pixel), and
        # x^ = eps x + (1 - eps) x~, written x + eps (x~ - x) as in the authors' code (the same law)
        eps = self.rand(len(x), 1, 1, 1)                       # (B, 1, 1, 1)
        x_hat = (x + eps * (fake.float() - x)).requires_grad_(True)  # (B, C, H, W), fp32
        # grad_x^ D(x^), kept in the graph (create_graph) so that the penalty reaches D's weights;
        # under --amp this pass runs in fp32, so the gradient and its norm are fp32
        with common.full_precision(x.device):
            grad, = torch.autograd.grad(self.D(self.aug(x_hat)).sum(), x_hat, create_graph=True)  # (B, C, H, W)
        # Eq. 3: E[(||grad_x^ D(x^)||_2 - 1)^2], each norm over all of a sample's (C, H, W)
        gp = kernels.gradient_penalty(grad, target=1.0)
        with torch.no_grad():
            norms = grad.flatten(1).norm(dim=1)                # (B,), for the log only
        return gp, norms

    def train_step(self, real):
        for _ in range(self.args.n_critic):
            x = real()                                         # (B, C, H, W) in [-1, 1], fresh each time
            B = len(x)
            with torch.no_grad():
                fake = self.G(self.sample_z(B))                # (B, C, H, W)
            # Algorithm 1, line 7: L = D(x~) - D(x) + lambda (||grad D(x^)||_2 - 1)^2, batch mean
            wasserstein = self.D(self.aug(x)).mean() - self.D(self.aug(fake)).mean()
            gp, norms = self.penalty(x, fake)
            loss_d = -wasserstein + self.args.gp_lambda * gp
            self.update(self.opt_d, loss_d)

        # Generator: minimise -E[D(G(z))]   (Algorithm 1, lines 11-12), a fresh batch of z
        z = self.sample_z(self.args.batch_size)                # (B, z_dim)
        loss_g = -self.D(self.aug(self.G(z))).mean()
        self.update(self.opt_g, loss_g)

        return {"wasserstein": wasserstein.detach(),           # E[D(x)] - E[D(G(z))], last critic update
                "gp": gp.detach(), "grad_norm": norms.mean(),  # mean ||grad D(x^)||, near 1 when healthy
                "loss_d": loss_d.detach(), "loss_g": loss_g.detach()}


if __name__ == "__main__":
    raise SystemExit(common.main(WGANGP, build_parser()))
