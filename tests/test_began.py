"""began.py: k_t clipped to [0, 1] whatever the losses, M_global and the losses on known
values, the learning-rate schedule and its floor, the k_t warning, the architecture at
square and non-square sizes, and the script end to end (32x32, non-square, resume with k_t,
--sample)."""
import json
import math

import pytest
import torch
import torch.nn as nn
from PIL import Image

import began
from conftest import run_main, run_script
from ganzoo.cli import image_size
from ganzoo.data import resolve_data_args
from ganzoo.loop import set_learning_rates


def make(*argv, hw=(16, 16), channels=1):
    args = began.build_parser().parse_args(["--width", "4", "--image-size", f"{hw[0]}x{hw[1]}", *argv])
    resolve_data_args(args)
    return began.BEGAN(args, (channels,) + hw, torch.device("cpu"))


def tiny(out, size="16", steps=2, every=2):
    return ["--steps", steps, "--batch-size", "4", "--width", "4", "--image-size", size, "--log-every", 1,
            "--sample-every", every, "--checkpoint-every", every, "--no-progress", "--out", out]


def constant_g(m, value):
    """G draws the constant image `value` for every z (its last convolution zeroed but the bias)."""
    nn.init.zeros_(m.G.net[-1].weight)
    nn.init.constant_(m.G.net[-1].bias, value)


def zero_reconstruction(m):
    """D reconstructs every image as 0, so that L(v) = mean |v|."""
    nn.init.zeros_(m.D.decoder.net[-1].weight)
    nn.init.zeros_(m.D.decoder.net[-1].bias)


def step(m, real, n=1):
    for _ in range(n):
        set_learning_rates(m, m.args)  # as the loop does before each update
        out = m.train_step(lambda: real)
        m.step += 1
    return out


@pytest.mark.parametrize("gamma, g_value, balance, k", [(0.5, 0.1, 0.15, 0.00015), (0.7, 0.6, -0.25, 0.0)])
def test_losses_m_global_and_k_on_known_values(gamma, g_value, balance, k):
    """L(x) = mean|x − D(x)| = 0.5 for x = 0.5 with D reconstructing 0; L(G(z)) = |g|."""
    torch.manual_seed(0)
    m = make("--gamma", str(gamma), "--lambda-k", "0.001")
    zero_reconstruction(m)
    constant_g(m, g_value)
    out = step(m, torch.full((4, 1, 16, 16), 0.5))
    assert out["loss_real"].item() == pytest.approx(0.5)
    assert out["loss_fake"].item() == pytest.approx(g_value)
    assert out["loss_d"].item() == pytest.approx(0.5)  # k_0 = 0: L_D = L(x)
    assert out["balance"].item() == pytest.approx(balance)
    assert out["m_global"].item() == pytest.approx(0.5 + abs(balance))  # L(x) + |γ L(x) − L(G(z))|
    assert out["k_t"].item() == pytest.approx(k, abs=1e-9)  # k_1 = clip(0 + 0.001 · balance, 0, 1)


def test_paper_values_on_a_folder_and_departures_on_the_digits():
    p = began.build_parser()
    folder = p.parse_args(["--path", "x"])
    resolve_data_args(folder)
    assert (folder.gamma, folder.lambda_k, folder.h_dim, folder.width, folder.batch_size) == (0.5, 0.001, None, 128, 16)
    m = make("--dataset", "folder", "--path", "x")
    assert m.D.encoder.fc.out_features == 64  # N_h = N_z = 64 (§4.1)
    digits = p.parse_args([])
    resolve_data_args(digits)
    assert (digits.gamma, digits.lambda_k, digits.h_dim, digits.g_lr, digits.d_lr) == (1.5, 0.01, 16, 1e-4, 1e-4)
    assert digits.steps == 2000  # G drifts back toward a few classes past 2,000 steps (docs/models/began.md)
    assert (folder.pt_weight, digits.pt_weight) == (0.0, 0.3)  # the pull-away term: a small-data departure
    stacked = p.parse_args(["--dataset", "stacked-mnist"])
    resolve_data_args(stacked)
    assert (stacked.pt_weight, stacked.gamma, stacked.g_lr, stacked.d_lr, stacked.h_dim) == (0.0, 1.0, 3e-4, 3e-4, 64)
    fashion = p.parse_args(["--dataset", "fashion-mnist"])
    resolve_data_args(fashion)
    assert (fashion.gamma, fashion.pt_weight, fashion.h_dim) == (0.75, 0.3, 16)  # garments: a lower γ
    assert make("--gamma", "0.3").args.gamma == 0.3  # a flag beats both


def test_d_loss_uses_k_and_separate_z():
    torch.manual_seed(0)
    m = make()
    zero_reconstruction(m)
    constant_g(m, -0.2)
    m.k = torch.tensor(0.4)
    drawn = []
    sample_z = m.sample_z
    m.sample_z = lambda n: drawn.append(sample_z(n)) or drawn[-1]
    out = step(m, torch.full((4, 1, 16, 16), 0.5))
    assert out["loss_d"].item() == pytest.approx(0.5 - 0.4 * 0.2)  # L(x) − k_t · L(G(z_D))
    assert len(drawn) == 2 and not torch.equal(drawn[0], drawn[1])  # z_D and z_G: separate draws
    assert drawn[0].min() >= -1 and drawn[0].max() <= 1  # z ~ U[−1, 1]


@pytest.mark.parametrize("weight", [0.0, 0.3])
def test_pull_away_term_in_g_loss_only(weight):
    """--pt-weight w: L_G = L(G(z_G)) + w·f_PT(Enc(G(z_G))). G draws one image for every z, so
    D's codes of G's samples are identical and f_PT = 1; L_D does not change."""
    torch.manual_seed(0)
    m = make("--pt-weight", str(weight))
    zero_reconstruction(m)
    constant_g(m, 0.2)
    out = step(m, torch.full((4, 1, 16, 16), 0.5))
    assert out["loss_fake"].item() == pytest.approx(0.2)
    assert out["loss_g"].item() == pytest.approx(0.2 + weight, abs=1e-6)
    assert out["loss_d"].item() == pytest.approx(0.5)
    assert ("pt" in out) == bool(weight) and (not weight or out["pt"].item() == pytest.approx(1.0, abs=1e-6))


def test_k_stays_in_0_1_under_extreme_losses():
    torch.manual_seed(0)
    m = make()
    for _ in range(3):  # L(x) ~ 1e6: γ L(x) − L(G(z)) ~ +5e5, k_t would jump by 500
        out = step(m, torch.full((4, 1, 16, 16), 1e6))
        assert out["k_t"].item() == 1.0
    constant_g(m, 1e6)
    for _ in range(3):  # L(G(z)) ~ 1e6: k_t would fall by 1000
        out = step(m, torch.zeros(4, 1, 16, 16))
        assert out["k_t"].item() == 0.0
    assert out["balance"].item() < -1e5


def test_lr_halves_on_schedule_and_never_below_lr_min():
    m = make("--g-lr", "8e-5", "--d-lr", "4e-5", "--lr-decay-every", "2", "--lr-min", "2e-5")
    real = torch.rand(4, 1, 16, 16) * 2 - 1
    seen = []
    for _ in range(8):
        step(m, real)
        seen.append((m.opt_g.param_groups[0]["lr"], m.opt_d.param_groups[0]["lr"]))
    assert [g for g, _ in seen] == pytest.approx([8e-5, 8e-5, 4e-5, 4e-5, 2e-5, 2e-5, 2e-5, 2e-5])
    assert [d for _, d in seen] == pytest.approx([4e-5, 4e-5, 2e-5, 2e-5, 2e-5, 2e-5, 2e-5, 2e-5])
    low = make("--g-lr", "1e-5", "--lr-decay-every", "1", "--lr-min", "2e-5")
    low.step = 5
    assert low.learning_rate(1e-5) == 1e-5  # a rate already under the floor is left alone


def test_lr_decay_linear_applies_after_the_halvings():
    m = make("--g-lr", "8e-5", "--d-lr", "4e-5", "--lr-decay-every", "2", "--lr-min", "2e-5", "--lr-decay", "linear",
             "--steps", "8")
    real = torch.rand(4, 1, 16, 16) * 2 - 1
    seen = []
    for _ in range(8):
        step(m, real)
        seen.append(m.opt_g.param_groups[0]["lr"])
    halved = [8e-5, 8e-5, 4e-5, 4e-5, 2e-5, 2e-5, 2e-5, 2e-5]
    assert seen == pytest.approx([h * (1 - s / 8) for s, h in enumerate(halved)])


def test_lr_halves_when_m_global_stalls():
    """With constant losses M_global never falls: every window after the first halves the rates,
    down to --lr-min."""
    torch.manual_seed(0)
    m = make("--g-lr", "1e-9", "--d-lr", "1e-9", "--lr-decay-every", "0", "--lr-min", "2e-10",
             "--lr-stall-window", "2")
    zero_reconstruction(m)
    constant_g(m, 0.3)
    real = torch.full((4, 1, 16, 16), 0.5)
    lrs = []
    for _ in range(10):
        step(m, real)
        lrs.append(m.opt_g.param_groups[0]["lr"])
    assert m.stall_halvings == 4
    assert lrs == pytest.approx([1e-9] * 4 + [5e-10] * 2 + [2.5e-10] * 2 + [2e-10] * 2, rel=1e-6)


def test_warns_once_when_k_sits_at_0(monkeypatch, capsys):
    monkeypatch.setattr(began, "K_STUCK", 3)
    torch.manual_seed(0)
    m = make("--gamma", "0", "--log-every", "1")  # γ = 0: the balance is −L(G(z)) < 0, k_t stays 0
    step(m, torch.rand(4, 1, 16, 16) * 2 - 1, n=6)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "k_t has sat at 0 for 3 steps (step 3)" in lines[0]


@pytest.mark.parametrize("hw, smallest", [((16, 16), (8, 8)), ((32, 32), (8, 8)), ((64, 64), (8, 8)),
                                          ((16, 32), (8, 16)), ((64, 32), (16, 8))])
def test_architecture(hw, smallest):
    n = 4
    m = make(hw=hw, channels=3)
    S = int(math.log2(min(hw))) - 2
    assert (m.G.h0, m.G.w0) == smallest
    convs = [c for c in m.D.encoder.net if isinstance(c, nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert [c.out_channels for c in convs if c.stride == (2, 2)] == [(i + 1) * n for i in range(1, S)]
    assert max(c.out_channels for c in convs) == S * n  # n, 2n, ..., S·n
    assert sum(isinstance(l, nn.ELU) for l in m.D.encoder.net) == len(convs)
    assert sum(isinstance(l, nn.Upsample) and l.mode == "nearest" for l in m.G.net) == S - 1
    # G has the decoder's shape and weights of its own
    g, d = m.G.state_dict(), m.D.decoder.state_dict()
    assert {k: v.shape for k, v in g.items() if k != "fc.weight"} == \
        {k: v.shape for k, v in d.items() if k != "fc.weight"}
    assert g["fc.weight"].shape[1] == m.args.z_dim and d["fc.weight"].shape[1] == (m.args.h_dim or m.args.z_dim)
    assert not torch.equal(g["fc.weight"], d["fc.weight"])
    x = torch.rand(2, 3, *hw)
    assert m.D(x).shape == x.shape and m.G(m.sample_z(2)).shape == x.shape


# ---- the script --------------------------------------------------------------------------

@pytest.mark.parametrize("size", ["32", "16x32"])
def test_smoke_subprocess(tmp_path, size):
    out = tmp_path / "run"
    r = run_script("began.py", *tiny(out, size))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("loss_d", "loss_g", "k_t", "m_global", "loss_real", "loss_fake", "balance", "lr_g", "lr_d"):
        assert math.isfinite(rows[-1][key]), key
    assert 0 <= rows[-1]["k_t"] <= 1 and rows[-1]["lr_g"] == 1e-4  # the digits' learning rate
    h, w = image_size(size)
    assert Image.open(out / "samples" / "step_000002.png").size == (8 * (w + 2) + 2, 8 * (h + 2) + 2)


def test_resume_is_bitwise_equal_with_k_and_sample(tmp_path):
    args = ["--gamma", "1"]  # L(G(z)) < L(x) at the start: k_t rises from 0
    assert run_main("began", tiny(tmp_path / "full", steps=4) + args) == 0
    assert run_main("began", tiny(tmp_path / "half", steps=2) + args) == 0
    assert run_main("began", ["--resume", tmp_path / "half", "--steps", "4", "--no-progress"]) == 0
    cf, ch = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True) for r in ("full", "half"))
    assert ch["step"] == cf["step"] == 4
    assert cf["extra"]["k"] > 0 and torch.equal(cf["extra"]["k"], ch["extra"]["k"])
    for net in ("G", "D"):
        assert all(torch.equal(v, ch["nets"][net][k]) for k, v in cf["nets"][net].items())
    assert run_main("began", ["--sample", tmp_path / "half", "--n", "4", "--out", tmp_path / "g.png"]) == 0
    assert Image.open(tmp_path / "g.png").size == (2 * 18 + 2, 2 * 18 + 2)


def test_encoder_layers_against_the_named_reference():
    """32x32, n = 4 (3 scales): every conv of D's encoder as (in, out, stride), biases in every
    layer. The stride-2 convs raise the channels (carpedm20 raises them in the next 3x3 conv
    instead: the departure named in the docstring)."""
    enc = began.Encoder(8, 1, (32, 32), 4)
    convs = [m for m in enc.net if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [
        (1, 4, 1), (4, 4, 1), (4, 4, 1), (4, 8, 2),   # scale 1 (32x32), then down to 16x16
        (8, 8, 1), (8, 8, 1), (8, 12, 2),             # scale 2 (16x16), then down to 8x8
        (12, 12, 1), (12, 12, 1)]                     # scale 3 (8x8)
    assert all(c.kernel_size == (3, 3) and c.bias is not None for c in convs)
    assert enc.fc.in_features == 12 * 8 * 8 and enc.fc.bias is not None
