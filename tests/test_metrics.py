"""ganzoo.metrics: the judge's accuracy and determinism, the Frechet distance against closed
forms, KID and KL known answers, real data scoring near-perfectly and a collapsed generator
scoring 1 class / 1 mode. (The --eval-every hook and evaluate.py: test_evaluation.py.)"""
import numpy as np
import pytest
import scipy.linalg
import torch

from ganzoo import metrics

HW = (32, 32)


def test_classifier_accuracy_and_cache(judge):
    net, acc = judge
    assert acc >= 0.97
    files = list(metrics.cache_dir().glob(f"digit-classifier-{metrics.VERSION}-32-seed0.pt"))
    assert len(files) == 1
    state = torch.get_rng_state()
    net2, acc2 = metrics.classifier.__wrapped__(HW)  # not the in-process cache: from the file
    assert torch.equal(torch.get_rng_state(), state)  # loading it draws no random number of a run's
    assert acc2 == acc
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    torch.load(files[0], weights_only=True)  # plain tensors and values only


def test_classifier_training_is_deterministic_and_leaves_the_rng_alone():
    torch.manual_seed(123)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    a, acc_a = metrics.train_classifier((16, 16), epochs=1)
    b, acc_b = metrics.train_classifier((16, 16), epochs=1)
    assert acc_a == acc_b and all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads
    assert not torch.equal(metrics.train_classifier((16, 16), seed=1, epochs=1)[0].head.weight, a.head.weight)


def test_split_is_stratified_and_fixed():
    y = metrics.real_digits((16, 16))[1]
    tr, te = metrics.split(y, 0)
    assert len(set(tr) & set(te)) == 0 and len(tr) + len(te) == len(y)
    held, every = np.bincount(y[te].numpy(), minlength=10), np.bincount(y.numpy(), minlength=10)
    assert np.abs(held - every / 4).max() <= 1  # a quarter of each class
    assert np.array_equal(te, metrics.split(y, 0)[1])


# ---- Frechet distance ----------------------------------------------------------------

def random_rotation(d, rng):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q


def test_frechet_closed_forms():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    # commuting covariances Q diag(a) Q^T, Q diag(b) Q^T: ||mu1-mu2||^2 + sum (sqrt a - sqrt b)^2
    q = random_rotation(d, rng)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-10)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert metrics.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1)
    # a point mass against N(mu2, s2): ||mu1-mu2||^2 + tr s2
    assert metrics.frechet_distance(mu1, np.zeros((d, d)), mu2, s2) == pytest.approx(
        ((mu1 - mu2) ** 2).sum() + np.trace(s2), rel=1e-10)
    assert metrics.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)


def test_frechet_general_covariances_match_sqrtm():
    """Non-commuting, well-conditioned covariances: the same as the textbook formula with
    scipy's sqrtm of the product (whose imaginary residue is negligible here)."""
    rng = np.random.default_rng(1)
    d = 8
    x, y = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    s1, s2 = x @ x.T + 0.5 * np.eye(d), y @ y.T + 0.5 * np.eye(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    want = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean.real)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(metrics.frechet_distance(mu2, s2, mu1, s1))


def test_frechet_near_singular_covariances():
    """Fewer samples than dimensions (rank-deficient covariances): finite, >= 0, zero for
    the same set, and the closed form for two rank-1 covariances along one axis."""
    rng = np.random.default_rng(2)
    f = torch.from_numpy(rng.standard_normal((10, 64)))
    mu, s = metrics.gaussian_stats(f)
    assert np.linalg.matrix_rank(s) < 64
    assert metrics.frechet_distance(mu, s, mu, s) == pytest.approx(0, abs=1e-9)
    g = metrics.gaussian_stats(torch.from_numpy(rng.standard_normal((12, 64))))
    want = ((mu - g[0]) ** 2).sum() + np.trace(s + g[1] - 2 * scipy.linalg.sqrtm(s @ g[1]).real)
    assert metrics.frechet_distance(mu, s, *g) == pytest.approx(want, rel=1e-6)
    e = np.zeros((64, 64))
    e[3, 3] = 1.0
    assert metrics.frechet_distance(np.zeros(64), 4 * e, np.zeros(64), 9 * e) == pytest.approx(1.0)


def test_frechet_of_samples_approaches_the_closed_form():
    rng = np.random.default_rng(3)
    a, b = np.array([1.0, 2.0, 0.5]), np.array([2.0, 1.0, 0.5])
    x = torch.from_numpy(rng.standard_normal((100_000, 3)) * np.sqrt(a))
    y = torch.from_numpy(rng.standard_normal((100_000, 3)) * np.sqrt(b) + 1.0)
    want = 3 * 1.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert metrics.frechet_distance(*metrics.gaussian_stats(x), *metrics.gaussian_stats(y)) == pytest.approx(
        want, abs=0.03)


# ---- KID and KL ----------------------------------------------------------------------

def test_kid_known_answer_and_unbiased():
    """All x equal to a and all y equal to b: MMD^2 = k(a,a) + k(b,b) - 2 k(a,b) exactly,
    with k(u, v) = (u.v / d + 1)^3."""
    d = 4
    a, b = torch.tensor([1.0, 0, 2, 1]), torch.tensor([0.5, 1, 0, 1])
    k = lambda u, v: (float(u @ v) / d + 1) ** 3  # noqa: E731
    want = k(a, a) + k(b, b) - 2 * k(a, b)
    assert metrics.kid(a.expand(20, d), b.expand(30, d), subsets=3, size=10) == pytest.approx(want)
    # two samples of one distribution: near 0 on average (unbiased), unlike a shifted one
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1000, 16, generator=g), torch.randn(1000, 16, generator=g)
    same = metrics.kid(x, y, subsets=10, size=300)
    assert abs(same) < 0.01 and metrics.kid(x, y + 0.5, subsets=10, size=300) > 0.5


def test_kl_known_values():
    assert metrics.kl_divergence(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(np.log(2))
    assert metrics.kl_divergence(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0
    u = np.full(1000, 1e-3)
    assert metrics.kl_divergence(np.eye(1000)[7], u) == pytest.approx(np.log(1000))


# ---- scoring real and collapsed images ---------------------------------------------------

def test_digits_real_scores_perfectly_and_a_collapsed_generator_does_not(judge):
    s = metrics.Scorer("digits", HW)
    real = s(s.real(500, seed=1))
    assert real["classes"] == 10 and real["kl"] < 0.03 and real["confident"] > 0.9
    one = s.real(1, seed=1)
    collapsed = s(one.expand(500, -1, -1, -1))  # one image repeated
    cls = int(s.classify(one)[1])
    assert collapsed["classes"] == 1
    assert collapsed["kl"] == pytest.approx(-np.log(s.ref_hist[cls]))
    assert collapsed["fd"] > 50 * real["fd"] and collapsed["kid"] > 50 * abs(real["kid"])
    # the digits data set in RGB (three equal channels) is judged as grey
    grey = s.real(100, seed=2)
    assert torch.equal(s.classify(grey.expand(-1, 3, -1, -1))[1], s.classify(grey)[1])


def test_stacked_digits_modes(judge):
    """Each channel is classified on its own: digits labelled 3, 1, 4 in R, G, B are mode
    314; real triples cover nearly all modes, one repeated triple covers 1 (KL = log 1000)."""
    s = metrics.Scorer("stacked-digits", HW, n=1000)  # a smaller reference than the papers' 26,000
    x, y = metrics.real_digits(HW)
    pick = [int(torch.nonzero(y == c)[0]) for c in (3, 1, 4)]
    triple = torch.cat([x[i] for i in pick])[None]  # (1, 3, H, W)
    f, cls, _ = s.classify(triple)
    assert f.shape == (1, 3 * 128) and cls.tolist() == [[3, 1, 4]]
    assert metrics.stacked_modes(cls).tolist() == [314]
    collapsed = s(triple.expand(1000, -1, -1, -1))
    assert collapsed["modes"] == 1 and collapsed["kl"] == pytest.approx(np.log(1000))
    real = s(s.real(1000, seed=1))
    assert real["modes"] > 560  # 1,000 draws of 1,000 near-uniform modes cover ~63 %
    assert real["kl"] < 1.2 and real["confident"] > 0.8
    assert collapsed["fd"] > 50 * real["fd"] and collapsed["kid"] > 50 * abs(real["kid"])


def test_per_class_against_counts_by_hand(judge):
    """Scorer.per_class: the reference's own images give the real columns back; images of one
    digit put the shares where the judge's classes are, and the confident share of a class is
    the share of its samples with p >= 0.9, counted here by hand; a stacked set refuses."""
    s = metrics.Scorer("digits", HW)
    x, y = metrics.real_digits(HW)
    same = s.per_class(x)  # the digits' reference is all 1,797 of them
    assert [r["class"] for r in same] == [str(c) for c in range(10)]
    assert all(r["share"] == r["real_share"] and r["confident"] == r["real_confident"] for r in same)
    assert s(x, per_class=True)["per_class"] == same  # the scorer's row: one classification, the same rows
    assert sum(r["share"] for r in same) == pytest.approx(1.0)
    ref_cls = s.classify(x)[1]  # the judge's classes of the real images, not their labels
    assert [r["real_share"] for r in same] == pytest.approx((torch.bincount(ref_cls, minlength=10) / len(x)).tolist())
    threes = x[y == 3]
    _, cls, top = s.classify(threes)
    rows = s.per_class(threes)
    for c, r in enumerate(rows):
        mine = cls == c
        assert r["share"] == pytest.approx(mine.sum().item() / len(threes))
        if mine.any():
            assert r["confident"] == pytest.approx((top[mine] >= 0.9).sum().item() / mine.sum().item())
        else:
            assert np.isnan(r["confident"])
    assert rows[3]["share"] > 0.9 and rows[3]["real_share"] == same[3]["real_share"]
    st = metrics.Scorer("stacked-digits", HW, n=100)
    with pytest.raises(metrics.UserError, match="1,000 modes"):
        st.per_class(st.real(10))
    with pytest.raises(metrics.UserError, match="1,000 modes"):
        st(st.real(10), per_class=True)


# ---- the --eval-every hook -------------------------------------------------------------------


# ---- evaluate.py -----------------------------------------------------------------------------




# ---- precision, recall, density, coverage (Kynkaanniemi et al. 2019; Naeem et al. 2020) ------

def test_prdc_against_values_worked_out_by_hand():
    """1-D, k = 1. Real 0, 1, 3: k-NN radii 1, 1, 2. Fake 0.5, 10: radii 9.5, 9.5.
    precision: 0.5 is in the balls of 0 and 1, 10 in none -> 1/2. recall: every real point is
    within 9.5 of 0.5 -> 1. density: (2 balls + 0) / (k·M = 2) -> 1. coverage: the balls of 0
    and 1 hold a fake, the ball of 3 (radius 2, nearest fake 2.5 away) none -> 2/3."""
    real, fake = torch.tensor([[0.0], [1.0], [3.0]]), torch.tensor([[0.5], [10.0]])
    assert metrics.knn_radii(real, 1).tolist() == [1.0, 1.0, 2.0]
    got = metrics.prdc(real, fake, k=1, chunk=2)  # chunks smaller than the sets: the same sums
    assert got == pytest.approx({"precision": 0.5, "recall": 1.0, "density": 1.0, "coverage": 2 / 3})


def test_prdc_of_a_set_against_itself_and_a_far_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=g)
    same = metrics.prdc(x, x, k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert same["density"] >= 1.0  # each point lies in its own ball and its neighbours'
    far = metrics.prdc(x, x + 100, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    two = torch.cat([x[:150], x[150:] + 50])  # two far clusters; a generator that draws only the first
    half = metrics.prdc(two, x[:150], k=5)
    assert half["precision"] == 1.0 and half["coverage"] == 0.5 and half["recall"] == 0.5


# ---- judges of the other labelled sets (tiny files the tests write) --------------------------

def test_a_judge_for_an_idx_data_set_trains_caches_and_scores(tmp_path, monkeypatch, capsys):
    """On a tiny Fashion-MNIST-format folder: the judge trains on the training split, measures
    its accuracy on the test split, is cached under a key of the files' content, says so in
    one stderr line while it trains (minutes on real data: a first evaluate.py must not look
    hung) and nothing when it loads, and a Scorer scores real and collapsed images with every
    metric."""
    from test_data import write_mnist_dir
    monkeypatch.setenv("GANZOO_CACHE", str(tmp_path / "cache"))
    root = write_mnist_dir(tmp_path / "fm", n=60, n_test=20)
    monkeypatch.setitem(metrics.JUDGES, "fashion-mnist", ((4, 4, 4), 1))
    net, acc = metrics.classifier.__wrapped__((28, 28), 0, "fashion-mnist", str(root))
    assert 0 <= acc <= 1 and net.features[0].in_channels == 1
    files = list((tmp_path / "cache").glob("judge-fashion-mnist-*-v1-28-seed0.pt"))
    assert len(files) == 1
    said = capsys.readouterr()
    assert said.out == "" and said.err.splitlines() == [
        f"judge: training the fashion-mnist judge at 28 once (minutes on a CPU for the larger sets); "
        f"later runs load it from {files[0]}"]
    net2, acc2 = metrics.classifier.__wrapped__((28, 28), 0, "fashion-mnist", str(root))  # from the file
    assert acc2 == acc and torch.equal(net2.head.weight, net.head.weight)
    assert capsys.readouterr() == ("", "")
    s = metrics.Scorer("fashion-mnist", (28, 28), n=40, path=str(root))
    assert s.ref_hist.tolist() == [0.1] * 10  # labels i % 10 of the 60 training images
    row = s(s.real(40, seed=1))
    assert set(row) == {"classes", "kl", "confident", "fd", "kid", "precision", "recall", "density", "coverage"}
    st = metrics.Scorer("stacked-fashion-mnist", (28, 28), n=40, path=str(root))
    row = st(st.real(40, seed=1))
    assert {"modes", "confident_modes"} <= set(row) and row["confident_modes"] <= row["modes"]


def test_a_missing_data_set_gets_its_error_and_no_training_line(tmp_path, monkeypatch, capsys):
    """The training line comes after the data has loaded, so a bad data set still ends with
    its one error line and nothing else: with --path (the data's fingerprint reads the files
    first) and without (Debian's folder, read only when the judge's data loads)."""
    from ganzoo import data
    monkeypatch.setenv("GANZOO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(metrics.UserError, match="no-such-folder"):
        metrics.classifier.__wrapped__((28, 28), 0, "fashion-mnist", str(tmp_path / "no-such-folder"))
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "no-package")
    with pytest.raises(metrics.UserError, match="no-package; install it with"):
        metrics.classifier.__wrapped__((28, 28), 0, "fashion-mnist")
    assert capsys.readouterr() == ("", "") and not (tmp_path / "cache").exists()


def test_no_judge_for_a_folder():
    with pytest.raises(metrics.UserError, match="need a judge classifier trained on labelled images"):
        metrics.Scorer("folder", (32, 32))
