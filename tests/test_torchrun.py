"""Several ranks on one node (torchrun, gloo on the CPU): a folder decoded once a node and the
others mapping the decoded copy; the judge made ready before the ranks first wait on each other;
the CUDA device a rank picks under launchers that show it all GPUs or only its own; a job
restarted by torchrun continues with --resume auto, SIGTERM stops every rank at one step, a
lost rank stops the others with one line."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from conftest import ROOT, TINY, random_pics
from ganzoo import scale


def _torchrun(tmp_path, code, *args, nproc=2, timeout=300):
    """Run `code` (a script's text) in nproc torchrun ranks; returns the CompletedProcess and
    the JSON each rank wrote to tmp_path/rank<r>.json."""
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                        str(script), str(tmp_path), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    out = [json.loads(f.read_text()) for f in sorted(tmp_path.glob("rank*.json"))]
    return r, out


# ---- defect 7: a folder is decoded once a node -----------------------------------------------

LOAD = """
    import argparse, hashlib, json, os, sys
    from pathlib import Path
    from ganzoo import data, scale
    out, folder, cache = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "cache"
    decoded = []
    real = data.decode_image
    data.decode_image = lambda *a, **k: decoded.append(1) or real(*a, **k)  # this process's decodes
    scale.init_distributed(argparse.Namespace(device="cpu"))
    d = data.load_data(argparse.Namespace(dataset="folder", path=folder, image_size=(16, 16), channels=3,
                                          workers=0, data_memory_gb=None, no_cache=not cache, crop="aspect",
                                          limit=None, batch_size=4))
    scale.wait_for_all()
    (out / f"rank{scale.rank()}.json").write_text(json.dumps({
        "rank": scale.rank(), "decoded": len(decoded), "note": d.note, "n": len(d),
        "sha": hashlib.sha256(d.x.contiguous().numpy().tobytes()).hexdigest()}))
    scale.wait_for_all()
"""


def test_local_rank_0_decodes_and_the_other_ranks_map_its_copy(tmp_path):
    folder = random_pics(tmp_path / "imgs", n=40)
    run = tmp_path / "run"
    run.mkdir()
    r, (r0, r1) = _torchrun(run, LOAD, folder, "cache")
    assert r.returncode == 0, r.stderr
    assert (r0["decoded"], r1["decoded"]) == (40, 0)  # only local rank 0 decoded
    assert "decoded once into the cache" in r0["note"]
    assert "memory-mapped from the decoded cache" in r1["note"] and "local rank 0 decoded it" in r1["note"]
    assert r0["sha"] == r1["sha"] and r0["n"] == r1["n"] == 40  # the same data in both ranks
    # the next run: no rank decodes
    again = tmp_path / "again"
    again.mkdir()
    r, (a0, a1) = _torchrun(again, LOAD, folder, "cache")
    assert r.returncode == 0, r.stderr
    assert (a0["decoded"], a1["decoded"]) == (0, 0) and a0["sha"] == a1["sha"] == r0["sha"]


def test_no_cache_under_torchrun_decodes_a_copy_in_each_rank(tmp_path):
    """--no-cache writes nothing, so there is nothing to share: each rank decodes its own copy
    (with its share of the budget and of the workers)."""
    folder = random_pics(tmp_path / "imgs", n=12)
    r, (r0, r1) = _torchrun(tmp_path, LOAD, folder, "no-cache")
    assert r.returncode == 0, r.stderr
    assert (r0["decoded"], r1["decoded"]) == (12, 12)
    assert r0["sha"] == r1["sha"] and "cache" not in r0["note"] + r1["note"]


def test_dcgan_trains_on_a_folder_in_two_ranks_decoded_once(tmp_path):
    folder = random_pics(tmp_path / "imgs", n=40)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(ROOT / "dcgan.py"), *TINY, "--batch-size", "4", "--device", "cpu", "--path", str(folder),
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert "2 ranks of batch 4" in r.stderr and "decoded once into the cache" in r.stderr
    assert r.stderr.count("decoding 40 images") <= 1  # (the bar is off when stderr is not a terminal)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 4]


def test_the_budget_of_labelled_sets_is_shared_by_the_ranks_of_a_node(monkeypatch):
    """Each rank holds its own copy of a labelled set: its share of --data-memory-gb."""
    import argparse
    from ganzoo import data
    from ganzoo.errors import UserError
    args = argparse.Namespace(data_memory_gb=1.0, image_size=(64, 64))
    data.check_fits(50_000, 3 * 64 * 64, args, "x")  # 0.57 GiB: fits one process's 1 GiB
    monkeypatch.setattr(data, "distributed", lambda: True)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(UserError, match="over the memory budget of 0.5 GiB .*shared by the 2 ranks of this node"):
        data.check_fits(50_000, 3 * 64 * 64, args, "x")


def test_over_the_node_budget_a_folder_is_streamed_in_every_rank(tmp_path, monkeypatch):
    """The stream-or-map decision is the same in every rank (no rank waits for a decoding that
    another rank skipped); with --no-cache each rank's copy gets its share of the budget."""
    from ganzoo import data
    folder = random_pics(tmp_path / "imgs", n=4)
    nbytes = 4 * 3 * 16 * 16
    monkeypatch.setattr(data, "distributed", lambda: True)
    monkeypatch.setattr(data, "wait_for_all", lambda: None)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("GANZOO_CACHE", str(tmp_path / "cache"))
    assert isinstance(data.load_folder(folder, (16, 16), 3, 0, nbytes - 1), data.StreamedFolder)
    assert isinstance(data.load_folder(folder, (16, 16), 3, 0, nbytes), data.Images)  # one shared copy fits
    assert isinstance(data.load_folder(folder, (16, 16), 3, 0, nbytes, cache=False), data.StreamedFolder)  # 2 copies


# ---- defect 8: the judge is ready before the ranks first wait on each other ----------------

JUDGE = """
    import datetime, json, sys, time
    from pathlib import Path
    import torch
    import dcgan, evaluate
    from ganzoo import loop, scale
    from ganzoo.cli import explicit_flags
    out, slow = Path(sys.argv[1]), float(sys.argv[2])
    # The process group's own timeout stands for NCCL's 10 minutes: shorter than the judge's training.
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=float(sys.argv[3])))
    scale.patient_group()  # as init_distributed makes it
    times = {}

    def make_evaluator(args, device):  # rank 0 only: a judge trained on first use
        times["judge_started"] = time.time()
        time.sleep(slow)
        times["judge_ready"] = time.time()
        return lambda sample_fn: {"classes": 10}

    real_step = loop.one_step

    def one_step(*a, **k):
        times.setdefault("first_step", time.time())
        return real_step(*a, **k)
    loop.one_step = one_step
    parser = dcgan.build_parser()
    argv = sys.argv[4:]
    code = loop.train(evaluate.model_class("dcgan"), parser.parse_args(argv), explicit_flags(parser, argv),
                      make_evaluator=make_evaluator)
    (out / f"rank{scale.rank()}.json").write_text(json.dumps({"code": code, **times}))
    scale.leave_together()
    torch.distributed.destroy_process_group()
"""


def test_the_judge_is_ready_before_any_rank_waits_in_a_step(tmp_path):
    """Rank 0 makes the judge (here 8 s) before the first step while rank 1 waits for it in
    scale.wait_for_all (hours), not in the first step's all-reduce, whose timeout (4 s here,
    NCCL's 10 minutes on GPUs) would abort it."""
    run = tmp_path / "run"
    r, (r0, r1) = _torchrun(tmp_path, JUDGE, 8, 4, *TINY, "--eval-every", "2", "--device", "cpu",
                            "--out", run)
    assert r.returncode == 0, r.stderr
    assert r0["code"] == r1["code"] == 0
    assert "judge_ready" in r0 and "judge_started" not in r1  # rank 0 alone makes it
    assert r0["judge_ready"] <= r0["first_step"] and r0["judge_ready"] <= r1["first_step"]
    evals = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if "classes" in l]
    assert [e["step"] for e in evals] == [2, 4]


def test_the_training_evaluator_makes_its_judge_when_it_is_made(monkeypatch):
    """training_evaluator trains (or loads) the judge at once, not at its first evaluation: the
    loop makes it before the first step, then the ranks wait for each other."""
    import argparse
    from ganzoo import evaluation, metrics
    made = []
    monkeypatch.setattr(metrics, "classifier", lambda hw, seed=0, source="digits", path=None:
                        made.append(source) or (metrics.DigitNet(), 0.9))
    evaluation.scorer.cache_clear()
    try:
        ev = evaluation.training_evaluator(argparse.Namespace(dataset="digits", image_size=(16, 16), path=None),
                                           torch.device("cpu"))
        assert made == ["digits"]
        assert ev(lambda n: torch.rand(n, 1, 16, 16) * 2 - 1)["classes"] >= 1 and made == ["digits"]
    finally:
        evaluation.scorer.cache_clear()


# ---- defect 9: the rank's GPU; --sync-bn with --compile -------------------------------------

@pytest.mark.parametrize("local,count,want", [(0, 8, 0), (3, 8, 3), (3, 1, 0), (1, 1, 0), (5, 4, 1), (2, 0, 0)])
def test_a_rank_takes_local_rank_modulo_the_gpus_it_sees(local, count, want):
    """torchrun shows every rank all the node's GPUs; Slurm's --gpus-per-task (or one
    CUDA_VISIBLE_DEVICES a task) shows each rank its own one, device 0."""
    assert scale.cuda_index(local, count) == want


def test_init_distributed_sets_the_visible_gpu_under_a_one_gpu_a_task_launcher(monkeypatch):
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.setdefault("set_device", i))
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend, **k: calls.setdefault("backend", backend))
    monkeypatch.setattr(scale, "patient_group", lambda: calls.setdefault("patient_group", True))
    monkeypatch.setattr(scale, "vote_group", lambda: calls.setdefault("vote_group", True))
    import argparse
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # each task sees only its own GPU
    assert scale.init_distributed(argparse.Namespace(device="auto")) == torch.device("cuda", 0)
    assert calls == {"set_device": 0, "backend": "nccl", "patient_group": True, "vote_group": True}  # not device 1
    calls.clear()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # torchrun: every rank sees both
    assert scale.init_distributed(argparse.Namespace(device="cuda")) == torch.device("cuda", 1)
    assert calls["set_device"] == 1


def test_sync_bn_is_converted_before_compile_and_keeps_the_optimizers_parameters(monkeypatch):
    """--sync-bn --compile on a GPU: every BatchNorm of G, D and G_ema is a SyncBatchNorm inside
    the compiled networks, the optimizers step the converted layers' parameters (the conversion
    keeps the Parameter objects), and the checkpoint keeps BatchNorm's keys. The CPU cannot run
    SyncBatchNorm in training (no CPU kernel, and it needs ranks): a compiled step with synced
    statistics is for the GPU check (torchrun dcgan.py --sync-bn --compile on)."""
    import dcgan
    from ganzoo.data import resolve_data_args
    args = dcgan.build_parser().parse_args(["--image-size", "16", "--width", "4", "--sync-bn", "--compile", "on",
                                            "--ema", "0.9", "--channels-last", "off", "--amp", "off"])
    resolve_data_args(args)
    monkeypatch.setattr(scale, "world", lambda: 2)
    monkeypatch.setenv("GAN_COMPILE_BACKEND", "eager")
    torch.manual_seed(0)
    plain = dcgan.DCGAN(args, (1, 16, 16), torch.device("cpu"))
    torch.manual_seed(0)
    model = dcgan.DCGAN(args, (1, 16, 16), torch.device("cpu"))
    model.device = torch.device("cuda")  # what prepare_model sees on a GPU (the weights stay on the CPU)
    scale.prepare_model(model, args, for_training=True)
    for name, net in model.networks().items():
        norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms), name
        assert net.state_dict().keys() == plain.G.state_dict().keys() if name != "D" else \
            net.state_dict().keys() == plain.D.state_dict().keys()
    assert model.G._compiled_call_impl is not None and model.D._compiled_call_impl is not None
    for opt, net in ((model.opt_g, model.G), (model.opt_d, model.D)):
        stepped = {id(p) for g in opt.param_groups for p in g["params"]}
        assert stepped == {id(p) for p in net.parameters()}
    model.G.eval()  # eval: running statistics, no sync; the CPU runs the compiled network
    plain.G.eval()
    z = torch.randn(2, args.z_dim)
    torch.testing.assert_close(model.G(z), plain.G(z))


# ---- issue 41: restarts, preemption and lost ranks under torchrun ---------------------------

RANK_PROBE = """
    import json, os, signal, sys, time
    from pathlib import Path
    import common, dcgan
    from ganzoo import loop
    out, kill_at, slow, sig, argv = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5:]
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    real = loop.one_step

    def one_step(model, args, batches, amp, step, bad):  # rank 1 of the first attempt gets sig after step kill_at
        result = real(model, args, batches, amp, step, bad)
        time.sleep(slow)
        if step + 1 == kill_at and os.environ["RANK"] == "1" and attempt == "0":
            os.kill(os.getpid(), getattr(signal, sig))
        return result
    loop.one_step = one_step
    code = common.main(dcgan.DCGAN, dcgan.build_parser(), argv)
    (out / f"rank{os.environ['RANK']}-attempt{attempt}.json").write_text(json.dumps({"code": code}))
    sys.exit(code)
"""
JOB = ["--steps", "24", "--batch-size", "8", "--width", "4", "--image-size", "16", "--log-every", "2",
       "--sample-every", "8", "--checkpoint-every", "5", "--no-progress", "--device", "cpu"]


def _job(tmp_path, *args, restarts=0, kill_at=0, slow=0.0, sig="SIGKILL", background=False):
    """torchrun, 2 gloo ranks, of RANK_PROBE (dcgan.py's main) with JOB's flags and args; each
    rank's stderr in tmp_path/logs, its exit status in tmp_path/rank<r>-attempt<n>.json."""
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(RANK_PROBE))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", str(restarts), "--log-dir", str(tmp_path / "logs"), "--redirects", "2",
           str(script), str(tmp_path), str(kill_at), str(slow), sig, *JOB, *map(str, args)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return p if background else (p, *p.communicate(timeout=300))


def _code(tmp_path, rank, attempt=0):
    """The exit status main() returned in that rank of that attempt."""
    return json.loads((tmp_path / f"rank{rank}-attempt{attempt}.json").read_text())["code"]


def _codes(tmp_path, attempt=0):
    return [_code(tmp_path, r, attempt) for r in (0, 1)]


def _rank_err(tmp_path, rank, attempt=0):
    """What the rank wrote to stderr (torchrun --redirects: logs/<run id>/attempt_<n>/<rank>/stderr.log)."""
    (f,) = (tmp_path / "logs").glob(f"*/attempt_{attempt}/{rank}/stderr.log")
    return f.read_text()


def _weights(run):
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    return ck["step"], {f"{n}.{k}": v for n, sd in ck["nets"].items() for k, v in sd.items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The job's weights when nothing stops it (2 ranks, 24 steps)."""
    d = tmp_path_factory.mktemp("whole")
    p, _, err = _job(d, "--out", d / "run")
    assert p.returncode == 0, err
    step, w = _weights(d / "run")
    assert step == 24
    return w


def test_a_worker_killed_mid_run_restarts_with_resume_auto_and_ends_bitwise_equal(tmp_path, uninterrupted):
    """torchrun --max-restarts 1, rank 1 SIGKILLed after step 13 (checkpoint at 10): rank 0 stops
    with one line, torchrun restarts both with the same command, --resume auto continues from
    step 10, and the job's weights equal the uninterrupted job's bitwise."""
    run = tmp_path / "run"
    p, _, err = _job(tmp_path, "--out", run, "--resume", "auto", restarts=1, kill_at=13)
    assert p.returncode == 0, err
    assert _code(tmp_path, 0) == 1 and not (tmp_path / "rank1-attempt0.json").exists()  # killed
    assert _codes(tmp_path, 1) == [0, 0]
    lost = _rank_err(tmp_path, 0, 0)
    assert "Traceback" not in lost
    assert lost.strip().splitlines()[-1] == (f"dcgan: rank 0: lost rank 1 at step 13 (its process ended); stopped. "
                                             f"Last checkpoint: {run / 'checkpoint.pt'} (step 10); a restart with "
                                             "--resume auto continues from it")
    assert "steps 10->24" in _rank_err(tmp_path, 0, 1)
    step, w = _weights(run)
    assert step == 24 and all(torch.equal(w[k], v) for k, v in uninterrupted.items())
    assert [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()] == list(range(2, 25, 2))


def test_sigterm_to_torchrun_stops_every_rank_at_one_step_and_resume_auto_continues_exactly(tmp_path, uninterrupted):
    """SIGTERM to torchrun (a scheduler's preemption): torchrun passes it to the ranks, which
    agree on one step; rank 0 saves one checkpoint there and draws its grid; each rank says so
    in one line and exits 143. The same command with --resume auto ends where the
    uninterrupted job does, bitwise."""
    run = tmp_path / "run"
    p = _job(tmp_path, "--out", run, "--resume", "auto", slow=0.3, background=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists()
                                          and (run / "metrics.jsonl").read_text().count("\n") >= 1):
        time.sleep(0.1)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=120)
    assert _codes(tmp_path) == [143, 143]
    step = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert 2 <= step < 24 and not list(run.glob("*.tmp"))
    err0, err1 = _rank_err(tmp_path, 0), _rank_err(tmp_path, 1)
    assert "Traceback" not in err0 + err1
    assert err0.strip().splitlines()[-1].startswith(f"dcgan: interrupted by SIGTERM at step {step} of 24; saved "
                                                     f"{run / 'checkpoint.pt'}, samples in {run / 'samples'}")
    assert err1.strip().splitlines() == [f"dcgan: rank 1: interrupted by SIGTERM at step {step} with the other ranks; "
                                         f"rank 0 saved {run / 'checkpoint.pt'}"]
    assert (run / "samples" / f"step_{step:06d}.png").exists()
    again = tmp_path / "again"
    again.mkdir()
    p, _, err = _job(again, "--out", run, "--resume", "auto")
    assert p.returncode == 0, err
    assert f"steps {step}->24" in _rank_err(again, 0)
    end, w = _weights(run)
    assert end == 24 and all(torch.equal(w[k], v) for k, v in uninterrupted.items())


def test_a_signal_to_one_rank_stops_both_two_steps_later(tmp_path):
    """SIGINT to rank 1 alone after step 6: the ranks' vote stops both after step 8 (two steps
    later, the same step in both), rank 0 saves there, both exit 130."""
    run = tmp_path / "run"
    p, _, err = _job(tmp_path, "--out", run, kill_at=6, sig="SIGINT")
    assert _codes(tmp_path) == [130, 130], err
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 8
    assert "interrupted by SIGINT at step 8 of 24" in _rank_err(tmp_path, 0)
    assert _rank_err(tmp_path, 1).strip().startswith("dcgan: rank 1: interrupted by SIGINT at step 8 with the other")


def test_a_lost_rank_stops_the_others_in_seconds_with_one_line(tmp_path):
    """No restarts: rank 1 dies after step 7 (checkpoint at 5); rank 0 sees its collective fail
    at once and exits 1 with one line (the lost rank, the last checkpoint), no traceback."""
    run = tmp_path / "run"
    t0 = time.time()
    p, _, err = _job(tmp_path, "--out", run, kill_at=7, slow=0.05)
    assert p.returncode != 0 and time.time() - t0 < 60
    assert _code(tmp_path, 0) == 1 and not (tmp_path / "rank1-attempt0.json").exists()
    err0 = _rank_err(tmp_path, 0)
    assert "Traceback" not in err0 and "Traceback" not in _rank_err(tmp_path, 1)
    lines = [l for l in err0.strip().splitlines() if ": lost " in l]
    assert lines == [f"dcgan: rank 0: lost rank 1 at step 7 (its process ended); stopped. Last checkpoint: "
                     f"{run / 'checkpoint.pt'} (step 5); a restart with --resume auto continues from it"]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 5
