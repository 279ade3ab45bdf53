"""Hostile input and faults: every case one clear line and its exit status, and every run
directory whole (the cases of the 'nothing lost, nothing cryptic' issue, numbered as there).
Timing-dependent faults (two writers, an interrupt during a save) are injected, not raced."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import ganzoo.checkpoint as ckpt_mod
from ganzoo.checks import LOCK
from conftest import TINY, one_error_line, run_main

RUN = ["--steps", "4", "--batch-size", "4", "--width", "4", "--image-size", "16", "--log-every", "2",
       "--sample-every", "2", "--checkpoint-every", "2", "--no-progress"]


def _exit(capsys, model, argv, code, expect, started=False):
    """The run ends with `code` and one line naming the problem: the only line on stderr for
    bad input, the line after the run's own start lines when it fails mid-run (started)."""
    capsys.readouterr()  # what earlier runs of the test printed
    got = run_main(model, argv)
    err = capsys.readouterr().err
    assert got == code, err
    if started:
        assert "Traceback" not in err, err
        line = err.strip().splitlines()[-1]
        assert all(l.startswith(("dcgan: ", "data: ")) for l in err.strip().splitlines()[:-1]), err
    else:
        line = one_error_line(err)
    assert expect in line, line
    return line


def folder(root, n=8, readable=True):
    root.mkdir(parents=True)
    for i in range(n):
        if readable:
            Image.fromarray(np.full((20, 20, 3), (20 * i) % 256, np.uint8)).save(root / f"{i}.png")
        else:
            (root / f"{i}.png").write_bytes(b"not a png")
    return root


# 1. two runs into one --out: the run directory is locked; a stale lock is taken over
def test_a_live_lock_refuses_a_second_writer_and_a_stale_one_is_taken_over(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(f"{holder.pid}\n")
        _exit(capsys, "dcgan", RUN + ["--out", out], 2, f"process {holder.pid} is writing this run")
        assert not (out / "metrics.jsonl").exists()  # nothing written
    finally:
        holder.kill()
        holder.wait()
    (out / LOCK).write_text(f"{holder.pid}\n")  # its process is gone: stale (kill -9)
    assert run_main("dcgan", RUN + ["--out", out]) == 0
    assert not (out / LOCK).exists()  # released at the end
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4


def test_temporary_checkpoints_are_per_process(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(ckpt_mod.os, "replace", lambda a, b: (seen.append(str(a)), real_replace(a, b)))
    assert run_main("dcgan", RUN + ["--out", tmp_path / "r"]) == 0
    assert seen and all(s.endswith(f"checkpoint.pt.{os.getpid()}.tmp") for s in seen)


# 2. a fresh run into an existing run directory
def test_a_fresh_run_does_not_replace_an_existing_run(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_main("dcgan", RUN + ["--out", out]) == 0
    before = ((out / "metrics.jsonl").read_text(), (out / "checkpoint.pt").read_bytes())
    _exit(capsys, "dcgan", RUN + ["--out", out, "--seed", "5"], 2, f"--resume {out}")
    assert ((out / "metrics.jsonl").read_text(), (out / "checkpoint.pt").read_bytes()) == before


def _failing_save(exc, after_calls=1):
    """torch.save that works `after_calls` times, then writes half a file and raises exc."""
    real, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) <= after_calls:
            return real(obj, f, *a, **k)
        f.write(b"PK\x03\x04 half a zip")
        raise exc
    return save


# 3. disk full during a checkpoint
def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    monkeypatch.setattr(ckpt_mod.torch, "save", _failing_save(OSError(28, "No space left on device")))
    _exit(capsys, "dcgan", RUN + ["--out", out], 1, "the disk is full", started=True)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2  # step 2's, whole
    assert not list(out.glob("*.tmp"))
    monkeypatch.undo()
    monkeypatch.setattr(ckpt_mod.torch, "save", _failing_save(RuntimeError("[enforce fail] unexpected pos 64")))
    _exit(capsys, "dcgan", ["--resume", out, "--steps", "6", "--no-progress"], 1, "the disk is full", started=True)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4 and not list(out.glob("*.tmp"))


# 4. Ctrl-C again while the interrupt's checkpoint is written
def test_a_second_interrupt_during_a_save_is_one_line_and_130(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    monkeypatch.setattr(ckpt_mod.torch, "save", _failing_save(KeyboardInterrupt()))
    _exit(capsys, "dcgan", RUN + ["--out", out], 130, "interrupted again while writing", started=True)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2 and not list(out.glob("*.tmp"))


# 5. resume is exact for a streamed folder
def test_resume_of_a_streamed_folder_is_bitwise_exact(tmp_path):
    imgs = folder(tmp_path / "imgs", n=20)  # 5 batches an epoch: the resume at step 3 is mid-epoch
    base = ["--path", imgs, "--data-memory-gb", "0", "--workers", "1", "--batch-size", "4", "--width", "4",
            "--image-size", "16", "--log-every", "1", "--sample-every", "3", "--checkpoint-every", "3", "--no-progress"]
    assert run_main("dcgan", base + ["--steps", "6", "--out", tmp_path / "full"]) == 0
    assert run_main("dcgan", base + ["--steps", "3", "--out", tmp_path / "half"]) == 0
    assert run_main("dcgan", ["--resume", tmp_path / "half", "--steps", "6", "--no-progress"]) == 0
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("full", "half"))
    for net in ("G", "D"):
        assert all(torch.equal(v, b["nets"][net][k]) for k, v in a["nets"][net].items()), net


# 6. a streamed folder with no readable image
def test_a_streamed_folder_of_unreadable_files(tmp_path, capsys):
    bad = folder(tmp_path / "bad", readable=False)
    _exit(capsys, "dcgan", RUN + ["--path", bad, "--data-memory-gb", "0", "--workers", "0", "--out", tmp_path / "r"],
          2, "none of its 8 image files could be read", started=True)


# 7. values validated up front, before data or files
@pytest.mark.parametrize("model,argv,expect", [
    ("dcgan", ["--g-lr", "nan"], "not a finite number"),
    ("dcgan", ["--g-lr", "-1"], "must be > 0"),
    ("dcgan", ["--beta1", "2"], "betas are in [0, 1)"),
    ("dcgan", ["--seed", "123456789012345678901234"], "2^63 - 1"),
    ("dcgan", ["--workers", "-1"], "--workers -1"),
    ("ebgan", ["--batch-size", "1"], "at least 2 images"),
    ("dcgan", ["--image-size", "4096", "--width", "64"], "GiB to train"),   # the networks
    ("dcgan", ["--image-size", "4096"], "GiB decoded"),                     # the data
])
def test_bad_values_fail_before_anything_is_written(tmp_path, capsys, model, argv, expect):
    out = tmp_path / "r"
    _exit(capsys, model, RUN + argv + ["--out", out], 2, expect)
    assert not out.exists()


# 8. output paths
def test_output_paths_are_checked(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    _exit(capsys, "dcgan", RUN + ["--out", tmp_path / "file"], 2, "is a file, not a folder")
    assert run_main("dcgan", RUN + ["--out", tmp_path / "r"]) == 0
    capsys.readouterr()
    for out, expect in ((tmp_path / "missing" / "dir" / "g.png", "no such folder"),
                        (tmp_path, "is a folder"), (tmp_path / "g.txt", "ending in .png")):
        _exit(capsys, "dcgan", ["--sample", tmp_path / "r", "--out", out], 2, expect)
    _exit(capsys, "dcgan", ["--sample", tmp_path / "r", "--interpolate", "--out", tmp_path / "w.png"], 2, ".gif")


def test_an_unwritable_out(tmp_path, capsys):
    if os.geteuid() == 0:  # root may write in any folder, but not create folders in /proc
        _exit(capsys, "dcgan", RUN + ["--out", "/proc/ganzoo-test/r"], 2, "cannot create it")
        return
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    _exit(capsys, "dcgan", RUN + ["--out", ro / "r"], 2, "not writable")


# 9. divergence: the advice names only what the program accepts; buffers are checked too
def test_divergence_advice_and_buffers(tmp_path, capsys):
    from ganzoo.scale import finite
    line = _exit(capsys, "dcgan", RUN + ["--g-lr", "1e30", "--d-lr", "1e30", "--out", tmp_path / "r"], 1,
                 "NaN or infinite", started=True)
    assert "new run" in line and "resume from it with another --seed" not in line
    import dcgan
    from ganzoo.data import resolve_data_args
    args = dcgan.build_parser().parse_args(["--width", "4", "--image-size", "16"])
    resolve_data_args(args)
    m = dcgan.DCGAN(args, (1, 16, 16), torch.device("cpu"))
    assert finite(m)
    next(b for b in m.D.buffers() if b.is_floating_point()).fill_(float("inf"))  # a BatchNorm running mean
    assert not finite(m)


# 10. resume keeps its data; a checkpoint without config; a code-carrying pickle; a damaged file
def test_resume_refuses_other_data(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_main("dcgan", RUN + ["--out", out]) == 0
    imgs = folder(tmp_path / "imgs")
    _exit(capsys, "dcgan", ["--resume", out, "--steps", "6", "--path", imgs], 2, "a resumed run keeps its data")


def test_damaged_checkpoints_are_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "r"
    assert run_main("dcgan", RUN + ["--out", out]) == 0
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    k = next(iter(ck["nets"]["G"]))
    ck["nets"]["G"][k] = ck["nets"]["G"][k] + 1  # a changed tensor under the old checksum
    torch.save(ck, tmp_path / "mixed.pt")
    _exit(capsys, "dcgan", ["--sample", tmp_path / "mixed.pt", "--out", tmp_path / "g.png"], 2, "checksum")
    del ck["config"]
    torch.save(ck, tmp_path / "noconfig.pt")
    _exit(capsys, "dcgan", ["--sample", tmp_path / "noconfig.pt", "--out", tmp_path / "g.png"], 2, "no 'config'")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"model": "dcgan", "nets": Evil()}, tmp_path / "evil.pt")
    _exit(capsys, "dcgan", ["--sample", tmp_path / "evil.pt", "--out", tmp_path / "g.png"], 2,
          "not a readable checkpoint")  # one line: torch's warning does not leak


# 10. the memory check counts what a step holds, on this rank's GPU (issue 39, defect 9)
def _meta_model(name, *argv):
    import importlib
    import evaluate
    from ganzoo.data import resolve_data_args
    args = importlib.import_module(name).build_parser().parse_args(
        ["--image-size", "32", "--batch-size", "16", "--width", "8", *argv])
    resolve_data_args(args)
    meta = torch.device("meta")
    with meta:
        return evaluate.model_class(name)(args, (3, 32, 32), meta), args


def _d_bytes(model, n):
    """What D alone keeps for backward on n images."""
    from ganzoo.checks import _saved_bytes
    return _saved_bytes(model, lambda: model.D(torch.empty(n, 3, 32, 32, device="meta")))


def test_the_memory_check_counts_began_d_on_3b_images():
    """BEGAN's step runs D once on real, D's fakes and G's fakes together (3B images, one graph
    for both losses); the old count ran one batch of B through D."""
    from ganzoo.checks import forward_bytes, step_bytes
    model, _ = _meta_model("began")
    step = step_bytes(model, 16)
    assert step >= _d_bytes(model, 48) > 2.9 * _d_bytes(model, 16)
    assert 2 * step > forward_bytes(model, 16) * 1.5  # what the old estimate (12 bytes an element of B) missed


@pytest.mark.parametrize("name", ["wgan_gp", "dragan"])
def test_the_memory_check_counts_the_double_backward_graph(name):
    """A gradient penalty keeps the graph of D's input gradient (create_graph=True) for its own
    backward: the step holds more than D's first-order graphs on all its critic's inputs."""
    from ganzoo.checks import step_bytes
    model, _ = _meta_model(name, *(["--n-critic", "1"] if name == "wgan_gp" else []))
    assert step_bytes(model, 16) > 1.25 * _d_bytes(model, 48)


def test_the_memory_check_draws_no_random_number_and_runs_every_model():
    from ganzoo.checks import step_bytes
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    for name in ("dcgan", "lsgan", "wgan", "wgan_gp", "dragan", "ebgan", "began"):
        assert step_bytes(_meta_model(name)[0], 16) > 0, name  # the step itself, not the fallback
    assert torch.equal(torch.rand(3), want)


def test_the_memory_check_reads_this_ranks_gpu(monkeypatch):
    """LOCAL_RANK 1 of a node of 2 GPUs has GPU 1's memory; a rank shown one GPU, that one."""
    from types import SimpleNamespace
    from ganzoo import checks
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=(i + 1) * 2**30))
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert checks.machine_memory("cuda") == 2 * 2**30
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert checks.machine_memory("auto") == 2**30


def test_the_memory_check_counts_the_data_set_kept_on_the_gpu(monkeypatch):
    from ganzoo import checks
    from ganzoo.data import Images, Stacked
    from ganzoo.errors import UserError
    import dcgan
    model, args = _meta_model("dcgan")
    args.device = "cuda"
    params, acts = checks.train_bytes(dcgan.DCGAN, args, (3, 32, 32))
    have = int((16 * params + acts) / 0.8) + 4096  # the networks and a step just fit
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(checks, "machine_memory", lambda device: have)
    checks.check_memory(dcgan.DCGAN, args, (3, 32, 32))
    kept = Images(torch.empty(int(0.2 * have), dtype=torch.uint8, device="meta").view(-1, 1, 1, 1))
    with pytest.raises(UserError, match="data set kept on the GPU"):
        checks.check_memory(dcgan.DCGAN, args, (3, 32, 32), kept)
    big = Images(torch.empty(int(0.3 * have), dtype=torch.uint8, device="meta").view(-1, 1, 1, 1))
    checks.check_memory(dcgan.DCGAN, args, (3, 32, 32), big)  # over a quarter: Batches leaves it in host memory
    digits = torch.zeros(10, 1, 8, 8, dtype=torch.uint8)
    checks.check_memory(dcgan.DCGAN, args, (3, 32, 32), Stacked(digits, torch.arange(10)))  # composed per batch
