"""BEGAN — Berthelot, Schumm, Metz 2017, "BEGAN: Boundary Equilibrium Generative Adversarial
Networks" (arXiv:1703.10717): D is an autoencoder, the losses are L1 reconstruction errors,
and a proportional control k_t keeps E[L(G(z))] = γ·E[L(x)]; M_global measures convergence.
Where the paper is silent, the code follows carpedm20/BEGAN-tensorflow.

    python began.py                                   # built-in digits, 32x32, a few CPU minutes
    python began.py --path data/img_align_celeba      # any folder of images, 64x64
    python began.py --gamma 0.7                       # more diversity, less sharpness
    python began.py --resume runs/began/<run> --steps 400000
    python began.py --sample runs/began/<run> --n 64 --out grid.png

The algorithm (§3.4), one simultaneous step of both networks, z ~ U[-1, 1]:
    L(v) = |v − D(v)|                          the mean absolute reconstruction error
    L_D = L(x) − k_t·L(G(z_D)),   L_G = L(G(z_G))
    k_{t+1} = clip(k_t + λ_k·(γ·L(x) − L(G(z_G))), 0, 1),   k_0 = 0
    M_global = L(x) + |γ·L(x) − L(G(z_G))|

Departures (and choices where the paper is silent), each named where the code has it; the
evidence: docs/models/began.md#departures
- Rates 8e-5, halved every --lr-decay-every steps (carpedm20) or when M_global stalls; beta1 0.5.
- Stride-2 convolutions raise the channels (carpedm20: one layer later); kept for checkpoints.
- Glorot-uniform weights (carpedm20): with PyTorch's default init G ignores z and collapses.
- Separate z for D's negatives and G's samples, as the paper writes L_D, L_G (carpedm20: one).
- Small data sets: n 16, N_h 16, γ 1.5, λ_k 0.01, 1e-4, 2,000 steps (the paper's values collapse G).
- fashion-mnist γ 0.75; stacked-mnist γ 1, 3e-4, N_h 64: docs/models/began.md#small-data-values
- --pt-weight (not in the paper; 0.3 on the small sets, 0 on stacked-mnist): EBGAN's pull-away term.
- A warning when k_t sits at 0 or 1 for 1,000 steps: D and G are out of balance.
"""

import torch
import torch.nn as nn

import common
import kernels

# ---- hyperparameters: the paper's (§3, §4.1) unless noted; carpedm20's where it is silent ---
# The small data sets depart (with the paper's N_h, γ and λ_k G collapses to one blob there):
# docs/models/began.md#small-data-values has the runs.
Hyper = common.Hyper
HYPERPARAMETERS = dict(
    batch_size=Hyper(16, source="carpedm20's"),  # batch_size 16
    steps=Hyper(500_000, small=2000, source="carpedm20's"),  # not in the paper; max_step 500000
    z_dim=Hyper(64),  # §4.1: N_z = N_h = 64 "in most of our experiments"
    width=Hyper(128, small=16),  # n (§3.5, Fig. 1); carpedm20: conv_hidden_num 128
    g_lr=Hyper(8e-5, small=1e-4, sets={"stacked-mnist": 3e-4}),  # §4.1: an initial rate in [5e-5, 1e-4]
    d_lr=Hyper(8e-5, small=1e-4, sets={"stacked-mnist": 3e-4}),
    optimizer=Hyper("adam"),  # §4.1: Adam
    gamma=Hyper(0.5, "diversity ratio γ = E[L(G(z))] / E[L(x)]; higher: more diversity, less sharpness",
                small=1.5, sets={"fashion-mnist": 0.75, "stacked-mnist": 1.0}),  # §4.1 / Fig. 2: γ = 0.5 for most figures
    lambda_k=Hyper(0.001, "gain λ_k of the k_t control", small=0.01),  # §3.4: λ_k = 0.001
    lr_decay_every=Hyper(100_000, "halve both learning rates every this many steps; 0: never", small=0,
                         source="carpedm20's", type=common.non_negative_int),  # lr_update_step 100000
    h_dim=Hyper(None, "D's bottleneck N_h (default: --z-dim, the paper's N_h = N_z)", small=16,
                sets={"stacked-mnist": 64}, type=common.positive_int),  # §4.1; stacked: the paper's
    lr_min=Hyper(2e-5, "the halvings stop at this learning rate", source="carpedm20's"),  # lr_lower_boundary
    lr_stall_window=Hyper(0, "also halve when the mean M_global over this many steps is not 1% below the "
                          "previous window's (the paper's rule); 0: off",
                          source="carpedm20's, whose code has the rule commented out", type=common.non_negative_int),
    pt_weight=Hyper(0.0, "weight of EBGAN's pull-away term on D's codes of G's samples, added to L_G "
                    "(not in the paper); 0: off", small=0.3, sets={"stacked-mnist": 0.0}, old=0.0,
                    type=common.non_negative,
                    source="off, as in the paper"),  # not in the paper
    beta1=Hyper(0.5, "Adam beta1", source="carpedm20's"),  # the paper does not give it
    beta2=Hyper(0.999, "Adam beta2", source="Adam's default"),
)
K_STUCK = 1000  # steps with k_t at 0 or 1 before the warning


def build_parser():
    return common.make_parser(__doc__, HYPERPARAMETERS, "began")


def _conv(cin, cout, stride=1):
    return [nn.Conv2d(cin, cout, 3, stride, 1), nn.ELU(inplace=True)]


def glorot_init(module: nn.Module) -> None:
    """carpedm20's initialisation (TensorFlow's defaults): Glorot-uniform weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def _scales(hw) -> int:
    """Number of scales, carpedm20's repeat_num = int(log2(H)) - 2: the smallest map has a
    short side of 8 to 14 (16 -> 2 scales of 16 and 8, 64 -> 4, 28 -> 2 of 28 and 14)."""
    return common.levels(hw)


class Decoder(nn.Module):
    """h (B, N_h) -> image (B, C, H, W) (Fig. 1): a linear map to (n, H/2^(S-1), W/2^(S-1)),
    then per scale two 3x3 convolutions with ELU and nearest-neighbour up-sampling, and a
    3x3 convolution to C channels. D's decoder, and G with weights of its own."""

    def __init__(self, h_dim, channels, hw, n):
        super().__init__()
        S = _scales(hw)
        self.n, self.h0, self.w0 = n, hw[0] >> (S - 1), hw[1] >> (S - 1)  # e.g. 8x8
        self.fc = nn.Linear(h_dim, n * self.h0 * self.w0)  # no non-linearity (§3.5)
        layers = []
        for i in range(S):
            if i:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))  # (B, n, 2h, 2w)
            layers += _conv(n, n) + _conv(n, n)
        layers.append(nn.Conv2d(n, channels, 3, 1, 1))  # (B, C, H, W), no output non-linearity
        self.net = nn.Sequential(*layers)
        glorot_init(self)

    def forward(self, h):
        return self.net(self.fc(h).view(len(h), self.n, self.h0, self.w0))


class Encoder(nn.Module):
    """image (B, C, H, W) -> h (B, N_h) (Fig. 1): a 3x3 convolution to n channels, then per
    scale two 3x3 convolutions with ELU and, but at the last scale, a stride-2 3x3
    convolution that adds n channels (n, 2n, 3n, ...); a linear map to h."""

    def __init__(self, h_dim, channels, hw, n):
        super().__init__()
        S = _scales(hw)
        layers = _conv(channels, n)
        for i in range(1, S + 1):
            layers += _conv(i * n, i * n) + _conv(i * n, i * n)
            if i < S:  # carpedm20 keeps i·n here and raises to (i+1)·n in the next 3x3 conv (docstring)
                layers += _conv(i * n, (i + 1) * n, stride=2)  # (B, (i+1)n, H/2^i, W/2^i)
        self.net = nn.Sequential(*layers)  # (B, S·n, h0, w0)
        self.fc = nn.Linear(S * n * (hw[0] >> (S - 1)) * (hw[1] >> (S - 1)), h_dim)  # no non-linearity
        glorot_init(self)

    def forward(self, x):
        return self.fc(self.net(x).flatten(1))


class AutoEncoder(nn.Module):
    def __init__(self, h_dim, channels, hw, n):
        super().__init__()
        self.encoder = Encoder(h_dim, channels, hw, n)
        self.decoder = Decoder(h_dim, channels, hw, n)

    def forward(self, x, codes: bool = False):
        h = self.encoder(x)                          # (B, N_h)
        return (self.decoder(h), h) if codes else self.decoder(h)


class BEGAN(common.GAN):
    name = "began"
    hyperparameters = HYPERPARAMETERS
    z_prior = "uniform"  # §3.5: z ∈ [−1, 1]^N_z, uniform
    retains_graph = True  # D's backward keeps its graph for G's (one pass of D feeds both losses, train_step)

    def __init__(self, args, shape, device):
        super().__init__(args, shape, device)
        C, H, W = shape
        self.D = AutoEncoder(args.h_dim or args.z_dim, C, (H, W), self.d_width).to(device)
        self.G = Decoder(args.z_dim, C, (H, W), self.g_width).to(device)  # D's decoder's shape at --g-width, own weights
        self.opt_g = self.optimizer(self.G.parameters(), args.g_lr)  # Adam (--optimizer)
        self.opt_d = self.optimizer(self.D.parameters(), args.d_lr)
        self.k = torch.zeros((), device=device)          # k_0 = 0
        self.k_stuck = torch.zeros((), dtype=torch.long, device=device)  # steps in a row with k_t at 0 or 1
        self.m_window = torch.zeros((), device=device)   # sum of M_global over the current stall window
        self.m_prev = None                               # mean M_global of the previous window
        self.stall_halvings = 0
        self.warned = False

    def learning_rate(self, base):
        """base halved every --lr-decay-every steps and at each M_global stall, not below --lr-min
        (then, with --lr-decay linear, decayed as every model's rates are); the loop sets it before
        each train_step."""
        a = self.args
        n = (self.step // a.lr_decay_every if a.lr_decay_every else 0) + self.stall_halvings
        return super().learning_rate(max(base * 0.5 ** n, min(base, a.lr_min)))

    def train_step(self, real):
        a = self.args
        x = real()                                   # (B, C, H, W) in [-1, 1]
        B = len(x)
        z_d, z_g = self.sample_z(B), self.sample_z(B)  # (B, N_z) ~ U[−1, 1], separate draws
        with torch.no_grad():
            fake_d = self.G(z_d)                     # (B, C, H, W), D's negatives
        fake_g = self.G(z_g)                         # (B, C, H, W), G's samples

        # L(v) = |v − D(v)|^η with η = 1: the mean absolute reconstruction error   (§3.1; carpedm20)
        v = torch.cat([x, fake_d, fake_g])           # (3B, C, H, W)
        v = self.aug(v)  # --augment: each loss on the augmented images
        recon, h = self.D(v, codes=True)             # (3B, C, H, W), (3B, N_h): D's codes too
        l_real, l_fake_d, l_fake_g = (v - recon.float()).abs().flatten(1).mean(1).view(3, B).mean(1)
        # L_D = L(x) − k_t·L(G(z_D))   for θ_D;   L_G = L(G(z_G))   for θ_G   (§3.4),
        # one simultaneous step: D's gradient from L_D only, G's from L_G only.
        loss_d = l_real - self.k * l_fake_d
        loss_g = l_fake_g
        pt = None
        if a.pt_weight:  # not in the paper: + λ_PT·f_PT(S), EBGAN's pull-away term (Zhao et al. 2017,
            pt = kernels.pullaway(h[2 * B:])  # Eq. 14) on S = D's codes of G(z_G), in G's loss only;
            # under torchrun over this rank's B codes (N = B), as ebgan.py's: K ranks of B differ from one of K·B
            loss_g = loss_g + a.pt_weight * pt
        self.opt_d.zero_grad(set_to_none=True)
        self.opt_g.zero_grad(set_to_none=True)
        self.backward(loss_d, self.opt_d, inputs=list(self.D.parameters()), retain_graph=True)
        self.backward(loss_g, self.opt_g, inputs=list(self.G.parameters()))
        self.step_optimizer(self.opt_d)
        self.step_optimizer(self.opt_g)

        # k_{t+1} = clip(k_t + λ_k·(γ·L(x) − L(G(z_G))), 0, 1)   (§3.4; k_t ∈ [0, 1]);
        # under torchrun from the means over all ranks, so that every rank keeps the same k_t
        l_real, l_fake_g = self.all_mean(l_real.detach()), self.all_mean(l_fake_g.detach())
        balance = (a.gamma * l_real - l_fake_g).detach()
        self.k = (self.k + a.lambda_k * balance).clamp(0.0, 1.0)
        # M_global = L(x) + |γ·L(x) − L(G(z_G))|   (§3.4.1)
        m_global = l_real.detach() + balance.abs()
        self._watch(m_global)

        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
                "k_t": self.k,                        # after this step's update; healthy: off 0 and 1
                "m_global": m_global,                 # falls as training converges
                "loss_real": l_real.detach(),         # L(x)
                "loss_fake": l_fake_g.detach(),       # L(G(z_G))
                "balance": balance,                   # γ·L(x) − L(G(z)), k_t's input; ~0 at equilibrium
                **({"pt": pt.detach()} if pt is not None else {})}  # f_PT: 0 orthogonal codes, 1 identical

    def _watch(self, m_global):
        """The stall rule and the k_t warning. They read values back from the device only every
        --log-every steps (when the training loop waits for the device anyway)."""
        a, step = self.args, self.step + 1
        self.k_stuck = torch.where((self.k == 0) | (self.k == 1), self.k_stuck + 1, torch.zeros_like(self.k_stuck))
        if step % a.log_every == 0:
            stuck = int(self.k_stuck)
            if stuck >= K_STUCK and not self.warned:
                self.warn(f"k_t has sat at {float(self.k):g} for {stuck} steps (step {step}): D and G are out "
                          "of balance; a lower learning rate or another --gamma may help")
            self.warned = stuck >= K_STUCK
        if a.lr_stall_window:
            self.m_window = self.m_window + m_global
            if step % a.lr_stall_window == 0:
                mean = float(self.m_window) / a.lr_stall_window
                if self.m_prev is not None and mean > 0.99 * self.m_prev:
                    self.stall_halvings += 1
                self.m_prev, self.m_window = mean, torch.zeros_like(self.m_window)

    def extra_state(self):
        return {"k": self.k.cpu(), "k_stuck": self.k_stuck.cpu(), "m_window": self.m_window.cpu(),
                "m_prev": self.m_prev, "stall_halvings": self.stall_halvings, "warned": self.warned}

    def load_extra_state(self, state):
        self.k = state["k"].to(self.device)
        self.k_stuck = state["k_stuck"].to(self.device)
        self.m_window = state["m_window"].to(self.device)
        self.m_prev, self.stall_halvings, self.warned = state["m_prev"], state["stall_halvings"], state["warned"]


if __name__ == "__main__":
    raise SystemExit(common.main(BEGAN, build_parser()))
