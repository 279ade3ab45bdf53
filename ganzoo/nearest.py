"""The memorisation check: is a generator copying its training images? Each sample's
distance to its nearest training image, against the same distance for real images the
searched training images do not hold (the images past --limit for a run that had one, else a
random held-out share of the training images). A sample much closer to the
training set than held-out real images are is a copy. Distances are in the judge's features
where the data set has a judge, else in down-sampled pixels (16x16, so that a folder works)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import LABELLED, load_run_split, to_signed
from .evaluation import scorer
from .images import grid, save_png
from .sample import generate_n

HELD_OUT = 500        # real images taken out of the training set to show what "not a copy" looks like
MAX_TRAIN = 50_000    # at most this many training images are searched


def nearest(queries: torch.Tensor, refs: torch.Tensor, k: int = 1, chunk: int = 1024):
    """(distances (Q, k), indices (Q, k)) of each query's k nearest refs (Euclidean)."""
    d, i = zip(*[torch.cdist(q, refs).topk(k, dim=1, largest=False) for q in queries.split(chunk)])
    return torch.cat(d), torch.cat(i)


def report(sample_d: torch.Tensor, held_d: torch.Tensor) -> dict:
    """The two nearest-distance distributions, and the share of samples nearer the training
    set than all but 1 % of held-out real images (about 0.01 when nothing is copied)."""
    q = torch.tensor([0.01, 0.05, 0.5])
    s, h = torch.quantile(sample_d.double(), q.double()), torch.quantile(held_d.double(), q.double())
    return {"samples_p1": float(s[0]), "samples_p5": float(s[1]), "samples_median": float(s[2]),
            "held_out_p1": float(h[0]), "held_out_p5": float(h[1]), "held_out_median": float(h[2]),
            "closer_than_held_out_p1": float((sample_d < h[0]).double().mean())}


def features_fn(cfg: dict, device):
    """images (N, C, H, W) in [-1, 1] -> features (N, F) and what they are."""
    if cfg["dataset"] in LABELLED:
        s = scorer(cfg["dataset"], tuple(cfg["image_size"]), device, cfg.get("path"))
        return (lambda x: s.classify(x)[0]), f"the {s.source} judge's features"
    return (lambda x: F.adaptive_avg_pool2d(x.float(), 16).flatten(1)), "16x16 down-sampled pixels"


def check(model, cfg: dict, device, out_path, n: int = 500, seed: int = 0) -> dict:
    """Writes out_path (16 rows: a sample, then its 5 nearest training images) and returns
    the report of n samples against HELD_OUT held-out real images."""
    data, trained = load_run_split(cfg)
    g = torch.Generator().manual_seed(seed)
    if trained < len(data):  # a --limit run: every image it trained on is searched, and the
        # held-out ones are images of the same set that it never saw (the ones past the limit)
        held_idx = trained + torch.randperm(len(data) - trained, generator=g)[:HELD_OUT]
        train_idx = torch.randperm(trained, generator=g)[:MAX_TRAIN]
    else:  # a random share of the training images is held out of the search
        order = torch.randperm(len(data), generator=g)
        held = min(HELD_OUT, len(data) // 5)
        held_idx, train_idx = order[:held], order[held:held + MAX_TRAIN]

    def images(idx):
        return to_signed(data.batch(idx))
    feats, what = features_fn(cfg, device)
    train_x = torch.cat([images(b) for b in train_idx.split(2000)])
    train_f = torch.cat([feats(b) for b in train_x.split(2000)])
    fake = generate_n(model, n, seed)
    fake_f, held_f = feats(fake), feats(images(held_idx))
    fake_d, fake_i = nearest(fake_f, train_f, k=5)
    held_d, _ = nearest(held_f, train_f, k=1)
    rows = []
    for j in range(min(16, n)):  # one sample, then its 5 nearest training images
        rows += [fake[j]] + [train_x[int(t)] for t in fake_i[j]]
    save_png(grid(torch.stack(rows), nrow=6), out_path)
    return {"features": what, "n": n, "held_out": len(held_idx), "train_searched": len(train_idx),
            **report(fake_d[:, 0], held_d[:, 0])}
