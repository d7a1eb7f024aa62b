"""The linear probe: same answers as scikit-learn's lbfgs on the same grid; the acceptance run."""

import json

import numpy as np
import pytest

from bench.benchmark import compare_probes
from bench.datasets import load_split
from bench.probe_loss import objective
from bench.probe_solver import LogisticRegressionLBFGS, standardize
from tests.conftest import need_fashion_mnist


def _pixels(d):
    return d.images.reshape(len(d), -1).astype(np.float32) / 255.0


def test_same_minimizer_as_sklearn_at_one_strength():
    from sklearn.linear_model import LogisticRegression

    d = load_split("digits", "train")
    X = standardize(_pixels(d))[0]
    lam = 1e-3
    ours = LogisticRegressionLBFGS(10, tol=1e-7, max_iter=5000).fit(X, d.labels, lam)
    ref = LogisticRegression(C=1 / (lam * len(X)), tol=1e-8, max_iter=5000).fit(X, d.labels)

    # Our float32 fit reaches sklearn's float64 optimum to within float32 resolution of the loss ...
    assert (objective(X, d.labels, ours.W, ours.b, lam)
            - objective(X, d.labels, ref.coef_.T, ref.intercept_, lam)) < 1e-6
    # ... and the same weights, up to the shift shared by all classes (the objective is nearly flat
    # along a few directions of constant pixels, hence the tolerance).
    w_ours = ours.W.numpy().T
    w_ref = ref.coef_
    np.testing.assert_allclose(w_ours - w_ours.mean(0), w_ref - w_ref.mean(0), atol=5e-3)
    assert (ours.predict(X) == ref.predict(X)).mean() > 0.999


@pytest.mark.parametrize("dataset, limit, strengths", [
    ("digits", None, (1e-1, 1e-2, 1e-3, 1e-4)),
    ("fashion-mnist", 2000, (1e-1, 1e-2, 1e-3)),
])
def test_reaches_the_same_minimum_as_sklearn_at_every_strength(dataset, limit, strengths):
    """What both solvers minimize, compared where each is run to a tight tolerance: neither ends
    above the other by more than 1e-4 of the objective (+1e-5). Accuracies are not compared: on a
    near-tie of two strengths (or of two classes for one image) they flip with the CPU's rounding.
    Measured on the 2-core CPU: the largest gap was 5e-6 (Fashion-MNIST, lam 1e-2)."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    if dataset == "fashion-mnist":
        need_fashion_mnist()
    d = load_split(dataset, "train", limit=limit, seed=0)
    X, y = standardize(_pixels(d))[0], d.labels
    basis = LogisticRegressionLBFGS.eigenbasis(X)
    for lam in strengths:
        ours = LogisticRegressionLBFGS(10, tol=1e-6, max_iter=5000).fit(X, y, lam, basis=basis)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = LogisticRegression(C=1 / (lam * len(X)), max_iter=5000, tol=1e-6).fit(X, y)
        f_ours = objective(X, y, ours.W.numpy(), ours.b.numpy(), lam)
        f_ref = objective(X, y, ref.coef_.T, ref.intercept_, lam)
        slack = 1e-4 * f_ref + 1e-5
        assert f_ours <= f_ref + slack and f_ref <= f_ours + slack, (lam, f_ours, f_ref)


def test_the_probe_benchmark_runs_both_solvers_over_the_same_grid():
    """The machinery of `bench benchmark probe` (timings are printed there, not asserted here)."""
    s = {k: load_split("digits", k, limit=300, seed=0) for k in ("train", "val", "test")}
    grid = "1e-3,1e-1"
    res = compare_probes(*(a for k in ("train", "val", "test") for a in (_pixels(s[k]), s[k].labels)), grid)
    for name in ("ours", "sklearn"):
        val, test, lam, seconds = res[name]
        assert 0 <= val <= 100 and 0 <= test <= 100 and lam in (1e-3, 1e-1) and seconds > 0
        assert val > 80  # far above chance on digits


@pytest.mark.slow
def test_pixels_fashion_mnist_acceptance(bench, tmp_path):
    """Pixels on full Fashion-MNIST reach test top-1 >= 84.0 (measured 84.50 here; sklearn's lbfgs
    at its best strength: 84.7). The margin is deliberate: the strength is chosen on val among
    near-tied neighbours, and which one wins can differ with the CPU's float32 rounding, moving
    test top-1 by a few tenths. A clearly weaker probe or feature still fails it (7x7 pixels reach
    81.1 on a held-out quarter of train, measured in an earlier session)."""
    need_fashion_mnist()
    r = bench("-q", "run", "--backbone", "pixels", "--task", "linear-probe", "--dataset", "fashion-mnist",
              "--results", tmp_path)
    assert r.code == 0, r
    (path,) = tmp_path.glob("pixels__fashion-mnist__linear-probe__*.json")
    recs = json.loads(path.read_text())["records"]
    test = [x["value"] for x in recs if x["split"] == "test" and x["metric"] == "top1"]
    assert test[0] >= 84.0, recs


@pytest.mark.parametrize("block_rows", [4096, 64])  # one block; eight, the last one short
def test_standardize_matches_the_float64_formula(monkeypatch, block_rows):
    import bench.probe_solver as solver

    monkeypatch.setattr(solver, "STANDARDIZE_ROWS", block_rows)
    rng = np.random.default_rng(0)
    train = (rng.normal(size=(500, 40)) * rng.uniform(0.1, 1e3, 40) + rng.normal(size=40) * 1e3).astype(np.float32)
    train[:, 3] = 7.0  # a constant column: std counts as 1
    other = rng.normal(size=(50, 40)).astype(np.float32)
    mean, std = train.mean(0, dtype=np.float64), train.std(0, dtype=np.float64)
    std[std < 1e-8] = 1.0
    got_train, got_other = standardize(train, other)
    assert got_train.dtype == np.float32 and got_other.dtype == np.float32
    np.testing.assert_allclose(got_train, (train - mean) / std, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got_other, (other - mean) / std, rtol=1e-5, atol=1e-4)


def test_warm_refit_in_the_train_basis_reaches_the_cold_fits_minimum():
    """probe_layer's fast path: the train+val refit starts from the chosen train fit and runs in
    the train features' eigenbasis; the simple path is a cold fit in train+val's own basis."""
    import torch

    d = load_split("digits", "train")
    X, y = standardize(_pixels(d))[0], d.labels
    lam, cut = 1e-3, int(0.9 * len(X))  # train is nine tenths of train+val, as bench carves val
    train = LogisticRegressionLBFGS(10, tol=1e-6, max_iter=5000).fit(X[:cut], y[:cut], lam)
    _, Q, s = LogisticRegressionLBFGS.eigenbasis(X[:cut])
    warm = LogisticRegressionLBFGS(10, tol=1e-6, max_iter=5000).fit(X, y, lam, warm=train,
                                                                   basis=(torch.as_tensor(X), Q, s))
    cold = LogisticRegressionLBFGS(10, tol=1e-6, max_iter=5000).fit(X, y, lam)
    f_warm = objective(X, y, warm.W.numpy(), warm.b.numpy(), lam)
    f_cold = objective(X, y, cold.W.numpy(), cold.b.numpy(), lam)
    assert abs(f_warm - f_cold) <= 1e-5 * f_cold + 1e-7, (f_warm, f_cold)
    assert warm.n_evals < cold.n_evals  # the point of the warm start


def _small_problem():
    """300 rows x 20 features and 10 classes in float64, with the objective's value and gradients
    through autograd: (Z, y, U, b, lam, (value, dU, db))."""
    import torch

    g = torch.Generator().manual_seed(0)
    Z = torch.randn(300, 20, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (300,), generator=g)
    U = torch.randn(20, 10, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(10, generator=g, dtype=torch.float64).requires_grad_()
    lam = 0.03
    value = torch.nn.functional.cross_entropy(Z @ U + b, y) + 0.5 * lam * (U * U).sum()
    value.backward()
    return Z, y, U.detach(), b.detach(), lam, (value.detach(), U.grad, b.grad)


def test_loss_and_grad_match_autograd_in_float64(monkeypatch):
    """The hand-written objective and gradients against the plain formula through autograd, over
    several blocks of rows (the block size shrunk so that 300 rows make four)."""
    import torch

    import bench.probe_loss as lp

    monkeypatch.setattr(lp, "BLOCK_ELEMENTS", 800)  # 80 rows a block at 10 classes
    Z, y, U, b, lam, (ref, dU, db) = _small_problem()
    loss, gU, gb = lp.loss_and_grad(Z, y, U, b, lam)
    loss_only, none_u, none_b = lp.loss_and_grad(Z, y, U, b, lam, grad=False)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gU, dU, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gb, db, rtol=1e-10, atol=1e-12)
    assert float(loss_only) == float(loss) and none_u is None and none_b is None


def test_standardize_in_place_overwrites_train_with_the_copying_result():
    """``in_place=True`` (the refit's own train+val buffer): the same values as the copying call,
    written into train's memory; a buffer of another dtype is refused rather than copied."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(3.0, 2.0, (500, 7)).astype(np.float32), rng.normal(size=(50, 7)).astype(np.float32)
    a[:, 3] = 1.5  # a constant column: std counts as 1
    want = standardize(a, b)
    buf = a.copy()
    got = standardize(buf, b, in_place=True)
    assert np.shares_memory(got[0], buf) and not np.shares_memory(want[0], a)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(TypeError, match="float32"):
        standardize(a.astype(np.float64), in_place=True)


def test_the_curvature_comes_with_the_same_evaluation(monkeypatch):
    """``curvature=True``: the softmax's mean curvature from the evaluation's own probabilities,
    against the formula mean_i (diag(p_i) - p_i p_i^T) in float64, over four blocks of rows; the
    value and gradients are those of the plain call. With fewer ``CURVATURE_ROWS`` than rows it is
    the same formula over every third row, counted from the first across the blocks."""
    import torch

    import bench.probe_loss as lp

    monkeypatch.setattr(lp, "BLOCK_ELEMENTS", 800)  # 80 rows a block: the sampled rows straddle them
    Z, y, U, b, lam, _ = _small_problem()
    loss, gU, gb, A = lp.loss_and_grad(Z, y, U, b, lam, curvature=True)
    assert A.shape == (1, 10, 1, 10)

    def formula(p):
        return (torch.diag(p.sum(0)) - p.t() @ p) / len(p)

    p = torch.softmax(Z @ U + b, 1)
    torch.testing.assert_close(A[0, :, 0], formula(p), rtol=1e-12, atol=1e-14)
    plain = lp.loss_and_grad(Z, y, U, b, lam)
    assert float(loss) == float(plain[0]) and torch.equal(gU, plain[1]) and torch.equal(gb, plain[2])
    assert lp.loss_and_grad(Z, y, U, b, lam, grad=False, curvature=True)[1] is None
    monkeypatch.setattr(lp, "CURVATURE_ROWS", 100)  # 300 rows: every third
    sampled = lp.loss_and_grad(Z, y, U, b, lam, curvature=True)
    torch.testing.assert_close(sampled[3][0, :, 0], formula(p[::3]), rtol=1e-12, atol=1e-14)
    assert float(sampled[0]) == float(loss)


def test_the_whole_block_of_the_hessian_inverts_it_at_any_weights():
    """Where the block covers every direction (6 features, 4 classes: m = d), the curvature is the
    exact Hessian (autograd, float64) in the bias and the weights in the eigenbasis, and H0 its
    inverse, at weights where the rows' probabilities differ (so the Kronecker part alone is not
    exact: checked too), off the one flat direction (all classes' biases at once)."""
    import torch

    from bench.probe_loss import hessian_coordinates, loss_and_grad
    from bench.probe_solver import kronecker_inverse, second_moment_basis

    g = torch.Generator().manual_seed(1)
    X = torch.randn(400, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    X -= X.mean(0)
    Q, s = second_moment_basis(X)
    Z, y, lam, k = X @ Q, torch.randint(0, 4, (400,), generator=g), 0.01, 4
    U0, b0 = torch.randn(6, k, generator=g, dtype=torch.float64), torch.randn(k, generator=g, dtype=torch.float64)
    coords = hessian_coordinates(X, Q, k)
    assert coords.shape == (6, 400)

    def objective(flat):
        U, b = flat[:6 * k].view(k, 6).t(), flat[6 * k:]
        return torch.nn.functional.cross_entropy(Z @ U + b, y) + 0.5 * lam * (U * U).sum()

    H = torch.autograd.functional.hessian(objective, torch.cat([U0.t().reshape(-1), b0]))
    block = loss_and_grad(Z, y, U0, b0, lam, curvature=True, coords=coords)[3]  # [1 + 6, k, 1 + 6, k]
    order = torch.cat([6 * k + torch.arange(k), (torch.arange(k)[None] * 6 + torch.arange(6)[:, None]).reshape(-1)])
    expected = H[order][:, order] - lam * torch.diag((order < 6 * k).double())  # the loss's part alone
    torch.testing.assert_close(block.reshape(7 * k, 7 * k), expected, rtol=1e-10, atol=1e-12)
    v = torch.randn(7 * k, generator=g, dtype=torch.float64)
    v[6 * k:] -= v[6 * k:].mean()
    torch.testing.assert_close(kronecker_inverse(s, block, lam)(H @ v), v, rtol=1e-8, atol=1e-10)
    kronecker_only = kronecker_inverse(s, block[:1, :, :1], lam)(H @ v)
    assert float((kronecker_only - v).abs().max()) > 1e-3


def test_a_fit_started_from_the_callers_evaluation_is_the_same_fit():
    """``start_eval`` (what ``fit_path`` hands over from its check of the extrapolated start)
    replaces the fit's own first evaluation: the same iterates, so the same weights bit for bit
    and the same count of evaluations."""
    import torch

    from bench.probe_loss import hessian_coordinates, loss_and_grad

    d = load_split("digits", "train")
    X, y = standardize(_pixels(d))[0], d.labels
    basis = LogisticRegressionLBFGS.eigenbasis(X)
    warm = LogisticRegressionLBFGS(10).fit(X, y, 0.1, basis=basis)
    at_warm = loss_and_grad(basis[0], torch.as_tensor(y).long(), warm.W, warm.b, 0.01, curvature=True,
                            coords=hessian_coordinates(basis[0], basis[1], 10))
    own = LogisticRegressionLBFGS(10).fit(X, y, 0.01, warm, basis)
    handed = LogisticRegressionLBFGS(10).fit(X, y, 0.01, warm, basis, start_eval=at_warm)
    assert torch.equal(own.W, handed.W) and torch.equal(own.b, handed.b)
    assert own.n_evals == handed.n_evals > 1


def test_onednn_products_give_the_float64_objective_and_gradients(monkeypatch):
    """The fast path of the probe's two products (oneDNN's linear, for float32 on the CPU) against
    the float64 formula through autograd, and against the addmm path on the same float32 inputs,
    over one block of rows and over four."""
    import torch

    import bench.probe_loss as lp

    onednn = lp._onednn_linear()
    if onednn is None:
        pytest.skip("this torch has no oneDNN linear: the probe uses addmm, tested above")
    Z64, y, U64, b64, lam, (ref, dU, db) = _small_problem()
    Z, U, b = Z64.float(), U64.float(), b64.float()
    for block in (1 << 22, 800):
        monkeypatch.setattr(lp, "BLOCK_ELEMENTS", block)
        got = {}
        for name, op in (("onednn", onednn), ("addmm", None)):
            monkeypatch.setattr(lp, "_onednn_linear", lambda op=op: op)
            got[name] = lp.loss_and_grad(Z, y, U, b, lam)
            assert abs(float(got[name][0]) - float(ref)) <= 1e-6 * float(ref)
            torch.testing.assert_close(got[name][1].double(), dU, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got[name][2].double(), db, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["onednn"][1], got["addmm"][1], rtol=1e-5, atol=1e-6)


def test_kronecker_preconditioner_inverts_the_hessian_where_rows_share_their_probabilities():
    """At zero weights every row has the same probabilities (those of the bias), and there the
    Kronecker approximation is the Hessian itself: H0 applied after the exact Hessian (autograd,
    float64) gives back any vector off the one flat direction (all classes' biases at once)."""
    import torch

    from bench.probe_loss import loss_and_grad
    from bench.probe_solver import kronecker_inverse, second_moment_basis

    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    X -= X.mean(0)  # standardized features: centred, so the weights and the bias do not couple
    Q, s = second_moment_basis(X)
    Z, y, lam, k = X @ Q, torch.randint(0, 4, (400,), generator=g), 0.01, 4
    U0, b0 = torch.zeros(6, k, dtype=torch.float64), torch.randn(k, generator=g, dtype=torch.float64)

    def objective(flat):
        U, b = flat[:6 * k].view(k, 6).t(), flat[6 * k:]
        return torch.nn.functional.cross_entropy(Z @ U + b, y) + 0.5 * lam * (U * U).sum()

    H = torch.autograd.functional.hessian(objective, torch.cat([U0.t().reshape(-1), b0]))
    apply = kronecker_inverse(s, loss_and_grad(Z, y, U0, b0, lam, curvature=True)[3], lam)
    v = torch.randn(7 * k, generator=g, dtype=torch.float64)
    v[6 * k:] -= v[6 * k:].mean()  # off the flat direction
    torch.testing.assert_close(apply(H @ v), v, rtol=1e-8, atol=1e-10)


def test_kronecker_preconditioner_saves_evaluations_along_the_path(monkeypatch):
    """The probe's fits with the Kronecker H0 against the same fits with the diagonal scaling
    alone (the simple path): both meet the same stopping rule, the Kronecker fits end no higher
    than the diagonal ones, and they need fewer evaluations (measured on digits' default grid: 82
    against 132-138; Fashion-MNIST pixels: 312 against 394). Evaluations are counted at the probe's
    tolerance (1e-4), objectives compared at 1e-6, where the diagonal fits are close to their
    minimum too (at the weakest strengths they stop on an unchanged value: up to 1.2e-6 higher,
    which is rounding's doing and differs between runs; the Kronecker fits were never higher)."""
    import bench.probe_solver as solver
    from tasks.linear_probe import DEFAULT_GRID

    d = load_split("digits", "train")
    X, y = standardize(_pixels(d))[0], d.labels
    basis = LogisticRegressionLBFGS.eigenbasis(X)
    runs = {}
    for mode in ("kronecker", "diagonal"):
        if mode == "diagonal":
            monkeypatch.setattr(solver, "kronecker_inverse", lambda *args: None)
        evals = sum(fit.n_evals for _, fit in solver.fit_path(basis, y, 10, DEFAULT_GRID))
        tight = solver.fit_path(basis, y, 10, DEFAULT_GRID, max_iter=5000, tol=1e-6)
        runs[mode] = (evals, [objective(X, y, fit.W, fit.b, lam) for lam, fit in tight])
    for f_k, f_d in zip(runs["kronecker"][1], runs["diagonal"][1]):
        assert f_k <= f_d + 1e-5 * f_d + 1e-7, (f_k, f_d)
    assert runs["kronecker"][0] < 0.8 * runs["diagonal"][0], (runs["kronecker"][0], runs["diagonal"][0])


def test_fits_along_the_path_reach_each_cold_fits_minimum():
    """The grid walk's fast path (each fit started from the previous ones extrapolated in log
    lam, on a grid with uneven steps) against the simple one: a cold fit at every strength, both
    run to a tight tolerance, compared by what they minimize (the path's may only be lower). The
    walk along the path also needs fewer evaluations than warm starts from the last fit alone
    (measured on this grid: about half with the diagonal scaling; with the Kronecker H0, which
    makes every warm start cheaper, 0.73-0.91 of them, the spread being float rounding's: the
    pixels' scale alone moves it, so the assertion asks for fewer only)."""
    from bench.probe_solver import fit_path

    d = load_split("digits", "train")
    X, y = standardize(_pixels(d))[0], d.labels
    basis = LogisticRegressionLBFGS.eigenbasis(X)
    grid = [0.3, 0.1, 0.02, 0.01, 3e-3, 1e-3]
    path_evals = chain_evals = 0
    warm = None
    for lam, fit in fit_path(basis, y, 10, grid, max_iter=5000, tol=1e-7):
        cold = LogisticRegressionLBFGS(10, tol=1e-7, max_iter=5000).fit(X, y, lam, basis=basis)
        chain = warm = LogisticRegressionLBFGS(10, tol=1e-7, max_iter=5000).fit(X, y, lam, warm, basis)
        path_evals, chain_evals = path_evals + fit.n_evals, chain_evals + chain.n_evals
        f_path = objective(X, y, fit.W, fit.b, lam)
        f_cold = objective(X, y, cold.W, cold.b, lam)
        # not above the cold fit's minimum (it ends below it at weak L2, where the cold fit stops
        # early: 6e-6 lower at lam 1e-3 here)
        assert f_path <= f_cold + 1e-5 * f_cold + 1e-7, (lam, f_path, f_cold)
    assert path_evals < chain_evals, (path_evals, chain_evals)
    # a repeated strength (a direct caller's grid; -o l2_grid removes repeats) is one point of the path
    assert [lam for lam, _ in fit_path(basis, y, 10, [0.1, 0.1, 0.01, 3e-3])] == [0.1, 0.1, 0.01, 3e-3]


def test_lbfgs_solves_a_badly_scaled_quadratic_and_gives_up_where_float32_does():
    """The hand-written L-BFGS against the closed form: quadratics with curvatures over six
    decades with the diagonal scaling the probe passes (a few evaluations), and over two decades
    without it; and a function whose value never decreases (float32 has run out) ends after one
    line search, not at max_iter."""
    import torch

    from bench.probe_solver import lbfgs

    g = torch.Generator().manual_seed(0)
    c = torch.randn(50, generator=g, dtype=torch.float64)
    for decades, scaled, budget in ((6, True, 10), (2, False, 1000)):
        a = torch.logspace(-decades / 2, decades / 2, 50, dtype=torch.float64)
        scale = a.rsqrt() if scaled else torch.ones(50, dtype=torch.float64)
        x, _, evals = lbfgs(lambda x, a=a: (float(0.5 * (a * x * x).sum() - c @ x), a * x - c),
                         torch.zeros(50, dtype=torch.float64), scale, 1e-4, budget)
        assert float((scale * (a * x - c)).abs().max()) <= 1e-4 and evals < budget, (decades, evals)
        torch.testing.assert_close(x, c / a, rtol=0, atol=1e-3)
    x, _, evals = lbfgs(lambda x: (1.0, torch.ones(3)), torch.zeros(3), torch.ones(3), 1e-4, 1000)
    assert evals <= 21, evals
    # with the exact inverse Hessian as H0 (``precondition``), the first step lands on the minimum
    a = torch.logspace(-3, 3, 50, dtype=torch.float64)
    x, _, evals = lbfgs(lambda x: (float(0.5 * (a * x * x).sum() - c @ x), a * x - c), c / a + 1e-6,
                        torch.ones(50, dtype=torch.float64), 1e-8, 1000, precondition=lambda q: q / a)
    torch.testing.assert_close(x, c / a, rtol=1e-9, atol=1e-9)
    assert evals <= 3, evals


def test_features_for_the_fits_start_on_a_64_byte_boundary():
    """as_features: the fits' products read X from a 64-byte boundary (oneDNN's transposed read is
    ~1.7x slower off one); a misaligned array is copied, an aligned tensor is used in place."""
    import torch

    from bench.probe_loss import as_features

    buf = torch.arange(64 * 33, dtype=torch.float32)
    aligned = buf[(-buf.data_ptr() % 64) // 4:][: 64 * 32].view(64, 32)
    misaligned = buf[(-buf.data_ptr() % 64) // 4 + 1:][: 64 * 32].view(64, 32)
    assert aligned.data_ptr() % 64 == 0 and misaligned.data_ptr() % 64 != 0
    assert as_features(aligned).data_ptr() == aligned.data_ptr()
    for source in (misaligned, misaligned.numpy()):
        got = as_features(source)
        assert got.data_ptr() % 64 == 0 and torch.equal(got, torch.as_tensor(source))
