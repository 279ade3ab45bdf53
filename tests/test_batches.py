"""ganzoo.batches: every epoch visited once, the exact batch on resume, and the global batch
split over torchrun ranks."""
import torch

import common
from ganzoo import batches as batches_module
from ganzoo.batches import Batches
from ganzoo.data import Images, resolve_data_args

import dcgan


def _args(module):
    a = module.build_parser().parse_args(["--image-size", "16", "--width", "4", "--batch-size", "8"])
    resolve_data_args(a)
    return a


def _fake_ranks(monkeypatch, r, w):
    for module in (common, batches_module):  # the noise draws (GAN) and the batch split
        monkeypatch.setattr(module, "rank", lambda: r)
        monkeypatch.setattr(module, "world", lambda: w)


def test_batches_cover_each_epoch_once_and_resume():
    data = Images(torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1))
    b = Batches(data, 6, seed=3, device=torch.device("cpu"))
    seen = torch.cat([b() for _ in range(3)]).flatten()
    assert len(set(seen.tolist())) == 18  # no repeats within an epoch; the last 2 dropped
    state = b.state()
    nxt = [b() for _ in range(4)]
    b2 = Batches(data, 6, seed=3, device=torch.device("cpu"), state=state)
    assert all(torch.equal(u, b2()) for u in nxt)
    assert nxt[0].min() >= -1 and nxt[0].max() <= 1


def test_ranks_split_the_global_batch_and_the_noise(monkeypatch):
    data = Images(torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous())
    one = Batches(data, 8, 3, torch.device("cpu"))
    want = [one() for _ in range(7)]  # crosses an epoch (5 batches of 8)
    halves = []
    for r in (0, 1):
        _fake_ranks(monkeypatch, r, 2)
        b = Batches(data, 4, 3, torch.device("cpu"))
        halves.append([b() for _ in range(7)])
    for i in range(7):
        assert torch.equal(torch.cat([halves[0][i], halves[1][i]]), want[i])
    # noise: rank r's draw is its slice of the one-process draw
    args = _args(dcgan)
    _fake_ranks(monkeypatch, 0, 1)
    torch.manual_seed(5)
    model = dcgan.DCGAN(args, (1, 16, 16), torch.device("cpu"))
    torch.manual_seed(5)
    z8 = model.sample_z(8)
    parts = []
    for r in (0, 1):
        _fake_ranks(monkeypatch, r, 2)
        torch.manual_seed(5)
        parts.append(model.sample_z(4))
    assert torch.equal(torch.cat(parts), z8)


def test_resume_on_another_number_of_ranks_keeps_the_position(monkeypatch):
    data = Images(torch.zeros(64, 1, 2, 2, dtype=torch.uint8))
    _fake_ranks(monkeypatch, 0, 2)
    b = Batches(data, 4, 0, torch.device("cpu"))
    for _ in range(3):
        b()
    state = b.state()  # 3 global batches of 8 = 24 images into the epoch
    _fake_ranks(monkeypatch, 0, 1)
    assert Batches(data, 4, 0, torch.device("cpu"), state=state).pos == 6  # 6 batches of 4
