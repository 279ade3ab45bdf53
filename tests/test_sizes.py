"""Image sizes h0·2^k with h0 in 4..7 (28 = 7·4, 20, 24, 48, 112...), square or not: every
script builds networks whose G writes and whose D reads exactly that size, and the rule's
error names the sizes that can be built. And the widths: --g-width / --d-width (--ngf / --ndf)
set each network's width alone."""
import argparse
import importlib

import pytest
import torch

import common
import evaluate
from ganzoo.cli import image_size, side_levels
from ganzoo.data import resolve_data_args
from conftest import MODELS, run_main

SIZES = ["16", "20", "24", "28", "48", "28x56", "20x32", "56x28", "112"]


def test_side_levels_is_the_h0_2k_rule():
    assert {s: side_levels(s) for s in (16, 20, 24, 28, 32, 48, 56, 64, 96, 112, 160, 224)} == \
        {16: 2, 20: 2, 24: 2, 28: 2, 32: 3, 48: 3, 56: 3, 64: 4, 96: 4, 112: 4, 160: 5, 224: 5}
    for bad in (18, 36, 44, 72, 100, 9, 1):
        assert side_levels(bad) is None, bad
    assert image_size("28") == (28, 28) and image_size("28x56") == (28, 56)
    for bad in ("36", "12", "28x100"):
        with pytest.raises(argparse.ArgumentTypeError, match="16, 20, 24, 28, 32"):
            image_size(bad)


def test_levels_give_smallest_maps_of_4_to_7():
    assert common.levels((28, 28)) == 2 and common.levels((64, 64)) == 4 and common.levels((128, 256)) == 5
    assert common.levels((28, 56)) == 2  # the short side decides: 7x14 smallest map


def build(model, hw, channels=1, extra=()):
    mod = importlib.import_module(model)
    args = mod.build_parser().parse_args(["--width", "4", "--z-dim", "8", "--image-size", f"{hw[0]}x{hw[1]}",
                                          *extra])
    resolve_data_args(args)
    return evaluate.model_class(model)(args, (channels,) + hw, torch.device("cpu"))


def _d_out(model, m, x):
    out = m.D(x)
    return out[0] if isinstance(out, tuple) else out  # EBGAN's D: (reconstruction, code)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("model", MODELS)
def test_every_size_builds_for_every_script(model, size):
    hw = image_size(size)
    for extra in ([], ["--arch", "resnet"]) if model == "wgan_gp" else ([],):
        m = build(model, hw, 3, extra)
        m.G.eval()
        fake = m.G(m.sample_z(2))
        assert fake.shape == (2, 3) + hw, (model, size, extra)
        d = _d_out(model, m, fake)
        # an image out of the autoencoders (EBGAN, BEGAN), one score per image otherwise
        assert d.shape == ((2, 3) + hw if model in ("ebgan", "began") else (2,)), (model, size, d.shape)


def test_ebgan_keeps_three_stages_where_the_sides_allow_them():
    import ebgan
    assert ebgan.stages((64, 64)) == 3 and ebgan.stages((24, 24)) == 3 and ebgan.stages((16, 32)) == 3
    assert ebgan.stages((28, 28)) == 2 and ebgan.stages((20, 32)) == 2
    _, code = build("ebgan", (28, 28)).D(torch.zeros(2, 1, 28, 28))
    assert code.shape == (2, 8, 7, 7)  # 2w channels at 7x7


@pytest.mark.parametrize("model", MODELS)
def test_a_few_steps_at_28x28(tmp_path, model):
    extra = ["--n-critic", "1"] if model in ("wgan", "wgan_gp") else []
    assert run_main(model, ["--steps", "2", "--batch-size", "4", "--width", "4", "--image-size", "28",
                            "--log-every", "1", "--sample-every", "2", "--checkpoint-every", "2", "--no-progress",
                            "--out", tmp_path / "r", *extra]) == 0
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 2 and ck["config"]["image_size"] == [28, 28]


def test_an_impossible_size_names_the_sizes_that_can_be_built(tmp_path, capsys):
    assert run_main("dcgan", ["--image-size", "36", "--out", tmp_path / "r"]) == 2
    err = capsys.readouterr().err
    assert "side 36" in err and "h0 in 4..7" in err and "28" in err


def shapes(net):
    return [tuple(p.shape) for p in net.parameters()]


@pytest.mark.parametrize("model", MODELS)
def test_g_width_and_d_width_set_each_network_alone(model):
    for extra in ([], ["--arch", "resnet"]) if model == "wgan_gp" else ([],):
        narrow, wide = build(model, (28, 28), 1, extra), build(model, (28, 28), 1, ["--width", "8", *extra])
        split = build(model, (28, 28), 1, ["--g-width", "4", "--ndf", "8", *extra])  # --ndf: --d-width's alias
        assert shapes(split.G) == shapes(narrow.G) and shapes(split.D) == shapes(wide.D), (model, extra)
        assert shapes(split.D) != shapes(narrow.D)
        other = build(model, (28, 28), 1, ["--ngf", "8", "--d-width", "4", *extra])
        assert shapes(other.G) == shapes(wide.G) and shapes(other.D) == shapes(narrow.D), (model, extra)
        assert (narrow.args.g_width, narrow.args.d_width) == (4, 4)  # by default both follow --width


# Each script's width on stacked-mnist: the small sets' 32, or the paper's 64 where its
# declaration says so (DCGAN, EBGAN, WGAN-GP: three digits an image need the wider networks).
STACKED_WIDTH = {"dcgan": 64, "ebgan": 64, "wgan_gp": 64}


@pytest.mark.parametrize("name", MODELS)
def test_width_on_stacked_mnist(name):
    """stacked-mnist's width is the declared one, the other small sets keep the small value,
    an explicit --width wins, and --g-width / --d-width follow --width unless given."""
    mod = importlib.import_module(name)
    small = mod.HYPERPARAMETERS["width"].small

    def widths(*argv):
        a = mod.build_parser().parse_args(list(argv))
        resolve_data_args(a)
        return a.width, a.g_width, a.d_width
    w = STACKED_WIDTH.get(name, small)
    assert widths("--dataset", "stacked-mnist") == (w, w, w)
    assert widths("--dataset", "fashion-mnist") == widths("--dataset", "stacked-digits") == (small,) * 3
    assert widths("--dataset", "stacked-mnist", "--width", "8", "--d-width", "4") == (8, 8, 4)
