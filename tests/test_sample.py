"""ganzoo.sample: --sample grids and --interpolate walks from a checkpoint, and sampling that
changes nothing in the run."""
import torch
from PIL import Image

from ganzoo.sample import generate_n
from conftest import TINY, run_main


def test_sample_and_interpolate(tmp_path):
    assert run_main("dcgan", TINY + ["--out", tmp_path / "r"]) == 0
    assert run_main("dcgan", ["--sample", tmp_path / "r", "--n", "16", "--out", tmp_path / "g.png"]) == 0
    assert Image.open(tmp_path / "g.png").size == (4 * 18 + 2, 4 * 18 + 2)
    assert run_main("dcgan", ["--sample", tmp_path / "r" / "checkpoint.pt", "--interpolate", "--n", "4",
                              "--out", tmp_path / "w.gif"]) == 0
    gif = Image.open(tmp_path / "w.gif")
    assert gif.n_frames == 64 and gif.size == (2 * 18 + 2, 2 * 18 + 2)


def test_real_row_puts_training_images_above_the_samples(tmp_path):
    import numpy as np
    from ganzoo.data import digits_images, resize_uint8
    assert run_main("dcgan", TINY + ["--out", tmp_path / "r"]) == 0
    assert run_main("dcgan", ["--sample", tmp_path / "r", "--n", "16", "--real-row", "--out", tmp_path / "g.png"]) == 0
    img = np.asarray(Image.open(tmp_path / "g.png").convert("L"))
    assert img.shape == (5 * 18 + 2, 4 * 18 + 2)  # one row of 4 real digits, then 4 rows of samples
    digits = resize_uint8(digits_images()[0], (16, 16))[:, 0].numpy()
    first = img[2:18, 2:18]
    assert min(np.abs(first.astype(int) - d).max() for d in digits) <= 1  # a real digit, as saved


def test_sampling_changes_nothing_in_the_run():
    """generate_n draws its z from a generator of its own and samples in eval mode: the run's
    RNG, G's training mode and BatchNorm's statistics are as before; the same seed, the same
    samples."""
    import dcgan
    from ganzoo.data import resolve_data_args
    args = dcgan.build_parser().parse_args(["--width", "4", "--image-size", "16"])
    resolve_data_args(args)
    model = dcgan.DCGAN(args, (1, 16, 16), torch.device("cpu"))
    rng, stats = torch.get_rng_state(), [b.clone() for b in model.G.buffers()]
    a = generate_n(model, 7, seed=3, batch=4)  # in two batches
    assert a.shape == (7, 1, 16, 16) and a.abs().max() <= 1
    assert torch.equal(torch.get_rng_state(), rng) and model.G.training
    assert all(torch.equal(b, s) for b, s in zip(model.G.buffers(), stats))
    assert torch.equal(generate_n(model, 7, seed=3, batch=4), a)
    assert not torch.equal(generate_n(model, 7, seed=4, batch=4), a)
