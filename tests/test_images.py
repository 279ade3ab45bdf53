"""ganzoo.images: grids, GIFs, the timeline and slerp."""
import numpy as np
import torch
from PIL import Image

from ganzoo.images import grid, save_gif, slerp, write_timeline


def test_slerp_keeps_the_norm_and_ends():
    a, b = torch.randn(5, 100), torch.randn(5, 100)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-4)
    a2, b2 = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    assert torch.allclose(slerp(a2, b2, 0.3).norm(dim=1), torch.ones(5), atol=1e-5)


def test_grid_places_each_image_in_its_cell():
    x = torch.stack([torch.full((1, 2, 3), v) for v in (-1.0, -0.5, 0.0, 0.5, 1.0)])  # 5 images (1, 2, 3)
    g = grid(x, nrow=3, pad=1)  # 3 columns, 2 rows
    assert g.shape == (2 * (2 + 1) + 1, 3 * (3 + 1) + 1, 1) and g.dtype == np.uint8
    cells = [int(g[1 + r * 3, 1 + q * 4, 0]) for r, q in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1))]
    assert cells == [0, 64, 128, 191, 255]  # [-1, 1] -> [0, 255], rounded
    assert g[0].max() == 0 and g[:, 0].max() == 0 and g[4:, 9:].max() == 0  # padding and the empty cell


def test_gif_and_timeline(tmp_path):
    frames = [np.full((6, 6, 1), 40 * i, np.uint8) for i in range(3)]
    save_gif(frames, tmp_path / "a.gif", ms=50)
    assert Image.open(tmp_path / "a.gif").n_frames == 3
    (tmp_path / "samples").mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f[..., 0]).save(tmp_path / "samples" / f"step_{i:06d}.png")
    write_timeline(tmp_path)
    gif = Image.open(tmp_path / "timeline.gif")
    durations = []
    for i in range(gif.n_frames):
        gif.seek(i)
        durations.append(gif.info["duration"])
    assert durations == [150, 150, 11 * 150]  # every grid; the last one held (PIL merges the repeats)
