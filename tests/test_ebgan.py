"""ebgan.py: the pull-away term on known inputs (through kernels.pullaway), the hinge per
sample at the margin, the pull-away term in G's loss only, the margin in the units of the
energy, both kernel paths, and the script end to end (32x32, non-square, resume, --sample)."""
import json
import math

import pytest
import torch
import torch.nn as nn
from PIL import Image

import ebgan
import kernels
from conftest import run_main, run_script
from ganzoo.cli import image_size
from ganzoo.data import resolve_data_args


def weights(run_dir):
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    return ck, {f"{n}.{k}": v for n, sd in ck["nets"].items() for k, v in sd.items()}


def make(*argv, hw=(16, 16), channels=1):
    args = ebgan.build_parser().parse_args(["--width", "4", "--image-size", f"{hw[0]}x{hw[1]}", *argv])
    resolve_data_args(args)
    return ebgan.EBGAN(args, (channels,) + hw, torch.device("cpu"))


def tiny(out, size="16", steps=2, every=2):
    return ["--steps", steps, "--batch-size", "4", "--width", "4", "--image-size", size, "--log-every", 1,
            "--sample-every", every, "--checkpoint-every", every, "--no-progress", "--out", out]


# ---- the pull-away term f_PT (Eq. 14), on encoder-shaped codes (N, C, h, w) -----------------

def test_pullaway_known_values():
    orthogonal = torch.eye(4).view(4, 1, 2, 2)
    assert kernels.pullaway(orthogonal).item() == pytest.approx(0, abs=1e-7)
    same = torch.randn(1, 3, 2, 2).expand(5, 3, 2, 2)
    assert kernels.pullaway(same).item() == pytest.approx(1, rel=1e-6)
    # rows [1,0], [1,1], [0,1]: cos² = 1/2, 0, 1/2 over the 3 pairs, each counted twice: 2 / (3·2)
    assert kernels.pullaway(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])).item() == pytest.approx(1 / 3)
    # opposite rows: cos = −1, squared 1 (without the square the term would be −1)
    assert kernels.pullaway(torch.tensor([[1.0, 2.0], [-1.0, -2.0]])).item() == pytest.approx(1)


def test_pullaway_is_scale_invariant():
    s = torch.randn(6, 4, 2, 2)
    scaled = s.clone()
    scaled[2] *= 37.0
    scaled[4] *= 1e-3
    assert kernels.pullaway(scaled).item() == pytest.approx(kernels.pullaway(s).item(), rel=1e-5)


def test_pullaway_needs_two_codes():
    with pytest.raises(ValueError, match="at least 2 samples"):
        kernels.pullaway(torch.randn(1, 8, 2, 2))


def test_model_pullaway_on_identical_fakes_is_one():
    """A generator that draws the same image for every z gives identical encoder codes: f_PT = 1."""
    torch.manual_seed(0)
    m = make()
    nn.init.zeros_(m.G.net[-2].weight)        # G's last deconvolution: every fake is tanh(0) = 0
    nn.init.constant_(m.D.encoder[-2].bias, 1.0)  # the code after the last BatchNorm: 1, not 0
    out = m.train_step(lambda: torch.rand(4, 1, 16, 16) * 2 - 1)
    assert out["pt"].item() == pytest.approx(1, rel=1e-5)


# ---- the losses (Eq. 1, 2, 13) ------------------------------------------------------------

class FixedG(nn.Module):
    """A generator that returns given images."""

    def __init__(self, images):
        super().__init__()
        self.images, self.p = images, nn.Parameter(torch.zeros(()))

    def forward(self, z):
        return self.images + self.p


@pytest.mark.parametrize("energy, margin, scale", [("l2", 8.0, lambda c: 16 * c), ("mse", 0.25, lambda c: c * c)])
def test_hinge_is_per_sample_and_clamps_at_the_margin(energy, margin, scale):
    """With D's last layer zeroed, D reconstructs 0 and D(x) is ||x|| (16 c for a constant 16x16
    image c) or mean(x²) = c². Fakes on both sides of the margin: only those below it count."""
    torch.manual_seed(0)
    m = make("--energy", energy, "--margin", str(margin))
    nn.init.zeros_(m.D.decoder[-1].weight)
    nn.init.zeros_(m.D.decoder[-1].bias)
    c = torch.tensor([0.1, 0.2, 0.6, 0.9])
    m.G = FixedG(c.view(4, 1, 1, 1).expand(4, 1, 16, 16))
    out = m.train_step(lambda: torch.full((4, 1, 16, 16), 0.5))
    e_fake = scale(c)
    hinge = (margin - e_fake).clamp(min=0).mean().item()
    assert (e_fake < margin).any() and (e_fake > margin).any()
    assert hinge != pytest.approx(max(0.0, margin - e_fake.mean().item()))  # not the hinge of the mean
    assert out["d_real"].item() == pytest.approx(scale(torch.tensor(0.5)).item(), rel=1e-6)
    assert out["d_fake"].item() == pytest.approx(e_fake.mean().item(), rel=1e-6)
    assert out["hinge"].item() == pytest.approx(hinge, rel=1e-6)
    assert out["loss_d"].item() == pytest.approx(out["d_real"].item() + hinge, rel=1e-6)


def test_pullaway_is_in_g_loss_only():
    """Same weights, same batch, same z: the PT weight changes G's loss by Δλ·f_PT and G's update,
    and leaves D's loss and D's update untouched."""
    batch = torch.rand(4, 1, 16, 16) * 2 - 1
    runs = []
    for w in ("0", "0.5"):
        torch.manual_seed(0)
        m = make("--pt-weight", w)
        torch.manual_seed(1)
        runs.append((m, m.train_step(lambda: batch)))
    (m0, a), (m1, b) = runs
    assert a["loss_d"] == b["loss_d"] and a["pt"] == b["pt"] and a["pt"] > 0
    assert b["loss_g"].item() - a["loss_g"].item() == pytest.approx(0.5 * a["pt"].item(), rel=1e-4)
    assert all(torch.equal(p, q) for p, q in zip(m0.D.state_dict().values(), m1.D.state_dict().values()))
    assert not all(torch.equal(p, q) for p, q in zip(m0.G.parameters(), m1.G.parameters()))


def test_margin_defaults_are_the_papers_in_each_energy():
    assert ebgan.default_margin("mnist", (1, 28, 28), "l2") == pytest.approx(10)    # §4.1
    assert ebgan.default_margin("folder", (3, 64, 64), "l2") == pytest.approx(20)   # CelebA
    assert ebgan.default_margin("digits", (1, 28, 28), "mse") == pytest.approx(100 / 784)  # m² / (C·H·W)
    assert ebgan.default_margin("digits", (1, 32, 32), "l2") == pytest.approx(10 * 32 / 28)
    assert make().args.margin == pytest.approx(10 * 16 / 28)  # resolved into the config
    assert make("--margin", "3.5").args.margin == 3.5


@pytest.mark.parametrize("hw", [(16, 16), (32, 32), (16, 32), (64, 32)])
def test_autoencoder_shapes(hw):
    m = make(hw=hw, channels=3)
    x = torch.rand(2, 3, *hw) * 2 - 1
    recon, s = m.D(x)
    assert recon.shape == x.shape and s.shape == (2, 16, hw[0] // 8, hw[1] // 8)
    assert m.G(m.sample_z(2)).shape == x.shape


def test_both_kernel_paths_give_the_same_losses(monkeypatch):
    """The pull-away term goes through kernels: forcing the Triton path (interpreted on the CPU)
    and the reference gives the same losses on the same batch and weights."""
    pytest.importorskip("triton")
    batch = torch.rand(4, 1, 16, 16) * 2 - 1
    out = {}
    for path in ("reference", "triton"):
        monkeypatch.setenv("GAN_KERNELS", path)
        torch.manual_seed(0)
        m = make()
        torch.manual_seed(1)
        out[path] = m.train_step(lambda: batch)
        assert kernels.last_path() == path
    for k in ("loss_d", "loss_g", "pt"):
        assert out["triton"][k].item() == pytest.approx(out["reference"][k].item(), abs=1e-5), k


# ---- the script --------------------------------------------------------------------------

@pytest.mark.parametrize("size", ["32", "16x32"])
def test_smoke_subprocess(tmp_path, size):
    out = tmp_path / "run"
    r = run_script("ebgan.py", *tiny(out, size))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("loss_d", "loss_g", "d_real", "d_fake", "hinge", "pt", "lr_g", "lr_d"):
        assert math.isfinite(rows[-1][key]), key
    assert 0 <= rows[-1]["pt"] <= 1 and rows[-1]["lr_g"] == 1e-3
    h, w = image_size(size)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["energy"] == "l2" and cfg["margin"] == pytest.approx(10 / 28 * math.sqrt(h * w))
    assert Image.open(out / "samples" / "step_000002.png").size == (8 * (w + 2) + 2, 8 * (h + 2) + 2)


def test_resume_is_bitwise_equal_and_sample(tmp_path):
    assert run_main("ebgan", tiny(tmp_path / "full", steps=4)) == 0
    assert run_main("ebgan", tiny(tmp_path / "half", steps=2)) == 0
    assert run_main("ebgan", ["--resume", tmp_path / "half", "--steps", "4", "--no-progress"]) == 0
    (cf, wf), (ch, wh) = weights(tmp_path / "full"), weights(tmp_path / "half")
    assert ch["step"] == cf["step"] == 4
    assert all(torch.equal(wf[k], wh[k]) for k in wf)  # BatchNorm running statistics included
    assert run_main("ebgan", ["--sample", tmp_path / "half", "--n", "4", "--out", tmp_path / "g.png"]) == 0
    assert Image.open(tmp_path / "g.png").size == (2 * 18 + 2, 2 * 18 + 2)
