"""dragan.py: the penalty's known values (a linear critic; a critic whose gradient differs per
sample), the perturbation's scale and where α is drawn, both terms training D, no BatchNorm
in D, the kernels paths agreeing, and the script end to end (smoke run, resume, --sample)."""
import json
import math

import numpy as np
import pytest
import torch

import dragan
import kernels
from conftest import TINY, HalfSquareCritic, LinearCritic, run_main, run_script
from ganzoo.data import resolve_data_args

SHAPE = (1, 16, 16)


def model(*argv):
    args = dragan.build_parser().parse_args(["--width", "4", "--image-size", "16", *argv])
    resolve_data_args(args)
    return dragan.DRAGAN(args, SHAPE, torch.device("cpu"))


def test_penalty_of_a_linear_critic_is_exact():
    torch.manual_seed(0)
    m = model()
    w = torch.randn(SHAPE)
    m.D = LinearCritic(3 * w / w.norm())  # ‖w‖ = 3
    gp, norm = m.penalty(m.perturb(torch.rand(8, *SHAPE) * 2 - 1))
    assert gp.item() == pytest.approx((3 - 1) ** 2, rel=1e-5)
    assert norm.item() == pytest.approx(3, rel=1e-5)


def test_penalty_norm_is_per_sample_over_all_axes():
    torch.manual_seed(0)
    m = model()
    m.D = HalfSquareCritic()
    x_hat = torch.randn(4, 2, 4, 4) * torch.tensor([0.05, 0.2, 0.4, 1.0]).view(4, 1, 1, 1)
    norms = x_hat.flatten(1).norm(dim=1)  # (4,): ‖x̂_i‖ over (C, H, W)
    expected = (norms - 1).square().mean().item()
    wrong_axis = (x_hat.norm(dim=1) - 1).square().mean().item()  # over C only
    whole_batch = (x_hat.norm() - 1).square().item()
    assert min(abs(expected - wrong_axis), abs(expected - whole_batch)) > 0.1  # the test can tell
    gp, norm = m.penalty(x_hat)
    assert gp.item() == pytest.approx(expected, rel=1e-5)
    assert norm.item() == pytest.approx(norms.mean().item(), rel=1e-5)


def test_flat_critic_known_losses():
    """With D's output layer zeroed every logit is 0 and ∇D = 0: D's loss is
    -log ½ - log ½ + λ·(0 - 1)² = 2 log 2 + λ."""
    for lam in (10.0, 3.0):
        torch.manual_seed(0)
        m = model("--gp-lambda", str(lam))
        torch.nn.init.zeros_(m.D.head.weight)
        out = m.train_step(lambda: torch.rand(8, *SHAPE) * 2 - 1)
        assert out["loss_d"].item() == pytest.approx(2 * math.log(2) + lam, abs=1e-5)
        assert out["gp"].item() == pytest.approx(1.0) and out["grad_norm"].item() == 0.0
        assert out["d_real"].item() == out["d_fake"].item() == pytest.approx(0.5)


def test_authors_perturbation_scale_and_alpha_per_sample():
    """x̂ = x + α·0.5·std(x)·U[0,1): d = (x̂ - x)/(0.5·std(x)) lies in [0, 1); within a sample
    d = α_i·u, so max ≈ α_i and mean ≈ α_i/2 (α per element would give mean ≈ max/4); the
    maxima spread over [0, 1] (one α for the batch would make them equal)."""
    torch.manual_seed(0)
    m = model()
    scale = torch.ones(64, 1, 1, 1)
    scale[::2] = 0.05  # half the samples nearly flat: a per-sample std would give d > 1 elsewhere
    x = (torch.rand(64, *SHAPE) * 2 - 1) * scale
    d = ((m.perturb(x) - x) / (0.5 * x.std(correction=0))).flatten(1)  # (64, 256)
    assert d.min() >= 0 and d.max() < 1
    top, mean = d.max(1).values, d.mean(1)
    big = top > 0.1
    assert ((mean[big] / top[big] - 0.5).abs() < 0.1).all()
    assert top.min() < 0.2 and top.max() > 0.8


def test_paper_perturbation_is_gaussian_with_variance_c():
    torch.manual_seed(0)
    m = model("--perturb", "paper", "--perturb-c", "0.25")
    x = torch.rand(64, *SHAPE) * 2 - 1
    delta = m.perturb(x) - x
    assert abs(delta.mean()) < 0.02 and delta.std().item() == pytest.approx(0.5, abs=0.02)


def d_grads(lam):
    """The gradients D's optimizer steps with, on one step from the same seed."""
    torch.manual_seed(0)
    m = model("--gp-lambda", str(lam))
    before = [p.detach().clone() for p in m.D.parameters()]
    grads, step = [], m.opt_d.step

    def record():
        grads.extend(p.grad.clone() for p in m.D.parameters())
        step()

    m.opt_d.step = record
    m.train_step(lambda: torch.rand(8, *SHAPE) * 2 - 1)
    moved = any(not torch.equal(a, p) for a, p in zip(before, m.D.parameters()))
    return torch.cat([g.flatten() for g in grads]), moved


def test_d_loss_and_penalty_both_train_d():
    """A popular implementation backpropagates only the penalty: with λ = 0 its D never moves."""
    g0, moved = d_grads(0.0)
    assert moved and g0.abs().max() > 0  # D's GAN loss alone moves D
    g10, _ = d_grads(10.0)
    assert (g10 - g0).abs().max() > 1e-3 * g0.abs().max()  # and the penalty adds to it


def test_critic_has_no_batch_statistics():
    torch.manual_seed(0)
    m = model()
    assert not any(isinstance(l, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for l in m.D.modules())
    x = torch.rand(6, *SHAPE) * 2 - 1
    assert torch.allclose(m.D(x)[:2], m.D(x[:2]), atol=1e-6)  # a sample's score ignores the others


def test_defaults_are_the_authors():
    args = dragan.build_parser().parse_args([])
    assert (args.gp_lambda, args.perturb, args.beta1, args.beta2) == (10.0, "authors", 0.5, 0.9)
    assert args.batch_size == 128 and dragan.HYPERPARAMETERS["g_lr"].default == dragan.HYPERPARAMETERS["d_lr"].default == 1e-4
    from ganzoo.data import resolve_data_args
    folder, digits = dragan.build_parser().parse_args(["--path", "x"]), dragan.build_parser().parse_args([])
    resolve_data_args(folder)
    resolve_data_args(digits)
    assert (folder.g_lr, folder.d_lr) == (1e-4, 1e-4)  # the authors' rate on a folder
    assert (digits.g_lr, digits.d_lr) == (4e-4, 4e-4)  # the small-data departure (docstring)
    assert model().sample_z(1000).abs().max() <= 1  # z ~ U[-1, 1]


def test_goes_through_kernels_on_both_paths(monkeypatch):
    pytest.importorskip("triton")
    out = {}
    for path in ("reference", "triton"):
        monkeypatch.setenv("GAN_KERNELS", path)
        torch.manual_seed(0)
        m = model()
        out[path] = m.train_step(lambda: torch.rand(4, *SHAPE) * 2 - 1)
        assert kernels.last_path() == path
    for k in ("loss_d", "gp", "grad_norm", "loss_g"):
        assert out["triton"][k].item() == pytest.approx(out["reference"][k].item(), abs=1e-5), k


def test_smoke_subprocess(tmp_path):
    out = tmp_path / "run"
    r = run_script("dragan.py", *TINY, "--out", out)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    for key in ("loss_d", "loss_g", "gp", "grad_norm", "d_real", "d_fake"):
        assert np.isfinite(rows[-1][key])
    assert rows[0]["lr_d"] == 4e-4  # the digits: the small-data rate
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "dragan" and cfg["gp_lambda"] == 10.0 and cfg["perturb"] == "authors"
    assert (out / "samples" / "step_000004.png").exists()


def test_resume_is_bitwise_equal_and_samples(tmp_path):
    argv = ["--batch-size", "8", "--width", "4", "--image-size", "16", "--log-every", "1",
            "--sample-every", "1", "--checkpoint-every", "1", "--no-progress"]
    assert run_main("dragan", argv + ["--steps", "2", "--out", tmp_path / "full"]) == 0
    assert run_main("dragan", argv + ["--steps", "1", "--out", tmp_path / "half"]) == 0
    assert run_main("dragan", ["--resume", tmp_path / "half", "--steps", "2", "--no-progress"]) == 0
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    half = torch.load(tmp_path / "half" / "checkpoint.pt", weights_only=True)
    assert half["step"] == 2
    for net in ("G", "D"):
        assert all(torch.equal(v, half["nets"][net][k]) for k, v in full["nets"][net].items())
    assert torch.equal(full["optimizers"]["D"]["state"][0]["exp_avg"], half["optimizers"]["D"]["state"][0]["exp_avg"])
    assert run_main("dragan", ["--sample", tmp_path / "half", "--n", "4", "--out", tmp_path / "g.png"]) == 0
    assert (tmp_path / "g.png").exists()
