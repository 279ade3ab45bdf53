"""benchmarks/gpu_check.py, the device check, in its CPU mode (--cpu: the same code paths on tiny
shapes, the Triton kernels under the interpreter), so that it cannot rot before a GPU runs it:
every section's table and numbers are in the report, a failing section is reported in one line
while the others still run, and makes the exit status 1. Its helpers (the sync counter, the
kernels' tolerance, the time budgets) are checked on their own."""
import importlib.util
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)  # only the standard library at import: main() imports torch


def run_check(*args, timeout=600):
    env = dict(os.environ, TRITON_INTERPRET="1")
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def section(report: str, number: int) -> str:
    """The text of section `number` (## N. ...) up to the next one."""
    m = re.search(rf"^## {number}\. .*?(?=^## |\Z)", report, re.S | re.M)
    assert m, f"no section {number} in the report"
    return m.group(0)


def table(text: str) -> list[dict]:
    """The first markdown table in text, as dicts by column."""
    lines = [l for l in text.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "")) <= {"-", ":"}
    return [dict(zip(header, (c.strip() for c in l.strip("|").split("|")))) for l in lines[2:]]


def number(cell: str) -> float:
    return float(cell.rstrip("x").replace(",", ""))


@pytest.fixture(scope="module")
def cpu_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "report.md"
    p = run_check("--cpu", "--out", out)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "every section passed" in p.stdout
    return out.read_text()


def test_cpu_mode_writes_every_section_with_its_numbers(cpu_report):
    r = cpu_report
    head = r.split("## Summary")[0]
    assert head.startswith("# Device check: CPU mode")
    for key in ("- date: 20", "- device: CPU", f"- torch {torch.__version__}", "triton ", "- command: ",
                "- total time: "):
        assert key in head, key
    summary = table(section_text(r, "## Summary"))
    assert [row["section"] for row in summary] == list(gpu_check.SECTIONS)
    assert all(row["status"] == "ok" for row in summary), summary

    kernels = table(section(r, 1))  # 2 ops x 3 shapes x 3 dtypes, all on the Triton path, within tolerance
    assert len(kernels) == 18 and {k["dtype"] for k in kernels} == {"float32", "bfloat16", "float16"}
    for k in kernels:
        assert k["path"] == "triton" and k["result"] == "ok" and k["deterministic"] == "yes", k
        for col in ("forward error / tolerance", "backward error / tolerance"):
            err, tol = map(float, k[col].split(" / "))
            assert 0 <= err <= tol, k

    timings = table(section(r, 2))  # benchmarks/kernels.py's own table, one row an op
    assert [t["op"] for t in timings] == ["gradient_penalty", "pullaway"]
    for t in timings:
        assert all(number(t[c]) > 0 for c in ("triton us", "eager us", "compile us")), t
        assert number(t["err"]) < 1e-4

    folder = table(section(r, 3))  # seven scripts, defaults and --amp fp16
    assert {(f["script"], f["setting"]) for f in folder} == {(m, s) for m in gpu_check.MODELS
                                                             for s in ("defaults", "--amp fp16")}
    for f in folder:
        assert f["result"] == "ok" and f["steps"] == "2" and number(f["images/s (last row)"]) > 0, f
        assert f["syncs: first step / later steps"] == "n/a (CPU)" and f["where (later steps)"] == ""
        assert "amp fp16" in f["ran as"] if f["setting"] == "--amp fp16" else "amp fp16" not in f["ran as"]
    assert "Sync counting skipped on the CPU" in section(r, 3)

    comp = {(c["script"], c["--compile"]): c for c in table(section(r, 4))}
    assert set(comp) == {(m, c) for m in ("began", "dcgan") for c in ("off", "on")}
    for m in ("began", "dcgan"):
        on = comp[(m, "on")]
        assert "compile on" in on["ran as"] and "compile off" in comp[(m, "off")]["ran as"]
        assert number(on["first step s"]) > 0 and number(on["steady images/s"]) > 0
        float(on["compile cost s"])  # a number (on a CPU it may be any sign)
        assert on["payback steps"] and on["vs eager"].endswith("x")
    assert "backend aot_eager" in section(r, 4)  # AOTAutograd runs on the CPU: donated buffers, retain_graph

    speed = {(s["script"], s["size"], s["setting"]): s for s in table(section(r, 5))}
    want = {(m, "16x16", st) for m in gpu_check.MODELS for st in ("auto", "off")}
    want |= {(m, "32x32", st) for m in ("dcgan", "began") for st in ("auto", "off")}
    assert set(speed) == want
    for s in speed.values():
        assert s["result"] == "ok" and number(s["images/s"]) > 0 and s["batch"] == "8", s
    assert speed[("dcgan", "16x16", "off")]["ran as"] == "amp off, channels_last off, compile off"
    assert speed[("dcgan", "16x16", "off")]["vs off"] == "1.00x"

    runs = table(section(r, 6))
    assert [t["script"] for t in runs] == ["dcgan", "wgan_gp"]
    for t in runs:
        assert t["ranks"] == "2" and t["global batch"] == "16" and t["result"] == "ok", t
        assert number(t["images/s (last row, rank 0)"]) > 0


def section_text(report: str, heading: str) -> str:
    return report.split(heading, 1)[1].split("\n## ", 1)[0]


def test_a_failing_section_is_one_line_the_others_run_and_the_exit_status_is_1(tmp_path):
    out = tmp_path / "report.md"
    p = run_check("--cpu", "--out", out, "--sections", "timings,kernels", "--inject-failure", "timings")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "FAILED: timings" in p.stdout
    r = out.read_text()
    summary = {row["section"]: row for row in table(section_text(r, "## Summary"))}
    assert summary["timings"]["status"] == "failed"
    assert summary["timings"]["note"] == "RuntimeError: injected failure (--inject-failure timings)"
    assert summary["kernels"]["status"] == "ok"  # it ran after the failed one
    assert "error: RuntimeError: injected failure" in section(r, 1)
    assert len(table(section(r, 2))) == 18


def test_without_a_gpu_and_without_cpu_it_says_so_in_one_line(tmp_path):
    p = run_check("--out", tmp_path / "r.md")
    assert p.returncode == 2 and "run with --cpu" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "r.md").exists()
    p = run_check("--cpu", "--sections", "kernels,nope")
    assert p.returncode == 2 and "unknown section 'nope'" in p.stderr


def test_sync_counter_counts_the_warnings_raised_inside_steps_only():
    counter = gpu_check.SyncCounter(cuda=False)  # on CUDA it also sets the sync debug mode around the call

    def step(n_syncs, other=False):
        for _ in range(n_syncs):
            warnings.warn("called a synchronizing CUDA operation")
        if other:
            warnings.warn("something else")
        return n_syncs

    wrapped = counter.wrap(step)
    assert wrapped(1) == 1  # the first step: counted apart (cuDNN autotuning, a compile)
    with pytest.warns(UserWarning, match="synchronizing"):  # between steps (a log point): not counted
        warnings.warn("called a synchronizing CUDA operation")
    wrapped(0)
    wrapped(2, other=True)
    with pytest.raises(ZeroDivisionError):  # a step that raises is still counted
        counter.wrap(lambda: 1 / 0)()
    assert (counter.steps, counter.first, counter.later) == (4, 1, 2)
    (where, n), = counter.where.items()
    assert n == 2 and where.startswith("tests/test_gpu_check.py:")  # the line in this repository that synced
    assert counter.other == {"something else": 1} and len(counter.step_s) == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_tolerance_is_the_cpu_tests_own(dtype):
    """gpu_check's pass/fail on a kernel is test_kernels.assert_as_close_as_reference's."""
    import test_kernels
    torch.manual_seed(0)
    exact = torch.randn(50, dtype=torch.float64)
    ref = exact.to(dtype)
    for scale in (0.0, 0.5, 1.0, 2.0, 3.0, 8.0):
        out = (exact + scale * (ref.double() - exact)).to(dtype)
        err, tol = gpu_check.err_tol(out, ref, exact)
        try:
            test_kernels.assert_as_close_as_reference(out, ref, exact)
            passed = True
        except AssertionError:
            passed = False
        assert passed == (err <= tol), (scale, err, tol)


def test_an_item_past_the_section_budget_is_skipped_and_said():
    s = gpu_check.Section("speed", "t", budget=0.0, hard=1.0, cfg=None)
    s.t0 = gpu_check.time.monotonic()
    assert not s.may_start("dcgan 64x64 auto")
    assert s.skipped == 1 and s.notes == ["- skipped dcgan 64x64 auto: the section's budget (0 s) was spent"]
    s.budget = 60.0
    assert s.may_start("dcgan 64x64 off")


def test_sync_counter_sets_the_debug_mode_only_while_a_step_runs(monkeypatch):
    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    counter = gpu_check.SyncCounter(cuda=True)
    seen = []
    counter.wrap(lambda: seen.append(list(modes)))()
    assert seen == [["warn"]] and modes == ["warn", "default"]


def test_compile_payback():
    # eager: 10 s for 100 steps at 0.09 s a step (1 s of start-up); compiled: 36 s for 100 steps
    # at 0.05 s (31 s of start-up and compiling): 30 s more, paid back after 30 / 0.04 = 750 steps
    extra, steps = gpu_check.compile_payback((10.0, 100, 0.09), (36.0, 100, 0.05))
    assert extra == pytest.approx(30.0) and steps == pytest.approx(750.0)
    assert gpu_check.compile_payback((10.0, 100, 0.05), (36.0, 100, 0.06))[1] is None  # never faster
