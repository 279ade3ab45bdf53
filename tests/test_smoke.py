"""Every script as a user runs it: a subprocess, a few steps on the built-in digits, and the
whole run directory it must leave (the per-model files test each model's own numbers)."""
import json

import numpy as np
import pytest
import torch

from conftest import MODELS, TINY, run_script

FASTER = {"wgan": ["--n-critic", "1"], "wgan_gp": ["--n-critic", "1"]}  # fewer critic updates, same code path


@pytest.mark.parametrize("model", MODELS)
def test_each_script_trains_and_leaves_a_whole_run_directory(tmp_path, model):
    out = tmp_path / model
    r = run_script(f"{model}.py", *TINY, *FASTER.get(model, []), "--out", out)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and f"{model}: done, step 4" in r.stderr
    for f in ("config.json", "metrics.jsonl", "checkpoint.pt", "timeline.gif", "samples/step_000004.png"):
        assert (out / f).is_file(), f
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 4]
    assert all(np.isfinite(v) for row in rows for v in row.values())
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["model"] == model and ckpt["step"] == 4 and ckpt["config"] == json.loads((out / "config.json").read_text())
