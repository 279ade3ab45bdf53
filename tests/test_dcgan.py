"""dcgan.py and the DCGAN conv stack of common.py: the networks built from the image size, the
paper's initialisation and layers, and the losses at a known point."""
import numpy as np
import pytest
import torch

import common
import dcgan
from ganzoo.data import resolve_data_args


def test_dcgan_builds_from_the_size():
    for hw in [(16, 16), (32, 32), (64, 64), (16, 32), (128, 256), (64, 16)]:
        G = common.DCGANGenerator(100, 3, hw, width=4)
        D = common.DCGANDiscriminator(3, hw, width=4)
        x = G(torch.randn(2, 100))
        assert x.shape == (2, 3) + hw and x.abs().max() <= 1
        assert D(x).shape == (2,)
    G = common.DCGANGenerator(100, 3, (64, 64), width=64)  # the paper's 512-256-128-64 at 64x64
    chans = [m.out_channels for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert chans == [512, 256, 128, 64, 3]


def test_dcgan_init_and_layers():
    torch.manual_seed(0)
    D = common.DCGANDiscriminator(3, (64, 64), width=64)
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    w = torch.cat([c.weight.flatten() for c in convs])
    assert abs(w.mean()) < 1e-3 and abs(w.std() - 0.02) < 1e-3
    bns = [m for m in D.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == len(convs) - 2  # no BatchNorm on the first layer, nor on the output
    g = torch.cat([b.weight for b in bns])
    assert abs(g.mean() - 1) < 5e-3 and abs(g.std() - 0.02) < 5e-3
    assert all(c.kernel_size == (4, 4) for c in convs[:-1])
    assert [type(m) for m in D.features][:2] == [torch.nn.Conv2d, torch.nn.LeakyReLU]


def test_dcgan_losses_known_values():
    """With D's output layer zeroed every logit is 0, D(x) = 1/2: the D loss is
    -log(1/2) - log(1/2) = 2 log 2 and the non-saturating G loss is -log(1/2) = log 2."""
    args = dcgan.build_parser().parse_args(["--width", "4", "--image-size", "16"])
    resolve_data_args(args)
    m = dcgan.DCGAN(args, (1, 16, 16), torch.device("cpu"))
    torch.nn.init.zeros_(m.D.head.weight)
    out = m.train_step(lambda: torch.rand(8, 1, 16, 16) * 2 - 1)
    assert out["loss_d"].item() == pytest.approx(2 * np.log(2), abs=1e-6)
    assert out["d_real"].item() == pytest.approx(0.5)
    # G's loss is measured after D's update moved the head a little: close to log 2
    assert out["loss_g"].item() == pytest.approx(np.log(2), abs=0.05)


def test_discriminator_biases_per_normalisation():
    """Bias presence of the shared D against dcgan.torch's netD (no bias anywhere with BatchNorm)
    and, for the critics without BatchNorm (WGAN-GP's layer norm, DRAGAN's none), biases in the
    middle convolutions only: the first conv and the head keep dcgan.torch's bias-free layers
    (the departure WGAN-GP's and DRAGAN's docstrings name; their TF code has biases everywhere)."""
    for norm, middle in (("batch", False), ("layer", True), ("none", True)):
        D = common.DCGANDiscriminator(3, (32, 32), width=4, norm=norm)
        convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
        assert [c.bias is not None for c in convs] == [False, middle, middle, False], norm
        assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 4), (4, 8), (8, 16), (16, 1)]
