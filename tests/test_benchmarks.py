"""The benchmark scripts run (tiny settings) and say which machine their figures are from."""
import math
import sys

import pytest

import torch

from conftest import ROOT, TINY, one_error_line, run_main

sys.path.insert(0, str(ROOT / "benchmarks"))
import auto_quality  # noqa: E402
import train_speed  # noqa: E402


def test_train_speed_times_auto_off_and_the_reference(capsys):
    train_speed.main(["--models", "dcgan", "--image-size", "16", "--batch-size", "4", "--settings", "reference",
                      "auto", "off", "--warmup", "0", "--steps", "1", "--repeats", "2", "--markdown"])
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("device: CPU") and "features" in first and "median of 2 rounds of 1 steps" in first
    rows = {l.split("|")[2].strip(): l for l in out.splitlines() if l.startswith("| dcgan |")}
    assert set(rows) == {"reference", "auto", "off"}
    assert "amp off, channels_last off, compile off" in rows["off"]
    assert "compile off" in rows["auto"] and "amp auto" not in rows["auto"]  # auto shown resolved
    assert "1.00x" in rows["off"].split("|")[7] and "1.00x" in rows["reference"].split("|")[8]


def test_auto_quality_spread_is_the_largest_seed_to_seed_difference():
    assert auto_quality.spread([[0.1, 0.4], [0.2, 0.25]]) == pytest.approx(0.3)
    assert math.isnan(auto_quality.spread([[1.0], [2.0]]))  # one seed each: no spread to compare with


def test_d_memorisation_reads_d_on_trained_and_held_out_images(tmp_path, capsys):
    import d_memorisation
    import evaluate
    from ganzoo.data import load_run_data, to_signed
    assert run_main("dcgan", TINY + ["--limit", "40", "--out", tmp_path / "r"]) == 0
    model, ckpt = evaluate.load_model(tmp_path / "r", torch.device("cpu"))

    class PixelMean(torch.nn.Module):  # a "D" whose output is known: each image's mean pixel
        def forward(self, x):
            return x.mean((1, 2, 3))
    model.D = PixelMean()
    r = d_memorisation.readout(model, ckpt["config"])
    x = to_signed(load_run_data({**ckpt["config"], "limit": None}).batch(torch.arange(80)))
    assert r["trained"][0] == pytest.approx(float(x[:40].mean()), abs=1e-5)    # the first 40: trained on
    assert r["held_out"][0] == pytest.approx(float(x[40:].mean()), abs=1e-5)   # the next 40: never seen
    assert r["trained"][2] == -1.0  # every digit is mostly black: a negative mean, E[sign] = -1
    capsys.readouterr()
    assert d_memorisation.main([str(tmp_path / "r")]) == 0
    assert "trained - held-out" in capsys.readouterr().out
    assert run_main("dcgan", TINY + ["--out", tmp_path / "all"]) == 0  # no --limit: refused in one line
    capsys.readouterr()
    assert d_memorisation.main([str(tmp_path / "all")]) == 2
    assert "--limit" in one_error_line(capsys.readouterr().err)


def test_folder_cache_check_times_the_check_of_a_synthetic_cache_and_deletes_it(tmp_path, capsys):
    import folder_cache
    folder_cache.main(["--check", "--n", "300", "--image-size", "16", "--dir", str(tmp_path), "--repeats", "2",
                       "--markdown"])
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("CPU") and "features" in first and "GiB RAM" in first
    assert "300 images 3x16x16 uint8: 0.00 GB" in first  # 230,528 bytes with the .npy header
    rows = {l.split("|")[1].strip(): l for l in out.splitlines() if l.startswith("| ")}
    assert {"cold: the check", "warm: the check (median of 2)", "build: the checksums a first run writes"} <= set(rows)
    assert all(float(r.split("|")[2]) > 0 for k, r in rows.items() if k != "what")
    assert list(tmp_path.iterdir()) == []  # the synthetic cache is deleted
