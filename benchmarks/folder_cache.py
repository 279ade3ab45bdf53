"""Time to the first batch on a big folder of JPEGs: the first run decodes every file, a
second run memory-maps the decoded cache (ganzoo/data.py); with --check, what the second run's
check of the cache's checksums costs on a cache of CelebA's size.

    python benchmarks/folder_cache.py                      # 200,000 Fashion-MNIST images as JPEGs
    python benchmarks/folder_cache.py --n 20000 --image-size 28
    python benchmarks/folder_cache.py --check --markdown   # 202,599 64x64 RGB images: 2.49 GB

The folder is written once (from Debian's dataset-fashion-mnist, or the built-in digits when
it is not installed, repeated) into --dir; each load is timed from the file listing to the
first batch, in a fresh cache folder, so the figure is what a user waits before step 1.

--check writes a decoded cache of --n random images (default CelebA's 202,599) at --image-size
(default 64) with 3 channels into --dir, with its checksums as a first run writes them, and
times ganzoo.data.cached_folder, the check a second run makes: once on a cold page cache (the
file's pages dropped with posix_fadvise, which touches no other file; Linux) and --repeats times
warm; beside it, reading every page without summing (the part of the cold figure that the
disk sets and training would pay anyway). The file is deleted afterwards.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ganzoo.batches import Batches  # noqa: E402
from ganzoo.cli import image_size  # noqa: E402
from ganzoo.data import (CHECK_CHUNK, FASHION_MNIST_DIR, cached_folder, digits_images, file_checksum,  # noqa: E402
                         labelled, load_folder, resize_uint8, scan_images)
from ganzoo.scale import device_summary  # noqa: E402


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


def write_cache(path: Path, n: int, shape) -> float:
    """A decoded cache of n random uint8 images and its .json, as save_cache writes them; the
    seconds its checksums took (what a first run adds)."""
    a = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *shape))
    rng = np.random.default_rng(0)
    for i in range(0, n, 8192):
        a[i:i + 8192] = rng.integers(0, 256, size=a[i:i + 8192].shape, dtype=np.uint8)
    a.flush()
    del a
    t = time.perf_counter()
    crc = file_checksum(path)
    took = time.perf_counter() - t
    path.with_suffix(".json").write_text(json.dumps({"files": n, "images": n, "skipped": 0, "chunk": CHECK_CHUNK,
                                                     "bytes": path.stat().st_size, "crc32": crc}))
    return took


def drop(path: Path) -> bool:
    """This file's pages out of the page cache (written back first); False where it cannot be done."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def read_pages(path: Path) -> None:
    a = np.memmap(path, dtype=np.uint8, mode="r")
    for i in range(0, len(a), 64 * 2**20):
        int(a[i:i + 64 * 2**20:4096].sum())  # one byte a page: every page read, nothing summed


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def check(a) -> None:
    n, shape = a.n or 202_599, (3, *a.image_size)
    a.dir.mkdir(parents=True, exist_ok=True)
    path = a.dir / "ganzoo-check-bench.npy"
    try:
        build = write_cache(path, n, shape)
        size = path.stat().st_size

        def verify():
            hit, why = cached_folder(path, n, shape)
            assert hit is not None, why

        rows = []
        if drop(path):
            rows.append(("cold: read every page, no sum", timed(lambda: read_pages(path))))
            drop(path)
            rows.append(("cold: the check", timed(verify)))
        warm = [timed(verify) for _ in range(a.repeats)]
        rows.append((f"warm: the check (median of {a.repeats})", statistics.median(warm)))
        rows.append(("build: the checksums a first run writes", build))
    finally:
        for f in (path, path.with_suffix(".json")):
            f.unlink(missing_ok=True)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    threads = min(8, os.cpu_count() or 1)
    head = (f"{device_summary(torch.device('cpu'))}, {ram:.1f} GiB RAM; a decoded cache of {n:,} images "
            f"{'x'.join(map(str, shape))} uint8: {size / 1e9:.2f} GB, crc32 a {CHECK_CHUNK // 2**20} MiB chunk on "
            f"{threads} thread{'s' * (threads > 1)}")
    print(head)
    if not rows[0][0].startswith("cold"):
        print("(no cold figure: posix_fadvise is not available here)")
    if a.markdown:
        print("\n| what | seconds | GB/s |\n|---|---:|---:|")
    for what, sec in rows:
        print(f"| {what} | {sec:.3g} | {size / sec / 1e9:.2f} |" if a.markdown
              else f"  {what:42s} {sec:6.2f} s  {size / sec / 1e9:6.2f} GB/s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=None, help="images (default 200,000; with --check 202,599)")
    p.add_argument("--image-size", type=image_size, default=None, help="default 28 (with --check 64)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "ganzoo-folder-bench")
    p.add_argument("--check", action="store_true", help="time the decoded cache's checksum check instead")
    p.add_argument("--repeats", type=int, default=3, help="with --check: warm checks timed")
    p.add_argument("--markdown", action="store_true", help="with --check: print a markdown table")
    a = p.parse_args(argv)
    if a.check:
        a.image_size = a.image_size or (64, 64)
        return check(a)
    a.n, a.image_size = a.n or 200_000, a.image_size or (28, 28)
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
