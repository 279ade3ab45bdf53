"""What the seven model files share, and nothing more. A model file (dcgan.py, lsgan.py,
wgan.py, wgan_gp.py, dragan.py, ebgan.py, began.py) owns its paper: its networks when the
paper defines its own, losses, optimizers and update rule. From here it takes:

    GAN                 the interface a model implements: networks G and D, optimizers,
                        train_step(); update() steps an optimizer (fp16 scaling, torchrun
                        gradient averaging), sample_z()/rand()/randn() draw the noise
    DCGANGenerator      the DCGAN conv stack (Radford et al. 2015) that DCGAN, LSGAN, WGAN,
    DCGANDiscriminator  WGAN-GP and DRAGAN share, with dcgan_init(), norm2d(), levels()
    Hyper, make_parser  a model's hyperparameters, each declared once (paper default,
                        small-data value, source, help); the parser built from them
    main()              the entry point: train, or --sample; bad input -> one line, exit 2

Everything the same for all seven (data, batches, the loop, checkpoints, scale...) is in ganzoo/.
"""
from __future__ import annotations

import sys

import torch
import torch.nn as nn

from ganzoo.cli import (VALID_SIDES, Hyper, explicit_flags, make_parser, non_negative, non_negative_int, positive_int,
                        side_levels)
from ganzoo.augment import diffaug
from ganzoo.errors import Diverged, Fault, Interrupted, RankLost, UserError
from ganzoo.evaluation import training_evaluator
from ganzoo.loop import decayed_lr, train
from ganzoo.sample import sample
from ganzoo.scale import all_mean, all_reduce_grads, distributed, full_precision, leave_together, rank, world

__all__ = ["GAN", "DCGANGenerator", "DCGANDiscriminator", "dcgan_init", "norm2d", "levels", "Hyper",
           "make_parser", "positive_int", "non_negative_int", "non_negative", "full_precision", "decayed_lr", "main"]


# --------------------------------------------------------------------------------------
# The model interface
# --------------------------------------------------------------------------------------

def _params(opt: torch.optim.Optimizer) -> list:
    """The parameters an optimizer steps, in its order."""
    return [p for g in opt.param_groups for p in g["params"]]


class GAN:
    """What a model file defines (one subclass): networks self.G and self.D, optimizers
    self.opt_g and self.opt_d, and train_step(), one generator update. The rest is here.

    A model steps its optimizers with self.update(opt, loss) (or self.backward() and
    self.step_optimizer() when one pass feeds two optimizers); that is where the fp16
    gradient scaler and the gradient averaging across torchrun ranks happen. It draws its
    noise with self.sample_z(), self.rand() and self.randn(): under torchrun every rank draws
    the whole global batch from the same stream and keeps its own slice, so K ranks of batch B
    draw exactly what one process of batch K·B draws."""

    name = "gan"
    hyperparameters: dict = {}  # {flag name: Hyper}: the model file's declaration
    z_prior = "normal"  # or "uniform" (U[-1, 1], BEGAN)
    min_batch = 1  # the smallest batch the model's losses are defined for
    double_backward = False  # True: a gradient penalty differentiates D twice (--compile leaves D eager)
    retains_graph = False  # True: a backward keeps its graph for another (--compile then turns off donated buffers)

    def __init__(self, args, shape, device):
        self.args, self.shape, self.device = args, shape, device
        self.g_width, self.d_width = args.g_width, args.d_width  # resolve_data_args: --width unless given
        self.step = 0  # generator updates done; the training loop sets it before each step
        self.G_ema = None  # --ema: the moving average of G (ganzoo.scale.prepare_model() makes it)
        self.scalers = {}  # --amp fp16: one gradient scaler per optimizer name

    def train_step(self, real) -> dict:
        """One generator update (and the critic updates before it). `real()` returns the next
        batch of real images. Returns the scalars to log, as tensors (no .item(): the loop
        reads them only every --log-every steps, so the GPU is never waited on)."""
        raise NotImplementedError

    # ---- noise ---------------------------------------------------------------------------
    def _draw(self, fn, n, shape, generator=None, device=None):
        device = device or self.device
        w = world() if generator is None else 1
        x = fn((n * w, *shape), generator=generator, device=device)
        return x if w == 1 else x[rank() * n:(rank() + 1) * n]

    def rand(self, n, *shape):
        """U[0, 1) of shape (n, *shape): this rank's slice of a global draw."""
        return self._draw(torch.rand, n, shape)

    def randn(self, n, *shape):
        """N(0, 1) of shape (n, *shape): this rank's slice of a global draw."""
        return self._draw(torch.randn, n, shape)

    def sample_z(self, n, generator=None, device=None):
        if self.z_prior == "uniform":
            return self._draw(torch.rand, n, (self.args.z_dim,), generator, device) * 2 - 1
        return self._draw(torch.randn, n, (self.args.z_dim,), generator, device)

    # ---- updates -------------------------------------------------------------------------
    def optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        """The optimizer --optimizer names (the paper's by default) for params: Adam with
        (--beta1, --beta2), RMSProp or SGD, each with PyTorch's other defaults."""
        a = self.args
        if a.optimizer == "adam":  # on CUDA the fused kernel (one launch a step; the same update)
            return torch.optim.Adam(params, lr=lr, betas=(a.beta1, a.beta2),
                                    fused=True if self.device.type == "cuda" else None)
        if a.optimizer == "rmsprop":
            return torch.optim.RMSprop(params, lr=lr)
        if a.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr)
        raise UserError(f"unknown optimizer {a.optimizer!r} (adam, rmsprop or sgd)")

    def learning_rate(self, base: float) -> float:
        """The rate, at this step, of an optimizer whose --g-lr / --d-lr is base (the loop sets both
        before train_step): --lr-decay's schedule. A model with a schedule of its own overrides it."""
        return decayed_lr(self.args, base, self.step)

    def _scaler(self, opt):
        return next((self.scalers.get(k) for k, o in self.optimizers().items() if o is opt), None)

    def backward(self, loss, opt, **kw):
        """loss.backward(**kw) outside autocast, scaled by opt's gradient scaler under fp16."""
        scaler = self._scaler(opt)
        with full_precision(self.device):
            (scaler.scale(loss) if scaler else loss).backward(**kw)

    def step_optimizer(self, opt):
        """Average the gradients over the ranks, then step (through the scaler under fp16)."""
        all_reduce_grads(_params(opt))
        scaler = self._scaler(opt)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()

    def update(self, opt, loss, **kw):
        """One optimizer step on loss: zero the gradients, backward, average, step. The backward
        pass computes the gradients of opt's parameters only: G's loss runs through D, and D's
        weight gradients from it would be thrown away (D's next update zeroes them first), so
        they are not computed (with bf16 on the CPU DCGAN steps 1.1x faster; the same numbers)."""
        opt.zero_grad(set_to_none=True)
        kw.setdefault("inputs", _params(opt))
        self.backward(loss, opt, **kw)
        self.step_optimizer(opt)

    def aug(self, x: torch.Tensor) -> torch.Tensor:
        """What D sees of an image batch: x itself, or with --augment its DiffAugment (Zhao et
        al. 2020) under the policy named, the same ops for real and fake images, differentiable for G."""
        a = self.args
        return x if getattr(a, "augment", "none") == "none" else diffaug(x, policy=a.augment, p=getattr(a, "augment_p", 1.0))

    def all_mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of t over the ranks (t itself in one process), for the update rule's statistics (BEGAN's k_t)."""
        return all_mean(t)

    def warn(self, text: str) -> None:
        """A warning line on stderr, from rank 0 only under torchrun."""
        if rank() == 0:
            print(f"{self.name}: {text}", file=sys.stderr)

    # ---- what the loop saves and samples from -----------------------------------------------
    def generator_for_sampling(self) -> nn.Module:
        return self.G_ema if self.G_ema is not None else self.G

    def networks(self) -> dict:
        """The networks by name, as the checkpoint holds them: G, D and (with --ema) G_ema."""
        nets = {"G": self.G, "D": self.D}
        return nets if self.G_ema is None else {**nets, "G_ema": self.G_ema}

    def optimizers(self) -> dict:
        return {"G": self.opt_g, "D": self.opt_d}

    def extra_state(self) -> dict:
        """The model's own state for the checkpoint (tensors and plain values), e.g. k_t."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass


# --------------------------------------------------------------------------------------
# The DCGAN conv stack (Radford et al. 2015), shared by DCGAN, LSGAN, WGAN, WGAN-GP, DRAGAN
# --------------------------------------------------------------------------------------

def levels(hw) -> int:
    """Number of stride-2 stages between the smallest map and the image. Each side is
    h0·2^k with h0 in 4..7 (ganzoo.cli.image_size checks it); the stages are the smaller k,
    so the smallest map's short side is 4 to 7: 4x4 at 64x64, 7x7 at 28x28, 4x8 at 128x256."""
    ks = [side_levels(s) for s in hw]
    if None in ks:
        raise ValueError(f"no conv stack for size {hw}: each side must be {VALID_SIDES}")
    return min(ks)


def norm2d(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "layer":  # normalises each sample over (C, H, W), per-channel affine
        return nn.GroupNorm(1, ch)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {kind!r}")


class DCGANGenerator(nn.Module):
    """z (B, z_dim) -> image (B, C, H, W) in [-1, 1]. Radford et al. 2015, §3 and Fig. 1:
    fractionally-strided 4x4 convolutions, BatchNorm + ReLU on every layer but the output,
    tanh output. Width halves at each stage; `width` is the channels of the last hidden
    layer (the authors' ngf; 64 at 64x64 gives 512-256-128-64)."""

    def __init__(self, z_dim, channels, hw, width=64, norm="batch"):
        super().__init__()
        L = levels(hw)
        h0, w0 = hw[0] >> L, hw[1] >> L  # smallest map, e.g. 4x4
        ch = width * 2 ** (L - 1)
        layers = [nn.ConvTranspose2d(z_dim, ch, (h0, w0), 1, 0, bias=False),  # (B, ch, h0, w0)
                  norm2d(norm, ch), nn.ReLU(True)]
        for _ in range(L - 1):  # each stage doubles H and W, halves the channels
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), norm2d(norm, ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]  # (B, C, H, W)
        self.net = nn.Sequential(*layers)
        self.z_dim = z_dim
        dcgan_init(self)

    def forward(self, z):
        return self.net(z.view(len(z), -1, 1, 1))


class DCGANDiscriminator(nn.Module):
    """image (B, C, H, W) -> one score per image (B,): a logit, a critic value or an LSGAN
    output, as the loss wants; no sigmoid here. Radford et al. 2015: strided 4x4
    convolutions, LeakyReLU(0.2), BatchNorm on every layer but the first (norm='batch');
    WGAN-GP and DRAGAN pass norm='layer' or 'none' (a per-sample gradient penalty is not
    valid with batch statistics)."""

    def __init__(self, channels, hw, width=64, norm="batch"):
        super().__init__()
        L = levels(hw)
        h0, w0 = hw[0] >> L, hw[1] >> L
        ch = width
        layers = [nn.Conv2d(channels, ch, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]  # (B, w, H/2, W/2)
        for _ in range(L - 1):  # each stage halves H and W, doubles the channels
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=norm != "batch"), norm2d(norm, ch * 2),
                       nn.LeakyReLU(0.2, True)]
            ch *= 2
        self.features = nn.Sequential(*layers)  # (B, ch, h0, w0)
        self.head = nn.Conv2d(ch, 1, (h0, w0), 1, 0, bias=False)  # (B, 1, 1, 1)
        dcgan_init(self)

    def forward(self, x):
        return self.head(self.features(x)).view(len(x)).float()  # fp32 scores under --amp


def dcgan_init(module: nn.Module) -> None:
    """Radford et al. 2015 §4: weights ~ N(0, 0.02); the authors' code draws BatchNorm
    scales ~ N(1, 0.02) and sets biases to 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------

def main(model_cls, parser, argv=None) -> int:
    """Parse, then train (or sample). Bad input: one line, exit 2; diverged (from rank 0 only under
    torchrun), a fault or a lost rank: one line, exit 1; stopped by SIGINT/SIGTERM: 130/143 (train's)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    try:
        if args.sample:
            return sample(model_cls, args)
        if args.interpolate:
            raise UserError("--interpolate goes with --sample CHECKPOINT")
        code = train(model_cls, args, explicit_flags(parser, argv), make_evaluator=training_evaluator)
        leave_together()
        return code
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:  # every rank stops at the same step (the ranks agree on divergence)
        if rank() == 0:
            print(f"{parser.prog}: {e}", file=sys.stderr)
        leave_together()
        return 1
    except Fault as e:  # a full disk, an unwritable file: the last good checkpoint is kept
        if not isinstance(e, RankLost):  # torchrun: a lost rank's line is printed where it was seen
            print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # a second Ctrl-C, or one outside the training loop
        print(f"{parser.prog}: {e if isinstance(e, Interrupted) else 'interrupted'}", file=sys.stderr)
        return 130
    finally:
        if distributed():
            torch.distributed.destroy_process_group()
