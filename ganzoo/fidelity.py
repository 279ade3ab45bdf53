"""Inception FID, KID, IS and precision/recall through torch-fidelity (the optional extra of
requirements-fid.txt): its TensorFlow-ported Inception v3 (the graph of the FID reference code)
and its metric functions, fed uint8 images as a saved PNG holds them.

    fid = Fidelity(cfg, n, weights, device)   # the run's real images, their features cached
    fid(samples)                              # float (N, C, H, W) in [-1, 1] -> {metric: float}

The real side is the run's training data through the training crop and resize (ganzoo.data,
from the decoded cache where there is one): a folder's images, or a labelled set's training
split. Its features are cached on disk, keyed by the data's identity (a folder's file list,
sizes and times), size, channels, crop, --limit, the reference's size and the weights.
The weights file is opened with torch.load(weights_only=True) before torch-fidelity sees it
(which loads with weights_only=False): a file that would run code is refused in one line."""
from __future__ import annotations

import functools
import hashlib
import importlib
import io
import os
import re
import sys
import urllib.error
import warnings
from pathlib import Path

import torch

from .data import LABELLED, STACKED, cache_dir, cache_key, load_run_data, scan_images, stacked_source
from .checkpoint import atomic
from .errors import Fault, UserError
from .images import to_uint8

WEIGHTS_ENV = "GANZOO_INCEPTION_WEIGHTS"
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's conversion of the TF graph
EXTRACTOR = "inception-v3-compat"  # torch-fidelity's name for it
INSTALL = "pip install -r requirements-fid.txt"
EVAL_N = 10_000  # evaluate.py's default samples (papers: 50,000 with --n 50000)
TRAINING_N = 2_000  # --eval-every on a folder: fewer, so that an evaluation stays short (the names say so)
METRICS = ("fid", "kid_inception", "is", "precision_inception", "recall_inception")
REAL_SEED = 0  # the reference's draw of real images; --real rows draw with another seed
PRC_K = 3  # torch-fidelity's neighbourhood for precision/recall (Kynkaanniemi et al. 2019)
VERSION = 1  # of the cached features: bump when what is cached changes


def require() -> None:
    """UserError, one line, when torchvision or torch-fidelity cannot be imported."""
    try:
        importlib.import_module("torchvision")
    except ImportError:
        raise UserError(f"FID needs torchvision and torch-fidelity: {INSTALL} (after a torch that torchvision "
                        "matches, e.g. pip install torch==2.14.1 torchvision==0.29.1)") from None
    except Exception as e:  # noqa: BLE001 - a torchvision built for another torch fails at import
        raise UserError(f"FID: torchvision does not load beside torch {torch.__version__} "
                        f"({_first(e)}); install the torchvision built for this torch") from None
    try:
        importlib.import_module("torch_fidelity")
    except ImportError:
        raise UserError(f"FID needs torch-fidelity: {INSTALL}") from None


def _first(e: Exception) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:150]


def weights_path(path=None) -> Path:
    """The Inception weights file: `path` (--inception-weights), else $GANZOO_INCEPTION_WEIGHTS,
    else torch-fidelity's file in torch's hub folder, downloaded there when missing."""
    path = path or os.environ.get(WEIGHTS_ENV) or None
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"--inception-weights {path}: no such file (torch-fidelity's {WEIGHTS_FILE})")
        return p
    p = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE
    if p.is_file():
        return p
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(URL_INCEPTION_V3, str(p), progress=False)
    except (OSError, urllib.error.URLError, ValueError) as e:
        raise UserError(f"FID: could not download the Inception weights ({_first(e)}); on a machine without "
                        f"internet give --inception-weights PATH (or {WEIGHTS_ENV}=PATH) to a copy of "
                        f"{URL_INCEPTION_V3}") from None
    return p


def read_weights(p: Path) -> tuple[bytes, str]:
    """The file's bytes and their sha256, once they load with weights_only=True as a dict of
    tensors; UserError in one line otherwise (a pickle that would run code among them)."""
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise UserError(f"{p}: cannot read it ({e.strerror})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sd = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any refusal or unreadable file
        msg = _first(e)
        what = re.search(r"GLOBAL ([\w.]+)", str(e))
        if what or "weights_only" in str(e):
            raise UserError(f"{p}: refused: its pickle would call {what.group(1) if what else 'code'} when loaded "
                            f"(a weights file must hold tensors only); use torch-fidelity's {WEIGHTS_FILE}") from None
        raise UserError(f"{p}: not a readable weights file ({msg})") from None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{p}: not a state dict of tensors (torch-fidelity's {WEIGHTS_FILE})")
    return raw, hashlib.sha256(raw).hexdigest()


@functools.lru_cache(maxsize=2)
def extractor(path: Path) -> tuple:
    """(torch-fidelity's Inception v3 with the weights at `path`, in eval mode, giving the pool3
    features and the unbiased logits; the weights' sha256). UserError in one line for a file of
    another architecture."""
    require()
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    raw, sha = read_weights(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the bytes checked above, not the file again: what torch-fidelity loads is what was checked
            fe = FeatureExtractorInceptionV3(EXTRACTOR, ["2048", "logits_unbiased"],
                                             feature_extractor_weights_path=io.BytesIO(raw))
    except RuntimeError as e:  # load_state_dict: missing or unexpected keys, other shapes
        text = str(e)
        parts = []
        for label, pattern in (("missing", r"Missing key\(s\) in state_dict: (.*)"),
                               ("unexpected", r"Unexpected key\(s\) in state_dict: (.*)"),
                               ("other shapes", r"size mismatch for ([\w.]+)")):
            found = re.findall(r'"([^"]+)"', m.group(1)) if (m := re.search(pattern, text)) and label != "other shapes" \
                else re.findall(pattern, text)
            if found:
                parts.append(f"{len(found)} {label}, e.g. {found[0]}")
        raise UserError(f"{path}: not the Inception v3 weights torch-fidelity expects ({'; '.join(parts) or _first(e)}); "
                        f"use its {WEIGHTS_FILE}") from None
    return fe.eval(), sha


def quantise(x: torch.Tensor) -> torch.Tensor:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, C, H, W), the values a saved PNG holds
    (images.to_uint8, which the grids use)."""
    return torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2)


@torch.no_grad()
def features(fe, x: torch.Tensor, device=torch.device("cpu"), batch: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, C, H, W), any H and W, grey or RGB -> (pool3 features (N, 2048), unbiased
    logits (N, 1008)), float32 on the CPU. Grey is repeated to three channels; torch-fidelity
    resizes to 299x299 inside the graph (TF 1.x bilinear)."""
    assert x.dtype == torch.uint8, x.dtype
    fe = fe.to(device)
    pools, logits = [], []
    for i in range(0, len(x), batch):
        b = x[i:i + batch].to(device)
        if b.shape[1] == 1:
            b = b.expand(-1, 3, -1, -1)
        f, lg = fe(b.contiguous())
        pools.append(f.float().cpu())
        logits.append(lg.float().cpu())
    return torch.cat(pools), torch.cat(logits)


def score(fake: torch.Tensor, fake_logits: torch.Tensor, real: torch.Tensor) -> dict:
    """torch-fidelity's FID, KID (polynomial kernel, 100 subsets of min(1,000, N) each), IS
    (10 splits) and precision/recall (k = 3) of generated pool3 features against real ones."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric
    fid = fid_statistics_to_metric(fid_features_to_statistics(fake), fid_features_to_statistics(real), False)
    kid = kid_features_to_metric(fake, real, kid_subset_size=min(1000, len(fake), len(real)), verbose=False)
    isc = isc_features_to_metric(fake_logits, splits=min(10, len(fake)))
    prc = prc_features_to_metric(fake, real, prc_neighborhood=min(PRC_K, len(fake) - 1, len(real) - 1),
                                 verbose=False)
    return {"fid": fid["frechet_inception_distance"], "kid_inception": kid["kernel_inception_distance_mean"],
            "is": isc["inception_score_mean"], "precision_inception": prc["precision"],
            "recall_inception": prc["recall"]}


def data_identity(cfg: dict) -> str:
    """What decides the real images: a folder's every file path, size and modification time
    with the size, channels and crop (the decoded cache's key); a labelled set's name and the
    fingerprint of its files; and --limit."""
    hw, channels = tuple(cfg["image_size"]), cfg.get("channels")
    if cfg["dataset"] in LABELLED:
        from .metrics import fingerprint  # loads the set's files: only for the key of a cache miss or hit
        source = stacked_source(cfg["dataset"], cfg.get("path")) if cfg["dataset"] in STACKED else cfg["dataset"]
        ident = f"{cfg['dataset']} {fingerprint(source, cfg.get('path'))} {hw} {channels}"
    else:
        root = Path(cfg["path"])
        if not root.is_dir():
            raise UserError(f"{root}: the run's folder of images is not there (FID needs its real images)")
        files, stats = scan_images(root)
        ident = f"folder {cache_key(files, stats, hw, channels, cfg.get('crop') or 'aspect')}"
    return f"{ident} limit={cfg.get('limit')}"


def reference_images(cfg: dict, n: int, seed: int = REAL_SEED) -> tuple[torch.Tensor, int]:
    """(n training images of the run's data drawn at random (seed), uint8 (n', C, H, W) as the
    training loop gets them; the number of training images), n' = min(n, that number)."""
    data = load_run_data(cfg)
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.cat([data.batch(i) for i in idx.split(1000)]), len(data)


def describe_reference(cfg: dict, n_ref: int, total: int) -> str:
    limit = f", first {cfg['limit']:,}" if cfg.get("limit") else ""
    if cfg["dataset"] in LABELLED:
        what = f"{cfg['dataset']} training split{limit}"
    else:
        what = f"folder {cfg['path']} (crop {cfg.get('crop') or 'aspect'}{limit})"
    return f"{what}: {n_ref:,} of {total:,}"


class Fidelity:
    """The Inception metrics of samples against the run's real images (their features
    computed once, cached on disk). fid(x), x float (N, C, H, W) in [-1, 1] -> {metric: float}."""

    def __init__(self, cfg: dict, n: int, weights=None, device=torch.device("cpu")):
        self.path = weights_path(weights)
        self.fe, self.sha = extractor(self.path.resolve())
        self.device, self.n = device, n
        key = hashlib.sha256(f"v{VERSION} {data_identity(cfg)} n={n} seed={REAL_SEED} {self.sha}".encode())
        self.cache = cache_dir() / "fid" / f"{key.hexdigest()[:24]}.pt"
        cached = self._load()
        self.from_cache = cached is not None
        if cached is None:
            x, total = reference_images(cfg, n)
            self.real = features(self.fe, x, device)[0]  # (n', 2048)
            self.reference = describe_reference(cfg, len(x), total)
            self._save()
        else:
            self.real, self.reference = cached["real"], cached["reference"]

    def _load(self):
        try:
            c = torch.load(self.cache, map_location="cpu", weights_only=True)
            return c if c.get("version") == VERSION and isinstance(c.get("real"), torch.Tensor) else None
        except Exception:  # noqa: BLE001 - none yet, or unreadable: computed again
            return None

    def _save(self) -> None:
        """Atomically (checkpoint.atomic); a cache that cannot be written only costs the next
        evaluation time."""
        try:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic(self.cache, kept="the real features are computed again next time") as tmp:
                torch.save({"version": VERSION, "real": self.real, "reference": self.reference}, tmp)
        except (OSError, Fault) as e:
            print(f"fid: could not cache the real features ({getattr(e, 'strerror', None) or e})", file=sys.stderr)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float (N, C, H, W) in [-1, 1] -> (pool features, logits) of their uint8 quantisation."""
        return features(self.fe, quantise(x), self.device)

    def score(self, pool: torch.Tensor, logits: torch.Tensor) -> dict:
        return score(pool, logits, self.real)

    def __call__(self, x: torch.Tensor) -> dict:
        return self.score(*self.features(x))


def protocol(path: Path, sha: str) -> str:
    """One line: what the numbers of a table are."""
    import torch_fidelity
    return (f"Inception v3 ({EXTRACTOR}, torch-fidelity {torch_fidelity.__version__}; weights {path.name}, sha256 "
            f"{sha[:12]}): samples quantised to uint8 as a PNG holds them, grey repeated to 3 channels, resized to "
            f"299x299 inside the graph (TF 1.x bilinear); FID and KID (polynomial kernel, 100 subsets of min(1000, N)) "
            f"on the 2048 pool features, IS on the logits (10 splits), precision/recall on the pool features "
            f"(k = {PRC_K}); reference: the run's training images through its training crop and resize")


@functools.lru_cache(maxsize=4)
def _fidelity(cfg_items: tuple, n: int, weights, device) -> Fidelity:
    return Fidelity(dict(cfg_items), n, weights, device)


def fidelity(cfg: dict, n: int, weights=None, device=torch.device("cpu")) -> Fidelity:
    """One Fidelity per run data, n, weights and device in a process."""
    keys = ("dataset", "path", "image_size", "channels", "crop", "limit", "data_memory_gb")
    items = tuple((k, tuple(cfg[k]) if isinstance(cfg.get(k), list) else cfg.get(k)) for k in keys)
    return _fidelity(items, n, weights, device)
