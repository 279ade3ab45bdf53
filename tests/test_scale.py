"""The shared speed and scale flags (--amp, --channels-last, --compile, --ema, torchrun):
each must leave a model's equations alone."""
import json
import os
import subprocess
import sys

import pytest
import torch

import evaluate
from ganzoo import loop
from conftest import ROOT, TINY, one_error_line, run_main

import dcgan
import dragan
import wgan_gp
from ganzoo.checkpoint import load_checkpoint, model_from_checkpoint
from ganzoo.data import resolve_data_args
from ganzoo.loop import one_step
from ganzoo import scale
from ganzoo.checkpoint import upgrade_config
from ganzoo.scale import autocast, ema_update, prepare_model


def _args(module, *extra):
    a = module.build_parser().parse_args(["--image-size", "16", "--width", "4", "--batch-size", "8", *extra])
    resolve_data_args(a)
    return a


def _nets(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


# ---- EMA ----------------------------------------------------------------------------------

def test_ema_update_is_the_moving_average_and_copies_buffers():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    before = [p.clone() for p in ema.parameters()]
    net[1].running_mean.fill_(0.25)
    ema_update(ema, net, 0.9)
    for e, b, p in zip(ema.parameters(), before, net.parameters()):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p)
    assert torch.equal(ema[1].running_mean, torch.full((2,), 0.25))


def test_ema_decay_ramps_up_in_the_loop():
    """Step t uses min(beta, (1 + t)/(10 + t)): the first update keeps 10 % of the initial G."""
    args = _args(dcgan, "--ema", "0.999")
    torch.manual_seed(0)
    model = prepare_model(dcgan.DCGAN(args, (1, 16, 16), torch.device("cpu")), args, True)
    g0 = [p.detach().clone() for p in model.G.parameters()]
    real = lambda: torch.rand(8, 1, 16, 16) * 2 - 1  # noqa: E731
    bad = torch.tensor(-1)
    one_step(model, args, real, torch.autocast("cpu", enabled=False), 0, bad)
    for e, p0, p1 in zip(model.G_ema.parameters(), g0, model.G.parameters()):
        torch.testing.assert_close(e, 0.1 * p0 + 0.9 * p1.detach())
    before = [p.detach().clone() for p in model.G_ema.parameters()]
    one_step(model, args, real, torch.autocast("cpu", enabled=False), 1, bad)  # t = 1: 2/11
    for e, b, p in zip(model.G_ema.parameters(), before, model.G.parameters()):
        torch.testing.assert_close(e, 2 / 11 * b + 9 / 11 * p.detach())


def test_ema_is_saved_resumed_exactly_and_used_for_samples(tmp_path, capsys):
    straight, split = tmp_path / "a", tmp_path / "b"
    assert run_main("dcgan", TINY + ["--ema", "0.9", "--out", straight]) == 0
    assert run_main("dcgan", TINY + ["--ema", "0.9", "--steps", "2", "--out", split]) == 0
    assert run_main("dcgan", TINY + ["--resume", split, "--steps", "4"]) == 0
    a, b = _nets(straight)["nets"], _nets(split)["nets"]
    assert set(a) == {"G", "D", "G_ema"}
    for k in a["G_ema"]:
        assert torch.equal(a["G_ema"][k], b["G_ema"][k]), k  # the average survives resume bitwise
    w = "net.0.weight"
    assert not torch.equal(a["G_ema"][w], a["G"][w])  # a different network from G
    ckpt, p = load_checkpoint(straight)
    model = model_from_checkpoint(dcgan.DCGAN, ckpt, p, torch.device("cpu"))
    assert model.generator_for_sampling() is model.G_ema
    assert torch.equal(model.G_ema.state_dict()[w], a["G_ema"][w])


def test_bad_ema_decay_is_one_line_exit_2(capsys):
    assert run_main("dcgan", ["--ema", "1.5"]) == 2
    assert "EMA decay" in one_error_line(capsys.readouterr().err)


# ---- mixed precision ----------------------------------------------------------------------

@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_run_trains_and_keeps_finite_scalars(tmp_path, amp):
    out = tmp_path / amp
    assert run_main("dcgan", TINY + ["--amp", amp, "--out", out]) == 0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and all(torch.isfinite(torch.tensor(r["loss_d"])) for r in rows)
    ckpt = _nets(out)
    assert set(ckpt["scalers"]) == ({"G", "D"} if amp == "fp16" else set())
    assert all(v.dtype == torch.float32 for v in ckpt["nets"]["G"].values() if v.is_floating_point())


@pytest.mark.parametrize("native", [False, True])
def test_amp_on_a_cpu_without_native_half_warns(tmp_path, capsys, monkeypatch, native):
    monkeypatch.setattr(loop, "cpu_has_native", lambda name: native)
    assert run_main("dcgan", TINY + ["--amp", "bf16", "--steps", "1", "--out", tmp_path / "r"]) == 0
    warned = "warning: --amp bf16: this CPU has no native bf16" in capsys.readouterr().err
    assert warned != native


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_a_forward_after_an_update_under_amp_uses_the_new_weights(amp):
    """Inside one train_step D is stepped and then used again (G's loss; WGAN's next critic
    iteration). Autocast's weight cache would hand the second pass the pre-update copy."""
    cpu = torch.device("cpu")
    args = _args(dcgan, "--amp", amp)
    torch.manual_seed(0)
    model = dcgan.DCGAN(args, (1, 16, 16), cpu)
    for group in model.opt_d.param_groups:
        group["lr"] = 1e-2
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    with autocast(args, cpu):
        before = model.D(x).float()
        model.update(model.opt_d, before.mean())
        after = model.D(x).float()
    with autocast(args, cpu):
        fresh = model.D(x).float()  # a new region: no cache either way
    assert (after - before).abs().max() > 1e-2
    torch.testing.assert_close(after, fresh, rtol=0, atol=0)


@pytest.mark.parametrize("module,make", [
    (wgan_gp, lambda m, x, f: m.penalty(x, f)),
    (dragan, lambda m, x, f: m.penalty(x)),
])
def test_gradient_penalty_is_fp32_under_autocast(module, make):
    """Under --amp the gradient at x^ is taken through an fp32 pass of D: the penalty equals
    the one computed without autocast, to fp32 rounding (a bf16 pass would be ~1e-2 off)."""
    cls = evaluate.model_class(module.__name__)
    torch.manual_seed(0)
    model = cls(_args(module), (1, 16, 16), torch.device("cpu"))
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    fake = (torch.rand(8, 1, 16, 16) * 2 - 1).bfloat16().float()  # what G gives under autocast
    torch.manual_seed(1)
    gp32, n32 = make(model, x, fake)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gp, n = make(model, x, fake.bfloat16())
    assert gp.dtype == torch.float32
    torch.testing.assert_close(gp, gp32, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(n, n32, rtol=1e-5, atol=1e-7)
    # and the bf16 pass this guards against is measurably different
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xh = (x + torch.rand(8, 1, 1, 1) * (fake - x)).requires_grad_(True)
        g, = torch.autograd.grad(model.D(xh).sum(), xh)
    assert g.dtype == torch.float32 and not torch.allclose(g.flatten(1).norm(dim=1).mean(), n32, rtol=1e-4)


# ---- channels_last and compile ------------------------------------------------------------

def test_channels_last_changes_layout_not_results(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_main("dcgan", TINY + ["--amp", "off", "--channels-last", "off", "--out", a]) == 0
    assert run_main("dcgan", TINY + ["--amp", "off", "--channels-last", "on", "--out", b]) == 0
    ga, gb = _nets(a)["nets"]["G"], _nets(b)["nets"]["G"]
    for k in ga:
        torch.testing.assert_close(ga[k].contiguous(), gb[k].contiguous(), rtol=1e-4, atol=1e-5)
    args = _args(dcgan, "--channels-last", "on")
    model = prepare_model(dcgan.DCGAN(args, (1, 16, 16), torch.device("cpu")), args, True)
    conv = next(p for p in model.D.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


@pytest.mark.parametrize("module,d_compiled", [(dcgan, True), (wgan_gp, False), (dragan, False)])
def test_compile_skips_a_critic_that_is_differentiated_twice(monkeypatch, module, d_compiled):
    monkeypatch.setenv("GAN_COMPILE_BACKEND", "eager")  # no C++ toolchain needed
    cls = evaluate.model_class(module.__name__)
    args = _args(module, "--compile")
    model = prepare_model(cls(args, (1, 16, 16), torch.device("cpu")), args, True)
    assert model.G._compiled_call_impl is not None
    assert (model.D._compiled_call_impl is not None) == d_compiled
    assert not any("_orig_mod" in k for k in model.G.state_dict())  # checkpoints keep their keys


def test_compiled_wgan_gp_trains(tmp_path):
    out = tmp_path / "c"
    env = dict(os.environ, GAN_COMPILE_BACKEND="eager")
    r = subprocess.run([sys.executable, str(ROOT / "wgan_gp.py"), *TINY, "--n-critic", "1", "--compile",
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "gp" in json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])


# ---- several ranks ------------------------------------------------------------------------

def _torchrun(script, nproc, *args, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(ROOT / script), *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_two_ranks_of_b_make_the_first_update_of_one_rank_of_2b(tmp_path):
    """BEGAN has no BatchNorm: K ranks of batch B must make the update one process makes with
    batch K·B (gradients averaged; the same data, z and k_t)."""
    common_args = ["--steps", "2", "--width", "4", "--image-size", "16", "--log-every", "1",
                   "--checkpoint-every", "1", "--no-progress", "--device", "cpu", "--lambda-k", "0.5",
                   "--amp", "off",  # fp32: bf16 (auto's choice on some CPUs) rounds batch 8 and 2 x 4 differently
                   "--pt-weight", "0"]  # the pull-away term is over each rank's own codes (began.py), as EBGAN's
    one, two = tmp_path / "one", tmp_path / "two"
    r = _torchrun("began.py", 1, *common_args, "--batch-size", "8", "--out", one)
    assert r.returncode == 0, r.stderr
    r = _torchrun("began.py", 2, *common_args, "--batch-size", "4", "--out", two)
    assert r.returncode == 0, r.stderr
    assert "2 ranks of batch 4 (global batch 8)" in r.stderr
    a, b = _nets(one), _nets(two)
    for net in ("G", "D"):
        for k in a["nets"][net]:
            torch.testing.assert_close(a["nets"][net][k], b["nets"][net][k], rtol=1e-4, atol=1e-6)
    assert float(a["extra"]["k"]) > 0  # k_t moved, and identically
    torch.testing.assert_close(a["extra"]["k"], b["extra"]["k"], rtol=1e-4, atol=1e-7)


def test_torchrun_wgan_gp_trains_and_resumes_on_one_rank(tmp_path):
    out = tmp_path / "run"
    r = _torchrun("wgan_gp.py", 2, *TINY, "--n-critic", "2", "--device", "cpu", "--out", out)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "config.json").read_text())["ranks"] == 2
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 4] and rows[-1]["images_per_s"] > 0
    assert run_main("wgan_gp", TINY + ["--resume", out, "--steps", "6", "--device", "cpu"]) == 0
    assert _nets(out)["step"] == 6


def test_sync_bn_without_cuda_is_one_line_exit_2(tmp_path):
    r = _torchrun("dcgan.py", 2, *TINY, "--sync-bn", "--device", "cpu", "--out", tmp_path / "s")
    assert r.returncode != 0
    assert "--sync-bn needs CUDA" in r.stderr


# ---- what "auto" picks ----------------------------------------------------------------------

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx avx2 avx512f avx512_bf16 avx512_vnni
"""


def test_cpu_flags_are_read_from_cpuinfo():
    assert {"avx2", "avx512f", "avx512_bf16"} <= scale.cpu_flags(CPUINFO)
    assert "asimd" in scale.cpu_flags("processor : 0\nFeatures : fp asimd bf16\n")  # ARM's spelling
    assert scale.cpu_flags("processor : 0\n") is None
    summary = scale.device_summary(CPU, scale.cpu_flags(CPUINFO))
    assert "avx2, avx512f, avx512_bf16" in summary and "amx" not in summary
    assert "none of" in scale.device_summary(CPU, {"sse2"})


@pytest.mark.parametrize("flags,want", [
    ({"avx2"}, "off"),                           # AVX2 only: bf16 would be emulated
    ({"avx2", "avx512f"}, "off"),                # AVX512 without its BF16 extension
    ({"avx2", "avx512f", "avx512_bf16"}, "bf16"),
    ({"avx2", "amx_bf16", "amx_tile"}, "bf16"),
    ({"avx2", "avx512_fp16"}, "off"),            # native fp16 is still never chosen
])
def test_amp_auto_on_the_cpu_is_bf16_only_where_it_is_native(flags, want):
    got, why = scale.resolve_amp(CPU, flags=flags)
    assert got == want and why


@pytest.mark.parametrize("cap,want", [((7, 0), "off"), ((7, 5), "off"), ((8, 0), "bf16"), ((8, 6), "bf16"),
                                      ((9, 0), "bf16"), ((10, 0), "bf16")])
def test_amp_auto_on_cuda_is_bf16_from_compute_capability_8(cap, want):
    got, why = scale.resolve_amp(CUDA, capability=cap)
    assert got == want and f"{cap[0]}.{cap[1]}" in why


def test_amp_auto_asks_onednn_where_the_system_lists_no_flags(monkeypatch):
    for native, want in ((True, "bf16"), (False, "off")):
        monkeypatch.setattr(scale, "cpu_has_native", lambda name: native)
        monkeypatch.setattr(scale, "cpu_flags", lambda cpuinfo=None: None)
        assert scale.resolve_amp(CPU)[0] == want
    assert scale.resolve_amp(MPS)[0] == "off"


def test_channels_last_auto():
    assert scale.resolve_channels_last(CUDA)[0] == "on"
    assert scale.resolve_channels_last(CPU)[0] == ("on" if torch.backends.mkldnn.is_available() else "off")
    assert scale.resolve_channels_last(MPS)[0] == "off"


@pytest.mark.parametrize("module,extra,group_norm", [
    (wgan_gp, [], True), (wgan_gp, ["--arch", "resnet"], True), (wgan_gp, ["--critic-norm", "none"], False),
    (dcgan, [], False), (dragan, [], False)])
def test_channels_last_auto_stays_off_on_cuda_for_a_group_norm_critic(module, extra, group_norm):
    """CUDA's GroupNorm runs in NCHW only: with a layer-normalised critic (WGAN-GP's, both
    architectures) channels_last would convert the layout at every critic layer, so auto keeps
    it off on CUDA and says why in the run's first lines; the CPU's GroupNorm keeps channels_last."""
    cls = evaluate.model_class(module.__name__)
    args = _args(module, "--amp", "off", "--compile", "off", *extra)
    assert loop.builds_group_norm(cls, args) == group_norm  # built on the meta device
    said = scale.resolve_speed(args, CUDA, 20, group_norm=loop.builds_group_norm(cls, args))
    assert args.channels_last == ("off" if group_norm else "on")
    assert said == [f"--channels-last auto: {args.channels_last} ({scale.resolve_channels_last(CUDA, group_norm)[1]})"]
    if group_norm:
        assert "GroupNorm" in said[0] and "NCHW" in said[0]
    assert scale.resolve_channels_last(CPU, group_norm) == scale.resolve_channels_last(CPU)
    model = prepare_model(cls(_args(module, *extra), (1, 16, 16), CPU), _args(module, *extra), True)
    assert scale.has_group_norm(model) == group_norm  # unresolved auto (a sampler's old config) decides the same


def test_a_cuda_run_of_wgan_gp_resolves_channels_last_from_its_critic(monkeypatch):
    """setup_device builds the model on the meta device only for CUDA and auto."""
    built = []
    monkeypatch.setattr(loop, "builds_group_norm", lambda cls, args: built.append(cls) or True)
    monkeypatch.setattr(loop, "pick_device", lambda name: CUDA)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored after
    args = _args(wgan_gp, "--amp", "off", "--compile", "off")
    assert loop.setup_device(args, 20, evaluate.model_class("wgan_gp")) == CUDA
    assert args.channels_last == "off" and "GroupNorm" in args._auto[0] and len(built) == 1
    args = _args(wgan_gp, "--amp", "off", "--compile", "off", "--channels-last", "on")  # explicit: kept
    loop.setup_device(args, 20, evaluate.model_class("wgan_gp"))
    assert args.channels_last == "on" and args._auto == [] and len(built) == 1


def test_compile_auto_only_for_long_cuda_runs():
    long = scale.COMPILE_MIN_STEPS
    assert scale.resolve_compile(CPU, 10 * long)[0] == "off"
    assert scale.resolve_compile(MPS, 10 * long)[0] == "off"
    assert scale.resolve_compile(CUDA, 20, has_triton=True)[0] == "off"  # a test run never waits for a compile
    assert scale.resolve_compile(CUDA, long - 1, has_triton=True)[0] == "off"
    assert scale.resolve_compile(CUDA, long, has_triton=True)[0] == "on"
    assert scale.resolve_compile(CUDA, long, has_triton=False)[0] == "off"


def test_resolve_speed_replaces_only_auto_and_says_why(monkeypatch):
    monkeypatch.setattr(scale, "cpu_flags", lambda cpuinfo=None: {"avx2", "avx512_bf16"})
    args = _args(dcgan)
    assert (args.amp, args.channels_last, args.compile) == ("auto", "auto", "auto")  # the defaults
    said = scale.resolve_speed(args, CPU, 20)
    assert args.amp == "bf16" and args.compile == "off" and args.channels_last in ("on", "off")
    assert [l.split(":")[0] for l in said] == ["--amp auto", "--channels-last auto", "--compile auto"]
    assert "AVX512-BF16" in said[0]
    args = _args(dcgan, "--amp", "fp16", "--channels-last", "off", "--compile")  # explicit: kept
    assert scale.resolve_speed(args, CPU, 20) == [] and (args.amp, args.channels_last, args.compile) == \
        ("fp16", "off", "on")
    assert _args(dcgan, "--compile", "off").compile == "off"


def test_auto_is_said_recorded_and_kept_on_resume(tmp_path, capsys, monkeypatch):
    """The first lines say what auto chose; config.json records the choice (not 'auto'); a
    resumed run keeps it even where auto would now choose otherwise; an explicit flag wins."""
    out = tmp_path / "r"
    monkeypatch.setattr(scale, "resolve_amp", lambda device: ("off", "a test's choice"))
    assert run_main("dcgan", TINY + ["--out", out]) == 0
    err = capsys.readouterr().err
    assert "dcgan: --amp auto: off (a test's choice)" in err and "dcgan: --compile auto: off" in err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["amp"] == "off" and cfg["compile"] == "off" and cfg["channels_last"] in ("on", "off")
    monkeypatch.setattr(scale, "resolve_amp", lambda device: ("bf16", "another machine's"))
    assert run_main("dcgan", ["--resume", out, "--steps", "6"]) == 0
    assert "--amp auto" not in capsys.readouterr().err
    assert _nets(out)["config"]["amp"] == "off" and _nets(out)["step"] == 6
    assert run_main("dcgan", ["--resume", out, "--steps", "8", "--amp", "bf16"]) == 0
    assert _nets(out)["config"]["amp"] == "bf16"


def test_a_short_compile_auto_run_does_not_compile(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append(self))
    assert run_main("dcgan", TINY + ["--out", tmp_path / "r"]) == 0
    assert compiled == [] and json.loads((tmp_path / "r" / "config.json").read_text())["compile"] == "off"
    monkeypatch.setenv("GAN_COMPILE_BACKEND", "eager")
    assert run_main("dcgan", TINY + ["--compile", "--out", tmp_path / "c"]) == 0  # the old spelling: on
    assert len(compiled) == 2


def test_an_old_config_with_a_boolean_compile_is_upgraded():
    assert upgrade_config({"compile": True}, {})["compile"] == "on"
    assert upgrade_config({"compile": False}, {})["compile"] == "off"
