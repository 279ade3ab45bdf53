"""kernels/: the Triton path (under Triton's CPU interpreter) against the PyTorch reference,
forward and backward, over odd shapes and dtypes; known values on both paths; gradcheck of
the references; the GAN_KERNELS dispatch."""
import os

# Triton decides when a kernel is defined whether to interpret it: before kernels is imported.
# (conftest.py sets it too, in case another test module imports kernels first.)
os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import kernels  # noqa: E402
from conftest import one_error_line  # noqa: E402
from kernels import fallback  # noqa: E402
from kernels import gradient_penalty, gradient_penalty_reference, pullaway, pullaway_reference  # noqa: E402

PATHS = ["reference", "triton"]


def sweep(shapes, half_shapes):
    """(N, D, dtype): fp32 over every shape, fp16 and bf16 over a few (the interpreter is slow)."""
    cases = [(n, d, torch.float32) for n, d in shapes]
    cases += [(n, d, dtype) for n, d in half_shapes for dtype in (torch.float16, torch.bfloat16)]
    return pytest.mark.parametrize("N, D, dtype", cases, ids=[f"{n}x{d}-{str(t)[6:]}" for n, d, t in cases])


@pytest.fixture
def triton_path(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("GAN_KERNELS", "triton")


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    if request.param == "triton":
        pytest.importorskip("triton")
    monkeypatch.setenv("GAN_KERNELS", request.param)
    return request.param


def value_and_grad(fn, x, go=0.75):
    """fn(x) and d(go * fn(x))/dx; go = 0.75 checks that the upstream gradient is applied."""
    x = x.detach().requires_grad_()
    out = fn(x)
    out.backward(torch.tensor(go, dtype=out.dtype))
    return out.detach(), x.grad


def assert_as_close_as_reference(out, ref, exact):
    """out is as close to the fp64 result as the same-precision reference is: within twice the
    reference's error, plus one unit in the last place of the dtype (the interpreter truncates
    fp32 -> bf16 casts where the GPU and PyTorch round to nearest)."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    exact = exact.double()
    tol = 2 * (ref.double() - exact).abs().max() + torch.finfo(out.dtype).eps * exact.abs().max()
    err = (out.double() - exact).abs().max()
    assert err <= tol, f"error {err:.3g} > tolerance {tol:.3g}"


def check_triton_against_reference(fn, reference, x):
    out, grad = value_and_grad(fn, x)
    assert kernels.last_path() == "triton"
    ref, ref_grad = value_and_grad(reference, x)
    exact, exact_grad = value_and_grad(reference, x.double())
    assert_as_close_as_reference(out, ref, exact)
    assert_as_close_as_reference(grad, ref_grad, exact_grad)
    assert torch.isfinite(grad).all()
    return out, grad


# ---- gradient penalty -------------------------------------------------------------------

@sweep([(n, d) for n in (1, 3, 7, 64) for d in (1, 17, 1000)], [(1, 1), (7, 17), (64, 1000)])
def test_penalty_triton_matches_reference(triton_path, N, D, dtype):
    torch.manual_seed(N * D)
    x = (1.5 * torch.randn(N, D) / D**0.5).to(dtype)  # norms around 1.5, as a critic's might be
    check_triton_against_reference(gradient_penalty, gradient_penalty_reference, x)


def test_penalty_triton_large_rows_are_chunked_and_deterministic(triton_path):
    x = torch.randn(3, 70_000) / 200  # D > 65,536, in 18 chunks of 4,096 per row
    out, grad = check_triton_against_reference(gradient_penalty, gradient_penalty_reference, x)
    out2, grad2 = value_and_grad(gradient_penalty, x)
    assert torch.equal(out, out2) and torch.equal(grad, grad2)


def test_penalty_known_values(path):
    g = torch.tensor([[3.0, 4.0], [0.6, 0.8]])  # norms 5 and 1
    assert gradient_penalty(g).item() == pytest.approx((16 + 0) / 2)
    assert gradient_penalty(g, target=5.0).item() == pytest.approx((0 + 16) / 2)
    assert kernels.last_path() == path


def test_penalty_zero_row_is_one_with_zero_gradient(path):
    g = torch.zeros(2, 3, 4)
    g[1, 0, 0] = 3.0  # norm 3: (3 - 1)^2 = 4
    out, grad = value_and_grad(gradient_penalty, g, go=1.0)
    assert out.item() == pytest.approx((1 + 4) / 2)
    assert torch.isfinite(grad).all() and (grad[0] == 0).all()
    assert grad[1, 0, 0].item() == pytest.approx(2 * (3 - 1) / 2)  # 2 (||g|| - 1) / N * g / ||g||


def test_penalty_norm_is_over_all_non_batch_axes(path):
    torch.manual_seed(0)
    g = torch.randn(5, 3, 4, 4)  # (N, C, H, W)
    flat = gradient_penalty(g.reshape(5, -1))
    assert torch.equal(gradient_penalty(g), flat)
    per_axis = (g.norm(dim=1) - 1).square().mean()  # the known bug: a norm over C only
    assert not torch.allclose(flat, per_axis, rtol=0.1)
    assert flat.item() == pytest.approx((g.reshape(5, -1).norm(dim=1) - 1).square().mean().item(), rel=1e-5)


def test_penalty_non_contiguous_input(path):
    torch.manual_seed(0)
    base = torch.randn(6, 5, 8)
    g = base.transpose(0, 2)[:, ::2]  # (8, 3, 6), strided
    out, grad = value_and_grad(gradient_penalty, g)
    ref, ref_grad = value_and_grad(gradient_penalty_reference, g.contiguous())
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, ref_grad)


def test_penalty_reaches_critic_weights_through_create_graph(monkeypatch):
    """The WGAN-GP use: the penalty on autograd.grad(..., create_graph=True) trains the critic."""
    pytest.importorskip("triton")
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 1))
    x_hat = torch.randn(4, 3, 8, 8, requires_grad=True)
    grads = {}
    for p in PATHS:
        monkeypatch.setenv("GAN_KERNELS", p)
        critic.zero_grad()
        grad, = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)  # (N, C, H, W)
        gradient_penalty(grad).backward()
        assert kernels.last_path() == p
        grads[p] = {name: w.grad for name, w in critic.named_parameters()}
    assert grads["reference"].pop("3.bias") is None  # the last bias does not change d critic / dx
    assert all(w.abs().sum() > 0 for w in grads["reference"].values())  # every other weight learns
    for name, w in grads["reference"].items():
        torch.testing.assert_close(grads["triton"][name], w)


def test_penalty_reference_gradcheck():
    torch.manual_seed(0)
    g = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gradient_penalty_reference(t, 0.7), (g,))


# ---- pull-away --------------------------------------------------------------------------

@sweep([(n, d) for n in (2, 3, 7, 64) for d in (2, 17, 1000)] + [(20, 40), (130, 2), (130, 17), (130, 520)],
       [(3, 17), (64, 1000), (130, 17)])  # N > 16, 32, 64: bigger tiles, then several; D > 512: split-K
def test_pullaway_triton_matches_reference(triton_path, N, D, dtype):
    # D = 1 (all rows collinear, loss 1, gradient 0) is in test_pullaway_known_values
    torch.manual_seed(N * D)
    x = (torch.randn(N, D) + 0.3).to(dtype)  # an offset, so that cosines are not all near 0
    check_triton_against_reference(pullaway, pullaway_reference, x)


def test_pullaway_known_values(path):
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    assert pullaway(q.T[:4]).item() == pytest.approx(0, abs=1e-6)  # orthogonal rows
    row = torch.randn(1, 2, 5)
    assert pullaway(row.expand(4, 2, 5)).item() == pytest.approx(1, rel=1e-6)  # identical rows
    out, grad = value_and_grad(pullaway, torch.tensor([[2.0], [-1.0], [0.5]]))  # D = 1: collinear
    assert out.item() == pytest.approx(1) and grad.abs().max() < 1e-6
    # cos = 1/sqrt(2) for both ordered pairs: mean of cos^2 is 1/2 (1/sqrt(2) without the
    # square; normalising columns instead of rows gives 1/4)
    assert pullaway(torch.tensor([[1.0, 0.0], [1.0, 1.0]])).item() == pytest.approx(0.5)
    x = torch.randn(5, 7)
    scaled = x * torch.tensor([[1.0], [1e3], [1e-3], [-2.0], [1.0]])
    assert pullaway(scaled).item() == pytest.approx(pullaway(x).item(), rel=1e-5)
    assert kernels.last_path() == path


def test_pullaway_zero_row_no_nan(path):
    a = torch.tensor([1.0, 2.0, -1.0])
    x = torch.stack([a, 2 * a, torch.zeros(3)])  # cos^2: 1 for the pair (0, 1), 0 with the zero row
    out, grad = value_and_grad(pullaway, x)
    assert out.item() == pytest.approx(2 / 6)
    assert torch.isfinite(grad).all() and (grad[2] == 0).all()


@pytest.mark.parametrize("fn", [pullaway, pullaway_reference])
def test_pullaway_needs_two_samples(path, fn):
    with pytest.raises(ValueError, match="pullaway needs at least 2 samples"):
        fn(torch.randn(1, 8))


def test_pullaway_non_contiguous_input(path):
    torch.manual_seed(0)
    e = torch.randn(10, 4, 9).transpose(0, 2)[::2]  # (5, 4, 10), strided
    out, grad = value_and_grad(pullaway, e)
    ref, ref_grad = value_and_grad(pullaway_reference, e.contiguous())
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, ref_grad)


def test_pullaway_reference_gradcheck():
    torch.manual_seed(0)
    e = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pullaway_reference, (e,))


# ---- dispatch ---------------------------------------------------------------------------

def test_dispatch_is_read_at_call_time(monkeypatch):
    pytest.importorskip("triton")
    torch.manual_seed(0)
    g, e = torch.randn(4, 3, 5), torch.randn(6, 8)
    results = {}
    for mode, expected in [("auto", "reference"), ("reference", "reference"), ("triton", "triton")]:
        monkeypatch.setenv("GAN_KERNELS", mode)
        results[mode] = gradient_penalty(g), pullaway(e)
        assert kernels.last_path() == expected  # auto on a CPU tensor: the reference
    for gp, pa in results.values():
        torch.testing.assert_close(gp, results["reference"][0])
        torch.testing.assert_close(pa, results["reference"][1])


def test_dispatch_errors(monkeypatch):
    monkeypatch.setenv("GAN_KERNELS", "cuda")
    with pytest.raises(ValueError, match="GAN_KERNELS must be"):
        gradient_penalty(torch.ones(2, 2))
    monkeypatch.setenv("GAN_KERNELS", "auto")
    assert gradient_penalty(torch.ones(2, 2, dtype=torch.float64)).dtype == torch.float64
    assert kernels.last_path() == "reference"
    if kernels.triton is not None:
        monkeypatch.setenv("GAN_KERNELS", "triton")
        with pytest.raises(TypeError, match="float64"):
            pullaway(torch.ones(2, 2, dtype=torch.float64))


def test_imports_and_runs_without_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    for name in ["kernels", "kernels.fallback", "kernels.gradient_penalty", "kernels.pullaway"]:
        monkeypatch.delitem(sys.modules, name)
    import kernels as fresh
    assert fresh is not kernels and fresh.triton is None
    monkeypatch.setenv("GAN_KERNELS", "auto")
    assert fresh.gradient_penalty(torch.tensor([[3.0, 4.0]])).item() == pytest.approx(16)
    assert fresh.last_path() == "reference"
    monkeypatch.setenv("GAN_KERNELS", "triton")
    with pytest.raises(RuntimeError, match="triton is not installed"):
        fresh.pullaway(torch.randn(3, 4))


@pytest.mark.parametrize("fn", [pullaway_reference, gradient_penalty_reference])
def test_reference_is_fp32_under_autocast(fn, monkeypatch):
    """An --amp run on the reference path (CPU, GAN_KERNELS=reference, CUDA without Triton)
    calls the ops inside autocast; their math must stay fp32 (autocast would run the
    pull-away term's u @ u.T in bf16: 3e-3 relative error at N=64, D=4096)."""
    monkeypatch.setenv("GAN_KERNELS", "reference")
    torch.manual_seed(0)
    x = torch.randn(64, 4096, dtype=torch.float64).float().requires_grad_(True)
    public = {pullaway_reference: pullaway, gradient_penalty_reference: gradient_penalty}[fn]
    want = fn(x)
    g_want, = torch.autograd.grad(want, x)
    for op in (fn, public):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = op(x)
        g_got, = torch.autograd.grad(got, x)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
        torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-9)


# ---- a Triton failure falls back to the reference ----------------------------------------

def _module(name):
    return importlib.import_module(f"kernels.{name}")  # kernels.pullaway is also the function's name


class FailingLauncher:
    """A kernel whose launch fails as Triton's does without a C compiler; counts the tries."""

    def __init__(self):
        self.tries = 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.tries += 1
            raise RuntimeError("Failed to compile the launcher: no C compiler (cc) found\nmore detail")
        return launch


@pytest.fixture
def no_failure_yet(monkeypatch):
    """A session whose Triton has not failed yet; the state is restored afterwards."""
    pytest.importorskip("triton")
    monkeypatch.setattr(fallback, "_error", None)
    monkeypatch.setattr(fallback, "_worked", False)
    monkeypatch.setenv("GAN_KERNELS", "triton")


@pytest.mark.parametrize("op, module, kernel, fn, reference", [
    ("pullaway", "pullaway", "_pullaway_fwd_kernel", pullaway, pullaway_reference),
    ("gradient_penalty", "gradient_penalty", "_gp_fwd_kernel", gradient_penalty, gradient_penalty_reference)])
def test_forward_failure_falls_back_once(no_failure_yet, monkeypatch, capsys, op, module, kernel, fn, reference):
    launcher = FailingLauncher()
    monkeypatch.setattr(_module(module), kernel, launcher)
    torch.manual_seed(0)
    x = torch.randn(6, 2, 5) + 0.3
    for _ in range(3):  # tried once, then the reference without retrying
        out, grad = value_and_grad(fn, x)
        assert kernels.last_path() == "reference"
        ref, ref_grad = value_and_grad(reference, x)
        assert torch.equal(out, ref) and torch.equal(grad, ref_grad)
    assert launcher.tries == 1
    other = gradient_penalty if fn is pullaway else pullaway
    other(x)  # the other op takes the reference too
    assert kernels.last_path() == "reference"
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"kernels: Triton failed in {op} (RuntimeError: Failed to compile the launcher")
    assert "more detail" not in line and "reference" in line


@pytest.mark.parametrize("module, kernel, fn, reference", [
    ("pullaway", "_pullaway_bwd_kernel", pullaway, pullaway_reference),
    ("gradient_penalty", "_gp_bwd_kernel", gradient_penalty, gradient_penalty_reference)])
def test_backward_failure_falls_back_once(no_failure_yet, monkeypatch, capsys, module, kernel, fn, reference):
    """The forward ran on Triton, its backward kernel cannot: the reference's gradient."""
    monkeypatch.setattr(_module(module), kernel, FailingLauncher())
    torch.manual_seed(0)
    x = torch.randn(6, 10) + 0.3
    out, grad = value_and_grad(fn, x)
    assert kernels.last_path() == "reference"  # no Triton from now on
    assert out.grad_fn is None and torch.equal(grad, value_and_grad(reference, x)[1])
    assert "backward (RuntimeError" in one_error_line(capsys.readouterr().err)
    fn(x)
    assert kernels.last_path() == "reference" and capsys.readouterr().err == ""


def test_failure_drops_what_triton_printed(no_failure_yet, monkeypatch, capsys):
    """A failed ptxas prints the whole PTX to stdout before raising: not shown."""
    def launch(*args, **kwargs):
        print("// a thousand lines of PTX")
        raise RuntimeError("`ptxas` failed with error code 255")
    monkeypatch.setattr(_module("pullaway"), "_pullaway_fwd_kernel", type("K", (), {"__getitem__": lambda s, g: launch})())
    pullaway(torch.randn(3, 4))
    captured = capsys.readouterr()
    assert captured.out == "" and "ptxas" in one_error_line(captured.err)


def test_failed_launcher_build_is_one_line_with_the_compilers_reason(no_failure_yet, monkeypatch, capfd):
    """No Python headers: the C compiler that builds Triton's launcher prints its errors straight to
    file descriptor 2, then Triton raises; the one line carries the compiler's reason."""
    def launch(*args, **kwargs):
        os.write(2, b"/tmp/x/main.c:1:10: fatal error: Python.h: No such file or directory\n"
                    b"compilation terminated.\n")
        raise subprocess.CalledProcessError(1, ["/usr/bin/gcc", "/tmp/x/main.c"])
    monkeypatch.setattr(_module("gradient_penalty"), "_gp_fwd_kernel", type("K", (), {"__getitem__": lambda s, g: launch})())
    x = torch.randn(3, 8)
    assert torch.equal(gradient_penalty(x), gradient_penalty_reference(x))
    line = one_error_line(capfd.readouterr().err)
    assert line.startswith("kernels: Triton failed in gradient_penalty (CalledProcessError: Command")
    assert "[/tmp/x/main.c:1:10: fatal error: Python.h: No such file or directory]" in line


def test_what_a_working_first_call_prints_is_passed_on(no_failure_yet, monkeypatch, capfd):
    real = _module("pullaway")._pullaway_cos_kernel

    class Talking:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                os.write(2, b"a warning from C\n")
                print("a line on stdout")
                return real[grid](*args, **kwargs)
            return launch
    monkeypatch.setattr(_module("pullaway"), "_pullaway_cos_kernel", Talking())
    pullaway(torch.randn(3, 8))
    assert kernels.last_path() == "triton"
    out, err = capfd.readouterr()
    assert out == "a line on stdout\n" and err == "a warning from C\n"


def test_no_gpu_driver_falls_back_in_a_fresh_process():
    """Triton compiled (not interpreted) on a machine without a GPU: its real launch error,
    one stderr line, the reference's values."""
    pytest.importorskip("triton")
    code = ("import torch, kernels\n"
            "kernels.INTERPRETED = True  # let GAN_KERNELS=triton take CPU tensors to the real launcher\n"
            "x = torch.randn(4, 3, 8, 8, requires_grad=True)\n"
            "for _ in range(2):\n"
            "    a, b = kernels.gradient_penalty(x), kernels.pullaway(x)\n"
            "    assert kernels.last_path() == 'reference'\n"
            "    assert torch.equal(a, kernels.gradient_penalty_reference(x))\n"
            "    assert torch.equal(b, kernels.pullaway_reference(x))\n"
            "    (a + b).backward()\n"
            "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(GAN_KERNELS="triton", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
    line = one_error_line(r.stderr)
    assert line.startswith("kernels: Triton failed in gradient_penalty ("), line

