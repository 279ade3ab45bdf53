"""Plumbing shared by the seven GAN scripts.

Every script (dcgan.py, lsgan.py, wgan.py, wgan_gp.py, dragan.py, ebgan.py, began.py)
owns its paper: networks when the paper defines its own, losses, optimizers, update rule.
This module owns what is the same for all seven, each piece written once:

    command line      make_parser()          shared flags; a model adds its own
    data              load_data(), Batches   digits, stacked-digits, folder, mnist, cifar10
    networks          DCGANGenerator, DCGANDiscriminator, dcgan_init
    training loop     train()                progress bar, metrics, grids, checkpoints,
                                             resume, Ctrl-C, divergence detection
    speed and scale   GAN.update(), prepare_model()  --amp, --channels-last, --compile,
                                             --ema; torchrun ranks (gradients averaged)
    sampling          sample(), interpolate()  grids and latent walks from a checkpoint
    entry point       main()                 bad input -> one line on stderr, exit 2

Data flows one way: dataset -> batches (here) -> the model's train_step (model file) ->
scalars and images (here) -> run directory. A model file never writes files itself.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gzip
import json
import math
import os
import pickle
import re
import signal
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
DATASETS = ("digits", "stacked-digits", "folder", "mnist", "cifar10")
CHECKPOINT = "checkpoint.pt"
# Seed of the built-in data sets (the stacked-digits triples): fixed, so that the data
# set is the same whatever --seed a run uses, as a downloaded data set would be.
DATA_SEED = 1234


class UserError(Exception):
    """Bad input: main() prints the message as one line and exits with status 2."""


class Diverged(Exception):
    """A NaN or infinite loss: main() prints the message and exits with status 1."""


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------

class _Help(argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default unless its help already states it."""

    def _get_help_string(self, action):
        h = action.help or ""
        if "default" not in h and action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            h += " (default: %(default)s)"
        return h


# Values such as "-1,1,0" (LSGAN's --abc) and "-0.5" are values, not flags.
_NEGATIVE_VALUE = re.compile(r"^-\.?\d[\d.,eE+-]*$")


class _Parser(argparse.ArgumentParser):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._negative_number_matcher = _NEGATIVE_VALUE

    def error(self, message):  # one line, exit 2 (argparse prints usage + message)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def image_size(text: str) -> tuple[int, int]:
    """'64' -> (64, 64); '128x256' -> (128, 256) as (H, W). Sides: powers of two >= 16."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"image size {text!r} is not H or HxW, e.g. 64 or 128x256")
    h = int(m.group(1))
    w = int(m.group(2)) if m.group(2) else h
    for side in (h, w):
        if side < 16 or side & (side - 1):
            raise argparse.ArgumentTypeError(
                f"image size {text!r}: each side must be a power of two from 16 up (16, 32, 64, ...)")
    return (h, w)


def size_str(hw) -> str:
    h, w = hw
    return str(h) if h == w else f"{h}x{w}"


def positive_int(text):
    """An argparse type: 1, 2, 3, ..."""
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return v


def non_negative_int(text):
    """An argparse type: 0, 1, 2, ... (0 usually turns a feature off)."""
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a count (0 or more)")
    return v


def _ema_beta(text):
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not an EMA decay in [0, 1) (e.g. 0.999; 0 turns it off)")
    return v


def make_parser(doc: str, defaults: dict, small: dict | None = None,
                sources: dict | None = None) -> argparse.ArgumentParser:
    """The shared flags. A model passes its paper's defaults (batch_size, steps, z_dim,
    width, g_lr, d_lr) and adds its own flags afterwards. `small` holds the departures used
    on the built-in data sets (digits, stacked-digits), so that a default run there takes
    minutes on a CPU; resolve_data_args() applies them when the user gave no value (a model
    flag of its own joins in with default=None and an entry in both dicts). `sources` names
    where a default comes from when it is not the paper (e.g. {"steps": "not in the paper"})."""
    small = small or {}
    p = _Parser(description=doc.strip().split("\n\n")[0], formatter_class=_Help,
                epilog="Every default is the paper's unless its help says otherwise.")
    p.set_defaults(_small=small, _paper={k: defaults[k] for k in small})
    d = {k: (None if k in small else v) for k, v in defaults.items()}

    sources = sources or {}

    def note(k, text):  # where the default comes from: the paper unless `sources` names another
        src = sources.get(k, "the paper's")
        if k in small:
            return f"{text} (default {defaults[k]}, {src}; {small[k]} on the built-in digits data)"
        return f"{text} (default {defaults[k]}, {src})"

    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default=None,
                   help="data source (default: digits, or folder when --path is given); nothing is downloaded")
    g.add_argument("--path", type=str, default=None,
                   help="folder of images (searched recursively), or the folder holding the MNIST IDX / CIFAR-10 files")
    g.add_argument("--image-size", type=image_size, default=None,
                   help="H or HxW, sides powers of two >= 16 (default: 32 for digits/mnist/cifar10, 64 for a folder)")
    g.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="image channels (default: 1 for digits/mnist, 3 for stacked-digits/cifar10/folder)")
    g.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="processes that decode a folder of images")
    g.add_argument("--data-memory-gb", type=float, default=None,
                   help="keep the decoded data set in memory when it takes at most this (default: half the RAM)")
    g = p.add_argument_group("model and optimisation (defaults are this model's paper values unless noted)")
    g.add_argument("--batch-size", type=positive_int, default=d["batch_size"], help=note("batch_size", "images per batch"))
    g.add_argument("--steps", type=positive_int, default=d["steps"],
                   help=note("steps", "total generator updates of the run (a resumed run continues to this total)"))
    g.add_argument("--z-dim", type=positive_int, default=d["z_dim"], help=note("z_dim", "latent dimensions"))
    g.add_argument("--width", type=positive_int, default=d["width"], help=note("width", "base channel width of the networks"))
    g.add_argument("--g-lr", type=float, default=d["g_lr"], help=note("g_lr", "generator learning rate"))
    g.add_argument("--d-lr", type=float, default=d["d_lr"], help=note("d_lr", "discriminator / critic learning rate"))
    g.add_argument("--seed", type=int, default=0, help="seed (same seed, same CPU run, same weights)")
    g = p.add_argument_group("run")
    g.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="auto picks cuda, then mps, then cpu")
    g.add_argument("--out", type=str, default=None,
                   help="run directory (default runs/<model>/<timestamp>); with --sample, the output file")
    g.add_argument("--resume", type=str, default=None, metavar="RUN_DIR_OR_CHECKPOINT",
                   help="continue a run from its checkpoint up to --steps in total")
    g.add_argument("--log-every", type=positive_int, default=50, help="steps between metrics lines")
    g.add_argument("--sample-every", type=positive_int, default=250, help="steps between sample grids")
    g.add_argument("--checkpoint-every", type=positive_int, default=500, help="steps between checkpoints")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    g.add_argument("--eval-every", type=int, default=0,
                   help="steps between quality metrics (evaluate.py) in metrics.jsonl; 0: off; digits data sets only")
    g = p.add_argument_group("speed and scale (none changes a model's equations)")
    g.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off",
                   help="mixed precision: autocast the forward passes (fp16 with a gradient scaler); "
                        "gradient penalties stay in fp32")
    g.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="channels_last memory format for networks and batches (auto: on with CUDA)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the networks (not a critic that a gradient penalty differentiates twice)")
    g.add_argument("--ema", type=_ema_beta, default=0.0, metavar="BETA",
                   help="keep an exponential moving average of G's weights with this decay (e.g. 0.999) and "
                        "use it for samples and evaluation; 0: off")
    g.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: synchronise BatchNorm statistics across ranks (CUDA only)")
    g = p.add_argument_group("sampling from a checkpoint")
    g.add_argument("--sample", type=str, default=None, metavar="CHECKPOINT",
                   help="write a grid of samples from a checkpoint (or run directory) and exit")
    g.add_argument("--n", type=positive_int, default=64, help="samples in the grid (walks with --interpolate)")
    g.add_argument("--interpolate", action="store_true",
                   help="with --sample: write a GIF walking the latent space by spherical interpolation")
    return p


# Flags that may change when a run is resumed; every other flag comes from the checkpoint.
RESUMABLE_FLAGS = {"steps", "out", "device", "workers", "data_memory_gb", "path", "log_every", "eval_every",
                   "sample_every", "checkpoint_every", "no_progress", "resume", "sample", "n",
                   "interpolate", "amp", "channels_last", "compile", "sync_bn"}


def explicit_flags(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The destinations of the flags the user actually typed (not defaults)."""
    shadow = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    shadow._negative_number_matcher = _NEGATIVE_VALUE
    for action in parser._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            kwargs = dict(dest=action.dest, default=argparse.SUPPRESS)
            if action.nargs == 0:
                kwargs["action"] = "store_true"
            else:
                kwargs["nargs"] = action.nargs
            shadow.add_argument(*action.option_strings, **kwargs)
    ns, _ = shadow.parse_known_args(argv)
    return set(vars(ns))


# --------------------------------------------------------------------------------------
# Data: every source becomes a uint8 tensor (N, C, H, W), decoded once
# --------------------------------------------------------------------------------------

def default_image_size(dataset: str) -> tuple[int, int]:
    return (64, 64) if dataset == "folder" else (32, 32)


def default_channels(dataset: str) -> int:
    return 1 if dataset in ("digits", "mnist") else 3


def resolve_data_args(args) -> None:
    """Fill in dataset, image_size and channels from each other (in place)."""
    if args.dataset is None:
        args.dataset = "folder" if args.path else "digits"
    if args.dataset in ("folder", "mnist", "cifar10") and not args.path:
        raise UserError(f"--dataset {args.dataset} needs --path (nothing is downloaded)")
    if args.image_size is None:
        args.image_size = default_image_size(args.dataset)
    args.image_size = tuple(args.image_size)
    if args.channels is None:
        args.channels = default_channels(args.dataset)
    builtin = args.dataset in ("digits", "stacked-digits")
    for k, v in getattr(args, "_small", {}).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v if builtin else args._paper[k])


def _resize_uint8(x: torch.Tensor, hw, chunk=4096) -> torch.Tensor:
    """Resize a uint8 (N, C, h, w) tensor to (N, C, H, W): bilinear, antialiased."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    out = []
    for i in range(0, len(x), chunk):
        y = F.interpolate(x[i:i + chunk].float(), size=tuple(hw), mode="bilinear",
                          align_corners=False, antialias=True)
        out.append(y.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def _set_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if channels == 3:  # grey -> RGB
        return x.expand(-1, 3, -1, -1).contiguous()
    # RGB -> grey with the ITU-R 601 luma weights PIL uses
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 real 8x8 handwritten digits as uint8 (N, 1, 8, 8), and labels."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy(d.images).float() * (255.0 / 16.0)  # pixel values 0..16
    return x.round().to(torch.uint8).unsqueeze(1), torch.from_numpy(d.target).long()


class Images:
    """An in-memory image data set: uint8 (N, C, H, W), optional labels."""

    def __init__(self, x: torch.Tensor, labels=None, skipped: int = 0, source: str = ""):
        self.x, self.labels, self.skipped, self.source = x, labels, skipped, source

    def __len__(self):
        return len(self.x)

    @property
    def shape(self):
        return tuple(self.x.shape[1:])

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        return self.x[idx]


class StackedDigits(Images):
    """Three independent digits in the R, G and B channels: 10^3 = 1,000 modes, the offline
    twin of Stacked MNIST (Metz et al. 2016; Srivastava et al. 2017, VEEGAN). Each sample is
    a fixed random triple of digit indices; batches are composed on the fly."""

    def __init__(self, digits: torch.Tensor, labels: torch.Tensor, n: int = 50_000):
        g = torch.Generator().manual_seed(DATA_SEED)
        self.triples = torch.randint(0, len(digits), (n, 3), generator=g)  # (N, 3)
        self.digits = digits[:, 0]  # (M, H, W)
        super().__init__(None, labels[self.triples], source="stacked-digits")

    def __len__(self):
        return len(self.triples)

    @property
    def shape(self):
        return (3,) + tuple(self.digits.shape[-2:])

    def batch(self, idx):
        return self.digits[self.triples[idx]]  # (B, 3, H, W)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(dims)
    except (OSError, ValueError, struct.error, EOFError) as e:
        raise UserError(f"{path}: cannot read this IDX file ({e})")


def _find(root: Path, names) -> Path | None:
    for name in names:
        for cand in (root / name, root / (name + ".gz")):
            if cand.is_file():
                return cand
        hits = sorted(root.rglob(name)) + sorted(root.rglob(name + ".gz"))
        if hits:
            return hits[0]
    return None


def load_mnist(root: Path) -> Images:
    """The MNIST IDX files (gzipped or not; Fashion-MNIST works the same). Training uses the
    60,000 training images, and the 10,000 test images too when their file is present."""
    train = _find(root, ["train-images-idx3-ubyte", "train-images.idx3-ubyte"])
    if train is None:
        raise UserError(f"{root}: no MNIST file train-images-idx3-ubyte[.gz] found; put the IDX files "
                        "from the MNIST or Fashion-MNIST site there")
    parts, labels = [_read_idx(train)], []
    tl = _find(root, ["train-labels-idx1-ubyte", "train-labels.idx1-ubyte"])
    test = _find(root, ["t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"])
    if test is not None:
        parts.append(_read_idx(test))
    x = torch.from_numpy(np.concatenate(parts)).unsqueeze(1)  # (N, 1, 28, 28)
    lab = None
    tsl = _find(root, ["t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"])
    if tl is not None and (test is None or tsl is not None):
        labels = [_read_idx(tl)] + ([_read_idx(tsl)] if test is not None else [])
        lab = torch.from_numpy(np.concatenate(labels).astype(np.int64))
        if len(lab) != len(x):
            lab = None
    return Images(x, lab, source=str(root))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10's batches are pickles: allow only what they hold (numpy arrays), so that a
    doctored file cannot run code."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")


def load_cifar10(root: Path) -> Images:
    """The CIFAR-10 'python version' batches data_batch_1..5 (and test_batch if present)."""
    files = []
    for i in range(1, 6):
        f = _find(root, [f"data_batch_{i}"])
        if f is None:
            raise UserError(f"{root}: CIFAR-10 file data_batch_{i} not found; unpack "
                            "cifar-10-python.tar.gz there (the folder cifar-10-batches-py)")
        files.append(f)
    test = _find(root, ["test_batch"])
    if test is not None:
        files.append(test)
    xs, ys = [], []
    for f in files:
        try:
            with open(f, "rb") as fh:
                d = _NumpyOnlyUnpickler(fh, encoding="bytes").load()
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[b"labels"], dtype=np.int64))
        except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as e:
            raise UserError(f"{f}: not a CIFAR-10 python batch ({e})")
    return Images(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)),
                  source=str(root))


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def decode_image(path, hw, channels: int):
    """One image file -> uint8 array (C, H, W), or None when it cannot be read.

    Any PIL mode is converted: grey, RGB, RGBA and LA (alpha composited over white),
    palette, CMYK, 16-bit and 32-bit integer and float greys (scaled to 8 bits). The image
    is centre-cropped to the aspect ratio of `hw` and resized (bicubic); JPEGs are decoded
    at a reduced scale first when they are much larger than the target (PIL's draft mode).
    """
    from PIL import Image, ImageOps
    H, W = hw
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale when that still covers the crop
                iw, ih = img.size
                s = max(W / iw, H / ih)  # the crop keeps at least this fraction of each side
                img.draft(img.mode, (math.ceil(iw * s), math.ceil(ih * s)))
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_8bit(img)
            iw, ih = img.size
            scale = min(iw / W, ih / H)  # centre crop of the target's aspect ratio
            cw, ch = W * scale, H * scale
            box = ((iw - cw) / 2, (ih - ch) / 2, (iw + cw) / 2, (ih + ch) / 2)
            img = img.resize((W, H), Image.BICUBIC, box=box)
            img = img.convert("L" if channels == 1 else "RGB")
            arr = np.array(img, dtype=np.uint8)  # a writable copy
    except Exception:  # noqa: BLE001 - any unreadable image is skipped and counted
        return None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _to_8bit(img):
    """A PIL image in any mode -> 'L' or 'RGB' (8 bits a channel)."""
    from PIL import Image
    if img.mode in ("L", "RGB"):
        return img
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit integer or float grey
        a = np.asarray(img, dtype=np.float64)
        top = 1.0 if img.mode == "F" and a.max(initial=0) <= 1.0 else 255.0 if a.max(initial=0) <= 255 \
            else 65535.0 if a.max(initial=0) <= 65535 else float(a.max())
        return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    return img.convert("RGB")


class FolderFiles(torch.utils.data.Dataset):
    """Decodes one image file per item (used by DataLoader workers)."""

    def __init__(self, files, hw, channels):
        self.files, self.hw, self.channels = files, hw, channels

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        arr = decode_image(self.files[i], self.hw, self.channels)
        return None if arr is None else torch.from_numpy(arr)


def _collate_skip(items):
    good = [t for t in items if t is not None]
    x = torch.stack(good) if good else torch.empty(0, dtype=torch.uint8)
    return x, len(items) - len(good)


def _memory_budget(args) -> float:
    if args.data_memory_gb is not None:
        return args.data_memory_gb * 2**30
    try:
        return 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


class StreamedFolder:
    """A folder too large for memory: DataLoader workers decode each batch."""

    def __init__(self, files, hw, channels, workers):
        self.ds = FolderFiles(files, hw, channels)
        self.workers = workers
        self.shape = (channels,) + tuple(hw)
        self.labels, self.skipped, self.source = None, 0, "folder (streamed)"

    def __len__(self):
        return len(self.ds)


def load_folder(root: Path, hw, channels, workers, budget) -> Images | StreamedFolder:
    if not root.exists():
        raise UserError(f"--path {root}: no such folder")
    if not root.is_dir():
        raise UserError(f"--path {root}: not a folder")
    files = list_images(root)
    if not files:
        raise UserError(f"--path {root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in it or below it")
    nbytes = len(files) * channels * hw[0] * hw[1]
    if nbytes > budget:
        print(f"data: {len(files)} images take {nbytes / 2**30:.1f} GiB decoded, over the memory budget "
              f"(--data-memory-gb); decoding each batch with {workers} workers", file=sys.stderr)
        return StreamedFolder(files, hw, channels, workers)
    loader = torch.utils.data.DataLoader(FolderFiles(files, hw, channels), batch_size=256,
                                         num_workers=workers if len(files) > 512 else 0,
                                         collate_fn=_collate_skip)
    chunks, skipped = [], 0
    for x, bad in _progress(loader, desc=f"decoding {len(files)} images", unit="batch"):
        chunks.append(x)
        skipped += bad
    chunks = [c for c in chunks if len(c)]
    if not chunks:
        raise UserError(f"--path {root}: none of its {len(files)} image files could be read")
    x = torch.cat(chunks)
    return Images(x, None, skipped=skipped, source=str(root))


def load_data(args):
    """The data set named by the (resolved) arguments, decoded once."""
    hw, c = args.image_size, args.channels
    if args.dataset in ("digits", "stacked-digits"):
        x, y = digits_images()
        x = _resize_uint8(x, hw)
        if args.dataset == "digits":
            data = Images(_set_channels(x, c), y, source="digits")
        else:
            if c != 3:
                raise UserError("stacked-digits has 3 channels (one digit in each); drop --channels")
            data = StackedDigits(x, y)
    elif args.dataset == "mnist":
        root = _check_dir(args.path)
        data = load_mnist(root)
        data.x = _set_channels(_resize_uint8(data.x, hw), c)
    elif args.dataset == "cifar10":
        root = _check_dir(args.path)
        data = load_cifar10(root)
        data.x = _set_channels(_resize_uint8(data.x, hw), c)
    else:
        data = load_folder(Path(args.path), hw, c, args.workers, _memory_budget(args))
    if args.batch_size > len(data):
        raise UserError(f"--batch-size {args.batch_size} is larger than the data set ({len(data)} images); "
                        "use a smaller batch")
    return data


def _check_dir(path) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"--path {path}: no such folder")
    return root


class Batches:
    """Endless shuffled batches of real images as float (B, C, H, W) in [-1, 1].

    Epoch e visits the data in the order randperm(N) seeded by (seed, e), and drops the last
    incomplete batch, so the position (epoch, batch) is the whole state: a resumed run draws
    exactly the batches the uninterrupted run would have. Calling the object gives the next
    batch; `images` counts the real images served (for images/s).
    """

    def __init__(self, data, batch_size, seed, device, state=None, channels_last=False):
        self.data, self.bs, self.seed, self.device = data, batch_size, seed, device
        # Under torchrun each position is a global batch of world()·B images, of which rank r
        # takes the r-th B: K ranks of batch B see what one process of batch K·B sees.
        self.rank, self.world = rank(), world()
        self.epoch, self.pos = (state["epoch"], state["pos"]) if state else (0, 0)
        saved_batch = state.get("global_batch", batch_size) if state else batch_size * self.world
        if saved_batch != batch_size * self.world:  # resumed on another number of ranks K
            self.pos = self.pos * saved_batch // (batch_size * self.world)
        self.channels_last = channels_last
        self.images, self.skipped = 0, getattr(data, "skipped", 0)
        self.per_epoch = len(data) // (batch_size * self.world)
        if self.per_epoch == 0:
            raise UserError(f"--batch-size {batch_size}" + (f" on {self.world} ranks" if self.world > 1 else "")
                            + f" is larger than the data set ({len(data)} images)")
        self._loader_iter = None
        self._x = None
        if isinstance(data, Images) and not isinstance(data, StackedDigits):
            self._x = data.x
            if device.type == "cuda":  # keep the decoded uint8 data on the GPU when it fits
                free, _ = torch.cuda.mem_get_info(device)
                if data.x.numel() < 0.25 * free:
                    self._x = data.x.to(device)
                else:
                    self._x = data.x.pin_memory()
        self._perm = None

    def state(self):
        return {"epoch": self.epoch, "pos": self.pos, "global_batch": self.bs * self.world}

    def _mine(self, order, pos):
        """This rank's B indices of global batch `pos` of an epoch's order."""
        start = (pos * self.world + self.rank) * self.bs
        return order[start:start + self.bs]

    def _order(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(len(self.data), generator=g)

    def _streamed(self):
        order = self._order()
        batches = [self._mine(order, i).tolist() for i in range(self.pos, self.per_epoch)]
        return iter(torch.utils.data.DataLoader(
            self.data.ds, batch_sampler=batches, num_workers=self.data.workers, collate_fn=_collate_skip,
            pin_memory=self.device.type == "cuda", persistent_workers=False, prefetch_factor=4
            if self.data.workers else None))

    def __call__(self) -> torch.Tensor:
        if self.pos >= self.per_epoch:
            self.epoch, self.pos, self._perm, self._loader_iter = self.epoch + 1, 0, None, None
        if isinstance(self.data, StreamedFolder):
            if self._loader_iter is None:
                self._loader_iter = self._streamed()
            x, bad = next(self._loader_iter)
            self.skipped += bad
        else:
            if self._perm is None:
                self._perm = self._order()
            idx = self._mine(self._perm, self.pos)
            x = self._x[idx.to(self._x.device)] if self._x is not None else self.data.batch(idx)
        self.pos += 1
        self.images += len(x) * self.world
        x = x.to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)  # uint8 [0, 255] -> float [-1, 1]
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


# --------------------------------------------------------------------------------------
# The DCGAN conv stack (Radford et al. 2015), shared by DCGAN, LSGAN, WGAN, WGAN-GP, DRAGAN
# --------------------------------------------------------------------------------------

def _levels(hw) -> int:
    """Number of stride-2 stages between the smallest map and the image: the smallest map
    has a shortest side of 4 (4x4 for a square image, 4x8 for 128x256)."""
    return int(math.log2(min(hw))) - 2


def _norm2d(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "layer":  # normalises each sample over (C, H, W), per-channel affine
        return nn.GroupNorm(1, ch)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {kind!r}")


class DCGANGenerator(nn.Module):
    """z (B, z_dim) -> image (B, C, H, W) in [-1, 1]. Radford et al. 2015, §3 and Fig. 1:
    fractionally-strided 4x4 convolutions, BatchNorm + ReLU on every layer but the output,
    tanh output. Width halves at each stage; `width` is the channels of the last hidden
    layer (the authors' ngf; 64 at 64x64 gives 512-256-128-64)."""

    def __init__(self, z_dim, channels, hw, width=64, norm="batch"):
        super().__init__()
        L = _levels(hw)
        h0, w0 = hw[0] >> L, hw[1] >> L  # smallest map, e.g. 4x4
        ch = width * 2 ** (L - 1)
        layers = [nn.ConvTranspose2d(z_dim, ch, (h0, w0), 1, 0, bias=False),  # (B, ch, h0, w0)
                  _norm2d(norm, ch), nn.ReLU(True)]
        for _ in range(L - 1):  # each stage doubles H and W, halves the channels
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), _norm2d(norm, ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]  # (B, C, H, W)
        self.net = nn.Sequential(*layers)
        self.z_dim = z_dim
        dcgan_init(self)

    def forward(self, z):
        return self.net(z.view(len(z), -1, 1, 1))


class DCGANDiscriminator(nn.Module):
    """image (B, C, H, W) -> one score per image (B,): a logit, a critic value or an LSGAN
    output, as the loss wants; no sigmoid here. Radford et al. 2015: strided 4x4
    convolutions, LeakyReLU(0.2), BatchNorm on every layer but the first (norm='batch');
    WGAN-GP and DRAGAN pass norm='layer' or 'none' (a per-sample gradient penalty is not
    valid with batch statistics)."""

    def __init__(self, channels, hw, width=64, norm="batch"):
        super().__init__()
        L = _levels(hw)
        h0, w0 = hw[0] >> L, hw[1] >> L
        ch = width
        layers = [nn.Conv2d(channels, ch, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]  # (B, w, H/2, W/2)
        for _ in range(L - 1):  # each stage halves H and W, doubles the channels
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=norm != "batch"), _norm2d(norm, ch * 2),
                       nn.LeakyReLU(0.2, True)]
            ch *= 2
        self.features = nn.Sequential(*layers)  # (B, ch, h0, w0)
        self.head = nn.Conv2d(ch, 1, (h0, w0), 1, 0, bias=False)  # (B, 1, 1, 1)
        dcgan_init(self)

    def forward(self, x):
        return self.head(self.features(x)).view(len(x)).float()  # fp32 scores under --amp


def dcgan_init(module: nn.Module) -> None:
    """Radford et al. 2015 §4: weights ~ N(0, 0.02); the authors' code draws BatchNorm
    scales ~ N(1, 0.02) and sets biases to 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------
# Several processes (torchrun): one process per device, gradients averaged
# --------------------------------------------------------------------------------------

def rank() -> int:
    return torch.distributed.get_rank() if _distributed() else 0


def world() -> int:
    return torch.distributed.get_world_size() if _distributed() else 1


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init_distributed(args) -> torch.device | None:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on CUDA, gloo otherwise)
    and return this rank's device; None for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _distributed():
        return None
    cuda = args.device in ("auto", "cuda") and torch.cuda.is_available()
    if args.device == "mps":
        raise UserError("torchrun: several processes need CUDA or the CPU (--device cuda|cpu)")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return torch.device("cuda", local) if cuda else torch.device("cpu")


def all_reduce_grads(params) -> None:
    """Average the gradients of `params` over the ranks, in one flat buffer (one all-reduce).
    This is DistributedDataParallel's arithmetic without its wrapper: the wrapper cannot follow
    torch.autograd.grad(create_graph=True), which the gradient penalties need."""
    if world() == 1:
        return
    grads = []
    for p in params:
        if p.grad is None:  # every rank must send the same buffer
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch._utils._flatten_dense_tensors(grads)
    torch.distributed.all_reduce(flat)
    flat /= world()
    for g, f in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(f)


def full_precision(device: torch.device):
    """A region where autocast is off: ops run in the dtype of their inputs (fp32)."""
    return torch.autocast(device.type, enabled=False)


def cpu_has_native(dtype_name: str) -> bool:
    """Whether oneDNN runs bf16/fp16 natively on this CPU (AVX512-BF16, AMX, AVX512-FP16);
    without it, CPU autocast emulates the half type and is much slower than fp32."""
    check = getattr(torch.ops.mkldnn, f"_is_mkldnn_{dtype_name}_supported", None)
    try:
        return bool(check()) if check else False
    except RuntimeError:
        return False


def autocast(args, device: torch.device):
    """The region train_step runs in: --amp's autocast, or a no-op for --amp off. Its weight
    cache is off: autocast keeps the half-precision copy of a parameter until the outermost
    region ends, and a train_step steps D (n_critic times for WGAN) before it uses D again,
    so a cached copy would run the second forward pass on the weights before the update."""
    return torch.autocast(device.type, dtype=torch.bfloat16 if args.amp == "bf16" else torch.float16,
                          enabled=args.amp != "off", cache_enabled=False)


# --------------------------------------------------------------------------------------
# The model interface
# --------------------------------------------------------------------------------------

class GAN:
    """What a model file defines (one subclass): networks self.G and self.D, optimizers
    self.opt_g and self.opt_d, and train_step(), one generator update. The rest is here.

    A model steps its optimizers with self.update(opt, loss) (or self.backward() and
    self.step_optimizer() when one pass feeds two optimizers); that is where the fp16
    gradient scaler and the gradient averaging across torchrun ranks happen. It draws its
    noise with self.sample_z(), self.rand() and self.randn(): under torchrun every rank draws
    the whole global batch from the same stream and keeps its own slice, so K ranks of batch B
    draw exactly what one process of batch K·B draws."""

    name = "gan"
    z_prior = "normal"  # or "uniform" (U[-1, 1], BEGAN)
    double_backward = False  # True: a gradient penalty differentiates D twice (--compile leaves D eager)

    def __init__(self, args, shape, device):
        self.args, self.shape, self.device = args, shape, device
        self.step = 0  # generator updates done; the training loop sets it before each step
        self.G_ema = None  # --ema: the moving average of G (prepare_model() makes it)
        self.scalers = {}  # --amp fp16: one gradient scaler per optimizer name

    def train_step(self, real) -> dict:
        """One generator update (and the critic updates before it). `real()` returns the next
        batch of real images. Returns the scalars to log, as tensors (no .item(): the loop
        reads them only every --log-every steps, so the GPU is never waited on)."""
        raise NotImplementedError

    # ---- noise ---------------------------------------------------------------------------
    def _draw(self, fn, n, shape, generator=None, device=None):
        device = device or self.device
        w = world() if generator is None else 1
        x = fn((n * w, *shape), generator=generator, device=device)
        return x if w == 1 else x[rank() * n:(rank() + 1) * n]

    def rand(self, n, *shape):
        """U[0, 1) of shape (n, *shape): this rank's slice of a global draw."""
        return self._draw(torch.rand, n, shape)

    def randn(self, n, *shape):
        """N(0, 1) of shape (n, *shape): this rank's slice of a global draw."""
        return self._draw(torch.randn, n, shape)

    def sample_z(self, n, generator=None, device=None):
        if self.z_prior == "uniform":
            return self._draw(torch.rand, n, (self.args.z_dim,), generator, device) * 2 - 1
        return self._draw(torch.randn, n, (self.args.z_dim,), generator, device)

    # ---- updates -------------------------------------------------------------------------
    def _scaler(self, opt):
        for k, o in self.optimizers().items():
            if o is opt:
                return self.scalers.get(k)
        return None

    def backward(self, loss, opt, **kw):
        """loss.backward(**kw) outside autocast, scaled by opt's gradient scaler under fp16."""
        scaler = self._scaler(opt)
        with full_precision(self.device):
            (scaler.scale(loss) if scaler else loss).backward(**kw)

    def step_optimizer(self, opt):
        """Average the gradients over the ranks, then step (through the scaler under fp16)."""
        all_reduce_grads([p for g in opt.param_groups for p in g["params"]])
        scaler = self._scaler(opt)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()

    def update(self, opt, loss, **kw):
        """One optimizer step on loss: zero the gradients, backward, average, step."""
        opt.zero_grad(set_to_none=True)
        self.backward(loss, opt, **kw)
        self.step_optimizer(opt)

    def all_mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of t over the ranks (t itself in one process): for a statistic that the
        model's update rule uses, e.g. BEGAN's k_t control."""
        if world() == 1:
            return t
        t = t.detach().clone()
        torch.distributed.all_reduce(t)
        return t / world()

    # ---- what the loop saves and samples from -----------------------------------------------
    def generator_for_sampling(self) -> nn.Module:
        return self.G_ema if self.G_ema is not None else self.G

    def modules(self) -> dict:
        nets = {"G": self.G, "D": self.D}
        if self.G_ema is not None:
            nets["G_ema"] = self.G_ema
        return nets

    def optimizers(self) -> dict:
        return {"G": self.opt_g, "D": self.opt_d}

    def extra_state(self) -> dict:
        """The model's own state for the checkpoint (tensors and plain values), e.g. k_t."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass


def prepare_model(model: GAN, args, for_training: bool) -> GAN:
    """Apply the shared speed flags to a freshly built model: --sync-bn, --ema, channels_last,
    the fp16 gradient scalers, --compile. None of them changes the model's equations."""
    device = model.device
    if for_training and world() > 1 and getattr(args, "sync_bn", False):
        if device.type != "cuda":
            raise UserError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only)")
        model.G = nn.SyncBatchNorm.convert_sync_batchnorm(model.G)
        model.D = nn.SyncBatchNorm.convert_sync_batchnorm(model.D)
    if getattr(args, "ema", 0):
        model.G_ema = copy.deepcopy(model.G).requires_grad_(False)
    if channels_last(args, device):
        for m in model.modules().values():
            m.to(memory_format=torch.channels_last)
    if for_training and getattr(args, "amp", "off") == "fp16":
        model.scalers = {k: torch.amp.GradScaler(device.type) for k in model.optimizers()}
    if for_training and getattr(args, "compile", False):
        backend = os.environ.get("GAN_COMPILE_BACKEND", "inductor")  # tests use "eager" (no C++ compiler run)
        model.G.compile(backend=backend)
        if not model.double_backward:
            model.D.compile(backend=backend)
    return model


def channels_last(args, device) -> bool:
    v = getattr(args, "channels_last", "auto")
    return v == "on" or (v == "auto" and device.type == "cuda")


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, beta: float) -> None:
    """ema <- beta·ema + (1 − beta)·net for the weights; buffers (BatchNorm's statistics) copied."""
    e = [p for p in ema.parameters()]
    torch._foreach_lerp_(e, [p.detach() for p in net.parameters()], 1.0 - beta)
    for b, nb in zip(ema.buffers(), net.buffers()):
        b.copy_(nb)


# --------------------------------------------------------------------------------------
# Images out: grids, GIFs
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------

def _plain(v):
    if isinstance(v, tuple):
        return list(v)
    return v


def save_checkpoint(path: Path, model: GAN, step: int, batches: Batches, fixed_z, config: dict) -> None:
    """Atomically: write a temporary file beside it, flush it to disk, then rename."""
    ckpt = {
        "model": model.name,
        "step": step,
        "config": config,
        "shape": list(model.shape),
        "nets": {k: m.state_dict() for k, m in model.modules().items()},
        "optimizers": {k: o.state_dict() for k, o in model.optimizers().items()},
        "extra": model.extra_state(),
        "scalers": {k: sc.state_dict() for k, sc in model.scalers.items()},  # --amp fp16
        "data": batches.state(),
        "fixed_z": fixed_z.cpu(),
        # the CUDA state of this process's own GPU: under torchrun every rank runs the same
        # stream on its own device (cuda:local_rank), and each restores it there on resume
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(model.device) if model.device.type == "cuda" else None},
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def checkpoint_path(path_or_dir: str) -> Path:
    p = Path(path_or_dir)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise UserError(f"{path_or_dir}: no checkpoint there (expected a checkpoint.pt or a run directory holding one)")
    return p


def load_checkpoint(path_or_dir: str, name: str | None = None) -> tuple[dict, Path]:
    """Load with weights_only=True (opening a checkpoint never runs code) and check that it
    belongs to the model `name` (any model when None)."""
    p = checkpoint_path(path_or_dir)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torn, truncated, foreign or doctored files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{p}: not a readable checkpoint ({first[:120]})")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "nets" not in ckpt:
        raise UserError(f"{p}: not a checkpoint written by this project")
    if name is not None and ckpt["model"] != name:
        raise UserError(f"{p} is a {ckpt['model']} checkpoint; use {ckpt['model']}.py for it, not {name}.py")
    return ckpt, p


def _restore(model: GAN, ckpt: dict, p: Path) -> None:
    try:
        for k, m in model.modules().items():
            m.load_state_dict(ckpt["nets"][k])
        for k, o in model.optimizers().items():
            if k in ckpt.get("optimizers", {}):
                o.load_state_dict(ckpt["optimizers"][k])
        model.load_extra_state(ckpt.get("extra", {}))
        for k, sc in model.scalers.items():
            if k in ckpt.get("scalers", {}):
                sc.load_state_dict(ckpt["scalers"][k])
    except (KeyError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{p}: does not fit this model's networks ({first[:150]})")


# --------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------

def _progress(it=None, **kw):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in requirements.txt; run on without it
        return it if it is not None else _NoBar()
    kw.setdefault("dynamic_ncols", True)
    kw.setdefault("disable", None)  # None: off when stderr is not a terminal
    return tqdm(it, **kw)


class _NoBar:
    def update(self, n=1): pass
    def set_postfix(self, *a, **k): pass
    def close(self): pass
    def write(self, s): print(s, file=sys.stderr)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (try --device auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps: no Apple GPU is available here (try --device auto)")
    return torch.device(name)


def _tensorboard(run_dir):
    try:
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter(str(run_dir))
    except Exception:  # noqa: BLE001 - tensorboard is optional at run time
        return None


def _new_run_dir(name: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / name / stamp
    d, i = base, 1
    while d.exists():
        d, i = Path(f"{base}-{i}"), i + 1
    return d


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop the lines a crashed run wrote after its last checkpoint."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            pass
    path.write_text("".join(k + "\n" for k in keep))


class _StopFlag:
    """Ctrl-C (SIGINT) or SIGTERM sets the flag; the loop saves a checkpoint after the step
    in flight and exits 0. A second Ctrl-C stops at once."""

    def __init__(self):
        self.hit = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def _handler(self, signum, frame):
        if self.hit and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _finite(model: GAN) -> bool:
    return all(torch.isfinite(p).all() for m in model.modules().values() for p in m.parameters())


def train(model_cls, args, explicit: set[str]) -> int:
    """Train `model_cls` on the data the arguments name; returns the exit status."""
    ckpt, ckpt_file = None, None
    if args.resume:
        ckpt, ckpt_file = load_checkpoint(args.resume, model_cls.name)
        saved = ckpt["config"]
        changed = sorted(k for k in explicit - RESUMABLE_FLAGS
                         if k in saved and _plain(getattr(args, k)) != _plain(saved[k]))
        if changed:
            raise UserError(f"{ckpt_file}: was trained with --{changed[0].replace('_', '-')} "
                            f"{saved[changed[0]]!r}; a resumed run keeps its settings (drop the flag, or start a new run)")
        for k, v in saved.items():
            if k not in explicit or k not in RESUMABLE_FLAGS:
                setattr(args, k, tuple(v) if k == "image_size" and v is not None else v)
        args.resume = str(ckpt_file)
        if "out" not in explicit:
            args.out = str(ckpt_file.parent)
    resolve_data_args(args)
    device = init_distributed(args) or pick_device(args.device)
    lead = rank() == 0  # the rank that logs, draws grids, evaluates and writes checkpoints
    if args.amp != "off" and device.type == "mps":
        raise UserError("--amp: autocast on Apple GPUs is not supported here (use --amp off)")
    if args.amp != "off" and device.type == "cpu" and lead and not cpu_has_native(args.amp):
        print(f"warning: --amp {args.amp}: this CPU has no native {args.amp} arithmetic, so autocast emulates it "
              "and trains far slower than fp32 (DCGAN about 20x slower on an AVX2 processor; benchmarks/train_speed.py)",
              file=sys.stderr)
    torch.manual_seed(args.seed)  # the same on every rank: the ranks draw one global stream
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    data = load_data(args)
    shape = tuple(data.shape)
    model = prepare_model(model_cls(args, shape, device), args, for_training=True)
    g = torch.Generator().manual_seed(args.seed + 1)
    fixed_z = model.sample_z(64, generator=g, device=torch.device("cpu"))
    start = 0
    if ckpt is not None:
        if list(ckpt["shape"]) != list(shape):
            raise UserError(f"{ckpt_file}: trained on images of shape {tuple(ckpt['shape'])}, "
                            f"this data gives {shape}")
        _restore(model, ckpt, ckpt_file)
        start = int(ckpt["step"])
        fixed_z = ckpt["fixed_z"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        cuda_rng = ckpt["rng"]["cuda"]
        if isinstance(cuda_rng, list):  # older checkpoints: every GPU's state; the run's own was cuda:0
            cuda_rng = cuda_rng[0] if cuda_rng else None
        if device.type == "cuda" and cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, device)
    fixed_z = fixed_z.to(device)
    batches = Batches(data, args.batch_size, args.seed, device, state=ckpt["data"] if ckpt else None,
                      channels_last=channels_last(args, device))
    amp = autocast(args, device)

    if args.eval_every and args.dataset not in ("digits", "stacked-digits"):  # before the ranks part ways
        raise UserError(f"--eval-every: quality metrics work on the digits and stacked-digits data sets only "
                        f"(the judge is a digit classifier), not on {args.dataset}")
    run_dir = Path(args.out) if args.out else _new_run_dir(model.name)
    if not lead:
        return _follow(model, args, batches, amp, start)
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    config = {k: _plain(v) for k, v in vars(args).items() if not k.startswith("_")}
    config.update(model=model.name, shape=list(shape), data_size=len(data), torch=str(torch.__version__),
                  ranks=world())
    config = json.loads(json.dumps(config))  # plain values only: weights_only loading accepts them
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    metrics_path = run_dir / "metrics.jsonl"
    _truncate_metrics(metrics_path, start) if ckpt else metrics_path.write_text("")
    ckpt_path = run_dir / CHECKPOINT
    evaluator = None
    if args.eval_every:
        import evaluate  # the metrics of evaluate.py; raises UserError for data it cannot judge
        evaluator = evaluate.make_training_evaluator(args, device)
    writer = _tensorboard(run_dir)
    log = print if args.no_progress else None

    info = (f"{model.name}: {len(data)} images {shape} from {data.source}, device {device}, "
            f"steps {start}->{args.steps}, run dir {run_dir}")
    if args.compile and model.double_backward:
        info += "; --compile: G only (the gradient penalty differentiates D twice, which compiled graphs cannot)"
    if world() > 1:
        info += f"; {world()} ranks of batch {args.batch_size} (global batch {world() * args.batch_size})"
    if data.skipped:
        info += f"; skipped {data.skipped} unreadable image(s)"
    print(info, file=sys.stderr)
    if start >= args.steps:
        print(f"the checkpoint is at step {start}, already at --steps {args.steps}; nothing to train",
              file=sys.stderr)
        return 0

    bar = _progress(total=args.steps, initial=start, desc=model.name, unit="step",
                    disable=True if args.no_progress else None)
    acc, n_acc = {}, 0
    bad_step = torch.full((), -1, dtype=torch.long, device=device)  # first step with a non-finite scalar
    last_good = (start, ckpt_path) if ckpt else None
    t0, images0 = time.perf_counter(), 0

    def checkpoint(step):
        nonlocal last_good
        if int(bad_step) >= 0 or not _finite(model):
            return False  # never overwrite a good checkpoint with a diverged model
        save_checkpoint(ckpt_path, model, step, batches, fixed_z, config)
        last_good = (step, ckpt_path)
        return True

    def diverged_message(step):
        where = f"{last_good[1]} (step {last_good[0]})" if last_good else "none was written yet"
        return (f"{model.name}: a loss became NaN or infinite at step {int(bad_step)} "
                f"(stopped at step {step}); last good checkpoint: {where}. "
                "Try a lower learning rate, or resume from it with another --seed")

    step, stop_all = start, False
    with _StopFlag() as stop:
        try:
            while step < args.steps:
                scalars, vals, bad_step = _one_step(model, args, batches, amp, step, bad_step)
                step += 1
                for k, v in zip(scalars, vals):
                    acc[k] = acc[k] + v if k in acc else v
                n_acc += 1
                bar.update(1)
                log_now, save_now = _sync_points(args, step)
                if log_now or save_now:
                    bad_step, stop_all = _agree(bad_step, stop.hit)
                    if int(bad_step) >= 0:
                        raise Diverged(diverged_message(step))
                if log_now:
                    dt = time.perf_counter() - t0
                    row = {"step": step}
                    row.update({k: round(float(v) / n_acc, 6) for k, v in acc.items()})
                    for name, opt in model.optimizers().items():
                        row[f"lr_{name.lower()}"] = opt.param_groups[0]["lr"]
                    row["images_per_s"] = round((batches.images - images0) / dt, 1)
                    row["steps_per_s"] = round(n_acc / dt, 3)
                    if batches.skipped:
                        row["skipped_images"] = batches.skipped
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    if writer:
                        for k, v in row.items():
                            if k != "step":
                                writer.add_scalar(k, v, step)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in list(row.items())[1:5]}, refresh=False)
                    if log:
                        log(json.dumps(row))
                    acc, n_acc, t0, images0 = {}, 0, time.perf_counter(), batches.images
                if step % args.sample_every == 0 or step == args.steps:
                    img = grid(_generate(model, fixed_z))
                    save_png(img, run_dir / "samples" / f"step_{step:06d}.png")
                    if writer:
                        writer.add_image("samples", img, step, dataformats="HWC")
                if evaluator and (step % args.eval_every == 0 or step == args.steps):
                    row = {"step": step, **evaluator(lambda n: generate_n(model, n, args.seed))}
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    if writer:
                        for k, v in row.items():
                            if k != "step":
                                writer.add_scalar(f"eval/{k}", v, step)
                    if log:
                        log(json.dumps(row))
                if save_now:
                    if not checkpoint(step):
                        raise Diverged(diverged_message(step))
                if stop.hit if world() == 1 else stop_all:
                    break
        except Diverged:
            bar.close()
            raise
        finally:
            if writer:
                writer.close()
    bar.close()
    if (stop.hit or stop_all) and step < args.steps:
        if checkpoint(step):
            print(f"interrupted at step {step}; saved {ckpt_path}. Continue with --resume {run_dir} "
                  f"--steps {args.steps}", file=sys.stderr)
        else:
            print(diverged_message(step), file=sys.stderr)
            return 1
    write_timeline(run_dir)
    print(f"{model.name}: done, step {step}; samples in {run_dir / 'samples'}, checkpoint {ckpt_path}",
          file=sys.stderr)
    return 0


def _one_step(model: GAN, args, batches: Batches, amp, step: int, bad_step: torch.Tensor):
    """Generator update number step + 1 (with the EMA after it). Returns the scalars, them
    stacked, and bad_step: the first step whose scalars were not finite (-1: none), kept on
    the device so that no step waits for it."""
    model.step = step  # generator updates done so far (schedules read it)
    with amp:
        scalars = model.train_step(batches)
    if model.G_ema is not None:
        # the decay ramps up as in TensorFlow's ExponentialMovingAverage(num_updates): at 0.999 a
        # fixed decay would still hold 37 % of the initial weights after 1,000 steps
        ema_update(model.G_ema, model.G, min(args.ema, (1 + step) / (10 + step)))
    vals = torch.stack([v.detach().float().reshape(()) for v in scalars.values()])
    bad_step = torch.where((bad_step < 0) & ~torch.isfinite(vals).all(),
                           torch.tensor(step + 1, device=bad_step.device), bad_step)
    return scalars, vals, bad_step


def _sync_points(args, step: int) -> tuple[bool, bool]:
    """(log now, checkpoint now) after generator update number `step`."""
    last = step == args.steps
    return step % args.log_every == 0 or last, step % args.checkpoint_every == 0 or last


def _agree(bad_step: torch.Tensor, stop_hit: bool):
    """Under torchrun the ranks agree, at each log and checkpoint step, on divergence and on a
    stop request (the latest of them), so that all stop at the same step: rank 0 refuses to
    save a diverged model, and the others must know it at the same step."""
    if world() == 1:
        return bad_step, stop_hit
    t = torch.stack([bad_step, torch.tensor(int(stop_hit), device=bad_step.device)])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t[0], bool(t[1])


def _follow(model: GAN, args, batches: Batches, amp, start: int) -> int:
    """A rank other than 0 under torchrun: the same updates as rank 0, no files, no output."""
    bad_step = torch.full((), -1, dtype=torch.long, device=model.device)
    step = start
    with _StopFlag() as stop:
        while step < args.steps:
            _, _, bad_step = _one_step(model, args, batches, amp, step, bad_step)
            step += 1
            log_now, save_now = _sync_points(args, step)
            if log_now or save_now:
                bad_step, stop_all = _agree(bad_step, stop.hit)
                if int(bad_step) >= 0:
                    return 1  # rank 0 says where and why
                if stop_all:
                    break
            if save_now and not _finite(model):
                return 1
    return 0


@torch.no_grad()
def _generate(model: GAN, z: torch.Tensor) -> torch.Tensor:
    """Samples with the networks in eval mode (BatchNorm's running statistics), so that
    drawing a grid changes no state of the run."""
    G = model.generator_for_sampling()
    was = G.training
    G.eval()
    try:
        return G(z)
    finally:
        G.train(was)


def generate_n(model: GAN, n: int, seed: int = 0, batch: int = 500) -> torch.Tensor:
    """n samples (n, C, H, W) on the CPU, from z drawn by a generator of their own (so that
    evaluating during training leaves the run's random state, and so resume, untouched)."""
    g = torch.Generator().manual_seed(seed + 2)
    out = []
    for i in range(0, n, batch):
        z = model.sample_z(min(batch, n - i), generator=g, device=torch.device("cpu"))
        out.append(_generate(model, z.to(model.device)).float().cpu())
    return torch.cat(out)


def write_timeline(run_dir: Path, max_frames=100) -> None:
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


# --------------------------------------------------------------------------------------
# Sampling from a checkpoint
# --------------------------------------------------------------------------------------

def model_from_checkpoint(model_cls, ckpt: dict, p: Path, device) -> GAN:
    """The model a checkpoint describes (its own config), networks restored, for sampling."""
    cfg = argparse.Namespace(**ckpt["config"])
    cfg.image_size = tuple(cfg.image_size)
    model = prepare_model(model_cls(cfg, tuple(ckpt["shape"]), device), cfg, for_training=False)
    _restore(model, ckpt, p)
    return model


def sample(model_cls, args) -> int:
    ckpt, p = load_checkpoint(args.sample, model_cls.name)
    device = pick_device(args.device)
    model = model_from_checkpoint(model_cls, ckpt, p, device)
    g = torch.Generator().manual_seed(args.seed)
    if args.interpolate:
        out = Path(args.out or p.parent / "walk.gif")
        keys = [model.sample_z(args.n, generator=g, device=torch.device("cpu")) for _ in range(4)]
        keys.append(keys[0])  # loop back to the start
        frames = []
        for a, b in zip(keys[:-1], keys[1:]):
            for t in np.linspace(0, 1, 16, endpoint=False):
                frames.append(grid(_generate(model, slerp(a, b, float(t)).to(device))))
        save_gif(frames, out, ms=80)
    else:
        out = Path(args.out or p.parent / "sample.png")
        z = model.sample_z(args.n, generator=g, device=torch.device("cpu")).to(device)
        save_png(grid(_generate(model, z)), out)
    print(f"wrote {out} ({args.n} {'walks' if args.interpolate else 'samples'} from step {ckpt['step']})",
          file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------

def main(model_cls, parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse, then train (or sample). Bad input: one line on stderr, exit status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    try:
        if args.sample:
            return sample(model_cls, args)
        if args.interpolate:
            raise UserError("--interpolate goes with --sample CHECKPOINT")
        return train(model_cls, args, explicit_flags(parser, argv))
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        if _distributed():
            torch.distributed.destroy_process_group()
