"""The CUDA-only paths, shown on the CPU where the CPU can show them (design.md, "On the GPU"):
--compile through AOTAutograd's backward (not the "eager" backend, which skips it), and no
host-to-device copy inside a training step, counted with dispatch modes on the meta device,
which stands in for the GPU (a copy to it is a real copy between devices, as to a GPU, and
reading a value from it fails as a wait for the GPU would show). What only a GPU can show is
benchmarks/gpu_check.py's: the syncs counted by torch.cuda.set_sync_debug_mode, fused Adam."""
import contextlib

import pytest
import torch
import torch._functorch.config as aot_config
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import evaluate
from conftest import MODELS
from ganzoo import batches as batches_module
from ganzoo import scale
from ganzoo.batches import Batches
from ganzoo.data import Images, resolve_data_args
from ganzoo.loop import one_step
from ganzoo.scale import prepare_model

aten = torch.ops.aten
META = torch.device("meta")


def _model(module, device, *extra):
    parser = __import__(module).build_parser()
    args = parser.parse_args(["--image-size", "16", "--width", "4", "--batch-size", "4", "--amp", "off",
                              "--log-every", "1000", *extra])
    resolve_data_args(args)
    return prepare_model(evaluate.model_class(module)(args, (1, 16, 16), device), args, True), args


def _data(n=24):
    return Images(torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))


# ---- --compile through AOTAutograd (defect 1 of issue 39) -------------------------------------

@pytest.mark.parametrize("module", ["dcgan", "wgan", "wgan_gp", "ebgan", "began"])
def test_compiled_steps_run_through_aot_autograd(module, monkeypatch):
    """Two steps of each kind of update compiled with "aot_eager": AOTAutograd's forward and
    backward graphs, its donated buffers included, without inductor's code generation. BEGAN's
    one pass of D feeds both losses, and D's backward keeps its graph (retain_graph=True) for
    G's; WGAN's n_critic updates clip the compiled critic's weights in place; EBGAN's
    autoencoder critic's codes feed the pull-away term; WGAN-GP runs the compiled G through the
    eager critic's double backward (as DRAGAN does); DCGAN reuses G's output (as LSGAN does).
    For BEGAN the compiled D first runs a plain backward: torch 2.6-2.8 decide the donated
    buffers when the graph compiles, whatever the first backward asks, and then refused the
    retain_graph backward ("compiled with non-empty donated buffers"); later versions compile
    the backward at its first call, without donated buffers when that call retains the graph,
    so without the plain backward first they would not show it."""
    monkeypatch.setenv("GAN_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    torch.manual_seed(0)
    with _donated_buffers():
        _compiled_steps(module)
    torch._dynamo.reset()


def _donated_buffers():
    """AOTAutograd's donated buffers on, as by default since torch 2.6 (restored afterwards)."""
    if not hasattr(aot_config, "donated_buffer"):
        return contextlib.nullcontext()  # torch < 2.6: none
    return aot_config.patch(donated_buffer=True)


def _compiled_steps(module):
    model, args = _model(module, torch.device("cpu"), "--compile", "on",
                         *(["--n-critic", "2"] if module in ("wgan", "wgan_gp") else []))
    assert model.G._compiled_call_impl is not None
    if module == "began":
        assert model.retains_graph and not getattr(aot_config, "donated_buffer", False)  # prepare_model: off
        v = torch.randn(12, 1, 16, 16, requires_grad=True)  # the shape of D's pass over [x, G(z_D), G(z_G)]
        recon, h = model.D(v, codes=True)
        (recon.sum() + h.sum()).backward()  # compiles D's backward as torch 2.6-2.8 do
        model.D.zero_grad(set_to_none=True)
    batches = Batches(_data(), 4, 0, torch.device("cpu"))
    bad = torch.full((), -1, dtype=torch.long)
    before = [p.detach().clone() for p in model.D.parameters()]
    for step in range(2):
        scalars, bad = one_step(model, args, batches, contextlib.nullcontext(), step, bad)
    assert int(bad) == -1 and all(torch.isfinite(v) for v in scalars.values())
    assert not all(torch.equal(a, b) for a, b in zip(before, model.D.parameters()))  # D trained


def test_without_the_fix_torch_refuses_began_s_compiled_step(monkeypatch):
    """The failure the fix removes, on this torch: donated buffers on, D's backward compiled
    with them, then BEGAN's retain_graph backward."""
    if not hasattr(aot_config, "donated_buffer"):
        pytest.skip("torch < 2.6 has no donated buffers")
    monkeypatch.setenv("GAN_COMPILE_BACKEND", "aot_eager")
    monkeypatch.setattr(scale, "allow_retain_graph", lambda: None)
    torch._dynamo.reset()
    with _donated_buffers():
        model, args = _model("began", torch.device("cpu"), "--compile", "on")
        v = torch.randn(12, 1, 16, 16, requires_grad=True)
        recon, h = model.D(v, codes=True)
        (recon.sum() + h.sum()).backward()
        with pytest.raises(RuntimeError, match="donated buffer"):
            model.train_step(Batches(_data(), 4, 0, torch.device("cpu")))
    torch._dynamo.reset()


# ---- no host-to-device copy inside a step (defects 3 and 4) ------------------------------------

class Traffic(TorchDispatchMode):
    """Every copy from the host to the device (META) while active, as (what, detail), and
    whether it may run without the host waiting: only a non_blocking copy from pinned memory
    may. Pinned memory is emulated (the CPU build has none): a tensor the code pins is recorded
    as pinned. Also counted: an op that mixes host tensors into device work (indexing a GPU
    tensor with CPU indices copies them, and waits)."""

    def __init__(self):
        super().__init__()
        self.pinned, self.waits, self.async_copies, self.pinned_bytes = set(), [], [], []

    def _pin(self, t):
        self.pinned.add(t.untyped_storage().data_ptr())
        self.pinned_bytes.append(t.numel() * t.element_size())
        return t

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten.empty.memory_format and kwargs.get("pin_memory"):
            return self._pin(func(*args, **dict(kwargs, pin_memory=False)))
        if func is aten.is_pinned.default:
            return args[0].untyped_storage().data_ptr() in self.pinned
        if func is aten._pin_memory.default:
            return self._pin(args[0].clone())
        out = func(*args, **kwargs)
        flat = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        outs = [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        to_device = any(o.device == META for o in outs)
        host = [a for a in flat if a.device.type == "cpu" and (a.dim() > 0 or func is aten.index.Tensor)]
        if to_device and host:
            if func in (aten._to_copy.default, aten.copy_.default):
                pinned = host[0].untyped_storage().data_ptr() in self.pinned
                ok = pinned and kwargs.get("non_blocking", len(args) > 2 and args[2])
                (self.async_copies if ok else self.waits).append((str(func), tuple(host[0].shape), pinned))
            else:
                self.waits.append((str(func), tuple(host[0].shape), False))
        return out


class PythonValues(TorchFunctionMode):
    """torch.tensor(..., device=META) (a copy from pageable memory), and every read of a device
    tensor's value into Python (a wait), while active."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in ("tensor", "as_tensor") and str(kwargs.get("device", "cpu")).startswith("meta"):
            self.calls.append(name)
        if name in ("item", "tolist", "__int__", "__float__", "__bool__", "cpu", "numpy") and args \
                and isinstance(args[0], torch.Tensor) and args[0].device == META:
            self.calls.append(name)
        return func(*args, **kwargs)


@pytest.mark.parametrize("on_device", [False, True], ids=["data-on-host", "data-on-device"])
@pytest.mark.parametrize("module", MODELS)
def test_no_step_waits_for_a_copy_to_the_device(module, on_device, monkeypatch):
    """Every model's steps (the loop's one_step: the batches, --flip, the update, --ema, the
    divergence mark) on the meta device: no copy from the host that the host would wait for, no
    torch.tensor(..., device=...), no value read back. The batches' copies go from pinned memory,
    non_blocking: one batch (and the epoch's order, for data kept on the device), never the
    whole data set. The steps cross an epoch (6 batches of 4 an epoch)."""
    monkeypatch.setattr(scale, "pins", lambda device: device.type != "cpu")  # stage as for CUDA
    monkeypatch.setattr(batches_module, "room_on_device", lambda nbytes, device: on_device)
    autocast = torch.autocast  # which has no meta device: a no-op there (--amp off)
    monkeypatch.setattr(torch, "autocast", lambda device_type, *a, **kw: contextlib.nullcontext()
                        if device_type == "meta" else autocast(device_type, *a, **kw))
    extra = ["--n-critic", "2"] if module in ("wgan", "wgan_gp") else []
    model, args = _model(module, META, "--ema", "0.999", *extra)
    data = _data()
    with Traffic() as setup:
        batches = Batches(data, 4, 0, META, channels_last=True, flip=True)
    assert (batches.data_device == META) == on_device  # kept on the device when it fits
    assert setup.pinned_bytes == []  # the data set is never pinned (it was, whole, in every rank)
    bad = torch.full((), -1, dtype=torch.long, device=META)
    with Traffic() as traffic, PythonValues() as values:
        for step in range(4):
            scalars, bad = one_step(model, args, batches, contextlib.nullcontext(), step, bad)
    assert traffic.waits == [] and values.calls == []
    assert traffic.async_copies  # the batches did go to the device, from pinned memory
    batch_bytes = 4 * data.x[0].numel()
    assert max(traffic.pinned_bytes) <= max(batch_bytes, 8 * len(data))  # a batch or an epoch's order
    assert all(v.device == META for v in scalars.values()) and bad.device == META


def test_the_traffic_counter_sees_what_it_must(monkeypatch):
    """The counters themselves: a pageable copy, an index copied with its tensor, a tensor made
    from a Python number on the device and a value read back are each caught; a pinned
    non_blocking copy is not."""
    monkeypatch.setattr(scale, "pins", lambda device: device.type != "cpu")
    x = torch.zeros(5, 2, device=META)
    with Traffic() as traffic, PythonValues() as values:
        torch.ones(3).to(META, non_blocking=True)            # pageable: waits
        x[torch.tensor([0, 1])]                              # CPU indices into a device tensor
        torch.tensor(3, device=META)                          # from a Python number
        scale.to_device(torch.ones(3), META)                  # pinned first, then non_blocking
        torch.where(x > 0, 3, x)                              # a Python number: filled on the device
    assert [w[0] for w in traffic.waits] == ["aten._to_copy.default", "aten.index.Tensor"]
    assert values.calls == ["tensor"] and len(traffic.async_copies) == 1
    with PythonValues() as values, pytest.raises(Exception):
        float(x.sum())
    assert values.calls == ["__float__"]


def test_to_device_is_a_no_op_on_the_cpu_and_batches_are_unchanged():
    """On the CPU the staging does nothing: the same tensor back, and a batch (with --flip) is
    what the host gathered, mirrored by the batch's seeded coins, exactly as before the flip
    moved after the copy."""
    t = torch.arange(6)
    assert scale.to_device(t, torch.device("cpu")) is t
    data = _data()
    x = Batches(data, 4, 3, torch.device("cpu"), flip=True)()
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(3 * 1_000_003))
    want = data.x[order[:4]].float() / 127.5 - 1
    coins = torch.rand(4, generator=torch.Generator().manual_seed(hash((3, 0, 0, 0)) & (2 ** 62 - 1))) < 0.5
    assert torch.equal(x, torch.where(coins.view(-1, 1, 1, 1), want.flip(-1), want))
