"""Offline quality and mode-coverage metrics for GANs trained on the built-in digits.

No weights can be downloaded here, so the judge is the project's own: a small CNN trained on
a fixed stratified split of scikit-learn's digits at the GAN's image size, deterministic
from its seed and cached on disk after its first training (a few seconds on a CPU).

    digits           classes covered (of 10), KL(generated classes || real classes), the
                     share of confidently classified samples, and the Frechet (FD) and
                     kernel (KID) distances between the classifier's penultimate features
                     of generated and real images.
    stacked-digits   each channel classified on its own, mode = 100 c0 + 10 c1 + c2: modes
                     covered (of 1,000) and KL(generated modes || uniform), from 26,000
                     samples as in the Stacked-MNIST papers (VEEGAN, Srivastava et al. 2017;
                     PacGAN, Lin et al. 2018), and the same confidence share and distances
                     (features: the three channels' features side by side).

A mode (class) is covered when at least one sample is classified into it, as in those
papers. FD is Heusel et al. 2017's distance (the FID formula) and KID Binkowski et al.
2018's unbiased MMD^2 with the cubic polynomial kernel, both on this classifier's features,
so their values are comparable within this project only, not with published FID/KID.

    from ganzoo import metrics
    scorer = metrics.Scorer("stacked-digits", (32, 32))
    scorer(fake)       # fake: float (N, 3, 32, 32) in [-1, 1] -> {"modes": ..., "kl": ..., ...}
"""
from __future__ import annotations

import argparse
import copy
import functools
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .cli import size_str
from .data import load_data
from .errors import UserError

VERSION = "v1"        # bump when the classifier or its training changes: old cache files are ignored
CLASSIFIER_SEED = 0
CONFIDENT = 0.9       # a sample is confidently classified when its top softmax probability is >= this
SAMPLES = {"digits": 2000, "stacked-digits": 26_000}   # generated samples per evaluation
DATASETS = tuple(SAMPLES)


# --------------------------------------------------------------------------------------
# The digit classifier
# --------------------------------------------------------------------------------------

class DigitNet(nn.Module):
    """One grey digit (B, 1, H, W) in [-1, 1] -> 10 logits. The distances use `features`,
    the 128-d penultimate layer, divided by `scale` (its root-mean-square over the training
    digits, set after training) so that they are of order 1, as KID's kernel assumes.
    Strided convs keep it cheap on a CPU."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(),    # (B, 16, H/2, W/2)
            nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),   # (B, 32, H/4, W/4)
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),   # (B, 64, H/8, W/8)
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),   # (B, 1024), the same for any image size
            nn.Linear(1024, 128), nn.ReLU())         # (B, 128)
        self.head = nn.Linear(128, 10)
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x):
        return self.head(self.features(x))


def cache_dir() -> Path:
    """$GANZOO_CACHE, else $XDG_CACHE_HOME/ganzoo, else ~/.cache/ganzoo."""
    if os.environ.get("GANZOO_CACHE"):
        return Path(os.environ["GANZOO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ganzoo"


def real_digits(hw) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as the GANs see them: float (N, 1, H, W) in [-1, 1], and labels."""
    data = load_data(argparse.Namespace(dataset="digits", image_size=tuple(hw), channels=1, batch_size=1))
    return data.x.float() / 127.5 - 1, data.labels


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


def _new_net(seed: int) -> DigitNet:
    """A DigitNet initialised from `seed`; the global RNG is left as it was (a training
    run's resume depends on it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DigitNet()


def train_classifier(hw, seed: int = CLASSIFIER_SEED, epochs: int = 20) -> tuple[DigitNet, float]:
    """Train on 3/4 of the digits; returns the network and its held-out accuracy.
    Deterministic from `seed`: every random draw comes from it, and it runs on one thread
    (one summation order, so the same weights on any machine; threads only slow a net this
    small down)."""
    x, y = real_digits(hw)
    tr, te = split(y, seed)
    net, g = _new_net(seed), torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * -(-len(tr) // 64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(epochs):
            for idx in torch.from_numpy(tr)[torch.randperm(len(tr), generator=g)].split(64):
                loss = F.cross_entropy(net(_jitter(x[idx], g)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    with torch.no_grad():
        net.scale.copy_(net.features(x[tr]).pow(2).mean().sqrt())
        acc = (net(x[te]).argmax(1) == y[te]).float().mean().item()
    return net, acc


@functools.lru_cache(maxsize=None)
def classifier(hw, seed: int = CLASSIFIER_SEED) -> tuple[DigitNet, float]:
    """The classifier for images of size hw: from the cache file, else trained and saved
    there. Once per process; the file is loaded with weights_only=True."""
    hw = tuple(hw)
    path = cache_dir() / f"digit-classifier-{VERSION}-{size_str(hw)}-seed{seed}.pt"
    if path.is_file():
        net = _new_net(seed)
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(saved["net"])
            return net.eval(), float(saved["accuracy"])
        except Exception:  # noqa: BLE001 - a torn or foreign file is replaced below
            pass
    net, acc = train_classifier(hw, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"net": net.state_dict(), "accuracy": acc, "version": VERSION}, tmp)
    os.replace(tmp, path)  # atomic: concurrent runs never read half a file
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


# --------------------------------------------------------------------------------------
# Scoring generated images
# --------------------------------------------------------------------------------------

def stacked_modes(classes: torch.Tensor) -> torch.Tensor:
    """Classes of the R, G, B digits (N, 3) -> mode 100 c0 + 10 c1 + c2 (N,), in 0..999."""
    return (classes * torch.tensor([100, 10, 1])).sum(1)


class Scorer:
    """Scores images of one built-in data set at one size against the real data.

    scorer(x), x: float (N, C, H, W) in [-1, 1] (generated, or real for a sanity row) ->
    a dict of floats. The reference (real features and class histogram) is computed once.
    """

    def __init__(self, dataset: str, hw, device=torch.device("cpu"), n: int | None = None,
                 seed: int = CLASSIFIER_SEED):
        if dataset not in DATASETS:
            raise UserError(f"quality metrics work on the digits and stacked-digits data sets only "
                                   f"(the judge is a digit classifier), not on {dataset}")
        self.dataset, self.hw, self.device = dataset, tuple(hw), device
        net, self.accuracy = classifier(self.hw, seed)
        self.net = copy.deepcopy(net).to(device)  # the cached one stays on the CPU
        self.n = n or SAMPLES[dataset]  # samples per evaluation; also the stacked-digits reference's
        if dataset == "digits":  # all 1,797 digits, and their class proportions
            real, labels = real_digits(self.hw)
            self.ref_hist = np.bincount(labels.numpy(), minlength=10) / len(labels)
        else:  # 26,000 real triples; the Stacked-MNIST papers' reference: uniform over the 1,000 modes
            real = self.real(self.n)
            self.ref_hist = np.full(1000, 1e-3)
        self.ref_feats = self.classify(real)[0]  # (N_ref, F)
        self.ref_stats = gaussian_stats(self.ref_feats)

    def real(self, n: int, seed: int = 0) -> torch.Tensor:
        """n real images (n, C, H, W) in [-1, 1] drawn at random with replacement (a fixed
        draw for each seed; seed 0 is the stacked-digits reference)."""
        data = load_data(argparse.Namespace(dataset=self.dataset, image_size=self.hw, batch_size=1,
                                                   channels=1 if self.dataset == "digits" else 3))
        idx = torch.randint(0, len(data), (n,), generator=torch.Generator().manual_seed(seed))
        return data.batch(idx).float() / 127.5 - 1

    @torch.no_grad()
    def classify(self, x: torch.Tensor, batch: int = 2000):
        """Images (N, C, H, W) in [-1, 1] -> features (N, F), classes (N,) and top class
        probabilities (N,), on the CPU. On stacked-digits: features (N, 3 * 128), classes
        (N, 3) of the R, G, B digits, and the least of the three top probabilities."""
        # Quantised to 8 bits as a saved image would be (the real data is 8-bit too).
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1  # (N, C, H, W)
        N, C = x.shape[:2]
        if self.dataset == "digits":
            x = x.mean(1, keepdim=True)  # grey (the RGB digits data set is three equal channels)
        else:
            x = x.reshape(N * C, 1, *x.shape[2:])  # each channel on its own
        feats, probs = [], []
        for xb in x.split(batch):
            h = self.net.features(xb.to(self.device))  # (b, 128)
            feats.append((h / self.net.scale).cpu())
            probs.append(F.softmax(self.net.head(h), 1).cpu())
        f, p = torch.cat(feats), torch.cat(probs)
        top, cls = p.max(1)
        if self.dataset == "stacked-digits":  # (N*3, ...) -> (N, 3, ...)
            f, cls, top = f.reshape(N, -1), cls.reshape(N, 3), top.reshape(N, 3).min(1).values
        return f, cls, top

    def __call__(self, x: torch.Tensor) -> dict:
        f, cls, top = self.classify(x)
        if self.dataset == "digits":
            counts, key = np.bincount(cls.numpy(), minlength=10), "classes"
        else:
            counts, key = np.bincount(stacked_modes(cls).numpy(), minlength=1000), "modes"
        hist = counts / counts.sum()
        mu, sigma = gaussian_stats(f)
        return {key: int((counts > 0).sum()),
                "kl": kl_divergence(hist, self.ref_hist),
                "confident": float((top >= CONFIDENT).float().mean()),
                "fd": frechet_distance(mu, sigma, *self.ref_stats),
                "kid": kid(f, self.ref_feats)}
