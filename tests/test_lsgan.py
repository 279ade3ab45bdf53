"""lsgan.py: the least-squares losses with their labels a, b, c in the right places, the
paper's defaults, and the script end to end (subprocess smoke run, resume, --sample)."""
import json

import numpy as np
import pytest
import torch

import lsgan
from conftest import TINY, one_error_line, run_main, run_script
from ganzoo.cli import explicit_flags
from ganzoo.data import resolve_data_args


class MeanPixel(torch.nn.Module):
    """A stand-in D whose output is known: w times each image's mean pixel (w = 1)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.w * x.mean((1, 2, 3))


def model(*argv):
    args = lsgan.build_parser().parse_args(["--width", "4", "--image-size", "16", *argv])
    resolve_data_args(args)
    return lsgan.LSGAN(args, (1, 16, 16), torch.device("cpu"))


def known_step(*argv):
    """One step with D(x) = mean pixel, reals whose D outputs are 0 and 1 (one each), and
    G's output layer zeroed, so that every fake is 0 and D(G(z)) = 0."""
    torch.manual_seed(0)
    m = model(*argv)
    m.D = MeanPixel()
    m.opt_d = torch.optim.Adam(m.D.parameters(), lr=1e-3)
    torch.nn.init.zeros_(m.G.net[-2].weight)  # the last ConvTranspose2d, before tanh
    x = torch.stack([torch.zeros(1, 16, 16), torch.ones(1, 16, 16)])  # D(x) = 0 and 1
    return m.train_step(lambda: x)


@pytest.mark.parametrize("abc, loss_d, loss_g", [
    # loss_d = ½·mean((D(x) − b)²) + ½·mean((0 − a)²); loss_g = ½·(0 − c)²
    ("0,1,1", 0.5 * (1 + 0) / 2 + 0.5 * 0, 0.5),      # Eq. 9 (the default): ½·mean(1, 0) = 0.25
    ("-1,1,0", 0.5 * (1 + 0) / 2 + 0.5 * 1, 0.0),     # Eq. 8 (chi^2)
    ("0,2,5", 0.5 * (4 + 1) / 2 + 0.5 * 0, 12.5),     # every label distinct: a mix-up shows
])
def test_losses_known_values(abc, loss_d, loss_g):
    out = known_step(f"--abc={abc}")
    assert out["loss_d"].item() == pytest.approx(loss_d, abs=1e-6)
    assert out["loss_g"].item() == pytest.approx(loss_g, abs=1e-6)
    assert out["d_real"].item() == pytest.approx(0.5) and out["d_fake"].item() == 0.0


def test_loss_is_the_mean_of_squares_not_the_square_of_the_mean():
    # the reals give D = 0 and 1: mean of squares ½·mean((0−1)², (1−1)²) = 0.25;
    # square of the mean would be ½·(0.5 − 1)² = 0.125
    assert known_step()["loss_d"].item() == pytest.approx(0.25, abs=1e-6)


def test_defaults_are_the_papers():
    args = lsgan.build_parser().parse_args([])
    assert args.abc == (0.0, 1.0, 1.0)
    assert (args.beta1, args.beta2) == (0.5, 0.999)
    assert args.batch_size == 64 and lsgan.HYPERPARAMETERS["z_dim"].default == 1024
    assert args.g_lr == args.d_lr == 1e-3  # the authors' LSUN scenes rate, on every data set
    m = model()
    assert m.sample_z(1000).abs().max() <= 1  # z ~ U[-1, 1], as the authors' code
    assert m.opt_d.param_groups[0]["betas"] == (0.5, 0.999)
    assert any(isinstance(l, torch.nn.BatchNorm2d) for l in m.D.modules())  # DCGAN's D


def test_abc_flag(capsys):
    assert lsgan.build_parser().parse_args(["--abc=-1,1,0"]).abc == (-1.0, 1.0, 0.0)
    assert lsgan.build_parser().parse_args(["--abc", "-1,1,0"]).abc == (-1.0, 1.0, 0.0)  # with a space too
    assert "abc" in explicit_flags(lsgan.build_parser(), ["--abc", "-1,1,0"])
    assert run_main("lsgan", ["--abc", "1,2"]) == 2
    assert "--abc" in one_error_line(capsys.readouterr().err)


def test_smoke_subprocess(tmp_path):
    out = tmp_path / "run"
    r = run_script("lsgan.py", *TINY, "--out", out)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    for key in ("loss_d", "loss_g", "d_real", "d_fake"):
        assert np.isfinite(rows[-1][key])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "lsgan" and cfg["z_dim"] == 1024 and cfg["abc"] == [0.0, 1.0, 1.0]
    assert (out / "samples" / "step_000004.png").exists()


def test_resume_is_bitwise_equal_and_samples(tmp_path):
    argv = ["--batch-size", "8", "--width", "4", "--image-size", "16", "--log-every", "1",
            "--sample-every", "1", "--checkpoint-every", "1", "--no-progress", "--abc=-1,1,0"]
    assert run_main("lsgan", argv + ["--steps", "2", "--out", tmp_path / "full"]) == 0
    assert run_main("lsgan", argv + ["--steps", "1", "--out", tmp_path / "half"]) == 0
    assert run_main("lsgan", ["--resume", tmp_path / "half", "--steps", "2", "--no-progress"]) == 0
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    half = torch.load(tmp_path / "half" / "checkpoint.pt", weights_only=True)
    assert half["step"] == 2 and half["config"]["abc"] == [-1.0, 1.0, 0.0]
    for net in ("G", "D"):
        assert all(torch.equal(v, half["nets"][net][k]) for k, v in full["nets"][net].items())
    assert run_main("lsgan", ["--sample", tmp_path / "half", "--n", "4", "--out", tmp_path / "g.png"]) == 0
    assert (tmp_path / "g.png").exists()
