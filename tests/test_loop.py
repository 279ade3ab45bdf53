"""ganzoo.loop: the run directory, same seed same weights, bitwise resume, settings kept on
resume, the metrics rows, divergence and Ctrl-C, driven through dcgan.py (the loop is the
same for all seven scripts)."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image

import common
import dcgan
import pytest

from ganzoo.data import resolve_data_args
from ganzoo.loop import Meter, one_step
from conftest import ROOT, TINY, one_error_line, run_main, run_script


def weights(run_dir):
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    return ck, {f"{n}.{k}": v for n, sd in ck["nets"].items() for k, v in sd.items()}


def test_smoke_subprocess_writes_the_run_directory(tmp_path):
    out = tmp_path / "run"
    r = run_script("dcgan.py", *TINY, "--out", out)
    assert r.returncode == 0, r.stderr
    for f in ("config.json", "metrics.jsonl", "checkpoint.pt", "timeline.gif", "samples/step_000002.png",
              "samples/step_000004.png"):
        assert (out / f).exists(), f
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    for key in ("loss_d", "loss_g", "d_real", "d_fake", "lr_g", "lr_d", "images_per_s"):
        assert key in rows[0] and np.isfinite(rows[0][key])
    assert rows[0]["lr_g"] == 2e-4
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "dcgan" and cfg["image_size"] == [16, 16] and cfg["shape"] == [1, 16, 16]
    grid = Image.open(out / "samples" / "step_000004.png")
    assert grid.size == (8 * 18 + 2, 8 * 18 + 2)  # 64 samples, 16x16, 2px padding
    assert list(out.glob("events.out.tfevents.*"))  # tensorboard is installed in CI


def test_same_seed_same_weights(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert run_main("dcgan", TINY + ["--out", tmp_path / name, "--seed", seed]) == 0
    wa, wb, wc = (weights(tmp_path / n)[1] for n in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_resume_is_bitwise_equal(tmp_path):
    """--steps 2N in one go, and N steps then --resume to 2N, give the same weights,
    optimizer state and next batch position."""
    common_args = ["--batch-size", "8", "--width", "4", "--image-size", "16", "--log-every", "3",
                   "--sample-every", "3", "--checkpoint-every", "3", "--no-progress"]
    assert run_main("dcgan", common_args + ["--steps", "6", "--out", tmp_path / "full"]) == 0
    assert run_main("dcgan", common_args + ["--steps", "3", "--out", tmp_path / "half"]) == 0
    assert run_main("dcgan", ["--resume", tmp_path / "half", "--steps", "6", "--no-progress"]) == 0
    (cf, wf), (ch, wh) = weights(tmp_path / "full"), weights(tmp_path / "half")
    assert ch["step"] == cf["step"] == 6
    assert all(torch.equal(wf[k], wh[k]) for k in wf)
    assert cf["data"] == ch["data"]
    assert torch.equal(cf["optimizers"]["G"]["state"][0]["exp_avg"], ch["optimizers"]["G"]["state"][0]["exp_avg"])
    rows = [json.loads(l)["step"] for l in (tmp_path / "half" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [3, 6]


def test_lr_decay_linear_falls_to_zero_at_steps_and_resumes_bitwise(tmp_path, monkeypatch):
    """--lr-decay linear: step s (0-based) runs at base·(1 − s/steps), the WGAN-GP authors'
    decay; the metrics row after step s reads the rate that step ran at. A run stopped by
    Ctrl-C and resumed to the same --steps continues the same schedule, bitwise."""
    import ganzoo.loop
    real_step = ganzoo.loop.one_step

    def ctrl_c_after_step_2(model, args, batches, amp, step, bad):
        out = real_step(model, args, batches, amp, step, bad)
        if step == 1 and "half" in str(args.out):
            signal.raise_signal(signal.SIGINT)  # the loop saves after this step and exits 130
        return out
    monkeypatch.setattr(ganzoo.loop, "one_step", ctrl_c_after_step_2)
    base = ["--batch-size", "8", "--width", "4", "--image-size", "16", "--log-every", "1", "--g-lr", "4e-4",
            "--d-lr", "2e-4", "--sample-every", "2", "--checkpoint-every", "2", "--no-progress", "--lr-decay", "linear"]
    assert run_main("dcgan", base + ["--steps", "4", "--out", tmp_path / "full"]) == 0
    rows = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr_g"] for r in rows] == pytest.approx([4e-4, 3e-4, 2e-4, 1e-4])
    assert [r["lr_d"] for r in rows] == pytest.approx([2e-4, 1.5e-4, 1e-4, 0.5e-4])
    assert run_main("dcgan", base + ["--steps", "4", "--out", tmp_path / "half"]) == 130
    assert torch.load(tmp_path / "half" / "checkpoint.pt", weights_only=True)["step"] == 2
    assert run_main("dcgan", ["--resume", tmp_path / "half", "--steps", "4", "--no-progress"]) == 0
    (_, wf), (ch, wh) = weights(tmp_path / "full"), weights(tmp_path / "half")
    assert ch["step"] == 4 and ch["config"]["lr_decay"] == "linear" and all(torch.equal(wf[k], wh[k]) for k in wf)
    assert run_main("dcgan", base[:-2] + ["--steps", "4", "--out", tmp_path / "const"]) == 0
    rows = [json.loads(l) for l in (tmp_path / "const" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr_g"] for r in rows] == [4e-4] * 4  # none: the papers' constant rate
    assert not all(torch.equal(wf[k], v) for k, v in weights(tmp_path / "const")[1].items())


def test_resume_keeps_settings_and_rejects_changes(tmp_path, capsys):
    assert run_main("dcgan", TINY + ["--out", tmp_path / "r"]) == 0
    capsys.readouterr()
    assert run_main("dcgan", ["--resume", tmp_path / "r", "--steps", "6", "--image-size", "32"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--image-size" in line and "resumed run keeps its settings" in line
    assert weights(tmp_path / "r")[0]["step"] == 4  # the good checkpoint is untouched


def test_resume_auto_starts_a_run_continues_it_bitwise_and_keeps_every_check(tmp_path, capsys):
    """--resume auto with the original command: an empty --out starts the run, a run is continued
    (the weights equal an uninterrupted run's), a changed setting or another model is refused as
    --resume RUN refuses it; without --out it is one line and exit 2."""
    flags = ["--batch-size", "8", "--width", "4", "--image-size", "16", "--log-every", "3", "--sample-every", "3",
             "--checkpoint-every", "3", "--no-progress", "--amp", "auto"]
    assert run_main("dcgan", flags + ["--steps", "6", "--out", tmp_path / "full"]) == 0
    run = tmp_path / "run"
    run.mkdir()
    assert run_main("dcgan", flags + ["--steps", "3", "--out", run, "--resume", "auto"]) == 0  # empty: starts
    assert weights(run)[0]["step"] == 3
    assert run_main("dcgan", flags + ["--steps", "6", "--out", run, "--resume", "auto"]) == 0  # continues
    (cf, wf), (cr, wr) = weights(tmp_path / "full"), weights(run)
    assert cr["step"] == 6 and all(torch.equal(wf[k], wr[k]) for k in wf)
    assert [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [3, 6]
    capsys.readouterr()
    assert run_main("dcgan", flags + ["--steps", "9", "--out", run, "--resume", "auto", "--seed", "3"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--seed 0" in line and "a resumed run keeps its settings" in line
    assert run_main("wgan", flags + ["--steps", "9", "--out", run, "--resume", "auto"]) == 2
    assert "is a dcgan checkpoint; use dcgan.py" in one_error_line(capsys.readouterr().err)
    assert run_main("dcgan", TINY + ["--resume", "auto"]) == 2
    assert one_error_line(capsys.readouterr().err).endswith("--resume auto: continues the run in --out, or starts "
                                                            "it there; give --out")
    assert weights(run)[0]["step"] == 6  # nothing refused was written


def test_resume_auto_starts_again_a_run_killed_before_its_first_checkpoint(tmp_path, capsys):
    """A run killed before its first checkpoint left config.json, metrics and grids: a new run
    refuses that folder, --resume auto (a restarted job) starts the run again there, unless
    its config.json is another model's."""
    run = tmp_path / "run"
    assert run_main("dcgan", TINY + ["--out", run]) == 0
    (run / "checkpoint.pt").unlink()
    capsys.readouterr()
    assert run_main("dcgan", TINY + ["--out", run]) == 2
    assert "already holds a run" in one_error_line(capsys.readouterr().err)
    assert run_main("dcgan", TINY + ["--out", run, "--resume", "auto"]) == 0
    assert weights(run)[0]["step"] == 4
    assert [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [2, 4]
    (run / "checkpoint.pt").unlink()
    capsys.readouterr()
    assert run_main("began", TINY + ["--out", run, "--resume", "auto"]) == 2
    assert "holds a dcgan run (config.json); give another --out" in one_error_line(capsys.readouterr().err)


class NaNAt5(dcgan.DCGAN):
    """DCGAN whose loss turns NaN at its 5th step."""
    name = "dcgan"

    def train_step(self, real):
        out = super().train_step(real)
        self.count = getattr(self, "count", 0) + 1
        if self.count == 5:
            with torch.no_grad():
                next(self.G.parameters()).fill_(float("nan"))
            out["loss_g"] = torch.tensor(float("nan"))
        return out


def test_divergence_stops_and_keeps_the_good_checkpoint(tmp_path, capsys):
    argv = ["--steps", "8", "--batch-size", "8", "--width", "4", "--image-size", "16", "--log-every", "2",
            "--checkpoint-every", "4", "--sample-every", "4", "--no-progress", "--out", tmp_path / "r"]
    code = common.main(NaNAt5, dcgan.build_parser(), [str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 1
    assert "at step 5" in err and "step 4" in err and "Traceback" not in err
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 4 and all(torch.isfinite(v).all() for v in ck["nets"]["G"].values())


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_save_draw_a_grid_and_exit_128_plus_the_signal(tmp_path, sig, code):
    """Stopped before its first --sample-every: the checkpoint of the step reached, a grid of
    that step (and the timeline), one line that says so, and exit 130 (SIGINT) or 143 (SIGTERM)."""
    out = tmp_path / "r"
    p = subprocess.Popen([sys.executable, str(ROOT / "dcgan.py"), "--steps", "100000", "--batch-size", "8",
                          "--width", "4", "--image-size", "16", "--log-every", "1", "--no-progress",
                          "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "metrics.jsonl").exists()
                                          and (out / "metrics.jsonl").read_text().count("\n") >= 3):
        time.sleep(0.2)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    assert "Traceback" not in err
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 3 <= ck["step"] < 250  # before the first grid of --sample-every 250
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"dcgan: interrupted by {sig.name} at step {ck['step']} of 100000; saved ")
    assert f"samples in {out / 'samples'}" in last and "--resume auto" in last
    assert [f.name for f in (out / "samples").iterdir()] == [f"step_{ck['step']:06d}.png"]
    assert (out / "timeline.gif").exists() and not list(out.glob("*.tmp"))
    assert run_main("dcgan", ["--resume", out, "--steps", str(ck["step"] + 2), "--no-progress"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == ck["step"] + 2


def test_a_metrics_row_is_the_mean_since_the_last_row():
    class Stub:  # what Meter reads of Batches and of a model
        images, skipped = 0, 0

    class Model:
        def optimizers(self):
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.25)
            return {"G": opt, "D": opt}

    b = Stub()
    meter = Meter(b)
    for v in (1.0, 2.0, 6.0):
        meter.add({"loss": torch.tensor(v)})
        b.images += 8
    row = meter.row(3, Model())
    assert row["step"] == 3 and row["loss"] == 3.0 and row["lr_g"] == row["lr_d"] == 0.25
    assert row["images_per_s"] > 0 and row["steps_per_s"] > 0 and "skipped_images" not in row
    meter.add({"loss": torch.tensor(10.0)})
    assert meter.row(4, Model())["loss"] == 10.0  # the next row starts anew


def test_one_step_marks_the_first_non_finite_step_without_waiting():
    args = dcgan.build_parser().parse_args(["--width", "4", "--image-size", "16"])
    resolve_data_args(args)
    model = NaNAt5(args, (1, 16, 16), torch.device("cpu"))
    real = lambda: torch.rand(8, 1, 16, 16) * 2 - 1  # noqa: E731
    bad = torch.tensor(-1)
    for step in range(6):
        scalars, bad = one_step(model, args, real, torch.autocast("cpu", enabled=False), step, bad)
        assert set(scalars) == {"loss_d", "loss_g", "d_real", "d_fake"} and scalars["loss_d"].dim() == 0
    assert int(bad) == 5  # generator update number 5 produced the NaN; later ones do not move it


@pytest.mark.parametrize("optimizer,state_key", [("adam", "exp_avg"), ("rmsprop", "square_avg"), ("sgd", None)])
def test_each_optimizer_trains_and_resumes_bitwise(tmp_path, optimizer, state_key):
    flags = ["--batch-size", "8", "--width", "4", "--image-size", "16", "--log-every", "3", "--sample-every", "3",
             "--checkpoint-every", "3", "--no-progress", "--optimizer", optimizer, "--g-lr", "0.01"]
    assert run_main("dcgan", flags + ["--steps", "6", "--out", tmp_path / "full"]) == 0
    assert run_main("dcgan", flags + ["--steps", "3", "--out", tmp_path / "half"]) == 0
    assert run_main("dcgan", ["--resume", tmp_path / "half", "--steps", "6", "--no-progress"]) == 0
    (cf, wf), (ch, wh) = weights(tmp_path / "full"), weights(tmp_path / "half")
    assert cf["config"]["optimizer"] == ch["config"]["optimizer"] == optimizer
    assert all(torch.equal(wf[k], wh[k]) for k in wf)
    state = cf["optimizers"]["G"]["state"]
    assert (state_key in state[0]) if state_key else all(v.get("momentum_buffer") is None for v in state.values())
    assert cf["optimizers"]["G"]["param_groups"][0]["lr"] == 0.01


def test_an_unknown_optimizer_is_one_line_and_a_resume_keeps_its_own(tmp_path, capsys):
    assert run_main("dcgan", TINY + ["--optimizer", "lion"]) == 2
    assert "unknown optimizer 'lion' (adam, rmsprop or sgd)" in one_error_line(capsys.readouterr().err)
    assert run_main("wgan", TINY + ["--n-critic", "1", "--out", tmp_path / "w"]) == 0
    capsys.readouterr()
    assert run_main("wgan", ["--resume", tmp_path / "w", "--steps", "6", "--optimizer", "adam"]) == 2
    assert "--optimizer 'rmsprop'" in one_error_line(capsys.readouterr().err)  # WGAN's paper default, kept


def test_the_meter_leaves_an_evaluation_out_of_its_speeds(monkeypatch):
    import types

    import torch

    from ganzoo import loop
    now = [0.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: now[0])
    batches = types.SimpleNamespace(images=0, skipped=0)
    m = loop.Meter(batches)
    model = types.SimpleNamespace(optimizers=lambda: {})
    for _ in range(10):
        now[0] += 0.5
        batches.images += 64
        m.add({"loss": torch.tensor(1.0)})
    with m.paused():
        now[0] += 240.0
    row = m.row(10, model)
    assert (row["steps_per_s"], row["images_per_s"]) == (2.0, 128.0)
