"""The data pipeline: every source, every image mode, sizes, bad input."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import one_error_line, run_main
from ganzoo.batches import Batches
from ganzoo.data import (StackedDigits, StreamedFolder, decode_image, digits_images, list_images, load_cifar10,
                         load_folder, load_mnist, resize_uint8)
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
    data = load_mnist(tmp_path)
    assert data.x.shape == (25, 1, 28, 28) and torch.equal(data.x[0, 0], torch.from_numpy(imgs[0]).to(torch.uint8))
    assert data.labels.tolist()[:3] == [0, 1, 2]


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


def test_size_not_power_of_two(tmp_path, capsys):
    _bad(capsys, ["--image-size", "48", "--out", tmp_path / "r"], "power of two")


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
