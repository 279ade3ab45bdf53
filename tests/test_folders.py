"""Your own photos: the decoded-data cache (built, reused without decoding, rebuilt when a file
changes or the cache is corrupt), symlinked folders and loops, each --crop's geometry on
images of known content, and --flip's statistics and exact resume."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import ganzoo.data as data_mod
from ganzoo.batches import Batches
from ganzoo.cli import crop_spec
from ganzoo.data import decode_image, list_images, load_folder, to_signed
from conftest import random_pics, run_main


def pics(root, n=6):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((24, 24, 3), 20 * i, np.uint8)).save(root / f"{i}.png")
    return root


def test_the_decoded_cache_is_built_reused_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("GANZOO_CACHE", str(tmp_path / "cache"))
    root = pics(tmp_path / "imgs")
    first = load_folder(root, (16, 16), 3, 0, 2**30)
    assert "decoded once into the cache" in first.note
    calls = []
    monkeypatch.setattr(data_mod, "decode_image", lambda *a, **k: calls.append(1))
    second = load_folder(root, (16, 16), 3, 0, 2**30)
    assert calls == [] and "memory-mapped" in second.note and torch.equal(second.x, first.x)  # no decode
    monkeypatch.undo()
    monkeypatch.setenv("GANZOO_CACHE", str(tmp_path / "cache"))
    Image.fromarray(np.full((24, 24, 3), 255, np.uint8)).save(root / "0.png")  # a file changes
    os.utime(root / "0.png", ns=(1, 10**18))
    third = load_folder(root, (16, 16), 3, 0, 2**30)
    assert "decoded once" in third.note and int(third.x[0].min()) == 255
    for npy in (tmp_path / "cache" / "data").glob("*.npy"):  # a corrupt cache is rebuilt, never trusted
        npy.write_bytes(b"garbage")
    fourth = load_folder(root, (16, 16), 3, 0, 2**30)
    assert "(rebuilt)" in fourth.note and torch.equal(fourth.x, third.x)
    assert "decoded" not in load_folder(root, (16, 16), 3, 0, 2**30, cache=False).note  # --no-cache


def the_cache(tmp_path):
    (npy,) = (tmp_path / "cache" / "data").glob("*.npy")
    return npy


def test_a_cache_whose_bytes_changed_is_rebuilt_with_one_line(tmp_path, monkeypatch, capsys):
    """Issue 41: 50 images' worth of the decoded cache overwritten with zeros (the same file
    size) was memory-mapped and trained on without a word. Its crc32s no longer match: one line
    names the cache and says it is rebuilt, and the data are a fresh decode's."""
    monkeypatch.setenv("GANZOO_CACHE", str(tmp_path / "cache"))
    root = random_pics(tmp_path / "imgs", n=60)
    fresh = load_folder(root, (16, 16), 3, 0, 2**30, cache=False).x
    assert torch.equal(load_folder(root, (16, 16), 3, 0, 2**30).x, fresh)
    npy = the_cache(tmp_path)
    size, header = npy.stat().st_size, npy.stat().st_size - fresh.numel()
    with open(npy, "r+b") as f:  # images 5..54 zeroed, in place
        f.seek(header + 5 * 3 * 16 * 16)
        f.write(bytes(50 * 3 * 16 * 16))
    assert npy.stat().st_size == size
    capsys.readouterr()
    data = load_folder(root, (16, 16), 3, 0, 2**30)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(npy) in err[0] and "checksum does not match" in err[0] and "rebuilding" in err[0]
    assert "(rebuilt)" in data.note and torch.equal(data.x, fresh)
    again = load_folder(root, (16, 16), 3, 0, 2**30)  # the rebuilt copy is sound: mapped, no line
    assert "memory-mapped" in again.note and torch.equal(again.x, fresh) and capsys.readouterr().err == ""
    with open(npy, "r+b") as f:  # one bit of the last image flipped: found too
        f.seek(size - 1)
        b = f.read(1)
        f.seek(size - 1)
        f.write(bytes([b[0] ^ 1]))
    assert torch.equal(load_folder(root, (16, 16), 3, 0, 2**30).x, fresh)
    assert "checksum does not match" in capsys.readouterr().err


def test_a_run_on_a_changed_cache_says_so_once_and_trains_on_the_images(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GANZOO_CACHE", str(tmp_path / "cache"))
    root = random_pics(tmp_path / "imgs", n=16)
    argv = ["--path", root, "--steps", "2", "--batch-size", "4", "--width", "4", "--image-size", "16",
            "--no-progress", "--sample-every", "2", "--checkpoint-every", "2"]
    assert run_main("dcgan", argv + ["--out", tmp_path / "a"]) == 0
    npy = the_cache(tmp_path)
    raw = bytearray(npy.read_bytes())
    raw[-16 * 16 * 16 * 3:] = bytes(16 * 16 * 16 * 3)  # every image zeroed: any batch would differ
    npy.write_bytes(bytes(raw))
    capsys.readouterr()
    assert run_main("dcgan", argv + ["--out", tmp_path / "b"]) == 0
    err = capsys.readouterr().err
    assert sum("rebuilding it from the images" in l for l in err.splitlines()) == 1
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("a", "b"))
    assert all(torch.equal(v, b["nets"]["G"][k]) for k, v in a["nets"]["G"].items())  # the same data


def test_a_cache_without_a_checksum_is_rebuilt_once(tmp_path, monkeypatch, capsys):
    """A copy written before the checksums may already be the changed one: it is rebuilt (one
    line), never blessed with a checksum of what it holds now."""
    import json
    monkeypatch.setenv("GANZOO_CACHE", str(tmp_path / "cache"))
    root = random_pics(tmp_path / "imgs", n=8)
    fresh = load_folder(root, (16, 16), 3, 0, 2**30).x
    meta = the_cache(tmp_path).with_suffix(".json")
    info = json.loads(meta.read_text())
    assert info["bytes"] == the_cache(tmp_path).stat().st_size and len(info["crc32"]) == 1
    meta.write_text(json.dumps({k: info[k] for k in ("files", "images", "skipped")}))  # the old format
    np.save(the_cache(tmp_path), np.zeros((8, 3, 16, 16), np.uint8))  # and what it holds changed
    capsys.readouterr()
    data = load_folder(root, (16, 16), 3, 0, 2**30)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "without a checksum" in line and "rebuilding" in line and torch.equal(data.x, fresh)
    assert json.loads(meta.read_text())["crc32"] == info["crc32"]


def test_the_checksum_is_crc32_per_chunk_the_same_on_threads(tmp_path):
    import zlib
    f = tmp_path / "blob"
    raw = np.random.default_rng(1).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    f.write_bytes(raw)
    want = [zlib.crc32(raw[i:i + 4096]) for i in (0, 4096, 8192)]
    assert data_mod.file_checksum(f, 4096, threads=1) == data_mod.file_checksum(f, 4096, threads=2) == want
    assert data_mod.file_checksum(f) == [zlib.crc32(raw)]


def test_under_torchrun_local_rank_0_checks_and_rebuilds_the_others_map_it(tmp_path, monkeypatch):
    """Two ranks on a node sharing a changed cache: local rank 0 finds the mismatch and rebuilds
    (one line), rank 1 waits and maps the rebuilt copy without reading it all again."""
    from test_torchrun import LOAD, _torchrun
    monkeypatch.setenv("GANZOO_CACHE", str(tmp_path / "cache"))
    root = random_pics(tmp_path / "imgs", n=12)
    fresh = load_folder(root, (16, 16), 3, 0, 2**30).x
    npy = the_cache(tmp_path)
    raw = bytearray(npy.read_bytes())
    raw[-3 * 16 * 16:] = bytes(3 * 16 * 16)
    npy.write_bytes(bytes(raw))
    run = tmp_path / "run"
    run.mkdir()
    r, (r0, r1) = _torchrun(run, LOAD, root, "cache")
    assert r.returncode == 0, r.stderr
    assert (r0["decoded"], r1["decoded"]) == (12, 0)
    assert sum("rebuilding it from the images" in l for l in r.stderr.splitlines()) == 1
    import hashlib
    assert r0["sha"] == r1["sha"] == hashlib.sha256(fresh.contiguous().numpy().tobytes()).hexdigest()
    checked = []
    monkeypatch.setattr(data_mod, "file_checksum", lambda *a, **k: checked.append(1) or [])
    data_mod.cached_folder(npy, 12, (3, 16, 16), verify=False)
    assert checked == []


def test_a_run_uses_the_cache_and_resumes_on_it(tmp_path):
    root = pics(tmp_path / "imgs", n=8)
    argv = ["--path", root, "--batch-size", "4", "--width", "4", "--image-size", "16", "--log-every", "1",
            "--sample-every", "2", "--checkpoint-every", "2", "--no-progress"]
    assert run_main("dcgan", argv + ["--steps", "4", "--out", tmp_path / "full"]) == 0
    assert run_main("dcgan", argv + ["--steps", "2", "--out", tmp_path / "half"]) == 0  # from the cache
    assert run_main("dcgan", ["--resume", tmp_path / "half", "--steps", "4", "--no-progress"]) == 0
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("full", "half"))
    assert all(torch.equal(v, b["nets"]["G"][k]) for k, v in a["nets"]["G"].items())


def test_symlinked_files_and_folders_are_followed_once_and_loops_end(tmp_path):
    real = pics(tmp_path / "big" / "celeba", n=3)
    root = tmp_path / "data"
    root.mkdir()
    (root / "celeba").symlink_to(real, target_is_directory=True)  # the shared-machine set-up
    (root / "again").symlink_to(real, target_is_directory=True)   # the same folder twice: counted once
    (root / "one.png").symlink_to(real / "0.png")                   # a linked file that is already counted
    (real / "loop").symlink_to(root, target_is_directory=True)      # a loop back to the top
    (root / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    files = list_images(root)
    assert len(files) == 3 and len({os.path.realpath(f) for f in files}) == 3


def test_the_forked_stat_pass_agrees_with_the_serial_one(tmp_path):
    """A big folder's files are stat-ed in forked processes: the same rows as one process,
    in the same order, a file gone since the listing marked -1."""
    paths = [str(f) for f in sorted(pics(tmp_path / "imgs", n=7).iterdir())] + [str(tmp_path / "gone.png")]
    serial = data_mod.stat_files(paths, parallel_from=10**9)
    forked = data_mod.stat_files(paths, parallel_from=1)
    assert np.array_equal(serial, forked) and serial.shape == (8, 4)
    assert serial[-1].tolist() == [-1] * 4 and serial[0, 0] == os.path.getsize(paths[0])
    files, stats = data_mod.scan_images(tmp_path / "imgs")
    assert files == paths[:-1] and stats.tolist() == serial[:-1, :2].tolist()


def test_the_stat_pass_without_a_process_to_fork_stats_here_and_leaks_no_pipe(tmp_path, monkeypatch):
    paths = [str(f) for f in sorted(pics(tmp_path / "imgs", n=5).iterdir())]
    serial = data_mod.stat_files(paths, parallel_from=10**9)
    open_fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None

    def no_fork():
        raise OSError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(os, "fork", no_fork)
    assert np.array_equal(data_mod.stat_files(paths, parallel_from=1), serial)
    if open_fds is not None:
        assert len(os.listdir("/proc/self/fd")) == open_fds


@pytest.mark.parametrize("crop,expect", [
    ("aspect", (40, 40)),   # the centre 40x40 of an 80x40 image
    ("20", (20, 20)),       # the centre 20x20 pixels
    ("10x30", (10, 30)),    # H x W
    ("none", (40, 80)),     # the whole image, squeezed
])
def test_each_crop_takes_the_region_it_names(tmp_path, crop, expect):
    """An 80x40 (W x H) image whose every column holds its x coordinate: the mean and range of
    x in the decoded image tell which columns the crop kept."""
    cols = np.tile(np.arange(80, dtype=np.uint8) * 3, (40, 1))
    Image.fromarray(cols).save(tmp_path / "x.png")
    out = decode_image(tmp_path / "x.png", (16, 16), 1, crop_spec(crop))[0].astype(float) / 3  # x per pixel
    h, w = expect
    assert out.mean() == pytest.approx(39.5, abs=0.6)                  # always centred
    assert out.max() - out.min() == pytest.approx(w - w / 16, abs=3)   # the width kept, in source columns


def test_crop_flag_values():
    assert crop_spec("160") == "160x160" and crop_spec("218x178") == "218x178" and crop_spec("None") == "none"
    for bad in ("0", "abc", "10x"):
        with pytest.raises(Exception):
            crop_spec(bad)


def test_flip_mirrors_half_the_images_the_same_way_on_resume():
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 1, 16).repeat(400, 1, 1, 1)  # (400, 1, 1, 16)
    data = data_mod.Images(x)
    b = Batches(data, 200, 3, torch.device("cpu"), flip=True)
    first, second = b(), b()
    flipped = (first[:, 0, 0, 0] > -1).float()  # a mirrored row starts with 15's value, not 0's (-1)
    assert 0.4 < flipped.mean() < 0.6
    again = Batches(data, 200, 3, torch.device("cpu"), flip=True, state={"epoch": 0, "pos": 1})
    assert torch.equal(again(), second)  # resumed at batch 1: the same flips
    assert torch.equal(Batches(data, 200, 3, torch.device("cpu"))().flip(-1).eq(first).all(dim=(1, 2, 3)),
                       flipped.bool())


# ---- the memorisation check (evaluate.py --nearest) -----------------------------------------

def test_nearest_finds_planted_copies_of_training_images(tmp_path, monkeypatch, capsys):
    import json
    import evaluate
    from ganzoo import nearest
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(60):  # distinct random pictures: real images are far from each other
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"{i}.png")
    assert run_main("dcgan", ["--path", root, "--steps", "2", "--batch-size", "4", "--width", "4", "--image-size",
                              "16", "--no-progress", "--out", tmp_path / "r"]) == 0
    train = to_signed(load_folder(root, (16, 16), 3, 0, 2**30).x)
    planted = train[torch.arange(40) % 60]  # 40 samples, all copies of training images

    monkeypatch.setattr(nearest, "generate_n", lambda model, n, seed=0: planted[:n])
    capsys.readouterr()
    assert evaluate.main(["--nearest", str(tmp_path / "r"), "--n", "40", "--json", str(tmp_path / "n.json")]) == 0
    r = json.loads((tmp_path / "n.json").read_text())
    assert r["features"] == "16x16 down-sampled pixels" and r["held_out"] == 12
    # the copies of searched images are at distance 0, the held-out ones (12 of 60) as far as real images are
    assert r["samples_p5"] == 0 and r["held_out_p1"] > 1 and r["closer_than_held_out_p1"] >= 0.75
    assert Image.open(tmp_path / "r" / "nearest.png").size == (6 * 18 + 2, 16 * 18 + 2)
    assert "samples nearer than the nearest 1% of held-out images" in capsys.readouterr().out


def test_nearest_holds_out_the_images_past_the_limit(tmp_path, monkeypatch):
    """A --limit run: all its training images are searched (copies of any are at distance 0),
    and the held-out images are the folder's others, which the run never saw."""
    import json
    import evaluate
    from ganzoo import nearest
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(50):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    assert run_main("dcgan", ["--path", root, "--limit", "20", "--steps", "2", "--batch-size", "4", "--width", "4",
                              "--image-size", "16", "--no-progress", "--out", tmp_path / "r"]) == 0
    whole = to_signed(load_folder(root, (16, 16), 3, 0, 2**30).x)
    monkeypatch.setattr(nearest, "generate_n", lambda model, n, seed=0: whole[torch.arange(n) % 20])
    assert evaluate.main(["--nearest", str(tmp_path / "r"), "--n", "40", "--json", str(tmp_path / "n.json")]) == 0
    r = json.loads((tmp_path / "n.json").read_text())
    assert (r["train_searched"], r["held_out"]) == (20, 30)
    assert r["samples_median"] == 0 and r["closer_than_held_out_p1"] == 1.0 and r["held_out_p1"] > 1
    monkeypatch.setattr(nearest, "generate_n", lambda model, n, seed=0: whole[20 + torch.arange(n) % 30])
    assert evaluate.main(["--nearest", str(tmp_path / "r"), "--n", "40", "--json", str(tmp_path / "n.json")]) == 0
    r = json.loads((tmp_path / "n.json").read_text())  # images it never saw: as far as the held-out ones
    assert r["samples_p5"] > 1 and r["closer_than_held_out_p1"] < 0.1


def test_nearest_report_of_a_generator_that_copies_nothing():
    from ganzoo import nearest
    g = torch.Generator().manual_seed(0)
    train, held, fake = (torch.randn(n, 8, generator=g) for n in (2000, 300, 300))
    d_fake, d_held = nearest.nearest(fake, train)[0][:, 0], nearest.nearest(held, train)[0][:, 0]
    r = nearest.report(d_fake, d_held)
    assert r["closer_than_held_out_p1"] < 0.05 and abs(r["samples_median"] - r["held_out_median"]) < 0.2


def test_a_streamed_folder_serves_batch_as_the_in_memory_one_does(tmp_path):
    root = pics(tmp_path / "imgs", n=6)
    (root / "bad.png").write_bytes(b"not a png")
    mem = load_folder(root, (16, 16), 3, 0, 2**30, cache=False)
    streamed = load_folder(root, (16, 16), 3, 0, 0)  # over the budget: decoded on demand
    assert isinstance(streamed, data_mod.StreamedFolder)
    idx = torch.arange(7)  # file 6 is bad.png (sorted last): skipped, the six others decoded
    assert torch.equal(streamed.batch(idx), mem.x)
