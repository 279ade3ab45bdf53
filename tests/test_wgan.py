"""wgan.py: the critic and generator losses, clipping of every critic parameter, the
critic schedule, RMSProp, and a smoke run, resume and --sample."""
import copy
import json

import pytest
import torch
from PIL import Image

import wgan
from conftest import TINY, run_main, run_script
from ganzoo.data import resolve_data_args


def model(*argv, shape=(1, 16, 16)):
    args = wgan.build_parser().parse_args(["--width", "4", "--image-size", "16", *argv])
    resolve_data_args(args)
    return wgan.WGAN(args, shape, torch.device("cpu"))


class LinearCritic(torch.nn.Module):
    """f(x) = <w, x> for each sample."""

    def __init__(self, shape, value):
        super().__init__()
        self.w = torch.nn.Parameter(torch.full(shape, value))

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1)


def test_losses_known_values():
    """With a linear critic f(x) = <w, x>: the logged estimate is E[f(x)] - E[f(G(z))] with
    the critic before its update, loss_d its negative, and loss_g = -E[f(G(z'))] with the
    updated critic and a fresh z'."""
    m = model("--n-critic", "1", "--critic-warmup", "0", "--batch-size", "8")
    m.D = LinearCritic((1, 16, 16), 0.004)
    m.opt_d = torch.optim.RMSprop(m.D.parameters(), lr=1e-3)
    m.opt_g.param_groups[0]["lr"] = 0.0  # G stays as it is
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    G, w0 = copy.deepcopy(m.G), m.D.w.detach().clone()
    torch.manual_seed(3)
    out = m.train_step(lambda: x)
    torch.manual_seed(3)
    z, z2 = m.sample_z(8), m.sample_z(8)
    with torch.no_grad():
        fake, fake2 = G(z), G(z2)
    f = lambda w, v: (v * w).flatten(1).sum(1).mean()  # noqa: E731
    w1 = m.D.w.detach()
    assert not torch.equal(w0, w1) and w1.abs().max() <= 0.01
    assert out["wasserstein"].item() == pytest.approx((f(w0, x) - f(w0, fake)).item(), abs=1e-6)
    assert out["loss_d"].item() == pytest.approx(-out["wasserstein"].item(), abs=1e-7)
    assert out["loss_g"].item() == pytest.approx(-f(w1, fake2).item(), abs=1e-6)
    # the critic moved up the estimate: w grows along E[x] - E[G(z)]
    assert (f(w1, x) - f(w1, fake)).item() > (f(w0, x) - f(w0, fake)).item()


def test_every_critic_parameter_is_clipped():
    """After a step every critic parameter, BatchNorm's scale (initially ~1) and shift
    included, lies in [-c, c]; the generator is not clipped."""
    m = model("--critic-warmup", "0", "--batch-size", "8", "--clip", "0.02", "--d-lr", "0.01")
    bn = [mod for mod in m.D.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bn and all(b.weight.min() > 0.9 for b in bn)
    m.train_step(lambda: torch.rand(8, 1, 16, 16) * 2 - 1)
    params = torch.cat([p.detach().flatten() for p in m.D.parameters()])
    assert params.abs().max() <= 0.02
    assert (params.abs() == 0.02).sum() > 10  # clipping was active, not merely unneeded
    assert all(torch.all(b.weight.abs() <= 0.02) for b in bn)
    assert max(p.abs().max() for p in m.G.parameters()) > 0.5  # G's BatchNorm scales are ~1


def test_rmsprop_and_paper_defaults():
    args = wgan.build_parser().parse_args(["--path", "somewhere"])
    resolve_data_args(args)
    assert (args.batch_size, args.z_dim, args.width, args.g_lr, args.d_lr) == (64, 100, 64, 5e-5, 5e-5)
    assert (args.n_critic, args.clip, args.critic_warmup) == (5, 0.01, 100)
    m = model()
    assert type(m.opt_d) is torch.optim.RMSprop and type(m.opt_g) is torch.optim.RMSprop
    assert not any(isinstance(mod, torch.nn.Sigmoid) for mod in m.D.modules())


def test_learning_rates_by_data_set():
    """The paper's 5e-5 on a folder, 2e-4 on the small sets, 1e-3 on stacked-mnist (the
    docstring's departure); an explicit rate wins everywhere."""
    def rates(*argv):
        a = wgan.build_parser().parse_args(list(argv))
        resolve_data_args(a)
        return a.g_lr, a.d_lr
    assert rates("--path", "somewhere") == (5e-5, 5e-5)
    assert rates("--dataset", "fashion-mnist") == rates("--dataset", "digits") == (2e-4, 2e-4)
    assert rates("--dataset", "stacked-mnist") == (1e-3, 1e-3)
    assert rates("--dataset", "stacked-mnist", "--g-lr", "3e-4") == (3e-4, 1e-3)


def test_critic_schedule():
    """The authors' code: 100 critic updates for the first 25 generator updates and every
    500th, else n_critic; each critic update draws a fresh real batch."""
    m = model("--critic-warmup", "100")
    expect = {0: 100, 24: 100, 25: 5, 499: 5, 500: 100, 501: 5, 1000: 100}
    for step, n in expect.items():
        m.step = step
        assert m.critic_iters() == n, step
    m = model("--critic-warmup", "0", "--n-critic", "3", "--batch-size", "8")
    for step in (0, 24, 500):
        m.step = step
        assert m.critic_iters() == 3
    calls = []

    def real():
        calls.append(1)
        return torch.rand(8, 1, 16, 16) * 2 - 1
    out = m.train_step(real)
    assert len(calls) == 3 and out["n_critic"].item() == 3
    assert model().critic_iters() == 5  # the built-in digits: no warm-up


def test_smoke_subprocess_and_sample(tmp_path):
    """The script runs as a user runs it, logs the Wasserstein estimate with the digits'
    departures (no critic warm-up, lr 2e-4), and draws samples from its checkpoint."""
    r = run_script("wgan.py", *TINY, "--steps", "2", "--out", tmp_path / "r")
    assert r.returncode == 0, r.stderr
    row = json.loads((tmp_path / "r" / "metrics.jsonl").read_text())
    assert row["step"] == 2 and row["n_critic"] == 5
    assert all(k in row for k in ("wasserstein", "loss_d", "loss_g"))
    assert row["lr_d"] == row["lr_g"] == 2e-4  # the digits' departure (the paper: 5e-5)
    assert run_main("wgan", ["--sample", tmp_path / "r", "--n", "16", "--out", tmp_path / "g.png"]) == 0
    assert Image.open(tmp_path / "g.png").size == (4 * 18 + 2, 4 * 18 + 2)


def test_resume_is_bitwise_equal(tmp_path):
    argv = TINY + ["--critic-warmup", "2"]  # 2 critic updates at each of these early steps
    assert run_main("wgan", argv + ["--out", tmp_path / "full"]) == 0
    assert run_main("wgan", argv + ["--steps", "2", "--out", tmp_path / "half"]) == 0
    assert run_main("wgan", ["--resume", tmp_path / "half", "--steps", "4", "--no-progress"]) == 0
    full, half = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("full", "half"))
    assert full["step"] == half["step"] == 4 and full["data"] == half["data"]
    for net in ("G", "D"):
        assert all(torch.equal(full["nets"][net][k], half["nets"][net][k]) for k in full["nets"][net])
    sq = lambda ck: ck["optimizers"]["D"]["state"][0]["square_avg"]  # noqa: E731
    assert torch.equal(sq(full), sq(half))
