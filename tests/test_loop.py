"""The training loop, checkpoints, resume, sampling and the failure paths, driven
through dcgan.py (the loop is the same for all seven scripts)."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import common
import dcgan
from conftest import ROOT, TINY, one_error_line, run_main, run_script
from ganzoo.data import resolve_data_args
from ganzoo.images import slerp


def weights(run_dir):
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    return ck, {f"{n}.{k}": v for n, sd in ck["nets"].items() for k, v in sd.items()}


def test_smoke_subprocess_writes_the_run_directory(tmp_path):
    out = tmp_path / "run"
    r = run_script("dcgan.py", *TINY, "--out", out)
    assert r.returncode == 0, r.stderr
    for f in ("config.json", "metrics.jsonl", "checkpoint.pt", "timeline.gif", "samples/step_000002.png",
              "samples/step_000004.png"):
        assert (out / f).exists(), f
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    for key in ("loss_d", "loss_g", "d_real", "d_fake", "lr_g", "lr_d", "images_per_s"):
        assert key in rows[0] and np.isfinite(rows[0][key])
    assert rows[0]["lr_g"] == 2e-4
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "dcgan" and cfg["image_size"] == [16, 16] and cfg["shape"] == [1, 16, 16]
    grid = Image.open(out / "samples" / "step_000004.png")
    assert grid.size == (8 * 18 + 2, 8 * 18 + 2)  # 64 samples, 16x16, 2px padding
    assert list(out.glob("events.out.tfevents.*"))  # tensorboard is installed in CI


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


def test_same_seed_same_weights(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert run_main("dcgan", TINY + ["--out", tmp_path / name, "--seed", seed]) == 0
    wa, wb, wc = (weights(tmp_path / n)[1] for n in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_resume_is_bitwise_equal(tmp_path):
    """--steps 2N in one go, and N steps then --resume to 2N, give the same weights,
    optimizer state and next batch position."""
    common_args = ["--batch-size", "8", "--width", "4", "--image-size", "16", "--log-every", "3",
                   "--sample-every", "3", "--checkpoint-every", "3", "--no-progress"]
    assert run_main("dcgan", common_args + ["--steps", "6", "--out", tmp_path / "full"]) == 0
    assert run_main("dcgan", common_args + ["--steps", "3", "--out", tmp_path / "half"]) == 0
    assert run_main("dcgan", ["--resume", tmp_path / "half", "--steps", "6", "--no-progress"]) == 0
    (cf, wf), (ch, wh) = weights(tmp_path / "full"), weights(tmp_path / "half")
    assert ch["step"] == cf["step"] == 6
    assert all(torch.equal(wf[k], wh[k]) for k in wf)
    assert cf["data"] == ch["data"]
    assert torch.equal(cf["optimizers"]["G"]["state"][0]["exp_avg"], ch["optimizers"]["G"]["state"][0]["exp_avg"])
    rows = [json.loads(l)["step"] for l in (tmp_path / "half" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [3, 6]


def test_resume_keeps_settings_and_rejects_changes(tmp_path, capsys):
    assert run_main("dcgan", TINY + ["--out", tmp_path / "r"]) == 0
    capsys.readouterr()
    assert run_main("dcgan", ["--resume", tmp_path / "r", "--steps", "6", "--image-size", "32"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--image-size" in line and "resumed run keeps its settings" in line
    assert weights(tmp_path / "r")[0]["step"] == 4  # the good checkpoint is untouched


def test_checkpoint_loads_with_weights_only(tmp_path):
    assert run_main("dcgan", TINY + ["--out", tmp_path / "r"]) == 0
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ck["model"] == "dcgan" and ck["step"] == 4 and ck["config"]["z_dim"] == 100
    assert not list((tmp_path / "r").glob("*.tmp"))  # the atomic write left no temporary file


class Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_doctored_checkpoint_never_runs_code(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": "dcgan", "nets": Evil()}, tmp_path / "evil.pt")
    assert run_main("dcgan", ["--sample", tmp_path / "evil.pt"]) == 2
    assert "not a readable checkpoint" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "PWNED").exists()


def test_corrupt_and_foreign_checkpoints(tmp_path, capsys):
    assert run_main("dcgan", TINY + ["--out", tmp_path / "r"]) == 0
    capsys.readouterr()
    good = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    (tmp_path / "torn.pt").write_bytes(good[: len(good) // 2])
    assert run_main("dcgan", ["--resume", tmp_path / "torn.pt", "--steps", "8"]) == 2
    assert "not a readable checkpoint" in one_error_line(capsys.readouterr().err)
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    ck["model"] = "wgan"
    torch.save(ck, tmp_path / "wgan.pt")
    assert run_main("dcgan", ["--sample", tmp_path / "wgan.pt"]) == 2
    assert "is a wgan checkpoint" in one_error_line(capsys.readouterr().err)
    assert run_main("dcgan", ["--resume", tmp_path / "nowhere"]) == 2
    assert "no checkpoint there" in one_error_line(capsys.readouterr().err)


def test_checkpoint_of_another_image_size(tmp_path, capsys):
    assert run_main("dcgan", TINY + ["--out", tmp_path / "r"]) == 0
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    ck["config"]["image_size"] = [32, 32]  # networks for 16x16, config says 32x32
    torch.save(ck, tmp_path / "other.pt")
    capsys.readouterr()
    assert run_main("dcgan", ["--resume", tmp_path / "other.pt", "--steps", "8"]) == 2
    assert "shape" in one_error_line(capsys.readouterr().err)


def test_sample_and_interpolate(tmp_path):
    assert run_main("dcgan", TINY + ["--out", tmp_path / "r"]) == 0
    assert run_main("dcgan", ["--sample", tmp_path / "r", "--n", "16", "--out", tmp_path / "g.png"]) == 0
    assert Image.open(tmp_path / "g.png").size == (4 * 18 + 2, 4 * 18 + 2)
    assert run_main("dcgan", ["--sample", tmp_path / "r" / "checkpoint.pt", "--interpolate", "--n", "4",
                              "--out", tmp_path / "w.gif"]) == 0
    gif = Image.open(tmp_path / "w.gif")
    assert gif.n_frames == 64 and gif.size == (2 * 18 + 2, 2 * 18 + 2)


def test_slerp_keeps_the_norm_and_ends():
    a, b = torch.randn(5, 100), torch.randn(5, 100)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-4)
    a2, b2 = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    assert torch.allclose(slerp(a2, b2, 0.3).norm(dim=1), torch.ones(5), atol=1e-5)


class NaNAt5(dcgan.DCGAN):
    """DCGAN whose loss turns NaN at its 5th step."""
    name = "dcgan"

    def train_step(self, real):
        out = super().train_step(real)
        self.count = getattr(self, "count", 0) + 1
        if self.count == 5:
            with torch.no_grad():
                next(self.G.parameters()).fill_(float("nan"))
            out["loss_g"] = torch.tensor(float("nan"))
        return out


def test_divergence_stops_and_keeps_the_good_checkpoint(tmp_path, capsys):
    argv = ["--steps", "8", "--batch-size", "8", "--width", "4", "--image-size", "16", "--log-every", "2",
            "--checkpoint-every", "4", "--sample-every", "4", "--no-progress", "--out", tmp_path / "r"]
    code = common.main(NaNAt5, dcgan.build_parser(), [str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 1
    assert "at step 5" in err and "step 4" in err and "Traceback" not in err
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 4 and all(torch.isfinite(v).all() for v in ck["nets"]["G"].values())


def test_ctrl_c_saves_and_exits_0(tmp_path):
    out = tmp_path / "r"
    p = subprocess.Popen([sys.executable, str(ROOT / "dcgan.py"), "--steps", "100000", "--batch-size", "8",
                          "--width", "4", "--image-size", "16", "--log-every", "1", "--no-progress",
                          "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "metrics.jsonl").exists()
                                          and (out / "metrics.jsonl").read_text().count("\n") >= 3):
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "interrupted at step" in err and "Traceback" not in err
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 3 <= ck["step"] < 100000
    assert run_main("dcgan", ["--resume", out, "--steps", str(ck["step"] + 2), "--no-progress"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == ck["step"] + 2
