"""Time to the first batch on a big folder of JPEGs: the first run decodes every file, a
second run memory-maps the decoded cache (ganzoo/data.py).

    python benchmarks/folder_cache.py                      # 200,000 Fashion-MNIST images as JPEGs
    python benchmarks/folder_cache.py --n 20000 --image-size 28

The folder is written once (from Debian's dataset-fashion-mnist, or the built-in digits when
it is not installed, repeated) into --dir; each load is timed from the file listing to the
first batch, in a fresh cache folder, so the figure is what a user waits before step 1.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ganzoo.batches import Batches  # noqa: E402
from ganzoo.cli import image_size  # noqa: E402
from ganzoo.data import FASHION_MNIST_DIR, digits_images, labelled, load_folder, resize_uint8, scan_images  # noqa: E402


def write_folder(root: Path, n: int) -> str:
    from PIL import Image
    if FASHION_MNIST_DIR.is_dir():
        x, what = labelled("fashion-mnist").x, "Fashion-MNIST"
    else:
        x, what = resize_uint8(digits_images()[0], (28, 28)), "the built-in digits"
    root.mkdir(parents=True, exist_ok=True)
    have = len(list(root.glob("*/*.jpg")))
    for i in range(have, n):
        d = root / f"{i // 10000:03d}"
        d.mkdir(exist_ok=True)
        Image.fromarray(x[i % len(x), 0].numpy()).save(d / f"{i:06d}.jpg", quality=90)
    return what


def first_batch(root, hw, workers) -> float:
    t = time.perf_counter()
    data = load_folder(root, hw, 1, workers, budget=2 ** 40)
    Batches(data, 64, 0, torch.device("cpu"))()
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--image-size", type=image_size, default=(28, 28))
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "ganzoo-folder-bench")
    a = p.parse_args()
    what = write_folder(a.dir, a.n)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GANZOO_CACHE"] = cache
        first = first_batch(a.dir, a.image_size, a.workers)
        second = first_batch(a.dir, a.image_size, a.workers)
    t = time.perf_counter()
    scan_images(a.dir)  # what the second run cannot skip: list the files, stat each one
    scan = time.perf_counter() - t
    decode = first - scan
    print(f"{a.n:,} JPEGs of {what} at {a.image_size[0]}x{a.image_size[1]}, {a.workers} workers, "
          f"{os.cpu_count()} CPUs:\n  first run (decode + cache): {first:.1f} s to the first batch\n"
          f"  second run (memory-mapped cache): {second:.2f} s ({second / first:.1%} of the first run, "
          f"{second / decode:.1%} of its {decode:.1f} s past the listing)\n"
          f"  listing and stat-ing the files (both runs do it): {scan:.2f} s")


if __name__ == "__main__":
    main()
