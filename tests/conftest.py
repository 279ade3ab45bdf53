"""Shared test helpers. Tests run on a 2-core CPU with no GPU, in a few minutes."""
import os
import subprocess
import sys
from pathlib import Path

# The Triton kernels run under Triton's CPU interpreter in the tests; the flag must be set
# before anything imports triton.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("dcgan", "lsgan", "wgan", "wgan_gp", "dragan", "ebgan", "began")
sys.path.insert(0, str(ROOT))

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Tiny settings: a few steps of narrow networks on 16x16 images.
TINY = ["--steps", "4", "--batch-size", "8", "--width", "4", "--image-size", "16",
        "--log-every", "2", "--sample-every", "2", "--checkpoint-every", "2", "--no-progress"]


def random_pics(root: Path, n: int) -> Path:
    """A folder of n random 20x24 RGB PNGs (000.png, 001.png, ...), made here."""
    import numpy as np
    from PIL import Image
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


def run_script(script, *args, cwd=None, timeout=300, env=None):
    """Run a script as a user would (a subprocess); returns the CompletedProcess."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=e)


def run_main(module, argv, capsys=None):
    """Run a script's main() in this process (fast: torch is already imported)."""
    import importlib
    import common
    import evaluate
    mod = importlib.import_module(module)
    try:
        return common.main(evaluate.model_class(module), mod.build_parser(), [str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        return e.code


def one_error_line(stderr: str) -> str:
    """The bad-input contract: exactly one line on stderr, and no traceback."""
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


class LinearCritic(torch.nn.Module):
    """D(x) = <w, x>: its gradient is w at every point, for every sample."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1)


class HalfSquareCritic(torch.nn.Module):
    """D(x) = ½‖x‖² per sample: its gradient at x is x itself, different per sample.
    Remembers its inputs in `seen`."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x)
        return 0.5 * x.flatten(1).square().sum(1)


@pytest.fixture
def tiny():
    return list(TINY)


@pytest.fixture(scope="session", autouse=True)
def cache_folder(tmp_path_factory):
    """The judges' and decoded folders' cache of the whole session: never the user's own."""
    os.environ["GANZOO_CACHE"] = str(tmp_path_factory.getbasetemp() / "ganzoo-cache")


@pytest.fixture(scope="session")
def judge(tmp_path_factory):
    """The 32x32 classifier, trained once per test session in a cache folder of its own
    (shared with test_compare.py through the session's base temp folder)."""
    os.environ["GANZOO_CACHE"] = str(tmp_path_factory.getbasetemp() / "ganzoo-cache")
    from ganzoo import metrics
    return metrics.classifier((32, 32))
