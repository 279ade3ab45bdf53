"""Offline quality and mode-coverage metrics for GANs trained on a labelled data set.

No weights can be downloaded here, so each judge is the project's own: a small CNN trained on
the data set's training split at the GAN's image size, deterministic from its seed and
cached on disk after its first training, its accuracy measured on the held-out split (the
test split of MNIST, Fashion-MNIST and CIFAR-10; a fixed stratified quarter of the digits
and of mnist-5k, which have none).

    digits, mnist, mnist-5k, fashion-mnist, cifar10
                     classes covered (of 10), KL(generated classes || real classes), the
                     share of confidently classified samples, the Frechet (FD) and kernel
                     (KID) distances between the judge's penultimate features of generated
                     and real images, and precision, recall, density and coverage in the
                     same features (Kynkaanniemi et al. 2019; Naeem et al. 2020, k = 5).
    stacked-*        each channel classified on its own by the source set's judge, mode =
                     100 c0 + 10 c1 + c2: modes covered (of 1,000), also among confidently
                     classified samples only, and KL(generated modes || uniform), from
                     26,000 samples as in the Stacked-MNIST papers (VEEGAN, Srivastava et
                     al. 2017; PacGAN, Lin et al. 2018); the same confidence share,
                     distances and PRDC (features: the three channels' side by side).

A mode (class) is covered when at least one sample is classified into it, as in those
papers. FD is Heusel et al. 2017's distance (the FID formula) and KID Binkowski et al.
2018's unbiased MMD^2 with the cubic polynomial kernel, both on the judge's features,
so their values are comparable within this project only, not with published FID/KID.
A folder of unlabelled images has no judge: the metrics need classes.

    from ganzoo import metrics
    scorer = metrics.Scorer("stacked-digits", (32, 32))
    scorer(fake)       # fake: float (N, 3, 32, 32) in [-1, 1] -> {"modes": ..., "kl": ..., ...}
"""
from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .cli import size_str
from .data import STACKED, cache_dir, labelled, load_data, resize_uint8, stacked_source, to_signed
from .errors import UserError

VERSION = "v1"        # bump when the classifier or its training changes: old cache files are ignored
CLASSIFIER_SEED = 0
CONFIDENT = 0.9       # a sample is confidently classified when its top softmax probability is >= this
PRDC_K = 5            # neighbours of precision/recall/density/coverage (Naeem et al. 2020's choice)
PRDC_N = 10_000       # at most this many real and generated features enter PRDC (Naeem et al.'s size)
# Generated samples per evaluation: the digits' 2,000; 10,000 for the larger sets (FID's usual
# count); 26,000 for the stacked sets, as in the Stacked-MNIST papers.
SAMPLES = {"digits": 2000, "stacked-digits": 26_000, "mnist": 10_000, "mnist-5k": 5000, "fashion-mnist": 10_000,
           "cifar10": 10_000, "stacked-mnist": 26_000, "stacked-fashion-mnist": 26_000}
DATASETS = tuple(SAMPLES)
# The labels' names where they are not the digits 0-9 (the per-class table: evaluate.py --per-class).
CLASS_NAMES = {"fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                                 "Bag", "Ankle boot"),
               "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")}
# Each source set's judge: (conv widths, epochs). The digits' is the project's first judge,
# kept as it was (its numbers are in docs/evaluation.md); the larger sets get a wider net.
JUDGES = {"digits": ((16, 32, 64), 20), "mnist-5k": ((32, 64, 128), 20), "mnist": ((32, 64, 128), 4),
          "fashion-mnist": ((32, 64, 128), 8), "cifar10": ((32, 64, 128), 10)}


# --------------------------------------------------------------------------------------
# The digit classifier
# --------------------------------------------------------------------------------------

class DigitNet(nn.Module):
    """One image (B, C, H, W) in [-1, 1] -> 10 logits. The distances use `features`, the
    128-d penultimate layer, divided by `scale` (its root-mean-square over the training
    images, set after training) so that they are of order 1, as KID's kernel assumes.
    Strided convs keep it cheap on a CPU."""

    def __init__(self, channels: int = 1, widths=(16, 32, 64)):
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            nn.Conv2d(channels, a, 3, 2, 1), nn.ReLU(),  # (B, a, H/2, W/2)
            nn.Conv2d(a, b, 3, 2, 1), nn.ReLU(),         # (B, b, H/4, W/4)
            nn.Conv2d(b, c, 3, 2, 1), nn.ReLU(),         # (B, c, H/8, W/8)
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),       # (B, 16c), the same for any image size
            nn.Linear(16 * c, 128), nn.ReLU())           # (B, 128)
        self.head = nn.Linear(128, 10)
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x):
        return self.head(self.features(x))


def real_digits(hw) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as the GANs see them: float (N, 1, H, W) in [-1, 1], and labels."""
    data = load_data(argparse.Namespace(dataset="digits", image_size=tuple(hw), channels=1, batch_size=1))
    return to_signed(data.x), data.labels


def judge_source(dataset: str, path=None) -> str:
    """The labelled set whose judge scores `dataset` (a stacked set: its source's)."""
    if dataset in STACKED:
        return stacked_source(dataset, path)
    if dataset not in JUDGES:
        raise UserError(f"no quality metric for --dataset {dataset}: the metrics need a judge classifier "
                        "trained on labelled images, and a folder has no labels; train on a labelled data set "
                        f"({', '.join(DATASETS)}) to get them")
    return dataset


def judge_data(source: str, hw, path=None, seed: int = CLASSIFIER_SEED):
    """(train images, train labels, held-out images, held-out labels) of a judge, as float
    (N, C, H, W) in [-1, 1] at the GAN's size. The held-out part is the test split, or a
    fixed stratified quarter where the set has no test split."""
    def prep(d):
        if d.labels is None:
            raise UserError(f"{d.source}: no labels (the label IDX file is missing); the quality metrics need them")
        return to_signed(resize_uint8(d.x, hw)), d.labels
    x, y = prep(labelled(source, path))
    test = labelled(source, path, "test")
    if test is not None:
        return (x, y) + prep(test)
    tr, te = split(y, seed)
    return x[tr], y[tr], x[te], y[te]


def fingerprint(source: str, path=None) -> str:
    """What decides a judge's training data: the set's name, and for files the user gives
    (--path) a hash of their labels and first images, so that other files get another judge."""
    if source in ("digits", "mnist-5k") or (source == "fashion-mnist" and not path):
        return source
    d = labelled(source, path)
    h = hashlib.sha1(d.labels.numpy().tobytes() if d.labels is not None else b"")
    h.update(d.x[:1000].numpy().tobytes())
    return f"{source}-{h.hexdigest()[:10]}"


def split(labels: torch.Tensor, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed stratified split: a quarter of each class held out."""
    from sklearn.model_selection import train_test_split
    return train_test_split(np.arange(len(labels)), test_size=0.25, stratify=labels.numpy(), random_state=seed)


def _jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random small affine moves (rotation 10 degrees, scale 10 %, shift 1/10 of the side)
    so that the classifier judges a digit, not its exact placement."""
    B = len(x)
    a = (torch.rand(B, generator=g) * 2 - 1) * np.pi / 18
    s = 1 + (torch.rand(B, generator=g) * 2 - 1) * 0.1
    t = (torch.rand(B, 2, generator=g) * 2 - 1) * 0.2
    theta = torch.stack([torch.stack([s * a.cos(), -s * a.sin(), t[:, 0]], 1),
                         torch.stack([s * a.sin(), s * a.cos(), t[:, 1]], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False) - 1  # pads with black (-1)


def _new_net(seed: int, channels: int = 1, widths=(16, 32, 64)) -> DigitNet:
    """A DigitNet initialised from `seed`; the global RNG is left as it was (a training
    run's resume depends on it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DigitNet(channels, widths)


def fit(x, y, x_test, y_test, seed: int, epochs: int, widths=(16, 32, 64)) -> tuple[DigitNet, float]:
    """Train a judge on (x, y); returns it and its accuracy on (x_test, y_test). Deterministic
    from `seed`: every random draw comes from it, and it runs on one thread (one summation
    order, so the same weights on any machine; threads only slow a net this small down)."""
    net, g = _new_net(seed, x.shape[1], widths), torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * -(-len(x) // 64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=g).split(64):
                loss = F.cross_entropy(net(_jitter(x[idx], g)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        with torch.no_grad():
            net.scale.copy_(torch.cat([net.features(b) for b in x.split(2000)]).pow(2).mean().sqrt())
            acc = torch.cat([net(b).argmax(1) for b in x_test.split(2000)]).eq(y_test).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    return net, acc


def train_classifier(hw, seed: int = CLASSIFIER_SEED, epochs: int | None = None, source: str = "digits",
                     path=None, say: str | None = None) -> tuple[DigitNet, float]:
    """The judge of `source` at size hw, trained on its training split; returns the network
    and its held-out accuracy. `say`, if given, goes to stderr once the data has loaded (so
    that a bad data set still ends with its one error line), before the minutes of fitting."""
    widths, default_epochs = JUDGES[source]
    x, y, xt, yt = judge_data(source, tuple(hw), path, seed)
    if say:
        print(say, file=sys.stderr)
    return fit(x, y, xt, yt, seed, epochs or default_epochs, widths)


@functools.lru_cache(maxsize=None)
def classifier(hw, seed: int = CLASSIFIER_SEED, source: str = "digits", path=None) -> tuple[DigitNet, float]:
    """The judge of `source` for images of size hw: from the cache file, else trained and
    saved there. Once per process; the file is loaded with weights_only=True."""
    hw = tuple(hw)
    key = fingerprint(source, path)
    name = "digit-classifier" if source == "digits" else f"judge-{key}"
    path_ = cache_dir() / f"{name}-{VERSION}-{size_str(hw)}-seed{seed}.pt"
    if path_.is_file():
        saved = None
        try:
            saved = torch.load(path_, map_location="cpu", weights_only=True)
            net = _new_net(seed, saved["net"]["features.0.weight"].shape[1], JUDGES[source][0])
            net.load_state_dict(saved["net"])
            return net.eval(), float(saved["accuracy"])
        except Exception:  # noqa: BLE001 - a torn or foreign file is replaced below
            pass
    say = (f"judge: training the {source} judge at {size_str(hw)} once (minutes on a CPU for "
           f"the larger sets); later runs load it from {path_}")
    net, acc = train_classifier(hw, seed, source=source, path=path, say=say)
    path_.parent.mkdir(parents=True, exist_ok=True)
    tmp = path_.with_name(f"{path_.name}.{os.getpid()}.tmp")
    torch.save({"net": net.state_dict(), "accuracy": acc, "version": VERSION, "data": key}, tmp)
    os.replace(tmp, path_)  # atomic: concurrent runs never read half a file
    return net, acc


# --------------------------------------------------------------------------------------
# Distances between feature sets
# --------------------------------------------------------------------------------------

def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance; rounding's tiny negative eigenvalues -> 0."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982;
    FID, Heusel et al. 2017): ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    sigma1 sigma2 is not symmetric: a general matrix square root of it (scipy's sqrtm, as
    the usual FID code takes) leaves an imaginary residue to discard, and loses accuracy
    when a covariance is near-singular (fewer samples than dimensions, dead features), which
    that code patches by adding eps * I. Only its trace is needed, and that is exact here:
    sigma1 sigma2 is similar to M M^T with M = sigma1^(1/2) sigma2^(1/2), so the eigenvalues of
    (sigma1 sigma2)^(1/2) are the singular values of M: real and >= 0 by construction, and
    the near-zero ones accurate to rounding (a square root of eigenvalues would amplify
    their rounding error e to sqrt(e)). float64 throughout."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    tr_covmean = np.linalg.svd(_sqrt_psd(s1) @ _sqrt_psd(s2), compute_uv=False).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def gaussian_stats(f: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = f.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def kid(f1: torch.Tensor, f2: torch.Tensor, subsets: int = 50, size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance (Binkowski et al. 2018, Eq. 5 and their code): the unbiased
    MMD^2 with k(x, y) = (x.y / d + 1)^3, averaged over `subsets` random subsets of `size`
    samples of each set, as their code does (the full sums would need N^2 memory). The
    kernels are computed in float32 (features are of order 1) and summed in float64."""
    f1, f2 = f1.float(), f2.float()
    d, m = f1.shape[1], min(size, len(f1), len(f2))
    g = torch.Generator().manual_seed(seed)

    def sums(a, b):  # sum_ij k(a_i, b_j) and sum_i k(a_i, b_i)
        k = torch.addmm(torch.ones(()), a, b.T, alpha=1 / d).pow_(3)  # (m, m)
        return k.sum(dtype=torch.float64), k.diagonal().sum(dtype=torch.float64)

    total = 0.0
    for _ in range(subsets):
        x = f1[torch.randperm(len(f1), generator=g)[:m]]
        y = f2[torch.randperm(len(f2), generator=g)[:m]]
        (sxx, dxx), (syy, dyy), (sxy, _) = sums(x, x), sums(y, y), sums(x, y)
        # MMD_u^2 = sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(m(m-1)) - 2 sum_ij k(x_i,y_j)/m^2
        total += ((sxx - dxx + syy - dyy) / (m * (m - 1)) - 2 * sxy / m ** 2).item()
    return total / subsets


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) = sum_i p_i log(p_i / q_i) over p_i > 0 (q > 0 wherever p is)."""
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / q[nz])).sum())


def knn_radii(f: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Each point's distance to its k-th nearest neighbour among the others (N,)."""
    return torch.cat([torch.cdist(a, f).kthvalue(k + 1, dim=1).values for a in f.split(chunk)])  # +1: itself


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = PRDC_K, chunk: int = 1024) -> dict:
    """Precision and recall (Kynkaanniemi et al. 2019, Eq. 1-2: the share of fakes inside the
    real manifold, the union of k-NN balls around real points, and of reals inside the fake
    one) and density and coverage (Naeem et al. 2020, Eq. 3-4: how many real balls hold each
    fake, divided by k, averaged; the share of real balls that hold at least one fake).
    Euclidean distances in float64."""
    real, fake = real.double(), fake.double()
    r_real, r_fake = knn_radii(real, k, chunk), knn_radii(fake, k, chunk)
    balls = torch.zeros(len(fake), dtype=torch.float64)  # real balls holding each fake
    recalled, covered = [], []
    for a, ra in zip(real.split(chunk), r_real.split(chunk)):
        d = torch.cdist(a, fake)                               # (b, M)
        inside = d <= ra[:, None]
        balls += inside.sum(0)
        covered.append(inside.any(1))                          # the nearest fake within the real ball
        recalled.append((d <= r_fake[None, :]).any(1))         # the real point inside some fake ball
    return {"precision": float((balls > 0).double().mean()), "recall": float(torch.cat(recalled).double().mean()),
            "density": float(balls.sum() / (k * len(fake))), "coverage": float(torch.cat(covered).double().mean())}


# --------------------------------------------------------------------------------------
# Scoring generated images
# --------------------------------------------------------------------------------------

def stacked_modes(classes: torch.Tensor) -> torch.Tensor:
    """Classes of the R, G, B digits (N, 3) -> mode 100 c0 + 10 c1 + c2 (N,), in 0..999."""
    return (classes * torch.tensor([100, 10, 1])).sum(1)


class Scorer:
    """Scores images of one labelled data set at one size against the real data.

    scorer(x), x: float (N, C, H, W) in [-1, 1] (generated, or real for a sanity row) ->
    a dict of floats. The reference (real features and class histogram) is computed once:
    the digits' 1,797 images; n training images drawn once (seed 0) otherwise.
    """

    def __init__(self, dataset: str, hw, device=torch.device("cpu"), n: int | None = None,
                 seed: int = CLASSIFIER_SEED, path=None):
        source = judge_source(dataset, path)
        self.dataset, self.hw, self.device, self.path, self.source = dataset, tuple(hw), device, path, source
        self.stacked = dataset in STACKED
        net, self.accuracy = classifier(self.hw, seed, source, path)
        self.net = copy.deepcopy(net).to(device)  # the cached one stays on the CPU
        self.channels = net.features[0].in_channels  # the judge's: 1 for grey sets, 3 for CIFAR-10
        self.n = n or SAMPLES[dataset]  # samples per evaluation; also the reference's size
        self._data = None
        if dataset == "digits":  # all 1,797 digits, and their class proportions
            real, labels = real_digits(self.hw)
            self.ref_hist = np.bincount(labels.numpy(), minlength=10) / len(labels)
        elif self.stacked:  # the Stacked-MNIST papers' reference: uniform over the 1,000 modes
            real = self.real(self.n)
            self.ref_hist = np.full(1000, 1e-3)
        else:  # the class proportions of the training split
            real = self.real(self.n)
            self.ref_hist = np.bincount(self.data().labels.numpy(), minlength=10) / len(self.data())
        self.ref_feats, self.ref_cls, self.ref_top = self.classify(real)  # (N_ref, F), (N_ref,), (N_ref,)
        self.ref_stats = gaussian_stats(self.ref_feats)

    def data(self):
        """The training data the GANs see (loaded once)."""
        if self._data is None:
            self._data = load_data(argparse.Namespace(
                dataset=self.dataset, path=self.path, image_size=self.hw, batch_size=1, workers=0,
                data_memory_gb=None, channels=3 if self.stacked else self.channels))
        return self._data

    def real(self, n: int, seed: int = 0) -> torch.Tensor:
        """n real training images (n, C, H, W) in [-1, 1]: a fixed draw for each seed (seed 0
        is the reference), without replacement where the data set has n images."""
        data = self.data()
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(data), generator=g)[:n] if n <= len(data) else \
            torch.randint(0, len(data), (n,), generator=g)
        return to_signed(data.batch(idx))

    @torch.no_grad()
    def classify(self, x: torch.Tensor, batch: int = 2000):
        """Images (N, C, H, W) in [-1, 1] -> features (N, F), classes (N,) and top class
        probabilities (N,), on the CPU. On a stacked set: features (N, 3 * 128), classes
        (N, 3) of the R, G, B images, and the least of the three top probabilities."""
        # Quantised to 8 bits as a saved image would be (the real data is 8-bit too).
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1  # (N, C, H, W)
        N, C = x.shape[:2]
        if self.stacked:
            x = x.reshape(N * C, 1, *x.shape[2:])  # each channel on its own
        elif self.channels == 1 and C != 1:
            x = x.mean(1, keepdim=True)  # grey (a grey data set trained with --channels 3: equal channels)
        elif self.channels == 3 and C == 1:
            x = x.expand(-1, 3, -1, -1)
        feats, probs = [], []
        for xb in x.split(batch):
            h = self.net.features(xb.to(self.device))  # (b, 128)
            feats.append((h / self.net.scale).cpu())
            probs.append(F.softmax(self.net.head(h), 1).cpu())
        f, p = torch.cat(feats), torch.cat(probs)
        top, cls = p.max(1)
        if self.stacked:  # (N*3, ...) -> (N, 3, ...)
            f, cls, top = f.reshape(N, -1), cls.reshape(N, 3), top.reshape(N, 3).min(1).values
        return f, cls, top

    def __call__(self, x: torch.Tensor, per_class: bool = False) -> dict:
        """The metrics of the samples x; per_class: also "per_class", the rows of
        per_class(x) from the same classification."""
        if per_class:
            self._refuse_per_class()  # before the costly part
        f, cls, top = self.classify(x)
        sure = top >= CONFIDENT
        if self.stacked:
            modes = stacked_modes(cls).numpy()
            counts, key = np.bincount(modes, minlength=1000), "modes"
            extra = {"confident_modes": int(len(np.unique(modes[sure.numpy()])))}
        else:
            counts, key, extra = np.bincount(cls.numpy(), minlength=10), "classes", {}
        hist = counts / counts.sum()
        mu, sigma = gaussian_stats(f)
        return {key: int((counts > 0).sum()), **extra,
                "kl": kl_divergence(hist, self.ref_hist),
                "confident": float(sure.float().mean()),
                "fd": frechet_distance(mu, sigma, *self.ref_stats),
                "kid": kid(f, self.ref_feats),
                **prdc(self.ref_feats[:PRDC_N], f[:PRDC_N]),
                **({"per_class": self._by_class(cls, top)} if per_class else {})}

    def per_class(self, x: torch.Tensor) -> list[dict]:
        """Where the samples x fall short, class by class (10-class sets only): for each class
        the share of samples classified into it and, among those, the share classified with
        p >= 0.9, beside the same two figures for the reference's real images (as the judge
        classifies them, so that both columns hold the judge's errors alike)."""
        self._refuse_per_class()
        return self._by_class(*self.classify(x)[1:])

    def _refuse_per_class(self):
        if self.stacked:
            raise UserError(f"--per-class: {self.dataset} has 1,000 modes, not 10 classes (the modes and "
                            "confident_modes columns count them)")

    def _by_class(self, cls: torch.Tensor, top: torch.Tensor) -> list[dict]:
        """per_class()'s rows from the samples' classes (N,) and top probabilities (N,)."""
        names = CLASS_NAMES.get(self.dataset, tuple(str(c) for c in range(10)))
        rows = []
        for c, name in enumerate(names):
            mine, real = cls == c, self.ref_cls == c
            rows.append({"class": name, "share": float(mine.float().mean()), "real_share": float(real.float().mean()),
                         "confident": float((top[mine] >= CONFIDENT).float().mean()) if mine.any() else float("nan"),
                         "real_confident": float((self.ref_top[real] >= CONFIDENT).float().mean())})
        return rows
