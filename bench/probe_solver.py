"""The linear probe's solver: multinomial logistic regression fitted along a grid of L2 strengths.

Objective (the same minimizer as scikit-learn's ``LogisticRegression(C=1/(lam*n))``)::

    mean cross-entropy(X W + b, y) + lam/2 * ||W||^2     (bias not penalized)

One call, ``fit_path``, fits every strength of a grid (strong to weak) on one basis and yields the
fits. Each is full-batch L-BFGS in torch (``lbfgs``) in the features' eigenbasis, its steps shaped by
the inverse of an approximate Hessian, whole along the directions of largest variance and
Kronecker-factored elsewhere (``kronecker_inverse``), starting from the previous fits extrapolated
along the regularization path. The objective's evaluation is ``bench.probe_loss``.

Written by hand because looping sklearn refits from scratch at every strength on one core;
``bench benchmark probe`` measures both on the same grid, and ``bench perf --only probe`` the whole
grid against one sklearn fit.
"""

from __future__ import annotations

import math

import numpy as np

from bench.probe_loss import as_features, hessian_coordinates, loss_and_grad

STANDARDIZE_ROWS = 4096  # rows per block of standardize's sums: 12.5 MiB of float32 at 784 columns


def standardize(train: np.ndarray, *others: np.ndarray, in_place: bool = False):
    """Each array centred and scaled by the train columns' mean and std (a std below 1e-8 counts
    as 1), as float32. ``in_place``: ``train`` (float32) is overwritten with its own standardized
    values instead of copied (the probe's train+val refit, whose concatenation is its own).

    The sums run over blocks of ``STANDARDIZE_ROWS`` rows: each block's column sums in float32
    (torch's vectorised cascade sum), the blocks' totals accumulated in float64, the squares of
    one reused block buffer at a time. torch's float64 reductions are the slow path on the CPU,
    and every full-size temporary costs its page faults."""
    import torch

    t = torch.as_tensor(train)
    if in_place and t.dtype != torch.float32:
        raise TypeError(f"standardize(in_place=True) overwrites float32 features, not {t.dtype}")
    t = t.float()
    n = max(len(t), 1)
    mean = (_column_sums(t) / n).float()
    std = (_column_sums(t, mean) / n).sqrt().float()
    std[std < 1e-8] = 1.0

    def scale(a, out=None):
        a = torch.as_tensor(a).float()
        return torch.sub(a, mean, out=torch.empty_like(a) if out is None else out).div_(std).numpy()

    return (scale(t, t if in_place else None), *(scale(o) for o in others))


def _column_sums(t, center=None):
    """float64 column sums of ``t`` [n, d] float32, or of (t - center)^2 given ``center`` [d]:
    float32 sums of blocks of rows, added up in float64."""
    import torch

    total = torch.zeros(t.shape[1], dtype=torch.float64)
    buf = None
    for i in range(0, len(t), STANDARDIZE_ROWS):
        block = t[i:i + STANDARDIZE_ROWS]
        if center is not None:
            buf = torch.empty_like(block) if buf is None or len(buf) != len(block) else buf
            block = torch.sub(block, center, out=buf).square_()
        total += block.sum(0).double()
    return total


class LogisticRegressionLBFGS:
    """Multinomial logistic regression, L2 on the weights, full-batch L-BFGS in torch.

    The fit is L-BFGS in the variables V of the features' eigenbasis: with the second-moment matrix
    S = X^T X / n = Q diag(s) Q^T, W = Q diag(D) V and D_j = (s_j / 4 + lam)^-1/2. That is a change of
    variables only (the objective and its minimizer are unchanged, since ||W|| = ||Q^T W||), but it
    makes the problem well conditioned: the Hessian in V is close to the identity (s_j / 4 bounds the
    softmax curvature along direction j), where in W its spread is that of s, which for correlated
    features such as mean-pooled transformer states spans many decades. L-BFGS then needs a few
    hundred evaluations at weak L2 instead of running into ``max_iter``. The stopping rule is the
    gradient in V; the steps start from the inverse of an approximate Hessian
    (``kronecker_inverse``: whole in the bias and the directions of largest variance,
    Kronecker-factored elsewhere), which also knows how the classes' curvatures couple.

    The data are never rotated, only the weights: L-BFGS runs on U = Q^T W (where H0 and the
    scaling are diagonal in the features' directions), and each evaluation turns U into W and the
    gradient back, two d x d x classes products. Running on W instead, H0 and the stopping rule
    went through Q: five such products a step. Rotating the features instead cost an n x d x d
    product and a copy of X per fit's basis.
    """

    def __init__(self, n_classes: int, max_iter: int = 1000, tol: float = 1e-4, device: str = "cpu"):
        self.k, self.max_iter, self.tol, self.device = n_classes, max_iter, tol, device
        self.W = self.b = None

    @staticmethod
    def eigenbasis(X, device: str = "cpu"):
        """(X as a tensor on ``device``, Q, s) for a feature matrix X: what ``fit`` takes as
        ``basis``; reuse it for every strength fitted on the same X."""
        X = as_features(X, device)
        Q, s = second_moment_basis(X, device)
        return X, Q, s

    def fit(self, X, y, lam: float, warm=None, basis=None, start_eval=None, coords=None):
        """Fit at strength ``lam``, starting from ``warm``: a fitted classifier, a ``(W, b)`` pair,
        or None (zeros). ``basis``: ``(X, Q, s)`` from ``eigenbasis``, where Q and s may come from
        other features than X (the probe's train+val refit uses train's): any orthogonal Q is a
        valid change of variables, only a worse-conditioned one. ``start_eval``: what
        ``loss_and_grad(..., curvature=True)`` gave at ``warm`` at this strength, where the caller
        has it (``fit_path`` does): the fit then starts without its own pass over X. ``coords``:
        ``hessian_coordinates(X, Q, n_classes)`` where the caller has them (``fit_path`` makes them
        once for all its fits), for the start's evaluation."""
        import torch

        X, Q, s = basis if basis is not None else self.eigenbasis(X, self.device)
        y = torch.as_tensor(y, device=self.device).long()
        d, k = X.shape[1], self.k
        if isinstance(warm, LogisticRegressionLBFGS):
            warm = (warm.W, warm.b)
        # x = (U^T, b) flat, U = Q^T W the weights in the eigenbasis: classes-major, so each class's
        # weights are a contiguous row, the layout of oneDNN's weights and of the d x d products
        Qt = Q.t().contiguous()
        x = torch.zeros(k * d + k, device=self.device, dtype=X.dtype)
        if warm is not None:
            x[: k * d] = (warm[0].t() @ Q).reshape(-1)
            x[k * d:] = warm[1]
        # V = U / D, D_j = (s_j / 4 + lam)^-1/2: the gradient in V is scale * (the gradient in x)
        scale = torch.cat([(0.25 * s + lam).rsqrt().repeat(k), torch.ones(k, device=s.device, dtype=s.dtype)])

        def weights(x):  # W = Q U, as W^T = U^T Q^T
            return (x[: k * d].view(k, d) @ Qt).t()

        def flat(loss, gW, gb):  # (value, gradient) in x's layout: the gradient in U is Q^T gW
            return float(loss), torch.cat([(gW.t() @ Q).reshape(-1), gb])

        def fun(x):
            return flat(*loss_and_grad(X, y, weights(x), x[k * d:], lam))

        # the start's value, gradient and curvature (for H0) from one evaluation, at the start's own
        # weights (their round trip through the basis differs by rounding, and a caller's
        # ``start_eval`` was made at them)
        loss, gW, gb, curvature = start_eval or loss_and_grad(
            X, y, warm[0] if warm is not None else weights(x), x[k * d:], lam, curvature=True,
            coords=hessian_coordinates(X, Q, k) if coords is None else coords)
        # H0 or, without it, the diagonal scaling alone: diag(scale^2)
        x, self.value, self.n_evals = lbfgs(fun, x, scale, self.tol, self.max_iter,
                                            precondition=kronecker_inverse(s, curvature, lam),
                                            first=flat(loss, gW, gb))
        self.lam, self.W, self.b = lam, weights(x).contiguous(), x[k * d:].clone()
        return self

    def predict(self, X) -> np.ndarray:
        import torch

        with torch.no_grad():
            X = torch.as_tensor(X, device=self.device)
            return (X @ self.W + self.b).argmax(1).cpu().numpy()


def kronecker_inverse(s, curvature, lam: float):
    """H0 for ``lbfgs`` on the probe's flat (U^T, b), U [d, k] in the eigenbasis (s the eigenvalues
    of Z^T Z / n): the inverse of an approximation of the Hessian that is exact in the bias and the
    weights along the m directions of ``curvature`` (``loss_and_grad``'s [m + 1, k, m + 1, k]
    block, the m largest eigenvalues' directions: ``hessian_coordinates``) and Kronecker-factored
    elsewhere, diag(s) (x) A + lam I with A the softmax's mean curvature; the two parts do not
    couple. The Kronecker part is exact where every row has the same probabilities (a fit from
    zero weights) and keeps the classes' coupling that a diagonal scaling loses; with
    A = R diag(a) R^T it is applied as (I (x) R) diag(1 / (s_j a_c + lam)) (I (x) R^T), a d x k x k
    product. Where the rows' probabilities differ, it is least right along the directions of
    largest variance, where the fits' gradients lingered longest: hence the whole block there.
    Both parts cut the L-BFGS evaluations against a diagonal scaling by the curvature's bound,
    diag(s / 4 + lam), most of all at the strong half of the grid (docs/performance.md). The block's
    null direction (all classes' biases at once, where the softmax has no curvature) is left
    unscaled (the gradient has no component there)."""
    import torch

    m1, k = curvature.shape[0], curvature.shape[1]
    d, dtype, device = len(s), s.dtype, s.device
    a, R = torch.linalg.eigh(curvature[0, :, 0, :].cpu().double())
    R, a = R.to(device=device, dtype=dtype), a.clamp(min=0).to(device=device, dtype=dtype)
    inv = 1.0 / (a[:, None] * s[None, :] + lam)  # [k, d]
    # the block: bias and the m directions, with lam on the weights
    H = curvature.cpu().double().reshape(m1 * k, m1 * k).clone()
    H.diagonal()[k:] += lam
    e, E = torch.linalg.eigh(H)
    e = torch.where(e > 1e-8 * max(float(e.max()), 1e-300), e, torch.ones_like(e))
    H_inv = ((E / e) @ E.t()).to(device=device, dtype=dtype)
    idx = torch.cat([k * d + torch.arange(k),  # the bias, then direction d - m + j for each class
                     (torch.arange(k)[None, :] * d + torch.arange(d - m1 + 1, d)[:, None]).reshape(-1)]).to(device)

    def apply(q):  # on U^T [k, d]: R ((R^T U^T) * inv), and the block's inverse on its part
        out = torch.cat([(R @ ((R.t() @ q[: k * d].view(k, d)) * inv)).reshape(-1), q.new_zeros(k)])
        out[idx] = H_inv @ q[idx]
        return out

    return apply


def lbfgs(fun, x, scale, tol: float, max_iter: int, history: int = 20, precondition=None, first=None):
    """Minimize ``fun`` (x -> (value, gradient), flat tensors) from ``x`` by L-BFGS.

    ``scale`` says which variables V the problem is well conditioned in, x = scale * V (a tensor
    like x). The initial inverse Hessian is gamma * H0 (gamma from the newest pair), where H0 is
    ``precondition`` (a symmetric positive definite map q -> H0 q) or else diag(scale^2): then the
    same iterates as L-BFGS on V, whose Hessian the probe's scaling makes nearly the identity. It
    stops when max |scale * gradient| <= tol (the gradient in V), when the value
    changes by less than 1e-10, when 20 ever shorter trial steps find no sufficient decrease, or
    after ``max_iter`` iterations (about as many evaluations: most take the unit step). The line
    search backtracks from step 1 to the Armijo condition (strongly convex in the weights:
    accepted steps keep positive curvature; a pair without it is dropped); where the decrease it
    asks for is below the value's float resolution, a step that does not raise the value is
    taken (and the unchanged value then ends the fit). ``first``: ``fun(x)`` where the caller has
    it already (it counts as the first evaluation). Returns (x, its value, evaluations).

    Written by hand (40 lines) rather than through torch.optim.LBFGS: its strong-Wolfe search
    spends more evaluations for the same stopping rule and stopped further from the optimum at
    some strengths, and constructing any torch optimizer first imports torch._dynamo, a tenth of a
    probe's time (docs/performance.md)."""
    import torch

    pairs = []
    s2 = scale * scale
    h0 = precondition or (lambda q: s2 * q)
    eps = torch.finfo(x.dtype).eps
    f, g = first or fun(x)
    gv = scale * g
    evals, iters = 1, 0
    while iters < max_iter and float(gv.abs().max()) > tol:
        iters += 1
        q, alphas = g.clone(), []
        for s, y in reversed(pairs):
            a = (s @ q) / (s @ y)
            alphas.append(a)
            q -= a * y
        if pairs:
            s, y = pairs[-1]
            q = h0(q) * ((s @ y) / (y @ h0(y)))
        else:
            q = h0(q) * min(1.0, 1.0 / float(gv.abs().sum()))
        for (s, y), a in zip(pairs, reversed(alphas)):
            q += (a - (y @ q) / (s @ y)) * s
        d, slope, t = -q, -float(g @ q), 1.0
        if slope >= 0:  # not a descent direction (rounding): restart from the scaled gradient
            pairs, d = [], -h0(g)
            slope, t = float(g @ d), min(1.0, 1.0 / float(gv.abs().sum()))
        for _ in range(20):
            x_new = x + t * d
            f_new, g_new = fun(x_new)
            evals += 1
            if f_new <= f + 1e-4 * t * slope or (f_new <= f and -1e-4 * t * slope <= eps * abs(f)):
                break
            # the minimum of the quadratic through f, the slope and f_new, kept within [t/10, t/2]
            # (0.1 * t first: a NaN value makes the quadratic's minimum NaN, and max keeps its first)
            t = min(max(0.1 * t, -slope * t * t / (2 * (f_new - f - slope * t))), 0.5 * t)
        else:
            break  # no sufficient decrease left to find
        s, y = x_new - x, g_new - g
        if float(s @ y) > 1e-10 * float(y @ y):
            pairs = (pairs + [(s, y)])[-history:]
        done = abs(f - f_new) < 1e-10
        x, f, g, gv = x_new, f_new, g_new, scale * g_new
        if done:
            break
    return x, f, evals


def fit_path(basis, y, n_classes: int, grid, max_iter: int = 1000, device: str = "cpu", tol: float = 1e-4):
    """Fit every strength of ``grid`` (strong -> weak) on one basis, yielding ``(lam, fit)``.

    Each fit starts from the previous fits extrapolated along the regularization path (a
    polynomial in log lam through the last three, the Lagrange form, so any grid spacing works),
    unless that start is worse than the last fit itself at the new strength (one evaluation of
    the start, which the fit then starts from when it is taken; the last fit's value moves with
    lam by the penalty alone). The solutions move smoothly with log lam, so these starts take
    fewer than half the L-BFGS evaluations of starting from the last fit alone
    (docs/performance.md)."""
    import torch

    X, Q, _ = basis
    y = torch.as_tensor(y, device=device).long()
    coords = hessian_coordinates(X, Q, n_classes)  # once for every fit
    done: list[tuple[float, LogisticRegressionLBFGS]] = []
    for lam in grid:
        start = start_eval = None
        if done:
            last = done[-1][1]
            start = (last.W, last.b)
            if len({p[0] for p in done}) >= 2:
                pts = list({p[0]: p for p in done}.values())[-3:]  # one point per strength
                t = [math.log(p[0]) for p in pts]
                w = [math.prod((math.log(lam) - t[j]) / (t[i] - t[j]) for j in range(len(t)) if j != i)
                     for i in range(len(t))]
                guess = (sum(wi * p[1].W for wi, p in zip(w, pts)), sum(wi * p[1].b for wi, p in zip(w, pts)))
                f_last = last.value + 0.5 * (lam - last.lam) * float((last.W * last.W).sum())
                # evaluated whole (gradient and curvature too): a taken guess is where the fit
                # starts, from this evaluation instead of its own; a rejected one costs the pass
                # that the start's separate curvature pass used to
                at_guess = loss_and_grad(X, y, guess[0], guess[1], lam, curvature=True, coords=coords)
                if float(at_guess[0]) < f_last:
                    start, start_eval = guess, at_guess
        fit = LogisticRegressionLBFGS(n_classes, max_iter, tol, device).fit(None, y, lam, start, basis, start_eval,
                                                                            coords)
        done = (done + [(lam, fit)])[-3:]  # the extrapolation's points; earlier fits are the caller's
        yield lam, fit


def second_moment_basis(X, device: str = "cpu"):
    """(Q, s): the eigenvectors and eigenvalues of X^T X / n, the basis of ``LogisticRegressionLBFGS``'s
    preconditioner; a fit on rows ``idx`` of X alone may pass ``basis=(X[idx], Q, s)``."""
    import torch

    X = torch.as_tensor(X, device=device)
    s, Q = torch.linalg.eigh((X.T @ X).double() / max(len(X), 1))
    return Q.to(X.dtype), s.clamp(min=0).to(X.dtype)
