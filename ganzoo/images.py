"""Images out: grids of samples, PNG and GIF files, spherical interpolation of latents, and
the timeline GIF of a run's grids."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid(x: torch.Tensor, nrow=None, pad=2) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> one uint8 image (rows*(H+pad)+pad, cols*(W+pad)+pad, C)."""
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = imgs[i]
    return out


def _pil(arr: np.ndarray):
    from PIL import Image
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def save_png(arr: np.ndarray, path) -> None:
    _pil(arr).save(path)


def save_gif(frames, path, ms=100) -> None:
    imgs = [_pil(f).convert("RGB").convert("P", palette=1, colors=256) for f in frames]
    imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=ms, loop=0)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between latent points (White 2016), row by row."""
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    omega = torch.acos((an * bn).sum(1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


def write_timeline(run_dir: Path, max_frames=100) -> None:
    """timeline.gif: the run's sample grids in order (at most max_frames), the last one held."""
    from PIL import Image
    files = sorted((run_dir / "samples").glob("step_*.png"))
    if not files:
        return
    idx = np.linspace(0, len(files) - 1, min(len(files), max_frames)).round().astype(int)
    frames = []
    for i in sorted(set(idx.tolist())):
        with Image.open(files[i]) as im:
            frames.append(np.asarray(im.convert("RGB")))
    frames += [frames[-1]] * 10  # hold the last frame
    save_gif(frames, run_dir / "timeline.gif", ms=150)
