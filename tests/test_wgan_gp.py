"""wgan_gp.py: the gradient penalty (known answers, the norm over all non-batch axes, eps
per sample, the penalty reaching the critic's weights, through kernels/), a critic with no
BatchNorm, the ResNet built from the size, and a smoke run, resume and --sample."""
import copy
import json

import pytest
import torch
from PIL import Image

import kernels
import wgan_gp
from conftest import TINY, HalfSquareCritic, LinearCritic, run_main, run_script
from ganzoo.data import resolve_data_args


def model(*argv, shape=(1, 16, 16)):
    args = wgan_gp.build_parser().parse_args(["--width", "4", "--image-size", "16", "--batch-size", "4", *argv])
    resolve_data_args(args)
    return wgan_gp.WGANGP(args, shape, torch.device("cpu"))


def test_penalty_of_a_linear_critic_is_known():
    """grad D = w for every sample, so the penalty is exactly (||w|| - 1)^2 and the mean
    gradient norm ||w||, whatever x, x~ and eps."""
    m = model(shape=(3, 16, 8))
    w = torch.randn(3, 16, 8) * 0.1  # ||w|| ~ 2.2: the penalty is far from 0
    m.D = LinearCritic(w.clone())
    gp, norms = m.penalty(torch.randn(5, 3, 16, 8), torch.randn(5, 3, 16, 8))
    assert gp.item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)
    assert torch.allclose(norms, w.norm().expand(5), rtol=1e-5)


def test_penalty_norm_is_per_sample_over_all_axes():
    """A critic whose gradient differs per sample: with x~ = x, x^ = x and grad_i = x_i, so
    the penalty is mean_i (||x_i|| - 1)^2 with ||x_i|| over (C, H, W). A norm over one axis,
    or over the whole batch, gives another number."""
    m = model(shape=(3, 8, 16))
    m.D = HalfSquareCritic()
    x = torch.randn(4, 3, 8, 16) * torch.tensor([0.01, 0.05, 0.1, 0.2]).view(4, 1, 1, 1)
    gp, norms = m.penalty(x, x.clone())
    n = x.flatten(1).norm(dim=1)  # (4,) about 0.2, 1.1, 2.2, 4.4
    assert torch.allclose(norms, n, rtol=1e-5)
    assert gp.item() == pytest.approx(((n - 1) ** 2).mean().item(), rel=1e-5)
    wrong_axis = ((x.norm(dim=1) - 1) ** 2).mean()           # the norm over the channels only
    whole_batch = (x.norm() - 1) ** 2
    assert abs(gp - wrong_axis) > 0.1 and abs(gp - whole_batch) > 0.1


def test_eps_is_drawn_once_per_sample():
    """x = 0, x~ = 1: x^_i = eps_i everywhere in sample i, each eps_i in [0, 1], not all equal."""
    m = model(shape=(3, 16, 16))
    m.D = HalfSquareCritic()
    gp, norms = m.penalty(torch.zeros(64, 3, 16, 16), torch.ones(64, 3, 16, 16))
    x_hat = m.D.seen[-1].detach().flatten(1)  # (64, 768)
    eps = x_hat[:, 0]
    assert torch.equal(x_hat, eps[:, None].expand_as(x_hat))  # one value per sample
    assert eps.min() >= 0 and eps.max() <= 1 and eps.std() > 0.1
    assert torch.allclose(norms, eps * 768 ** 0.5, rtol=1e-5)  # grad_i = x^_i


def test_penalty_reaches_the_critic_weights():
    """create_graph: d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| flows back to w."""
    m = model()
    w = torch.randn(1, 16, 16) * 0.1
    m.D = LinearCritic(w.clone())
    gp, _ = m.penalty(torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16))
    gp.backward()
    assert torch.allclose(m.D.w.grad, 2 * (w.norm() - 1) * w / w.norm(), rtol=1e-4, atol=1e-7)


def test_losses_known_values():
    """With D(x) = <w, x>: the logged estimate is E[D(x)] - E[D(G(z))] before the critic's
    update, loss_d = -estimate + lambda (||w|| - 1)^2, gp and grad_norm as above, and
    loss_g = -E[D(G(z'))] with the updated critic and a fresh z'."""
    m = model("--n-critic", "1")
    w = torch.randn(1, 16, 16) * 0.1
    m.D = LinearCritic(w.clone())
    m.opt_d = torch.optim.Adam(m.D.parameters(), lr=1e-3, betas=(0.0, 0.9))
    m.opt_g.param_groups[0]["lr"] = 0.0  # G stays as it is
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    G = copy.deepcopy(m.G)
    torch.manual_seed(5)
    out = m.train_step(lambda: x)
    torch.manual_seed(5)
    z = m.sample_z(4)
    torch.rand(4, 1, 1, 1)  # eps
    z2 = m.sample_z(4)
    with torch.no_grad():
        fake, fake2 = G(z), G(z2)
    D0 = lambda v: (v * w).flatten(1).sum(1).mean()  # noqa: E731
    est = (D0(x) - D0(fake)).item()
    gp = (w.norm().item() - 1) ** 2
    assert out["wasserstein"].item() == pytest.approx(est, abs=1e-5)
    assert out["gp"].item() == pytest.approx(gp, rel=1e-5)
    assert out["grad_norm"].item() == pytest.approx(w.norm().item(), rel=1e-5)
    assert out["loss_d"].item() == pytest.approx(-est + 10 * gp, rel=1e-5)
    assert out["loss_g"].item() == pytest.approx(-(fake2 * m.D.w.detach()).flatten(1).sum(1).mean().item(), abs=1e-5)


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize("norm", ["layer", "none"])
def test_critic_has_no_batchnorm_and_scores_each_sample_alone(arch, norm):
    m = model("--arch", arch, "--critic-norm", norm)
    assert not any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in m.D.modules())
    assert any(isinstance(mod, torch.nn.GroupNorm) for mod in m.D.modules()) == (norm == "layer")
    assert any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.G.modules())  # G keeps BatchNorm
    x = torch.randn(6, 1, 16, 16)
    assert torch.allclose(m.D(x)[:2], m.D(x[:2]), atol=1e-6)  # no batch statistics


def test_adam_and_paper_defaults():
    args = wgan_gp.build_parser().parse_args(["--path", "somewhere"])
    resolve_data_args(args)
    assert (args.batch_size, args.z_dim, args.width, args.g_lr, args.d_lr) == (64, 128, 64, 1e-4, 1e-4)
    assert (args.gp_lambda, args.n_critic, args.arch, args.critic_norm) == (10.0, 5, "dcgan", "layer")
    m = model()
    assert type(m.opt_d) is torch.optim.Adam and m.opt_d.param_groups[0]["betas"] == (0.0, 0.9)


def test_resnet_builds_from_the_size():
    for hw in [(16, 16), (32, 32), (64, 64), (16, 32), (64, 16)]:
        G = wgan_gp.ResNetGenerator(128, 3, hw, width=4)
        D = wgan_gp.ResNetCritic(3, hw, width=4)
        x = G(torch.randn(2, 128))
        assert x.shape == (2, 3) + hw and x.abs().max() <= 1
        assert D(x).shape == (2,)
    # the authors' 64x64 "Good" networks at DIM = 64: G 8-8-4-2-1 x 64, D 1-2-4-8-8 x 64
    G = wgan_gp.ResNetGenerator(128, 3, (64, 64), width=64)
    D = wgan_gp.ResNetCritic(3, (64, 64), width=64)
    assert G.input.out_features == 4 * 4 * 512
    assert [b.conv2.out_channels for b in G.blocks] == [512, 256, 128, 64]
    assert [b.conv2.out_channels for b in D.blocks] == [128, 256, 512, 512]
    assert D.head.in_features == 4 * 4 * 512


def test_same_loss_through_both_kernel_paths(monkeypatch):
    """The penalty goes through kernels.gradient_penalty: forcing the Triton path (its CPU
    interpreter) and the reference gives the same losses and the same updated weights."""
    pytest.importorskip("triton")
    m0 = model("--n-critic", "1")
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    outs, nets = {}, {}
    for path in ("reference", "triton"):
        monkeypatch.setenv("GAN_KERNELS", path)
        m = copy.deepcopy(m0)
        torch.manual_seed(0)
        outs[path] = m.train_step(lambda: x)
        assert kernels.last_path() == path
        nets[path] = m.D.state_dict()
    for k in ("loss_d", "gp", "grad_norm", "wasserstein", "loss_g"):
        assert outs["triton"][k].item() == pytest.approx(outs["reference"][k].item(), abs=1e-5), k
    for k, v in nets["reference"].items():
        assert torch.allclose(nets["triton"][k], v, atol=1e-5), k


def test_smoke_subprocess_and_sample(tmp_path):
    r = run_script("wgan_gp.py", *TINY, "--out", tmp_path / "r")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 4]
    assert all(k in rows[0] for k in ("wasserstein", "gp", "grad_norm", "loss_d", "loss_g"))
    assert rows[0]["grad_norm"] > 0 and rows[0]["lr_d"] == 1e-4
    assert run_main("wgan_gp", ["--sample", tmp_path / "r", "--n", "16", "--out", tmp_path / "g.png"]) == 0
    assert Image.open(tmp_path / "g.png").size == (4 * 18 + 2, 4 * 18 + 2)


def test_resume_is_bitwise_equal_resnet(tmp_path):
    argv = TINY + ["--arch", "resnet", "--n-critic", "1"]
    assert run_main("wgan_gp", argv + ["--out", tmp_path / "full"]) == 0
    assert run_main("wgan_gp", argv + ["--steps", "2", "--out", tmp_path / "half"]) == 0
    assert run_main("wgan_gp", ["--resume", tmp_path / "half", "--steps", "4", "--no-progress"]) == 0
    full, half = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("full", "half"))
    assert full["step"] == half["step"] == 4 and full["data"] == half["data"]
    for net in ("G", "D"):
        assert all(torch.equal(full["nets"][net][k], half["nets"][net][k]) for k in full["nets"][net])
    avg = lambda ck: ck["optimizers"]["D"]["state"][0]["exp_avg_sq"]  # noqa: E731
    assert torch.equal(avg(full), avg(half))
