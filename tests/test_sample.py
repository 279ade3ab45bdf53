"""ganzoo.sample: --sample grids and --interpolate walks from a checkpoint, and sampling that
changes nothing in the run."""
import numpy as np
import pytest
import torch
from PIL import Image

import ganzoo.sample as sample_mod
from ganzoo.sample import MAX_PICTURE_BYTES, generate_n, memory_needed, picture_bytes
from conftest import TINY, one_error_line, run_main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained DCGAN on the 16x16 digits."""
    d = tmp_path_factory.mktemp("sample") / "r"
    assert run_main("dcgan", TINY + ["--out", d]) == 0
    return d


def test_sample_and_interpolate(tmp_path):
    assert run_main("dcgan", TINY + ["--out", tmp_path / "r"]) == 0
    assert run_main("dcgan", ["--sample", tmp_path / "r", "--n", "16", "--out", tmp_path / "g.png"]) == 0
    assert Image.open(tmp_path / "g.png").size == (4 * 18 + 2, 4 * 18 + 2)
    assert run_main("dcgan", ["--sample", tmp_path / "r" / "checkpoint.pt", "--interpolate", "--n", "4",
                              "--out", tmp_path / "w.gif"]) == 0
    gif = Image.open(tmp_path / "w.gif")
    assert gif.n_frames == 64 and gif.size == (2 * 18 + 2, 2 * 18 + 2)


def test_a_picture_that_cannot_fit_is_refused_in_one_line_before_anything_is_generated(tmp_path, run, capsys,
                                                                                       monkeypatch):
    """--n 100000000 once tried to allocate 51 GB and died with a traceback: now one line,
    exit 2, naming the largest --n that fits; a --n just under the bound is drawn in chunks."""
    monkeypatch.setattr(sample_mod, "available_memory", lambda: 2 ** 40)  # the picture's bound, not the RAM's
    monkeypatch.setattr(sample_mod, "draw_grid", lambda *a, **k: pytest.fail("generated"))
    capsys.readouterr()
    assert run_main("dcgan", ["--sample", run, "--n", "100000000", "--out", tmp_path / "g.png"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--n 100000000" in line and "30.2 GiB of pixels, over the 1 GiB a picture may take" in line
    assert "other --seed values" in line
    fits = int(line.split("give --n ")[1].split()[0])
    assert picture_bytes(fits, (1, 16, 16)) <= MAX_PICTURE_BYTES < picture_bytes(fits + 1, (1, 16, 16))  # grey digits
    assert not (tmp_path / "g.png").exists()
    # a walk has 64 frames: its bound is 64 times smaller
    assert run_main("dcgan", ["--sample", run, "--interpolate", "--n", "100000",
                              "--out", tmp_path / "w.gif"]) == 2
    assert "a walk of 64 frames" in one_error_line(capsys.readouterr().err)
    monkeypatch.undo()
    # more samples than one chunk of 500: drawn in three chunks, one grid of them all
    assert run_main("dcgan", ["--sample", run, "--n", "1100", "--out", tmp_path / "big.png"]) == 0
    assert Image.open(tmp_path / "big.png").size == (34 * 18 + 2, 33 * 18 + 2)  # 34 columns, 33 rows


def test_a_grid_that_would_not_fit_in_the_ram_available_is_refused_in_one_line(tmp_path, run, capsys, monkeypatch):
    """Under the picture's bound a --n can still need more RAM than there is (the latents, the
    picture, PIL's copy for the encoder): refused by the estimate, naming the --n that fits."""
    z_dim = torch.load(run / "checkpoint.pt", weights_only=True)["config"]["z_dim"]
    monkeypatch.setattr(sample_mod, "available_memory", lambda: 64 * 2 ** 20)
    capsys.readouterr()
    assert run_main("dcgan", ["--sample", run, "--n", "1000000", "--out", tmp_path / "g.png"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "1000000 16x16 images needs about 1.0 GiB of memory to draw, over the 0.1 GiB available now" in line
    fits = int(line.split("give --n ")[1].split()[0])
    assert memory_needed(fits, (1, 16, 16), z_dim) <= 64 * 2 ** 20 < memory_needed(fits + 1, (1, 16, 16), z_dim)
    assert picture_bytes(1_000_000, (1, 16, 16)) < MAX_PICTURE_BYTES  # the picture alone would have passed
    assert run_main("dcgan", ["--sample", run, "--n", str(fits), "--out", tmp_path / "g.png"]) == 0


def test_chunks_draw_the_grid_that_one_batch_draws(tmp_path, run, monkeypatch):
    """draw_grid generates CHUNK samples at a time into the picture: the same pixels as one call
    of G on all of z, grid() of them (with --real-row's images first), and the same --sample file
    for a fixed seed whatever the chunk."""
    import evaluate
    from ganzoo.images import grid
    from ganzoo.sample import draw_grid, generate
    model, _ = evaluate.load_model(run, torch.device("cpu"))
    z = model.sample_z(10, generator=torch.Generator().manual_seed(5), device=torch.device("cpu"))
    first = torch.rand(4, 1, 16, 16) * 2 - 1
    whole = grid(torch.cat([first, generate(model, z)]), nrow=4)
    sizes = []
    G = model.generator_for_sampling()
    hook = G.register_forward_pre_hook(lambda m, inp: sizes.append(len(inp[0])))
    monkeypatch.setattr(sample_mod, "CHUNK", 3)
    chunked = draw_grid(model, z, first, nrow=4)
    hook.remove()
    assert sizes == [3, 3, 3, 1] and np.array_equal(chunked, whole)
    assert run_main("dcgan", ["--sample", run, "--n", "10", "--seed", "7", "--out", tmp_path / "a.png"]) == 0
    monkeypatch.undo()
    assert run_main("dcgan", ["--sample", run, "--n", "10", "--seed", "7", "--out", tmp_path / "b.png"]) == 0
    a, b = (np.asarray(Image.open(tmp_path / f)) for f in ("a.png", "b.png"))
    assert np.array_equal(a, b) and a.std() > 0


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
