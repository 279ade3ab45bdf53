"""compare.py: a tiny two-model comparison writes results.md (titled by its models),
results.json and gallery.png, and its runs draw learning curves; a rerun redoes nothing; a
longer --steps resumes the runs; the speed bookkeeping; --fid without the FID extra (tests/test_fid.py
runs it with the extra)."""
import json
import os
import sys

import pytest
from PIL import Image

import compare
from conftest import one_error_line, run_main
from ganzoo import curves

TINY_SCRIPT = ["--width", "4", "--batch-size", "8", "--log-every", "1", "--sample-every", "2",
               "--checkpoint-every", "1"]


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """The classifier cache of the whole session (see conftest.py's judge)."""
    os.environ["GANZOO_CACHE"] = str(tmp_path_factory.getbasetemp() / "ganzoo-cache")


def test_speed_from_metrics(tmp_path):
    rows = [{"step": 2, "loss": 1, "images_per_s": 8.0, "steps_per_s": 1.0},
            {"step": 2, "classes": 3},  # an --eval-every line
            {"step": 4, "loss": 1, "images_per_s": 16.0, "steps_per_s": 2.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ips, secs = compare.speed(tmp_path)
    assert secs == pytest.approx(2 / 1 + 2 / 2) and ips == pytest.approx((8 * 2 + 16 * 1) / 3)


def test_mean_std():
    assert compare.mean_std([1.0, 2.0, 3.0]) == "2 ± 1"
    assert compare.mean_std([5]) == "5"


def test_tiny_comparison_resumes_writes_results_and_skips(tmp_path, capsys):
    out = tmp_path / "cmp"
    # an interrupted earlier comparison: dcgan's run stopped at step 1
    assert run_main("dcgan", ["--dataset", "digits", "--image-size", "32", "--steps", "1", "--seed", "1",
                              "--no-progress", "--out", out / "dcgan" / "seed1", *TINY_SCRIPT]) == 0
    argv = ["--models", "dcgan", "lsgan", "--dataset", "digits", "--steps", "2", "--seeds", "1", "--first-seed", "1",
            "--n", "200", "--gallery-n", "4", "--jobs", "2", "--out", str(out), "--", *TINY_SCRIPT]
    capsys.readouterr()
    assert compare.main(argv) == 0
    err = capsys.readouterr().err
    assert "dcgan seed 1: training 1 -> 2" in err and "lsgan seed 1: training 0 -> 2" in err
    assert "--resume" in (out / "dcgan" / "seed1" / "train.log").read_text()
    rows = [json.loads(l) for l in (out / "dcgan" / "seed1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    res = json.loads((out / "results.json").read_text())
    assert list(res["models"]) == ["dcgan", "lsgan"] and res["steps"] == 2 and res["seeds"] == [1]
    for m in ("dcgan", "lsgan"):
        assert res["models"][m]["runs"] == 1
        assert set(res["models"][m]) >= {"classes", "kl", "confident", "fd", "kid", "precision", "recall", "density",
                                         "coverage", "images_per_s", "wall_s"}
        cfg = json.loads((out / m / "seed1" / "config.json").read_text())
        assert (cfg["dataset"], cfg["image_size"], cfg["steps"], cfg["seed"], cfg["width"]) == \
            ("digits", [32, 32], 2, 1, 4)
        assert json.loads((out / m / "seed1" / "eval.json").read_text())["row"]["step"] == 2  # the last checkpoint
    assert res["real"]["classes"] == 10 and res["classifier_accuracy"] >= 0.97
    md = (out / "results.md").read_text()
    assert md.startswith("# Two-way comparison (dcgan, lsgan): digits at 32x32, 2 generator updates, seeds 1\n")
    assert "`python compare.py --models dcgan lsgan" in md and "cores" in md and "features" in md and "| dcgan |" in md
    assert "| real data | 10 |" in md
    # one row per model and one of real digits, 4 samples of 32x32 each (2px padding), a label strip
    assert Image.open(out / "gallery.png").size == (64 + 4 * 34 + 2, 3 * 36)

    # the same command again: nothing is trained or scored again
    assert compare.main(argv) == 0
    assert "training" not in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["models"] == res["models"]

    # its learning curves: the runs' scored last checkpoints (eval.json; no --eval-every rows here)
    assert compare.main(["--curves", str(out), "--png", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").is_file()
    points = curves.read([out]).lines
    assert [(p.step, p.n, p.mean) for p in points[("lsgan", "kl")]] == [(2, 1, res["models"]["lsgan"]["kl"]["mean"])]


def test_the_title_names_the_models():
    assert compare.title(list(compare.MODELS)) == "Seven-way comparison"
    assert compare.title(["dcgan", "lsgan"]) == "Two-way comparison (dcgan, lsgan)"
    assert compare.title(["wgan", "dragan", "began"]) == "Three-way comparison (wgan, dragan, began)"
    assert compare.title(["lsgan"]) == "lsgan alone"


def test_a_run_of_other_settings_is_refused_before_any_training(tmp_path, capsys):
    """A run in --out whose settings are not what the command gives now (here: another width
    after --, as a changed default would be) is refused in one line, exit 2, and left as it was;
    the same settings pass the check."""
    out = tmp_path / "cmp"
    run = out / "dcgan" / "seed1"
    assert run_main("dcgan", ["--dataset", "digits", "--image-size", "32", "--steps", "1", "--seed", "1",
                              "--no-progress", "--out", run, *TINY_SCRIPT]) == 0
    before = (run / "checkpoint.pt").read_bytes()
    argv = ["--models", "dcgan", "lsgan", "--dataset", "digits", "--steps", "2", "--seeds", "1", "--first-seed", "1",
            "--out", str(out), "--train-only", "--"]
    capsys.readouterr()
    assert compare.main(argv + [*TINY_SCRIPT[:1], "8", *TINY_SCRIPT[2:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was trained with --width 4, where a new run would get 8" in err
    assert "training" not in err and not (out / "lsgan").exists()  # nothing started, not even the other model
    assert (run / "checkpoint.pt").read_bytes() == before
    args = compare.build_parser().parse_args(argv[:-1])
    args.image_size = (32, 32)
    compare.check_settings("dcgan", 1, run, args, TINY_SCRIPT)  # the settings it was trained with: no error
    with pytest.raises(compare.UserError, match="--seed 1, where a new run would get 2"):
        compare.check_settings("dcgan", 2, run, args, TINY_SCRIPT)


def test_a_derived_default_is_not_a_difference(tmp_path):
    """EBGAN's margin is derived when the model is built (the parser leaves it None): a run of
    the same command is not refused for it."""
    run = tmp_path / "ebgan" / "seed1"
    assert run_main("ebgan", ["--dataset", "digits", "--image-size", "32", "--steps", "1", "--seed", "1",
                              "--no-progress", "--out", run, *TINY_SCRIPT]) == 0
    args = compare.build_parser().parse_args(["--dataset", "digits", "--steps", "2", "--out", str(tmp_path)])
    args.image_size = (32, 32)
    compare.check_settings("ebgan", 1, run, args, TINY_SCRIPT)
    with pytest.raises(compare.UserError, match="--width 4, where a new run would get 8"):
        compare.check_settings("ebgan", 1, run, args, ["--width", "8", *TINY_SCRIPT[2:]])


def test_from_copies_an_earlier_comparisons_runs_and_resumes_them(tmp_path, capsys):
    """--from OLD: a run OLD has (fewer steps, same settings) is copied into --out and resumed,
    OLD unchanged; a run of other settings or past --steps is refused in one line before
    anything is copied; the models run (and are listed) in the canonical order."""
    old, new = tmp_path / "old", tmp_path / "new"
    assert run_main("dcgan", ["--dataset", "digits", "--image-size", "32", "--steps", "1", "--seed", "1",
                              "--no-progress", "--out", old / "dcgan" / "seed1", *TINY_SCRIPT]) == 0
    before = (old / "dcgan" / "seed1" / "checkpoint.pt").read_bytes()
    argv = ["--models", "lsgan", "dcgan", "--dataset", "digits", "--steps", "2", "--seeds", "1", "--first-seed", "1",
            "--train-only", "--from", str(old), "--out", str(new), "--"]
    capsys.readouterr()
    assert compare.main(argv + ["--width", "8", *TINY_SCRIPT[2:]]) == 2  # OLD's run has --width 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was trained with --width 4, where a new run would get 8" in err
    assert not new.exists()
    assert compare.main(argv + TINY_SCRIPT) == 0
    err = capsys.readouterr().err
    assert "dcgan seed 1: copied at step 1 from" in err and "dcgan seed 1: training 1 -> 2" in err
    assert err.index("dcgan seed 1: training") < err.index("lsgan seed 1: training 0 -> 2")
    rows = [json.loads(l) for l in (new / "dcgan" / "seed1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # the copied history, then the resumed step
    assert compare.run_step(new / "dcgan" / "seed1", "dcgan") == 2 and not list(new.rglob("*.part"))
    assert (old / "dcgan" / "seed1" / "checkpoint.pt").read_bytes() == before and not (old / "lsgan").exists()
    # NEW's runs (now at step 2) as --from of a 1-step comparison: past --steps, refused
    assert compare.main(["--models", "dcgan", "--dataset", "digits", "--steps", "1", "--seeds", "1",
                         "--first-seed", "1", "--train-only", "--from", str(new), "--out", str(tmp_path / "third"),
                         "--", *TINY_SCRIPT]) == 2
    assert "is at step 2, past --steps 1" in capsys.readouterr().err
    assert not (tmp_path / "third").exists()
    # the same run in --out itself: refused the same way, before anything trains
    assert compare.main(["--models", "lsgan", "dcgan", "--dataset", "digits", "--steps", "1", "--seeds", "1",
                         "--first-seed", "1", "--train-only", "--out", str(new), "--", *TINY_SCRIPT]) == 2
    err = capsys.readouterr().err
    assert "is at step 2, past --steps 1" in err and "training" not in err


def test_fid_without_the_extra_fails_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as where it is not installed
    out = tmp_path / "cmp"
    assert compare.main(["--models", "dcgan", "--dataset", "digits", "--steps", "2", "--seeds", "1", "--fid",
                         "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "FID needs" in line and "pip install -r requirements-fid.txt" in line
    assert not (out / "dcgan").exists()  # nothing trained
