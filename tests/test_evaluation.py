"""ganzoo.evaluation and evaluate.py: the --eval-every callback (and that it leaves a run's
weights untouched), the evaluate.py command line, a run's snapshots as rows in step order
with their curve, and --fid's one line where the FID extra is not installed (tests/test_fid.py
tests FID itself)."""
import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

import evaluate
from ganzoo import metrics
from ganzoo.checkpoint import SNAPSHOT
from ganzoo.evaluation import find_checkpoints
from conftest import TINY, one_error_line, run_main, run_script


FID_EXTRA = importlib.util.find_spec("torch_fidelity") is not None


def test_eval_every_on_a_folder_without_the_fid_extra_is_one_line(tmp_path, capsys, monkeypatch):
    """A folder has no judge: --eval-every logs Inception FID, and without torch-fidelity says
    in one line what to install, before any data is loaded or file written."""
    from PIL import Image
    for i in range(8):
        Image.new("L", (16, 16), 40 * i).save(tmp_path / f"{i}.png")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as if not installed, in any venv
    argv = TINY + ["--path", tmp_path, "--eval-every", "2", "--out", tmp_path / "r"]
    assert run_main("dcgan", argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--eval-every on a folder logs Inception FID" in line and "pip install -r requirements-fid.txt" in line
    assert not (tmp_path / "r").exists()


def test_evaluate_fid_without_the_extra_is_one_line(tmp_path, capsys, monkeypatch):
    assert run_main("dcgan", TINY + ["--out", tmp_path / "r"]) == 0
    if not FID_EXTRA:  # the main venv: really not installed, as a user runs it
        r = run_script("evaluate.py", tmp_path / "r", "--fid")
        assert r.returncode == 2
        line = one_error_line(r.stderr)
    else:
        monkeypatch.setitem(sys.modules, "torch_fidelity", None)
        capsys.readouterr()
        assert evaluate.main([str(tmp_path / "r"), "--fid"]) == 2
        line = one_error_line(capsys.readouterr().err)
    assert ": error: FID needs" in line and "pip install -r requirements-fid.txt" in line


def snapshot_run(run):
    """A run with snapshots at steps 2 and 4 (a copy of checkpoint.pt each, as --keep-every
    writes them) and checkpoint.pt at step 6."""
    assert run_main("dcgan", TINY + ["--image-size", "32", "--steps", "2", "--out", run]) == 0
    (run / SNAPSHOT.format(step=2)).write_bytes((run / "checkpoint.pt").read_bytes())
    assert run_main("dcgan", ["--resume", run, "--steps", "4", "--no-progress"]) == 0
    (run / SNAPSHOT.format(step=4)).write_bytes((run / "checkpoint.pt").read_bytes())
    assert run_main("dcgan", ["--resume", run, "--steps", "6", "--no-progress"]) == 0
    (run / SNAPSHOT.format(step=6)).write_bytes((run / "checkpoint.pt").read_bytes())  # checkpoint.pt's own step
    return run


def test_a_run_gives_a_row_per_snapshot_in_step_order_and_a_curve(tmp_path, capsys, monkeypatch, judge):
    run = snapshot_run(tmp_path / "runs" / "a")
    assert [p.name for p in find_checkpoints([run])] == [SNAPSHOT.format(step=2), SNAPSHOT.format(step=4),
                                                         "checkpoint.pt"]  # step 6's snapshot: the same weights
    r = run_script("evaluate.py", run, "--n", "300", "--json", tmp_path / "t.json")
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "t.json").read_text())
    assert [x["step"] for x in rows] == [2, 4, 6] and rows[-1]["checkpoint"] == str(run / "checkpoint.pt")
    assert len({x["fd"] for x in rows}) == 3  # three different networks
    png = run / "eval-curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"wrote {png}" in r.stderr
    # a folder of runs: each run's snapshots, the picture in the runs' common folder, or beside --markdown
    assert [p.parent.name for p in find_checkpoints([tmp_path / "runs"])] == ["a"] * 3
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # matplotlib missing: the table, and one line
    capsys.readouterr()
    assert evaluate.main([str(run), "--n", "300", "--markdown", str(tmp_path / "t.md")]) == 0
    out, err = capsys.readouterr()
    assert out == (tmp_path / "t.md").read_text() and out.count("| dcgan |") == 3
    assert one_error_line(err).endswith(": no curve picture: matplotlib is not installed (pip install matplotlib)")
    assert not (tmp_path / "t-curve.png").exists()


def test_eval_every_logs_metrics_and_changes_nothing_else(tmp_path, monkeypatch, request, judge):
    monkeypatch.setitem(metrics.SAMPLES, "digits", 500)  # fewer samples per evaluation (default 2,000)
    evaluate.scorer.cache_clear()
    metrics.classifier.cache_clear()  # the hook loads the judge from its file, inside the run
    request.addfinalizer(evaluate.scorer.cache_clear)
    argv = TINY + ["--image-size", "32"]
    assert run_main("dcgan", argv + ["--eval-every", "2", "--out", tmp_path / "e"]) == 0
    assert run_main("dcgan", argv + ["--out", tmp_path / "p"]) == 0
    rows = [json.loads(l) for l in (tmp_path / "e" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "classes" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert set(evals[0]) == {"step", "classes", "kl", "confident", "fd", "kid", "precision", "recall", "density",
                             "coverage"}
    assert all(np.isfinite(v) for r in evals for v in r.values())
    ce, cp = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in "ep")
    for net in ("G", "D"):  # evaluating drew no random numbers of the run's
        assert all(torch.equal(ce["nets"][net][k], cp["nets"][net][k]) for k in cp["nets"][net])
    assert torch.equal(ce["rng"]["torch"], cp["rng"]["torch"])
    # evaluate.py scores the last checkpoint as the hook scored step 4 (same z, same judge)
    row = evaluate.evaluate_checkpoint(tmp_path / "e")
    assert row["n"] == 500 and {k: row[k] for k in evals[1]} == evals[1]


def test_evaluate_cli(tmp_path, judge):
    assert run_main("dcgan", TINY + ["--image-size", "32", "--out", tmp_path / "runs" / "a"]) == 0
    r = run_script("evaluate.py", tmp_path / "runs", "--real", "--n", "300", "--json", tmp_path / "t.json",
                   "--markdown", tmp_path / "t.md")
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "t.json").read_text())
    assert [(x["model"], x["step"], x["n"]) for x in rows] == [("dcgan", 4, 300), ("real data", 0, 300)]
    assert rows[1]["classes"] == 10 and rows[0]["fd"] > rows[1]["fd"]
    assert rows[0]["classifier_accuracy"] >= 0.97
    md = (tmp_path / "t.md").read_text()
    assert md.startswith("| model | step | generator | dataset |") and "held-out accuracy" in md and md in r.stdout


def test_evaluate_per_class(tmp_path, judge):
    """--per-class: a table per row after the main one, and the figures in the JSON rows: for
    the real row the same sizes as its own classes, for a 4-step DCGAN shares that sum to 1."""
    assert run_main("dcgan", TINY + ["--image-size", "32", "--out", tmp_path / "a"]) == 0
    r = run_script("evaluate.py", tmp_path / "a", "--real", "--n", "300", "--per-class", "--json", tmp_path / "t.json")
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "t.json").read_text())
    for row in rows:
        assert [c["class"] for c in row["per_class"]] == [str(c) for c in range(10)]
        assert sum(c["share"] for c in row["per_class"]) == pytest.approx(1.0)
    fake, real = ({c["class"]: c for c in row["per_class"]} for row in rows)
    assert [fake[k]["real_share"] for k in fake] == [real[k]["real_share"] for k in real]
    assert r.stdout.count("| class | share | real share | confident | real confident |") == 2
    assert "per class, dcgan at step 4" in r.stdout and "per class, real data at step 0" in r.stdout


def test_no_ema_scores_g_itself(tmp_path, judge):
    """A --ema run is scored from G_ema by default and from G with --no-ema; the rows say
    which, and the two differ (the average is another network)."""
    assert run_main("dcgan", TINY + ["--image-size", "32", "--ema", "0.9", "--out", tmp_path / "r"]) == 0
    assert run_main("dcgan", TINY + ["--image-size", "32", "--out", tmp_path / "plain"]) == 0
    ema = evaluate.evaluate_checkpoint(tmp_path / "r", n=300)
    raw = evaluate.evaluate_checkpoint(tmp_path / "r", n=300, ema=False)
    assert (ema["generator"], raw["generator"]) == ("G_ema", "G")
    # the same figure up to float noise: on a CPU with AMX, another process's bf16 samples can
    # differ in the last bits (FD 115.57266711 against 115.57266690, 2026-12-03), where another
    # network's FD differs in the first digits
    same = dict(rel=1e-6)
    assert ema["fd"] != pytest.approx(raw["fd"], **same)
    # G of the --ema run is the G of the same run without it (the average only shadows it)
    plain = evaluate.evaluate_checkpoint(tmp_path / "plain", n=300)
    assert plain["generator"] == "G" and plain["fd"] == pytest.approx(raw["fd"], **same)
    r = run_script("evaluate.py", tmp_path / "r", "--no-ema", "--n", "300", "--json", tmp_path / "t.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "t.json").read_text())[0]["fd"] == pytest.approx(raw["fd"], **same)
    assert "| G |" in r.stdout


def test_evaluate_bad_input(tmp_path, capsys, judge):
    assert evaluate.main([str(tmp_path / "nowhere")]) == 2
    assert "no checkpoint there" in one_error_line(capsys.readouterr().err)
    assert run_main("dcgan", TINY + ["--out", tmp_path / "r"]) == 0
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    ck["model"] = "os"  # a module that is not one of the scripts is never imported
    torch.save(ck, tmp_path / "other.pt")
    capsys.readouterr()
    assert evaluate.main([str(tmp_path / "other.pt")]) == 2
    assert "has no script os.py" in one_error_line(capsys.readouterr().err)
    assert evaluate.main([]) == 2
    assert "--real" in one_error_line(capsys.readouterr().err)
