"""ganzoo.augment (DiffAugment, Zhao et al. 2020): every op differentiable and the identity
at strength 0, the ops' ranges as the authors' code draws them, each script's step with
--augment diffaug, and bitwise resume with it on (its draws come from the run's stream)."""
import pytest
import torch

from ganzoo import augment
from conftest import MODELS, run_main


@pytest.mark.parametrize("op", augment.OPS, ids=lambda f: f.__name__)
def test_each_op_is_differentiable_and_the_identity_at_strength_0(op):
    torch.manual_seed(0)
    x = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_()
    torch.testing.assert_close(op(x, 0.0), x, rtol=0, atol=1e-6)
    y = op(x, 1.0)
    assert y.shape == x.shape and not torch.allclose(y, x)
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_the_ops_ranges():
    torch.manual_seed(0)
    x = torch.zeros(2000, 1, 8, 8)
    shift = augment.brightness(x)[:, 0, 0, 0]
    assert -0.5 <= shift.min() < -0.45 and 0.45 < shift.max() <= 0.5  # U(-0.5, 0.5)
    ones = torch.zeros(500, 1, 16, 16)
    ones[:, :, 8, 8] = 1  # one bright pixel: translation moves it by at most 16/8 = 2 pixels
    moved = augment.translation(ones)
    pos = moved.flatten(1).argmax(1)
    dy, dx = pos // 16 - 8, pos % 16 - 8
    assert dy.abs().max() == 2 and dx.abs().max() == 2 and moved.sum(dim=(1, 2, 3)).eq(1).all()
    cut = augment.cutout(torch.ones(50, 1, 16, 16))
    zeros = (cut == 0).flatten(1).sum(1)
    assert zeros.max() == 64 and zeros.min() > 0  # an 8x8 square, clipped at the border


@pytest.mark.parametrize("model", MODELS)
def test_each_script_trains_with_diffaug(tmp_path, model):
    extra = ["--n-critic", "1"] if model in ("wgan", "wgan_gp") else []
    assert run_main(model, ["--steps", "2", "--batch-size", "4", "--width", "4", "--image-size", "16",
                            "--log-every", "1", "--sample-every", "2", "--checkpoint-every", "2", "--no-progress",
                            "--augment", "diffaug", "--out", tmp_path / "r", *extra]) == 0
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["config"]["augment"] == "diffaug"


def test_resume_with_diffaug_is_bitwise(tmp_path):
    base = ["--batch-size", "4", "--width", "4", "--image-size", "16", "--log-every", "1", "--sample-every", "2",
            "--checkpoint-every", "2", "--no-progress", "--augment", "diffaug", "--n-critic", "2"]
    assert run_main("wgan_gp", base + ["--steps", "4", "--out", tmp_path / "full"]) == 0
    assert run_main("wgan_gp", base + ["--steps", "2", "--out", tmp_path / "half"]) == 0
    assert run_main("wgan_gp", ["--resume", tmp_path / "half", "--steps", "4", "--no-progress"]) == 0
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("full", "half"))
    assert b["config"]["augment"] == "diffaug"
    for net in ("G", "D"):
        assert all(torch.equal(v, b["nets"][net][k]) for k, v in a["nets"][net].items())
    plain = ["--batch-size", "4", "--width", "4", "--image-size", "16", "--no-progress", "--n-critic", "2"]
    assert run_main("wgan_gp", plain + ["--steps", "4", "--out", tmp_path / "off"]) == 0
    c = torch.load(tmp_path / "off" / "checkpoint.pt", weights_only=True)
    assert not all(torch.equal(v, c["nets"]["D"][k]) for k, v in a["nets"]["D"].items())  # it does change D


def test_policy_spellings():
    from ganzoo.cli import augment_policy
    assert augment_policy("none") == "none" and augment_policy("diffaug") == "diffaug"
    assert augment_policy("color,translation,cutout") == "diffaug"  # the whole policy has one spelling
    assert augment_policy("cutout,translation") == "translation,cutout"  # the authors' order
    for bad in ("transl", "translation,translation", "cutout,,color"):
        with pytest.raises(Exception, match="DiffAugment groups"):
            augment_policy(bad)


def test_a_policy_runs_only_its_ops():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 16, 16) * 2 - 1
    torch.manual_seed(1)
    full = augment.diffaug(x)
    torch.manual_seed(1)
    spelled = augment.diffaug(x, policy="color,translation,cutout")
    assert torch.equal(full, spelled)  # the default policy is the whole one
    moved = augment.diffaug(x, policy="translation")  # a shift: every output pixel is an input pixel or the zero fill
    values = set(x.flatten().tolist()) | {0.0}
    assert set(moved.flatten().tolist()) <= values and not torch.equal(moved, x)
    cut = augment.diffaug(x, policy="cutout")
    kept = cut != 0
    assert torch.equal(cut[kept], x[kept]) and (~kept).any()  # cutout only zeroes
    assert torch.equal(augment.diffaug(x, policy=""), x)


def test_a_partial_policy_trains_and_is_saved(tmp_path):
    assert run_main("dcgan", ["--steps", "2", "--batch-size", "4", "--width", "4", "--image-size", "16",
                              "--no-progress", "--augment", "cutout,translation", "--out", tmp_path / "r"]) == 0
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["config"]["augment"] == "translation,cutout"


def test_augment_p_augments_that_share_of_images():
    torch.manual_seed(0)
    x = torch.rand(2000, 1, 8, 8) * 2 - 1
    for p in (0.0, 0.25, 0.5):
        y = augment.diffaug(x, policy="color", p=p)  # brightness moves every augmented image
        changed = (y != x).flatten(1).any(1).float().mean().item()
        assert abs(changed - p) < 0.04, (p, changed)
    x.requires_grad_()
    augment.diffaug(x, policy="translation", p=0.5).sum().backward()
    assert x.grad is not None  # the kept images pass their gradient through too


def test_augment_p_runs_resumes_and_is_checked(tmp_path, capsys):
    base = ["--batch-size", "4", "--width", "4", "--image-size", "16", "--checkpoint-every", "2", "--no-progress",
            "--augment", "translation", "--aug-prob", "0.5"]
    assert run_main("dcgan", base + ["--steps", "4", "--out", tmp_path / "full"]) == 0
    assert run_main("dcgan", base + ["--steps", "2", "--out", tmp_path / "half"]) == 0
    assert run_main("dcgan", ["--resume", tmp_path / "half", "--steps", "4", "--no-progress"]) == 0
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("full", "half"))
    assert b["config"]["augment_p"] == 0.5
    assert all(torch.equal(v, b["nets"]["D"][k]) for k, v in a["nets"]["D"].items())
    assert run_main("dcgan", base[:-1] + ["1.5", "--steps", "2", "--out", tmp_path / "bad"], capsys) == 2
    assert "not a probability in [0, 1]" in capsys.readouterr().err
