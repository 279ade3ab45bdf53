"""ganzoo.fidelity (Inception FID, KID, IS, precision/recall through torch-fidelity) and the
--fid routes of evaluate.py and --eval-every, with an Inception weights file the tests write
(random weights under the architecture's own keys: no machine here can download the real ones).
Run where torch-fidelity imports (pip install -r requirements-fid.txt); with GANZOO_FID_TESTS=required
(CI) a missing torch-fidelity fails the run instead of skipping it."""
import io
import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

if os.environ.get("GANZOO_FID_TESTS") == "required":
    import torch_fidelity  # noqa: F401  (CI: an ImportError here fails instead of skipping)
else:
    pytest.importorskip("torch_fidelity")

import evaluate  # noqa: E402
from conftest import TINY, one_error_line, run_main  # noqa: E402
from ganzoo import fidelity  # noqa: E402
from ganzoo.checkpoint import SNAPSHOT  # noqa: E402
from ganzoo.data import decode_image, load_run_data  # noqa: E402
from ganzoo.errors import UserError  # noqa: E402
from ganzoo.images import save_png, to_uint8  # noqa: E402


def blank_inception_state() -> dict:
    """torch-fidelity's Inception v3 state dict at PyTorch's default initialisation (built
    without its weights: the download it would make is stubbed out)."""
    import torch_fidelity.feature_extractor_inceptionv3 as m

    class Blank(m.FeatureExtractorInceptionV3):
        def load_state_dict(self, sd, *a, **k):
            return None

    orig, m.load_state_dict_from_url = m.load_state_dict_from_url, lambda *a, **k: {}
    try:
        return Blank(fidelity.EXTRACTOR, ["2048"]).state_dict()
    finally:
        m.load_state_dict_from_url = orig


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A weights file of the architecture's own keys and shapes: convolutions and the logits
    layer random with He scaling (activations stay O(1) through the 94 layers)."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in blank_inception_state().items():
        if k.endswith("conv.weight") or k == "fc.weight":
            v = torch.randn(v.shape, generator=g) * math.sqrt(2 / v[0].numel())
        sd[k] = v.clone()
    p = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(sd, p)
    return p


@pytest.fixture(scope="module")
def fe(weights):
    return fidelity.extractor(weights.resolve())[0]


def images(n, shape, seed, power=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((n, *shape), generator=g) ** power * 255).round().to(torch.uint8)


def test_a_set_against_itself_and_against_another(fe):
    """FID of a set against itself is 0 within float error; KID is torch-fidelity's unbiased
    MMD^2 (Binkowski et al. 2018), whose cross term keeps the diagonal: against itself it is
    exactly 2 (mean k(x,y) - mean k(x,x)) / m (x != y off the diagonal), -> 0 as m grows; both
    clearly above that for a set of another distribution."""
    x, y = images(24, (3, 16, 16), 1), images(24, (3, 16, 16), 2, power=3)
    fx, lx = fidelity.features(fe, x)
    fy, ly = fidelity.features(fe, y)
    assert fx.shape == (24, 2048) and lx.shape == (24, 1008) and torch.isfinite(fx).all()
    same, other = fidelity.score(fx, lx, fx), fidelity.score(fy, ly, fx)
    trace = np.trace(np.cov(fx.numpy().astype(np.float64), rowvar=False))
    assert abs(same["fid"]) < 1e-5 * trace
    assert other["fid"] > 1000 * abs(same["fid"]) and other["fid"] > 0.05 * trace
    f = fx.double().numpy()
    k = (f @ f.T / f.shape[1] + 1) ** 3  # the polynomial kernel torch-fidelity uses (degree 3, gamma 1/d, coef 1)
    m = len(f)
    expect = 2 * ((k.sum() - np.trace(k)) / (m * (m - 1)) - k.sum() / m**2)
    assert same["kid_inception"] == pytest.approx(expect, rel=1e-3, abs=1e-9)
    assert other["kid_inception"] > 10 * abs(same["kid_inception"])
    assert same["precision_inception"] == same["recall_inception"] == 1.0  # each point inside its own ball
    assert other["precision_inception"] < 1.0


def test_samples_are_quantised_as_a_png_holds_them(tmp_path, fe, weights):
    """quantise() gives the bytes of the saved PNG, and the features of float samples are those
    of their uint8 values: a change below half a grey level changes nothing."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand((6, 3, 12, 20), generator=g) * 2.4 - 1.2  # out-of-range values are clipped
    q = fidelity.quantise(x)
    assert q.dtype == torch.uint8 and q.shape == (6, 3, 12, 20)
    for i in range(len(x)):
        save_png(to_uint8(x[i:i + 1])[0], tmp_path / f"{i}.png")
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"{i}.png")), q[i].permute(1, 2, 0).numpy())
    centred = q.float() / 127.5 - 1  # grey-level centres, then nudged by a quarter level
    nudged = centred + (torch.rand(centred.shape, generator=g) - 0.5) * (0.5 / 127.5)
    assert torch.equal(fidelity.quantise(nudged), q)
    f = fidelity.Fidelity.__new__(fidelity.Fidelity)  # only the feature path: no reference needed
    f.fe, f.device = fe, torch.device("cpu")
    a, b = f.features(centred), f.features(nudged)
    assert torch.equal(a[0], b[0]) and torch.equal(a[0], fidelity.features(fe, q)[0])


def test_grey_is_repeated_to_three_channels_and_non_square_works(fe):
    grey = images(5, (1, 16, 32), 4)
    fg, lg = fidelity.features(fe, grey)
    fr, lr = fidelity.features(fe, grey.expand(-1, 3, -1, -1))
    assert fg.shape == (5, 2048) and torch.equal(fg, fr) and torch.equal(lg, lr)
    wide = fidelity.features(fe, images(5, (3, 16, 40), 5))[0]  # 16x40: resized to 299x299 in the graph
    assert wide.shape == (5, 2048) and torch.isfinite(wide).all()


class Spy(torch.nn.Module):
    """The extractor, recording every batch it is fed."""

    def __init__(self, fe):
        super().__init__()
        self.fe, self.seen = fe, []

    def forward(self, x):
        self.seen.append(x.clone())
        return self.fe(x)


def draw_folder(root, n=7):
    """n images of other sizes and modes, each with its own content, so that each crop shows."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = (30 + 3 * i, 46 - 2 * i)
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        a[: h // 3] = 255 - 20 * i  # a top band: crops that differ give different images
        Image.fromarray(a).convert("RGBA" if i % 3 == 0 else "RGB").save(root / f"{i}.png")
    return root


def folder_cfg(root, hw=(16, 32), crop="aspect", channels=3):
    return {"dataset": "folder", "path": str(root), "image_size": list(hw), "channels": channels, "crop": crop,
            "limit": None}


def spied(monkeypatch, weights, fe):
    spy = Spy(fe)
    monkeypatch.setattr(fidelity, "extractor", lambda p: (spy, "0" * 64))
    return spy


def rows_as_set(x: torch.Tensor):
    return sorted(t.numpy().tobytes() for t in x)


@pytest.mark.parametrize("crop,hw,channels", [("aspect", (16, 32), 3), ("20x20", (16, 16), 3), ("aspect", (16, 16), 1)])
def test_the_folder_route_feeds_exactly_the_training_crop(tmp_path, monkeypatch, weights, fe, crop, hw, channels):
    """The real images torch-fidelity's extractor gets are the training loader's: each file
    through the run's crop and resize (decode_image), grey repeated to three channels."""
    monkeypatch.setenv("GANZOO_CACHE", str(tmp_path / "cache"))
    root = draw_folder(tmp_path / "imgs")
    spy = spied(monkeypatch, weights, fe)
    cfg = folder_cfg(root, hw, crop, channels)
    f = fidelity.Fidelity(cfg, 50, weights)
    fed = torch.cat(spy.seen)
    want = torch.stack([torch.from_numpy(decode_image(root / f"{i}.png", hw, channels, crop)) for i in range(7)])
    assert fed.shape == (7, 3, *hw)
    assert rows_as_set(fed) == rows_as_set(want.expand(-1, 3, -1, -1))
    assert rows_as_set(want) == rows_as_set(load_run_data(cfg).x)  # what the training loop gets
    assert f.real.shape == (7, 2048) and f.reference.endswith("7 of 7") and f"crop {crop}" in f.reference


def test_the_real_features_are_cached_and_rebuilt_when_the_folder_changes(tmp_path, monkeypatch, weights, fe):
    monkeypatch.setenv("GANZOO_CACHE", str(tmp_path / "cache"))
    root = draw_folder(tmp_path / "imgs", 5)
    spy = spied(monkeypatch, weights, fe)
    first = fidelity.Fidelity(folder_cfg(root), 50, weights)
    assert not first.from_cache and len(spy.seen) == 1
    again = fidelity.Fidelity(folder_cfg(root), 50, weights)
    assert again.from_cache and len(spy.seen) == 1 and torch.equal(again.real, first.real)  # nothing fed
    assert again.reference == first.reference and again.cache == first.cache
    other_crop = fidelity.Fidelity(folder_cfg(root, crop="20x20"), 50, weights)
    assert not other_crop.from_cache and other_crop.cache != first.cache
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "new.png")  # the folder changes
    changed = fidelity.Fidelity(folder_cfg(root), 50, weights)
    assert not changed.from_cache and changed.real.shape == (6, 2048) and changed.reference.endswith("6 of 6")
    os.utime(root / "0.png", ns=(1, 10**18))  # a file rewritten in place (its time changes)
    assert not fidelity.Fidelity(folder_cfg(root), 50, weights).from_cache
    assert torch.load(changed.cache, weights_only=True)["real"].shape == (6, 2048)  # plain tensors


class Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_a_weights_file_that_would_run_code_is_refused(tmp_path, weights):
    sd = torch.load(weights, weights_only=True)
    sd["fc.bias"] = Payload(str(tmp_path / "ran"))
    evil = tmp_path / "evil.pth"
    torch.save(sd, evil)
    with pytest.raises(UserError) as e:
        fidelity.extractor(evil.resolve())
    msg = str(e.value)
    assert "\n" not in msg and "refused" in msg and "mkdir" in msg and fidelity.WEIGHTS_FILE in msg
    assert not (tmp_path / "ran").exists()  # the payload never ran


def test_weights_of_another_architecture_in_one_line(tmp_path, weights):
    sd = torch.load(weights, weights_only=True)
    sd["extra.weight"] = sd.pop("Mixed_7c.branch_pool.conv.weight")
    p = tmp_path / "other.pth"
    torch.save(sd, p)
    with pytest.raises(UserError) as e:
        fidelity.extractor(p.resolve())
    msg = str(e.value)
    assert "\n" not in msg and "1 missing, e.g. Mixed_7c.branch_pool.conv.weight" in msg
    assert "1 unexpected, e.g. extra.weight" in msg
    sd = torch.load(weights, weights_only=True)
    sd["fc.weight"] = torch.zeros(10, 2048)
    torch.save(sd, p)
    with pytest.raises(UserError, match="other shapes, e.g. fc.weight"):
        fidelity.extractor(p.resolve())
    torch.save([1, 2], p)
    with pytest.raises(UserError, match="not a state dict of tensors"):
        fidelity.extractor(p.resolve())


def test_each_missing_piece_in_one_line(tmp_path, monkeypatch):
    for blocked, words in (("torch_fidelity", "requirements-fid.txt"), ("torchvision", "torchvision")):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, blocked, None)  # import fails as when it is not installed
            with pytest.raises(UserError) as e:
                fidelity.require()
        assert words in str(e.value) and "\n" not in str(e.value)
    monkeypatch.delenv(fidelity.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no weights in torch's hub folder

    def offline(url, dst, **k):
        import urllib.error
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as e:
        fidelity.weights_path(None)
    assert "--inception-weights PATH" in str(e.value) and fidelity.WEIGHTS_ENV in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="no such file"):
        fidelity.weights_path(str(tmp_path / "nowhere.pth"))
    monkeypatch.setenv(fidelity.WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(UserError, match="no such file"):
        fidelity.weights_path(None)


def test_a_folder_run_logs_fid_and_evaluate_gives_a_row_per_snapshot(tmp_path, monkeypatch, capsys, weights):
    """--eval-every on a folder logs fid_<n>, kid_inception_<n>, ... (n shrunk to 20 here);
    evaluate.py --fid gives one row per snapshot with the protocol (n, reference, size), the
    curve beside the table, and the real row; a code-carrying weights file is refused in one line."""
    monkeypatch.setenv("GANZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(fidelity.WEIGHTS_ENV, str(weights))
    monkeypatch.setattr(fidelity, "TRAINING_N", 20)
    root = draw_folder(tmp_path / "imgs", 10)
    run = tmp_path / "run"
    argv = TINY + ["--path", root, "--image-size", "16x32", "--batch-size", "4", "--out", run]
    assert run_main("dcgan", argv[:1] + ["2"] + argv[2:] + ["--eval-every", "2"]) == 0
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "fid_20" in r]
    assert [r["step"] for r in evals] == [2]
    assert set(evals[0]) == {"step", "fid_20", "kid_inception_20", "is_20", "precision_inception_20",
                             "recall_inception_20"}
    assert evals[0]["fid_20"] > 0
    (run / SNAPSHOT.format(step=2)).write_bytes((run / "checkpoint.pt").read_bytes())
    assert run_main("dcgan", ["--resume", run, "--steps", "4", "--no-progress"]) == 0
    capsys.readouterr()
    assert evaluate.main([str(run), "--fid", "--n", "20", "--real", "--json", str(tmp_path / "t.json"),
                          "--markdown", str(tmp_path / "t.md")]) == 0
    out, err = capsys.readouterr()
    rows = json.loads((tmp_path / "t.json").read_text())
    assert [(r["model"], r["step"], r["n"]) for r in rows] == [("dcgan", 2, 20), ("dcgan", 4, 20), ("real data", 0, 10)]
    assert rows[0]["checkpoint"].endswith(SNAPSHOT.format(step=2)) and rows[1]["checkpoint"].endswith("checkpoint.pt")
    assert all(r["image_size"] == "16x32" and r["reference"].endswith(": 10 of 10") for r in rows)
    assert rows[0]["fid"] == pytest.approx(evals[0]["fid_20"], rel=1e-4)  # the hook's samples at step 2
    assert abs(rows[2]["fid"]) < 1e-3 * rows[0]["fid"]  # all 10 images on both sides: the same set
    assert "| model | step | generator | dataset | image_size | n | fid |" in out and "torch-fidelity" in out
    png = tmp_path / "t-curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in err
    sd = torch.load(weights, weights_only=True)
    sd["fc.bias"] = Payload(str(tmp_path / "ran"))
    torch.save(sd, tmp_path / "evil.pth")
    fidelity.extractor.cache_clear()
    assert evaluate.main([str(run), "--fid", "--n", "20", "--inception-weights", str(tmp_path / "evil.pth")]) == 2
    assert "refused" in one_error_line(capsys.readouterr().err) and not (tmp_path / "ran").exists()


def test_fid_of_a_labelled_run_names_its_training_split(tmp_path, monkeypatch, capsys, weights):
    monkeypatch.setenv("GANZOO_CACHE", str(tmp_path / "cache"))
    assert run_main("dcgan", TINY + ["--out", tmp_path / "r"]) == 0
    capsys.readouterr()
    assert evaluate.main([str(tmp_path / "r"), "--fid", "--n", "20", "--inception-weights", str(weights),
                          "--json", str(tmp_path / "t.json")]) == 0
    row = json.loads((tmp_path / "t.json").read_text())[0]
    assert row["reference"] == "digits training split: 20 of 1,797" and row["image_size"] == "16"
    assert row["fid"] > 0 and 0 <= row["precision_inception"] <= 1


def test_a_folder_run_without_weights_is_refused_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(fidelity.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("Network is unreachable")))
    root = draw_folder(tmp_path / "imgs", 4)
    assert run_main("dcgan", TINY + ["--path", root, "--eval-every", "2", "--out", tmp_path / "r"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--eval-every on a folder logs Inception FID" in line and "--inception-weights" in line
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_compare_fid_adds_the_inception_columns(tmp_path, monkeypatch, capsys, weights):
    import compare
    monkeypatch.setenv("GANZOO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cmp"
    argv = ["--models", "dcgan", "--dataset", "digits", "--image-size", "16", "--steps", "2", "--seeds", "1",
            "--n", "20", "--gallery-n", "2", "--fid", "--inception-weights", str(weights), "--out", str(out), "--",
            "--width", "4", "--batch-size", "8", "--checkpoint-every", "1", "--log-every", "1"]
    assert compare.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["models"]["dcgan"]) >= set(fidelity.METRICS) | {"fd", "kl"}
    assert res["models"]["dcgan"]["fid"]["values"][0] > 0 and res["real"]["fid"] >= 0
    md = (out / "results.md").read_text()
    assert "| fid | kid_inception | is |" in md and "digits training split: 20 of 1,797" in md
    assert "torch-fidelity" in md
