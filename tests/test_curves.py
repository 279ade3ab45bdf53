"""ganzoo/curves.py and compare.py --curves: the points read from a comparison's runs
(metrics.jsonl's --eval-every rows, eval.json) and from the markdown tables compare.py writes
(and the docs pages that keep them), their means and spreads, the PNG, and the one-line
error when matplotlib is missing."""
import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

import compare
from conftest import ROOT, one_error_line
from ganzoo import curves

# Two models x two seeds, --eval-every 2 over 4 steps: (model, seed) -> {step: (kl, fd)}
EVALS = {("dcgan", 10): {2: (0.50, 40.0), 4: (0.20, 20.0)},
         ("dcgan", 11): {2: (0.70, 44.0), 4: (0.30, 30.0)},
         ("wgan", 10): {2: (0.90, 60.0), 4: (0.60, 50.0)},
         ("wgan", 11): {2: (1.10, 64.0), 4: (0.80, 54.0)}}


@pytest.fixture
def runs(tmp_path):
    """A comparison's folder as compare.py leaves it: OUT/<model>/seed<k>/ with config.json,
    metrics.jsonl (training rows and --eval-every rows) and, for dcgan seed 11, eval.json (the
    table's score of step 4, which differs from its eval row there: another draw of samples)."""
    out = tmp_path / "cmp"
    for (model, seed), evals in EVALS.items():
        run = out / model / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"model": model, "seed": seed, "dataset": "digits",
                                                      "image_size": [8, 8], "steps": 4}))
        rows = []
        for step in (1, 2, 3, 4):
            rows.append({"step": step, "loss_d": 0.5, "loss_g": 1.0, "images_per_s": 100.0, "steps_per_s": 2.0})
            if step in evals:
                kl, fd = evals[step]
                rows.append({"step": step, "classes": 10, "kl": kl, "confident": 0.5, "fd": fd})
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "dcgan" / "seed11" / "eval.json").write_text(json.dumps(
        {"key": {"step": 4}, "row": {"model": "dcgan", "step": 4, "classes": 10, "kl": 0.40, "fd": 32.0}}))
    return out


def test_points_from_the_runs_metrics(runs):
    c = curves.read([runs])
    assert (c.dataset, c.image_size, c.seeds) == ("digits", "8x8", {10, 11})
    assert set(c.models()) == {"dcgan", "wgan"}
    kl = c.lines[("dcgan", "kl")]
    assert [p.step for p in kl] == [2, 4] and [p.n for p in kl] == [2, 2]
    assert kl[0].values == (0.5, 0.7) and kl[0].mean == pytest.approx(0.6)
    assert kl[0].std == pytest.approx(np.std([0.5, 0.7], ddof=1)) == pytest.approx(0.1414214, rel=1e-6)
    assert kl[1].values == (0.2, 0.4)  # seed 11's eval.json (0.40) wins over its eval row (0.30) at step 4
    fd = c.lines[("wgan", "fd")]
    assert [(p.mean, round(p.std, 6)) for p in fd] == [(62.0, round(2 * 2 ** 0.5, 6)), (52.0, round(2 * 2 ** 0.5, 6))]
    assert ("dcgan", "loss_d") not in c.lines and ("dcgan", "classes") in c.lines  # training rows are not points


def test_a_folder_without_runs_and_a_missing_source_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert compare.main(["--curves", str(tmp_path / "empty")]) == 2
    assert "no run below it" in one_error_line(capsys.readouterr().err)
    assert compare.main(["--curves", str(tmp_path / "nothing.md")]) == 2
    assert "no such file or folder" in one_error_line(capsys.readouterr().err)
    (tmp_path / "notes.md").write_text("# Notes\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert compare.main(["--curves", str(tmp_path / "notes.md")]) == 2
    assert "no table of compare.py" in one_error_line(capsys.readouterr().err)


TABLES = """\
# Two-way comparison (dcgan, wgan): stacked-mnist at 28x28, 2000 generator updates, seeds 10, 11, 12

| model | modes | confident_modes | kl | images/s | wall time (min) | runs |
|---|---|---|---|---|---|---|
| dcgan | 916.7 ± 25 | 403.3 ± 12 | 0.7243 ± 0.051 | 841 | 5.1 | 3/3 |
| wgan | failed | | | | | 0/3 |
| real data | 1000 | 1000 | 0.01928 | | | |

## Seven-way comparison: stacked-mnist at 28x28, 4000 generator updates, seeds 10, 11, 12

| model | modes | confident_modes | kl | images/s | wall time (min) | runs |
|---|---|---|---|---|---|---|
| dcgan | 991.7 ± 4.7 | 749 ± 38 | 0.27 ± 0.021 | 786 | 10.9 | 3/3 |

## Each run

| model | confident_modes | kl |
|---|---|---|
| dcgan | 718 / 792 / 737 | 0.294 / 0.252 / 0.264 |

## wgan alone: stacked-mnist at 28x28, 8000 generator updates, seeds 10, 11

| model | seed | modes | confident_modes | kl | min |
|---|---|---|---|---|---|
| wgan | 10 | 979 | 519 | 0.466 | 29.9 |
| wgan | 11 | 987 | 571 | 0.397 | 29.6 |

## The earlier table (replaced)

### Seven-way comparison: stacked-mnist at 28x28, 2000 generator updates, seeds 10, 11, 12

| model | modes | confident_modes | kl | runs |
|---|---|---|---|---|
| dcgan | 851.7 ± 47 | 223.3 ± 28 | 1.024 ± 0.19 | 3/3 |
"""


def test_points_from_markdown_tables(tmp_path):
    """Summary cells (mean ± std over the runs), per-seed rows and a / b / c cells; the real
    data's row; a failed model no point; the earlier (replaced) table under its heading skipped."""
    md = tmp_path / "results.md"
    md.write_text(TABLES)
    c = curves.read([md])
    assert (c.dataset, c.image_size, c.seeds) == ("stacked-mnist", "28x28", {10, 11, 12})
    assert c.real == {"modes": 1000.0, "confident_modes": 1000.0, "kl": 0.01928}
    cm = c.lines[("dcgan", "confident_modes")]
    assert [(p.step, p.mean, p.std, p.n) for p in cm] == [(2000, 403.3, 12.0, 3), (4000, 749.0, 38.0, 3)]
    assert cm[1].values == (718.0, 792.0, 737.0)  # the a / b / c cells, seeds 10 / 11 / 12
    wgan = c.lines[("wgan", "kl")]  # only the per-seed rows at 8,000: mean and std computed here
    assert [p.step for p in wgan] == [8000] and wgan[0].n == 2 and wgan[0].values == (0.466, 0.397)
    assert wgan[0].mean == pytest.approx(0.4315) and wgan[0].std == pytest.approx(0.04879037, rel=1e-6)
    assert [p.step for p in c.lines[("dcgan", "modes")]] == [2000, 4000]  # not the replaced 851.7 at 2,000
    assert c.lines[("dcgan", "modes")][0].mean == 916.7


def test_the_table_compare_py_writes_reads_back(tmp_path):
    """compare.report's own results.md (two models, two seeds, a failed run) gives back each
    model's mean and std of the runs, to the digits the table prints; its title names the models."""
    args = types.SimpleNamespace(image_size=(28, 28), models=["lsgan", "ebgan"], dataset="fashion-mnist",
                                 steps=3000, n=100, fid=False)
    judge = types.SimpleNamespace(stacked=False, device=torch.device("cpu"), source="fashion-mnist", accuracy=0.9)
    keys = ["classes", "kl", "confident", "fd", "kid", "precision", "recall", "density", "coverage"]
    rng = np.random.default_rng(0)
    runs = [{"model": m, "seed": s, "failed": None, **{k: float(rng.uniform(0.01, 30)) for k in keys},
             "images_per_s": 100.0, "wall_s": 60.0} for m in ("lsgan", "ebgan") for s in (10, 11)]
    runs.append({"model": "ebgan", "seed": 12, "failed": "exit 1: diverged"})
    text, _ = compare.report(args, [], [], runs, {k: 0.5 for k in keys}, judge)
    assert text.startswith("# Two-way comparison (lsgan, ebgan): fashion-mnist at 28x28, 3000 generator updates, "
                           "seeds 10, 11, 12")
    (tmp_path / "results.md").write_text(text)
    c = curves.read([tmp_path / "results.md"])
    for m in ("lsgan", "ebgan"):
        for k in ("kl", "fd"):
            v = [r[k] for r in runs if r["model"] == m and not r["failed"]]
            (p,) = c.lines[(m, k)]
            assert (p.step, p.n) == (3000, 2)
            assert p.mean == pytest.approx(np.mean(v), rel=1e-3) and p.std == pytest.approx(np.std(v, ddof=1), rel=0.05)
    assert c.real["kl"] == 0.5


def test_the_docs_tables_give_the_pictures_points():
    """The points of docs/curves-stacked-mnist.png: the present tables of the docs page (the
    replaced 'Earlier table' skipped), a curve per model over the budgets it was scored at."""
    c = curves.read([ROOT / "docs" / "stacked-mnist-results.md"])
    steps = {m: [p.step for p in c.lines[(m, "confident_modes")]] for m in c.models()}
    assert steps == {"dcgan": [2000, 4000, 8000], "lsgan": [2000, 4000, 8000, 12000, 16000, 20000, 24000],
                     "wgan": [2000, 4000, 8000], "wgan_gp": [2000, 4000], "dragan": [2000, 4000, 8000, 12000],
                     "ebgan": [2000, 4000], "began": [2000, 4000, 8000]}
    assert c.lines[("wgan", "modes")][0].mean == 946.7  # the 1e-3 runs' row, not the earlier table's 880
    dcgan8k = c.lines[("dcgan", "confident_modes")][2]
    assert (dcgan8k.mean, dcgan8k.std, dcgan8k.values) == (937.3, 5.9, (944.0, 935.0, 933.0))
    f = curves.read([ROOT / "docs" / "fashion-mnist-results.md", ROOT / "docs" / "fashion-mnist-8000-results.md"])
    kl = f.lines[("dcgan", "kl")]
    assert [(p.step, p.mean, p.n) for p in kl] == [(2000, 0.07109, 3), (8000, 0.02097, 1)]
    assert kl[0].values == (0.0741, 0.0748, 0.0644)  # its "Each run" table, seeds 10 / 11 / 12


def test_two_data_sets_are_refused(runs, tmp_path, capsys):
    md = tmp_path / "results.md"
    md.write_text(TABLES)
    assert compare.main(["--curves", str(runs), str(md)]) == 2
    assert "curves of one data set at a time" in one_error_line(capsys.readouterr().err)


def test_the_png_is_written(runs, tmp_path, capsys):
    png = tmp_path / "curves.png"
    assert compare.main(["--curves", str(runs), "--metrics", "kl", "fd", "classes", "--png", str(png)]) == 0
    assert f"wrote {png}" in capsys.readouterr().out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 2 * im.height > 300
    assert compare.main(["--curves", str(runs), "--models", "wgan"]) == 0  # default: curves.png in the folder
    assert (runs / "curves.png").is_file()
    md = tmp_path / "results.md"
    md.write_text(TABLES)
    assert compare.main(["--curves", str(md)]) == 0  # default metrics for a stacked set; results-curves.png
    assert (tmp_path / "results-curves.png").is_file()


def test_without_matplotlib_one_line_and_exit_2(runs, tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib... raises ImportError
    assert compare.main(["--curves", str(runs), "--png", str(tmp_path / "c.png")]) == 2
    assert one_error_line(capsys.readouterr().err).endswith(  # "compare.py: error: ..." (prog is argv[0])
        ": error: drawing curves needs matplotlib (pip install matplotlib)")
    assert not (tmp_path / "c.png").exists()


def test_log_axis_ticks_do_not_overprint():
    assert curves.tick_steps([2000, 4000, 8000, 12000, 16000, 20000, 24000]) == [2000, 4000, 8000, 12000, 16000, 24000]
    assert curves.tick_steps([2000]) == [2000]
