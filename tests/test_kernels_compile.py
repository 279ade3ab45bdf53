"""kernels/ on real GPUs, checked without one: every Triton kernel configuration the host
functions can choose, compiled ahead of time for sm_80 ... sm_120 in fp32, bf16 and fp16
(benchmarks/kernel_compile.py, in a fresh process: this one interprets the kernels), has zero
spill bytes and registers and shared memory within each target's limits; and the
configurations compiled are those the launch code uses."""
import importlib
import json
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton", reason="triton is not installed")

import torch  # noqa: E402

from conftest import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT))  # ahead of benchmarks/, whose kernels.py another test module may have put first
import kernels  # noqa: E402

MODULES = {op: importlib.import_module(f"kernels.{op}") for op in ("gradient_penalty", "pullaway")}
sys.path.insert(0, str(ROOT / "benchmarks"))
import kernel_compile  # noqa: E402  (imports nothing from kernels at import time)

sys.path.remove(str(ROOT / "benchmarks"))  # benchmarks/kernels.py would shadow the package


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The rows of `python benchmarks/kernel_compile.py --json FILE`: one a compile."""
    out = tmp_path_factory.mktemp("kernel-compile") / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_compile.py"), "--summary", "--json", str(out)],
                       capture_output=True, text=True, timeout=1200, env=env, cwd=ROOT)
    assert out.exists(), r.stderr[-4000:]
    return r, json.loads(out.read_text())["rows"]


def test_every_configuration_compiles_without_spills(compiled):
    r, rows = compiled
    for row in rows:
        where = f"{row['kernel']} [{row['config']}] {row['target']} {row['dtype']}"
        assert row["spill_stores"] == row["spill_loads"] == row["stack"] == 0, where
        assert row["registers"] <= 255, where
        assert row["shared"] <= kernel_compile.LIMITS[row["cc"]]["smem_block"], where
        assert row["blocks_per_sm"] >= 1, where
    assert r.returncode == 0 and "0 with spills or over a limit" in r.stdout, r.stderr[-4000:]


def test_every_kernel_target_and_dtype_is_compiled(compiled):
    _, rows = compiled
    done = {(row["kernel"], row["target"], row["dtype"]) for row in rows}
    for op, module in MODULES.items():
        for name, types in module.SIGNATURES.items():
            dtypes = ("fp32", "bf16", "fp16") if "*T" in types.values() else ("fp32",)
            for cc in kernel_compile.TARGETS:
                for dtype in dtypes:
                    assert (name, f"sm_{cc}", dtype) in done
    assert {80, 86, 89, 90} <= set(kernel_compile.TARGETS)
    # the scripts' extremes are among the shapes whose configurations were compiled
    assert {(16, 3 * 256 * 256), (1024, 28 * 28), (2, 3 * 32 * 32)} <= set(kernel_compile.penalty_shapes())
    assert {(2, 64), (1024, 1024), (64, 65536)} <= set(kernel_compile.pullaway_shapes())


@pytest.mark.parametrize("op", MODULES)
def test_signatures_name_every_argument(op):
    """The ahead-of-time signature (SIGNATURES + constexprs) is the kernel's argument list."""
    module = MODULES[op]
    for n, d in [(2, 64), (130, 100), (16, 3 * 64 * 64)]:
        for name, ints, meta in module.configs(n, d):
            kernel = getattr(module, name)
            constexprs = set(meta) - {"num_warps"}
            assert sorted(set(module.SIGNATURES[name]) | constexprs) == sorted(kernel.arg_names)
            assert not set(module.SIGNATURES[name]) & constexprs
            assert set(ints) <= {a for a, t in module.SIGNATURES[name].items() if t.startswith("i")}


class Recorder:
    """Stands in for a kernel: records each launch's integer arguments and meta-parameters."""

    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            named = dict(zip(self.kernel.arg_names, args))
            ints = {k: v for k, v in named.items() if isinstance(v, int)}
            self.launches.append((self.kernel.fn.__name__, ints, {k: v for k, v in kwargs.items()}))
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.mark.parametrize("op, shape", [("pullaway", (5, 16)), ("pullaway", (70, 100)), ("pullaway", (3, 2000)),
                                       ("gradient_penalty", (3, 70_000)), ("gradient_penalty", (4, 3 * 16 * 16))])
def test_launches_are_the_configurations_compiled(op, shape, monkeypatch):
    """What the host functions launch (under the interpreter) is exactly configs(N, D)."""
    monkeypatch.setenv("GAN_KERNELS", "triton")
    monkeypatch.setattr(kernels.fallback, "_error", None)
    module = MODULES[op]
    launches = []
    for name in module.SIGNATURES:
        monkeypatch.setattr(module, name, Recorder(getattr(module, name), launches))
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    getattr(kernels, op)(x).backward()
    assert kernels.last_path() == "triton"
    expected = [(name, {k: v for k, v in ints.items()}, meta) for name, ints, meta in module.configs(*shape)]
    got = [(name, {k: v for k, v in ints.items() if k in dict(e[1])}, meta)
           for (name, ints, meta), e in zip(launches, expected)]
    assert got == expected


def test_bad_target_is_one_line():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_compile.py"), "--targets", "75"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.strip() == "kernel_compile.py: unknown target or dtype: 75"
