"""The benchmark scripts run (tiny settings) and say which machine their figures are from."""
import math
import sys

import pytest

from conftest import ROOT

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
