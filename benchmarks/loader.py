"""Images/s of the data pipeline alone, on a folder of JPEGs.

    python benchmarks/loader.py                          # makes 2,000 CelebA-sized JPEGs in a temp folder
    python benchmarks/loader.py --path data/img_align_celeba --limit 20000
    python benchmarks/loader.py --image-size 128 --workers 8

Two figures: the one-time decode of the folder (JPEG -> centre crop -> resize -> uint8, by
--workers processes), and the batches the training loop then draws from memory (uint8 ->
float in [-1, 1], shuffled), which is what every training step pays.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ganzoo.batches import Batches  # noqa: E402
from ganzoo.cli import image_size, size_str  # noqa: E402
from ganzoo.data import list_images, load_folder  # noqa: E402


def make_jpegs(root: Path, n: int, seed=0):
    """Smooth synthetic 178x218 RGB images (JPEG-compressible like photos, unlike noise)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:218, 0:178].astype(np.float32)
    for i in range(n):
        f = rng.uniform(0.01, 0.08, 3)
        ph = rng.uniform(0, 6.28, 3)
        img = np.stack([127 + 120 * np.sin(f[c] * xx + ph[c]) * np.cos(f[(c + 1) % 3] * yy) for c in range(3)], -1)
        img += rng.normal(0, 6, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"{i:06d}.jpg", quality=90)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path", help="a folder of images (default: make synthetic JPEGs)")
    p.add_argument("--n", type=int, default=2000, help="synthetic images to make")
    p.add_argument("--limit", type=int, default=None, help="use at most this many files of --path")
    p.add_argument("--image-size", type=image_size, default=(64, 64))
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--batch-size", type=int, default=128)
    a = p.parse_args()
    tmp = None
    if a.path is None:
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name)
        make_jpegs(root, a.n)
    else:
        root = Path(a.path)
    if a.limit:  # a subset of a large folder, through symlinks
        tmp = tmp or tempfile.TemporaryDirectory()
        sub = Path(tmp.name) / "subset"
        sub.mkdir(exist_ok=True)
        for f in list_images(root)[: a.limit]:
            (sub / f.name).symlink_to(f.resolve())
        root = sub
    t = time.perf_counter()
    data = load_folder(root, a.image_size, 3, a.workers, budget=float("inf"))
    dt = time.perf_counter() - t
    print(f"decode: {len(data)} images at {size_str(a.image_size)} with {a.workers} workers: "
          f"{len(data) / dt:,.0f} images/s ({dt:.2f} s)")
    batches = Batches(data, a.batch_size, 0, torch.device("cpu"))
    n = max(50, 20 * len(data) // a.batch_size)
    t = time.perf_counter()
    for _ in range(n):
        batches()
    dt = time.perf_counter() - t
    print(f"batches: {n} batches of {a.batch_size} from memory: {n * a.batch_size / dt:,.0f} images/s")
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
