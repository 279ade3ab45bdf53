"""ganzoo.checkpoint: checkpoints load with weights_only (a doctored one never runs code), torn
and foreign ones are refused in one line, and checkpoints written before the ganzoo layout
(tests/data/old_checkpoints, by the code of commit 3f14ff0) still load, sample and resume."""
import shutil
from pathlib import Path

import pytest
import torch

from ganzoo.checkpoint import renames, upgrade_config
from conftest import MODELS, TINY, one_error_line, run_main


def test_checkpoint_loads_with_weights_only(tmp_path):
    assert run_main("dcgan", TINY + ["--out", tmp_path / "r"]) == 0
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ck["model"] == "dcgan" and ck["step"] == 4 and ck["config"]["z_dim"] == 100
    assert not list((tmp_path / "r").glob("*.tmp"))  # the atomic write left no temporary file


class Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_doctored_checkpoint_never_runs_code(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": "dcgan", "nets": Evil()}, tmp_path / "evil.pt")
    assert run_main("dcgan", ["--sample", tmp_path / "evil.pt"]) == 2
    assert "not a readable checkpoint" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "PWNED").exists()


def test_corrupt_and_foreign_checkpoints(tmp_path, capsys):
    assert run_main("dcgan", TINY + ["--out", tmp_path / "r"]) == 0
    capsys.readouterr()
    good = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    (tmp_path / "torn.pt").write_bytes(good[: len(good) // 2])
    assert run_main("dcgan", ["--resume", tmp_path / "torn.pt", "--steps", "8"]) == 2
    assert "not a readable checkpoint" in one_error_line(capsys.readouterr().err)
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    ck["model"] = "wgan"
    torch.save(ck, tmp_path / "wgan.pt")
    assert run_main("dcgan", ["--sample", tmp_path / "wgan.pt"]) == 2
    assert "is a wgan checkpoint" in one_error_line(capsys.readouterr().err)
    assert run_main("dcgan", ["--resume", tmp_path / "nowhere"]) == 2
    assert "no checkpoint there" in one_error_line(capsys.readouterr().err)


def test_checkpoint_of_another_image_size(tmp_path, capsys):
    assert run_main("dcgan", TINY + ["--out", tmp_path / "r"]) == 0
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    ck["config"]["image_size"] = [32, 32]  # networks for 16x16, config says 32x32
    torch.save(ck, tmp_path / "other.pt")
    capsys.readouterr()
    assert run_main("dcgan", ["--resume", tmp_path / "other.pt", "--steps", "8"]) == 2
    assert "shape" in one_error_line(capsys.readouterr().err)


# ---- checkpoints written before the ganzoo layout ----------------------------------------------
# tests/data/old_checkpoints/<model>/checkpoint.pt: step 2 of a run of the code of commit 3f14ff0
# (common.py holding everything), with OLD_ARGS and the extra flags below; DRAGAN's weight was then
# spelt --lambda-gp (config key lambda_gp), today --gp-lambda.
OLD = Path(__file__).resolve().parent / "data" / "old_checkpoints"
OLD_ARGS = ["--batch-size", "8", "--width", "4", "--z-dim", "8", "--image-size", "16", "--log-every", "1",
            "--sample-every", "2", "--checkpoint-every", "2", "--no-progress", "--seed", "3"]
OLD_EXTRA = {"wgan": ["--n-critic", "2"], "wgan_gp": ["--n-critic", "2"],
             "dragan": ["--gp-lambda", "5", "--g-lr", "1e-4", "--d-lr", "1e-4"],
             "began": ["--gamma", "1", "--g-lr", "3e-4", "--d-lr", "3e-4", "--pt-weight", "0"]}  # its digits values of then


def _old_run(tmp_path, model):
    run = tmp_path / "old"
    run.mkdir()
    shutil.copy(OLD / model / "checkpoint.pt", run / "checkpoint.pt")
    return run


@pytest.mark.parametrize("model", MODELS)
def test_an_old_checkpoint_resumes_as_todays_code_runs(tmp_path, model, request):
    """Resumed from step 2 to 4, an old checkpoint ends where today's code ends after 4 steps
    from scratch with the same settings: the layout changed no arithmetic, and the old file
    restores every state (weights, optimizers, k_t, data position, RNG). One thread, as the
    old runs had: on the CPU that wrote the files (AMD EPYC, AVX512-BF16) this is bit for bit;
    another CPU or thread count sums in another order (measured: <= 1.2e-7 apart), far below
    what any change of the update moves in two steps (learning rates >= 5e-5 a step)."""
    run = _old_run(tmp_path, model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    # The old runs were fp32 in the contiguous layout: their config says --amp off, and their
    # --channels-last auto (then: on with CUDA only) is resolved again on resume, today on the CPU too.
    assert run_main(model, ["--resume", run, "--steps", "4", "--no-progress", "--channels-last", "off"]) == 0
    assert run_main(model, OLD_ARGS + OLD_EXTRA.get(model, []) + ["--steps", "4", "--out", tmp_path / "new",
                                                                  "--amp", "off", "--channels-last", "off"]) == 0
    old, new = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (run, tmp_path / "new"))
    assert old["step"] == new["step"] == 4
    for net, sd in new["nets"].items():
        for k, v in sd.items():
            torch.testing.assert_close(old["nets"][net][k], v, rtol=0, atol=2e-6, msg=f"{net}.{k}")
    assert old["data"] == new["data"] and torch.equal(old["rng"]["torch"], new["rng"]["torch"])
    paper = "rmsprop" if model == "wgan" else "adam"  # flags added since: their defaults, the old behaviour
    assert "optimizer" not in torch.load(OLD / model / "checkpoint.pt", weights_only=True)["config"]
    assert old["config"]["optimizer"] == new["config"]["optimizer"] == paper


def test_an_old_dragan_checkpoint_keeps_its_penalty_weight_under_the_new_name(tmp_path, capsys):
    run = _old_run(tmp_path, "dragan")
    assert "lambda_gp" in torch.load(run / "checkpoint.pt", weights_only=True)["config"]
    assert run_main("dragan", ["--resume", run, "--steps", "4", "--gp-lambda", "6"]) == 2  # a changed setting
    assert "--gp-lambda 5.0" in one_error_line(capsys.readouterr().err)
    assert run_main("dragan", ["--resume", run, "--steps", "3", "--lambda-gp", "5", "--no-progress"]) == 0
    cfg = torch.load(run / "checkpoint.pt", weights_only=True)["config"]
    assert cfg["gp_lambda"] == 5.0 and "lambda_gp" not in cfg


@pytest.mark.parametrize("model", ["dragan", "began"])
def test_an_old_checkpoint_samples(tmp_path, model):
    run = _old_run(tmp_path, model)
    assert run_main(model, ["--sample", run, "--n", "4", "--out", tmp_path / "g.png"]) == 0
    assert (tmp_path / "g.png").stat().st_size > 0


def test_upgrade_config_renames_and_fills_in_what_is_new():
    import dragan
    hypers = dragan.HYPERPARAMETERS
    cfg = upgrade_config({"lambda_gp": 5.0, "seed": 1, "batch_size": 8}, hypers)
    assert cfg["gp_lambda"] == 5.0 and "lambda_gp" not in cfg and cfg["seed"] == 1 and cfg["batch_size"] == 8
    # a flag the old config lacks takes its default (the behaviour before the flag existed) ...
    assert cfg["optimizer"] == "adam" and cfg["perturb"] == "authors" and cfg["beta2"] == 0.9
    # ... unless its default depends on the data set (a small-data value): resolve_data_args decides
    assert "steps" not in cfg and "width" not in cfg
    assert upgrade_config({"lambda_gp": 5.0, "gp_lambda": 7.0}, hypers)["gp_lambda"] == 7.0
    import began  # ... unless the flag names what older runs did (Hyper.old): BEGAN's pull-away term, 0.3 on
    assert upgrade_config({"dataset": "digits"}, began.HYPERPARAMETERS)["pt_weight"] == 0.0  # the digits now
    assert renames(hypers) == {"lambda_gp": "gp_lambda"}
    # before --g-width / --d-width both networks had --width
    assert [upgrade_config({"width": 16}, hypers)[k] for k in ("g_width", "d_width")] == [16, 16]


def test_an_old_checkpoint_keeps_its_widths(tmp_path, capsys):
    run = _old_run(tmp_path, "dcgan")
    assert "d_width" not in torch.load(run / "checkpoint.pt", weights_only=True)["config"]
    assert run_main("dcgan", ["--resume", run, "--steps", "4", "--ndf", "8"]) == 2  # its D had --width 4
    assert "--d-width 4" in one_error_line(capsys.readouterr().err)
    assert run_main("dcgan", ["--resume", run, "--steps", "3", "--d-width", "4", "--no-progress"]) == 0
    cfg = torch.load(run / "checkpoint.pt", weights_only=True)["config"]
    assert (cfg["width"], cfg["g_width"], cfg["d_width"]) == (4, 4, 4)


@pytest.mark.parametrize("first,then", [("on", "off"), ("off", "on")])
def test_a_resume_with_another_layout_puts_the_optimizer_state_in_the_parameters_layout(tmp_path, first, then):
    """--channels-last may change on resume: the parameters take the new layout, and so must
    Adam's exp_avg and exp_avg_sq (the checkpoint keeps the strides they were saved with; CUDA's
    fused Adam refuses state whose strides differ from its parameter's: only a GPU shows that
    step, benchmarks/gpu_check.py). The values are the checkpoint's, bit for bit."""
    import argparse

    import dcgan
    from ganzoo.checkpoint import load_checkpoint, restore
    from ganzoo.scale import prepare_model
    run = tmp_path / "r"
    assert run_main("dcgan", TINY + ["--steps", "2", "--amp", "off", "--channels-last", first, "--out", run]) == 0
    ckpt, p = load_checkpoint(str(run), "dcgan")
    saved = {k: o["state"] for k, o in ckpt["optimizers"].items()}
    cfg = argparse.Namespace(**dict(ckpt["config"], channels_last=then))
    cfg.image_size = tuple(cfg.image_size)
    model = prepare_model(dcgan.DCGAN(cfg, tuple(ckpt["shape"]), torch.device("cpu")), cfg, for_training=True)
    restore(model, ckpt, p)
    changed = 0
    for name, opt in model.optimizers().items():
        for i, param in enumerate(q for g in opt.param_groups for q in g["params"]):
            for k in ("exp_avg", "exp_avg_sq"):
                state = opt.state[param][k]
                assert state.stride() == param.stride(), (name, i, k)
                assert torch.equal(state, saved[name][i][k])
                changed += saved[name][i][k].stride() != param.stride()
    assert changed > 0  # the layouts did differ
    # the whole resume: the state the resumed run saves is in the new layout too
    assert run_main("dcgan", TINY + ["--channels-last", then, "--resume", run]) == 0
    final = torch.load(run / "checkpoint.pt", weights_only=True)
    assert final["step"] == 4 and final["config"]["channels_last"] == then
    names = [n for n, _ in model.D.named_parameters()]
    for i, n in enumerate(names):
        assert final["optimizers"]["D"]["state"][i]["exp_avg"].stride() == final["nets"]["D"][n].stride(), n


# ---- --keep-every snapshots and the temporaries of killed writers ------------------------------
def test_keep_every_keeps_loadable_snapshots_at_its_multiples(tmp_path):
    from ganzoo.checkpoint import load_checkpoint
    run = tmp_path / "r"
    args = TINY + ["--steps", "8", "--keep-every", "4", "--out", run]  # checkpoints every 2 steps
    assert run_main("dcgan", args) == 0
    snaps = sorted(p.name for p in run.glob("checkpoint_step_*.pt"))
    assert snaps == ["checkpoint_step_0000004.pt", "checkpoint_step_0000008.pt"]
    at4 = (run / snaps[0]).read_bytes()
    for name, step in zip(snaps, (4, 8)):
        ckpt, _ = load_checkpoint(str(run / name), "dcgan")  # its checksum checked
        assert ckpt["step"] == step
    assert (run / snaps[1]).read_bytes() == (run / "checkpoint.pt").read_bytes()
    # the checkpoints written after step 4 (6, 8) replaced checkpoint.pt, never the snapshot's bytes
    four, last = (torch.load(run / n, weights_only=True) for n in snaps)
    assert any(not torch.equal(v, last["nets"]["G"][k]) for k, v in four["nets"]["G"].items())
    # a resumed run adds its own and leaves the earlier ones as they were
    assert run_main("dcgan", TINY + ["--steps", "12", "--resume", run]) == 0
    assert sorted(p.name for p in run.glob("checkpoint_step_*.pt")) == snaps + ["checkpoint_step_0000012.pt"]
    assert (run / snaps[0]).read_bytes() == at4 and not list(run.glob("*.tmp"))
    assert load_checkpoint(str(run / "checkpoint_step_0000012.pt"))[0]["step"] == 12


def test_a_snapshot_is_a_hard_link_or_else_a_copy(tmp_path, monkeypatch):
    import os
    from ganzoo.checkpoint import keep_snapshot
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"step 100")
    snap = keep_snapshot(ckpt, 100)
    assert snap == tmp_path / "checkpoint_step_0000100.pt" and snap.stat().st_ino == ckpt.stat().st_ino

    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")
    monkeypatch.setattr(os, "link", no_links)
    ckpt.write_bytes(b"step 200")
    snap = keep_snapshot(ckpt, 200)
    assert snap.read_bytes() == b"step 200" and snap.stat().st_ino != ckpt.stat().st_ino
    (tmp_path / f"checkpoint_step_0000300.pt.{os.getpid()}.tmp").write_bytes(b"left by a process of this pid")
    ckpt.write_bytes(b"step 300")
    assert keep_snapshot(ckpt, 300).read_bytes() == b"step 300"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pt", "checkpoint_step_0000100.pt", "checkpoint_step_0000200.pt", "checkpoint_step_0000300.pt"]


def test_a_failed_snapshot_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch):
    import os
    import shutil
    from ganzoo.checkpoint import keep_snapshot
    from ganzoo.errors import Fault
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"x" * 100)

    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    def full(src, dst):
        open(dst, "wb").write(b"x")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(shutil, "copyfile", full)
    with pytest.raises(Fault, match=r"checkpoint_step_0000002.pt \(the disk is full\); .*checkpoint.pt \(step 2\) "
                                    "is written"):
        keep_snapshot(ckpt, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def _dead_pid() -> int:
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def test_a_run_removes_the_temporaries_of_killed_writers_never_a_live_ones(tmp_path, capsys):
    """What kill -9 during a write leaves (checkpoint.pt.PID.tmp, a snapshot's too) is removed
    when the run resumes; a temporary of a live process (a sleeping one, this one) is kept."""
    import os
    import subprocess
    from ganzoo.checkpoint import remove_stale_temporaries
    run = tmp_path / "r"
    assert run_main("dcgan", TINY + ["--out", run]) == 0
    dead = _dead_pid()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        stale = {run / f"checkpoint.pt.{dead}.tmp": 3000, run / f"checkpoint_step_0000002.pt.{dead}.tmp": 1000}
        live = [run / f"checkpoint.pt.{sleeper.pid}.tmp"]
        others = [run / "notes.tmp", run / "checkpoint.pt.x.tmp", run / "samples" / f"a.pt.{dead}.tmp"]
        for p, n in [*stale.items(), *((p, 10) for p in live + others)]:
            p.write_bytes(b"\0" * n)
        capsys.readouterr()
        assert run_main("dcgan", TINY + ["--steps", "6", "--resume", run]) == 0
        err = capsys.readouterr().err
        assert f"dcgan: removed 2 temporary file(s) of writers that were killed mid-write in {run} (3.9 KiB freed)" \
            in err.splitlines()
        assert not any(p.exists() for p in stale) and all(p.exists() for p in live + others)
        # this process's own is kept too (the run above wrote its checkpoints through that name);
        # a hard link frees no bytes
        mine = run / f"checkpoint_step_0000006.pt.{os.getpid()}.tmp"
        mine.write_bytes(b"being written")
        os.link(run / "checkpoint.pt", run / f"checkpoint.pt.{dead}.tmp")
        assert remove_stale_temporaries(run) == (1, 0) and mine.exists()
        assert remove_stale_temporaries(run) == (0, 0)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale_temporaries(run) == (1, 10) and not live[0].exists()  # its writer is gone now


def test_keep_every_is_a_multiple_of_checkpoint_every(tmp_path, capsys):
    for keep in ("3", "-2"):
        assert run_main("dcgan", TINY + ["--keep-every", keep, "--out", tmp_path / "r"]) == 2
        assert f"--keep-every {keep}: 0 (off) or a multiple of --checkpoint-every (2)" in \
            one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "r").exists()
