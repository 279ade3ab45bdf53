"""Samples from a model: grids and n-sample batches with the networks in eval mode, and the
--sample command (a grid, or a GIF walking the latent space) from a checkpoint."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint, model_from_checkpoint
from .data import load_run_data, to_signed
from .errors import UserError
from .images import save_gif, save_png, slerp, to_uint8
from .scale import pick_device


@torch.no_grad()
def generate(model, z: torch.Tensor) -> torch.Tensor:
    """Samples with the networks in eval mode (BatchNorm's running statistics), so that
    drawing a grid changes no state of the run."""
    G = model.generator_for_sampling()
    was = G.training
    G.eval()
    try:
        return G(z)
    finally:
        G.train(was)


def generate_batches(model, n: int, seed: int = 0, batch: int = 500):
    """generate_n's n samples, `batch` at a time (fp32, on the CPU): for a consumer that should
    not hold them all (50,000 samples' Inception features)."""
    g = torch.Generator().manual_seed(seed + 2)
    for i in range(0, n, batch):
        z = model.sample_z(min(batch, n - i), generator=g, device=torch.device("cpu"))
        yield generate(model, z.to(model.device)).float().cpu()


def generate_n(model, n: int, seed: int = 0, batch: int = 500) -> torch.Tensor:
    """n samples (n, C, H, W) on the CPU, from z drawn by a generator of their own (so that
    evaluating during training leaves the run's random state, and so resume, untouched)."""
    return torch.cat(list(generate_batches(model, n, seed, batch)))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_PICTURE_BYTES = 2 ** 30  # a grid (all frames of a walk together) of at most 1 GiB of uint8 pixels
CHUNK = 500  # samples generated at a time


def picture_bytes(n: int, shape, frames: int = 1, extra_rows: int = 0) -> int:
    """The uint8 bytes of `frames` grids of n images of shape (C, H, W), as images.grid lays them
    out (2-pixel padding, ceil(sqrt n) columns), with extra_rows more rows (--real-row)."""
    c, h, w = shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols) + extra_rows
    return frames * (rows * (h + 2) + 2) * (cols * (w + 2) + 2) * c


def memory_needed(n: int, shape, z_size: int, frames: int = 1, extra_rows: int = 0) -> int:
    """Bytes of RAM that drawing and saving the picture takes at its peak (an estimate): the n
    latents (float32, four keys for a walk), the uint8 picture (all frames of a walk), PIL's
    copy of it for the encoder (4 bytes a pixel for RGB, 1 for grey; a walk keeps a 1-byte
    palette copy of each frame), and one chunk of CHUNK samples with G's work on them (taken
    as 8 floats a pixel value)."""
    c, h, w = shape
    picture = picture_bytes(n, shape, frames, extra_rows)
    pixels = picture // c
    copy = pixels if frames > 1 else pixels * (4 if c == 3 else 1)
    latents = (4 if frames > 1 else 1) * n * z_size * 4
    return latents + picture + copy + min(n, CHUNK) * c * h * w * 4 * 8


def available_memory() -> int:
    """Bytes of RAM free for new allocations now: Linux's MemAvailable, else half the RAM."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 4 * 2 ** 30


def check_picture(n: int, shape, frames: int = 1, extra_rows: int = 0, z_size: int = 0) -> None:
    """Refuse, in one line and before anything is generated, a --n whose picture cannot fit: over
    MAX_PICTURE_BYTES of pixels, or needing more RAM than is available (memory_needed)."""
    avail = available_memory()

    def fits(k):
        return picture_bytes(k, shape, frames, extra_rows) <= MAX_PICTURE_BYTES and \
            memory_needed(k, shape, z_size, frames, extra_rows) <= avail
    if fits(n):
        return
    lo, hi = 0, n  # the largest n that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    what = f"a walk of {frames} frames" if frames > 1 else "a grid"
    gib = picture_bytes(n, shape, frames, extra_rows) / 2 ** 30
    if gib > MAX_PICTURE_BYTES / 2 ** 30:
        why = f"would take {gib:,.1f} GiB of pixels, over the {MAX_PICTURE_BYTES / 2 ** 30:.0f} GiB a picture may take"
    else:
        why = (f"needs about {memory_needed(n, shape, z_size, frames, extra_rows) / 2 ** 30:,.1f} GiB of memory "
               f"to draw, over the {avail / 2 ** 30:,.1f} GiB available now")
    instead = f"give --n {lo} or fewer" if lo else "free some memory"
    raise UserError(f"--n {n}: {what} of {n} {shape[2]}x{shape[1]} images {why}; {instead} "
                    "(for more samples, draw several with other --seed values)")


def draw_grid(model, z: torch.Tensor, first: torch.Tensor | None = None, nrow=None, pad: int = 2) -> np.ndarray:
    """images.grid(torch.cat([first, generate(model, z)]), nrow, pad), generated CHUNK samples at
    a time straight into the uint8 picture: the picture and one chunk in memory, whatever --n
    (all n float samples first took 4 bytes a value, and grid()'s conversion as much again)."""
    c, h, w = model.shape
    n0 = 0 if first is None else len(first)
    n = n0 + len(z)
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)

    def put(start, imgs):  # uint8 (B, H, W, C) at positions start, start + 1, ...
        for j, img in enumerate(imgs):
            r, q = divmod(start + j, cols)
            out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = img
    if first is not None:
        put(0, to_uint8(first))
    for i in range(0, len(z), CHUNK):
        put(n0 + i, to_uint8(generate(model, z[i:i + CHUNK].to(model.device))))
    return out


def check_image_out(out: Path, gif: bool) -> None:
    """--out of --sample: a file name with an image suffix, in a folder that exists and is writable."""
    want = (".gif",) if gif else IMAGE_SUFFIXES
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name such as {out / ('walk.gif' if gif else 'grid.png')}")
    if out.suffix.lower() not in want:
        raise UserError(f"--out {out}: give a file name ending in {' or '.join(want)}")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: no such folder {out.parent}")
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"--out {out}: cannot write in {out.parent}")


def real_images(cfg: dict, n: int, seed: int = 0) -> torch.Tensor:
    """n training images (n, C, H, W) in [-1, 1] of the data set a run's config names, drawn
    at random (a fixed draw for each seed)."""
    data = load_run_data(cfg)
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return to_signed(data.batch(idx))


def sample(model_cls, args) -> int:
    """--sample CHECKPOINT: a grid of --n samples (sample.png), or with --interpolate a GIF of
    --n latent walks through four random points and back (walk.gif), beside the checkpoint
    unless --out names the file."""
    ckpt, p = load_checkpoint(args.sample, model_cls.name)
    if args.interpolate and args.real_row:
        raise UserError("--real-row goes with a grid, not with --interpolate")
    check_image_out(Path(args.out or p.parent / ("walk.gif" if args.interpolate else "sample.png")), args.interpolate)
    device = pick_device(args.device)
    model = model_from_checkpoint(model_cls, ckpt, p, device)
    z_size = model.sample_z(1, generator=torch.Generator(), device=torch.device("cpu")).numel()
    check_picture(args.n, model.shape, frames=64 if args.interpolate else 1, extra_rows=int(bool(args.real_row)),
                  z_size=z_size)
    g = torch.Generator().manual_seed(args.seed)
    if args.interpolate:
        out = Path(args.out or p.parent / "walk.gif")
        keys = [model.sample_z(args.n, generator=g, device=torch.device("cpu")) for _ in range(4)]
        keys.append(keys[0])  # loop back to the start
        frames = []
        for a, b in zip(keys[:-1], keys[1:]):
            for t in np.linspace(0, 1, 16, endpoint=False):
                frames.append(draw_grid(model, slerp(a, b, float(t))))
        save_gif(frames, out, ms=80)
    else:
        out = Path(args.out or p.parent / "sample.png")
        z = model.sample_z(args.n, generator=g, device=torch.device("cpu"))
        cols = math.ceil(math.sqrt(args.n))
        # --real-row: one row of real images first, the samples below it
        first = real_images(ckpt["config"], cols, args.seed) if args.real_row else None
        save_png(draw_grid(model, z, first, nrow=cols), out)
    print(f"wrote {out} ({args.n} {'walks' if args.interpolate else 'samples'} from step {ckpt['step']})",
          file=sys.stderr)
    return 0
