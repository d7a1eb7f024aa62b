"""Linear probe per layer: standardize on train, multinomial logistic regression with an L2
strength chosen on val from a log-spaced grid, refit on train+val, report val and test top-1.

Objective (the same minimizer as scikit-learn's ``LogisticRegression(C=1/(lam*n))``)::

    mean cross-entropy(X W + b, y) + lam/2 * ||W||^2     (bias not penalized)

solved full-batch by L-BFGS in torch (``lbfgs``) in the features' eigenbasis, its steps shaped by
the inverse of an approximate Hessian, whole along the directions of largest variance and
Kronecker-factored elsewhere (``kronecker_inverse``), walking the grid
from strong to weak and starting each fit from the previous ones extrapolated along the
regularization path (``fit_path``). Written by hand because looping sklearn refits
from scratch at every strength on one core; ``bench benchmark probe`` measures both on the same
grid, and ``bench perf --only probe`` the whole grid against one sklearn fit.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from bench.errors import BenchError
from tasks.base import Option, RunContext, Task, nonnegative_int, positive_int


def _grid(text: str) -> list[float]:
    vals = sorted({float(v) for v in text.split(",") if v.strip()}, reverse=True)
    if not vals or any(not (1e-12 <= v <= 1e6) for v in vals):
        raise ValueError("need numbers in 1e-12..1e6 separated by commas")
    return vals


def _show_grid(grid: list[float]) -> str:
    return ",".join(f"{v:g}" for v in grid)


DEFAULT_GRID = _grid(",".join(f"{10 ** (e / 2):.3g}" for e in range(-14, 1)))  # 1e-7 ... 1, two per decade
BLOCK_ELEMENTS = 1 << 22  # logits per block of rows in the probe's loss: 16 MiB of float32


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


FEATURE_ALIGNMENT = 64  # bytes


def as_features(X, device: str = "cpu"):
    """X as a contiguous tensor on ``device`` for the fits' products: shared with X where it can
    be, copied where its data do not start on a 64-byte boundary. oneDNN's gradient product reads
    the features transposed and slows down off that boundary, and numpy's own allocations (a
    fancy-indexed subset, an array from disk) start 16 bytes past one, where torch's start on one."""
    import torch

    X = torch.as_tensor(X, device=device).contiguous()
    if X.device.type == "cpu" and X.data_ptr() % FEATURE_ALIGNMENT:
        X = X.clone()
    return X


DENSE_BLOCK = 176  # at most this many of the Hessian's dimensions (bias included) kept whole in H0


def hessian_coordinates(X, Q, n_classes: int):
    """X's coordinates [m, n] along the eigenvectors (columns of ``Q``, eigh's ascending order)
    where ``kronecker_inverse`` keeps the Hessian whole: the m of largest variance,
    m = min(d, 2 k, DENSE_BLOCK / k - 1), or None where m is 0. One pass over X (n x d x m, at most
    one evaluation's two products), made once per basis; (m + 1) k <= DENSE_BLOCK bounds the
    block's n x ((m + 1) k)^2 product and its inverse."""
    d, k = Q.shape[0], n_classes
    m = min(d, 2 * k, DENSE_BLOCK // k - 1)
    if m <= 0:
        return None
    linear, top = _linear_for(X), Q[:, d - m:].t().contiguous()
    return linear(top, X) if linear else top @ X.t()


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
    Measured on Fashion-MNIST pixels' default grid: the Kronecker part alone
    took 312 L-BFGS evaluations instead of 394-456 with the bound's diag(s / 4 + lam) (the
    diagonal scaling, which bounds the largest softmax curvature, 1/4); digits: 82 instead of
    138. The block over the bias and 16 directions took that to 215-230 (from 285-306) and the
    whole probe to 10.2-11.3 s from 13.6-14.2 s (three alternated runs); digits: 60. Most of the
    saving is at the strong half of the grid, 8-13 evaluations a fit where there were 17-22. The block's
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
    spent more evaluations for the same stopping rule (Fashion-MNIST pixels, default grid: 461
    against 396 here, and it stopped further from the optimum at some strengths), and constructing
    any torch optimizer first imports torch._dynamo, 1.4 s of a 13 s probe."""
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


@functools.cache
def _onednn_linear():
    """oneDNN's matmul, ``linear(x, w) = x w^T`` (the op torch's own compiler emits for CPU
    linears), or None where this torch lacks it. The probe's two products
    are skinny (classes x d times the d x n features transposed, and classes x n times them), a
    shape MKL's sgemm serves badly on some CPUs: on the 2-core AMD EPYC, with 54,000 x 784
    features and 10 classes, the logits took 41-48 ms through matmul and 14-19 ms here, the
    gradient's product 32-33 ms against 17-20 ms; strided views (the transposes) are read in place."""
    import torch

    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        return None
    # Checked once on the two uses the probe makes (contiguous operands; a transposed view as the
    # weight), so that a torch whose op differs falls back to addmm instead of failing mid-fit.
    x, w = (torch.arange(n, dtype=torch.float32).reshape(shape) for n, shape in ((6, (2, 3)), (12, (3, 4))))
    try:
        ok = (torch.equal(op(x, w.t().contiguous(), None, "none", [], ""), x @ w)
              and torch.equal(op(x, w.t(), None, "none", [], ""), x @ w))
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return (lambda x, w: op(x, w, None, "none", [], "")) if ok else None


def _linear_for(Z):
    """oneDNN's linear where it serves ``Z`` (float32 on the CPU), else None (then addmm)."""
    import torch

    return _onednn_linear() if Z.device.type == "cpu" and Z.dtype == torch.float32 else None


def logit_blocks(Z, U, b):
    """``(rows, logits)`` for consecutive blocks of Z's rows (``rows`` a slice; at most
    ``BLOCK_ELEMENTS`` logits a block), the logits transposed, [classes, rows]: U^T z^T + b through
    oneDNN where it serves Z, else addmm. Transposed because the gradient's product then reads the
    softmax as it lies: produced as [rows, classes], oneDNN copied its transpose at every
    evaluation (a whole evaluation of 54,000 x 784 features and 10 classes, 2-core AMD EPYC: 40.3
    instead of 41.4 ms, medians of 40 alternated calls)."""
    import torch

    step = max(1, BLOCK_ELEMENTS // U.shape[1])
    linear = _linear_for(Z)
    Ut = U.t().contiguous()
    for i in range(0, len(Z), step):
        rows = slice(i, i + step)
        yield rows, linear(Ut, Z[rows]).add_(b[:, None]) if linear else torch.addmm(b[:, None], Ut, Z[rows].t())


def loss_and_grad(Z, y, U, b, lam: float, grad: bool = True, curvature: bool = False, coords=None):
    """The probe's objective at weights ``U`` (in Z's basis) and bias ``b``, and its gradients
    (None without ``grad``); with ``curvature`` also a fourth item, the loss's Hessian in the bias
    and the weights along m directions of Z's space, given the rows' coordinates along them,
    ``coords`` [m, n] (or none), from the same probabilities: mean_i (w_i w_i^T) (x)
    (diag(p_i) - p_i p_i^T) with w_i = (1, coords_i), as [m + 1, k, m + 1, k] in float64, over at
    most ``CURVATURE_ROWS`` evenly spaced rows (``kronecker_inverse``'s: a fit's start needs it,
    and one pass over Z gives it). Its [0, :, 0, :] is the softmax's mean curvature A.
    Written by hand rather than through autograd, in blocks of rows (one block for
    Fashion-MNIST's 10 classes): the logits (transposed, ``logit_blocks``) become
    log-probabilities, read once for the loss and turned in place into the softmax minus the
    one-hot labels; the fit is bound by the two passes over Z, which run
    through oneDNN for float32 on the CPU (``_onednn_linear``; 74-85 -> 30-38 ms per evaluation for
    54,000 x 784 features and 10 classes on the 2-core AMD EPYC) and through addmm elsewhere.
    The loss is summed in float64 (of float32 terms): a float32 sum's resolution ended tight fits
    early, on a plateau of equal values (digits at tol 1e-7: 1.1e-6 above sklearn's optimum,
    2e-8 with the float64 sum; Fashion-MNIST pixels' default grid: 394 evaluations, from 415)."""
    import torch

    n, k = len(Z), U.shape[1]
    linear = _linear_for(Z)
    loss = 0.5 * lam * (U * U).sum(dtype=torch.float64)
    gU = torch.zeros(k, U.shape[0], device=U.device, dtype=U.dtype) if grad else None  # transposed
    gb = torch.zeros_like(b) if grad else None
    m = 0 if coords is None else len(coords)
    block = torch.zeros(m + 1, k, m + 1, k, dtype=torch.float64, device=U.device) if curvature else None
    stride, sampled = -(-n // CURVATURE_ROWS), 0  # the curvature's rows: every stride-th
    for rows, logits in logit_blocks(Z, U, b):
        z, t = Z[rows], y[rows]
        # log-probabilities in one fused pass: logsumexp and then subtracting it made a whole
        # evaluation of 54,000 x 784 features and 10 classes 44.2 ms instead of 41.8 (medians of 40
        # alternated calls, 2-core AMD EPYC). The loss's terms row by row before summing: sums of
        # the logits and of their logsumexps apart would cancel in float32 (each ~ n * |logit|)
        logp = torch.log_softmax(logits, 0)
        loss = loss - logp.gather(0, t[None, :]).sum(dtype=torch.float64) / n
        if grad or curvature:
            g = logp.exp_()  # the probabilities, [classes, rows]
            if curvature:
                first = rows.start + (-rows.start) % stride  # the block's first sampled row
                picked = slice(first - rows.start, None, stride)
                sampled += g[:, picked].shape[1]
                block += _hessian_block(g[:, picked], None if coords is None else coords[:, first:rows.stop:stride])
            if not grad:
                continue
            g.scatter_add_(0, t[None, :], g.new_full((1, len(t)), -1.0))  # 1/3 of indexing's time
            if linear:
                gU.add_(linear(g, z.t()), alpha=1.0 / n)
            else:
                gU.addmm_(g, z, alpha=1.0 / n)
            gb.add_(g.sum(1), alpha=1.0 / n)
    if grad:
        gU = gU.t().add_(U, alpha=lam)  # gU was accumulated transposed
    if curvature:
        return loss, gU, gb, block / max(sampled, 1)
    return loss, gU, gb


# At most this many rows, evenly spaced, make loss_and_grad's curvature: an estimate is all H0
# needs, and the block's product over Fashion-MNIST's 54,000 rows took ~50 ms, an evaluation's
# time again, where 8,192 of them take ~6 ms for the same evaluation counts (215 against 226).
CURVATURE_ROWS = 8192


def _hessian_block(p, coords):
    """sum_i (w_i w_i^T) (x) (diag(p_i) - p_i p_i^T) over rows with probabilities p [k, rows] and
    coordinates ``coords`` [m, rows] (or None), w_i = (1, coords_i), as [m + 1, k, m + 1, k] in
    float64 (of float32 products)."""
    import torch

    k, m = len(p), 0 if coords is None else len(coords)
    w = p.new_ones(m + 1, p.shape[1])  # w_i as columns
    if m:
        w[1:] = coords
    wp = (w[:, None, :] * p[None, :, :]).reshape((m + 1) * k, -1)  # (w_i (x) p_i) as columns
    diag = (wp.view(m + 1, k, -1) @ w.t()).double()  # [j, c, l]: sum_i w_ij p_ic w_il
    outer = (wp @ wp.t()).double().view(m + 1, k, m + 1, k)
    return torch.diag_embed(diag.permute(0, 2, 1)).permute(0, 2, 1, 3) - outer


def fit_path(basis, y, n_classes: int, grid, max_iter: int = 1000, device: str = "cpu", tol: float = 1e-4):
    """Fit every strength of ``grid`` (strong -> weak) on one basis, yielding ``(lam, fit)``.

    Each fit starts from the previous fits extrapolated along the regularization path (a
    polynomial in log lam through the last three, the Lagrange form, so any grid spacing works),
    unless that start is worse than the last fit itself at the new strength (one evaluation of
    the start, which the fit then starts from when it is taken; the last fit's value moves with
    lam by the penalty alone). The solutions move
    smoothly with log lam: on Fashion-MNIST pixels the default grid took 396 L-BFGS evaluations
    instead of 886 from the last fit alone, at the same tolerance (2-core Xeon: 11-12.5 s instead
    of 22.3 s); with the Kronecker H0 (``kronecker_inverse``) 312 (2-core AMD EPYC: 12.3 s)."""
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


def objective(X, y, W, b, lam: float) -> float:
    """What the probe minimizes, mean cross-entropy + lam/2 ||W||^2, in float64 on the CPU whatever
    precision or device the solver worked in: the number to compare two solvers by."""
    import torch

    X, W, b = (torch.as_tensor(np.asarray(a.cpu() if torch.is_tensor(a) else a), dtype=torch.float64)
               for a in (X, W, b))
    logp = torch.log_softmax(X @ W + b, dim=1)
    return float(-logp[np.arange(len(X)), np.asarray(y)].mean() + 0.5 * lam * (W**2).sum())


def binomial_se(correct: int, n: int) -> float:
    """The binomial standard error of an accuracy of ``correct`` out of ``n``, in percent."""
    p = correct / max(n, 1)
    return 100.0 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def top1(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Accuracy in percent and its binomial standard error."""
    correct = int((pred == y).sum())
    return 100.0 * (correct / max(len(y), 1)), binomial_se(correct, len(y))


@dataclass(frozen=True)
class ProbeResult:
    """Top-1 (percent) with binomial standard errors, at the L2 strength chosen on val."""

    val: float
    val_se: float
    test: float
    test_se: float
    l2: float
    val_pred: np.ndarray | None = field(default=None, compare=False, repr=False)  # the class of each val row
    test_pred: np.ndarray | None = field(default=None, compare=False, repr=False)


def probe_layer(Xtr, ytr, Xva, yva, Xte, yte, grid, n_classes, max_iter=1000, device="cpu", on_fit=None,
                patience=0) -> ProbeResult:
    """Choose the L2 strength on val, refit on train+val, score on test.

    ``patience`` > 0 stops the walk (strong -> weak) after that many strengths in a row below the
    best val accuracy; the weak end of the grid is where L-BFGS needs the most iterations.
    """
    import torch

    Xtr_s, Xva_s = standardize(Xtr, Xva)
    basis = LogisticRegressionLBFGS.eigenbasis(Xtr_s, device)
    best = None
    worse = 0
    for i, (lam, clf) in enumerate(fit_path(basis, ytr, n_classes, grid, max_iter, device)):
        val_pred = clf.predict(Xva_s)
        acc, se = top1(val_pred, yva)
        if on_fit:
            on_fit()
        if best is None or acc > best[0]:  # ties keep the stronger strength
            best = (acc, se, lam, clf, val_pred)
            worse = 0
        elif acc < best[0]:
            worse += 1
            if patience and worse >= patience:
                if on_fit:
                    for _ in grid[i + 1:]:
                        on_fit()
                break
    val_acc, val_se, lam, chosen, val_pred = best
    _, Q, s = basis
    del basis, Xtr_s, Xva_s  # free the standardized train features before the train+val refit
    # train+val as one torch buffer (aligned for the products), standardized in place: one copy
    Xall = torch.empty((len(Xtr) + len(Xva), Xtr.shape[1]), dtype=torch.float32)
    Xall[: len(Xtr)], Xall[len(Xtr):] = torch.as_tensor(Xtr), torch.as_tensor(Xva)
    yall = np.concatenate([ytr, yva])
    Xall_s, Xte_s = standardize(Xall, Xte, in_place=True)
    del Xall
    # The refit starts from the chosen train fit, in the train features' eigenbasis (any basis is a
    # valid change of variables; train's is close to train+val's): same minimizer, fewer evaluations.
    clf = LogisticRegressionLBFGS(n_classes, max_iter=max_iter, device=device).fit(
        None, yall, lam, warm=chosen, basis=(as_features(Xall_s, device), Q, s))
    test_pred = clf.predict(Xte_s)
    test_acc, test_se = top1(test_pred, yte)
    if on_fit:
        on_fit()
    return ProbeResult(val_acc, val_se, test_acc, test_se, lam, val_pred, test_pred)


def _concat(text: str) -> int:
    """'none' -> 0; 'bestN' -> N, the size of the window of layers around the best one."""
    if text == "none":
        return 0
    if text.startswith("best") and text[4:].isdigit() and int(text[4:]) >= 2:
        return int(text[4:])
    raise ValueError("write none or bestN with N >= 2, e.g. best5")


def window_around(layers: list[str], best: str, size: int) -> list[str]:
    """``size`` consecutive layers (in depth order) centred on ``best``, shifted to stay inside."""
    i = layers.index(best)
    start = min(max(0, i - size // 2), max(0, len(layers) - size))
    return layers[start:start + size]


class LinearProbe(Task):
    name = "linear-probe"
    needs_classes = True
    description = "per-layer logistic regression; L2 strength chosen on val, refit on train+val; top-1"
    splits = ("train", "val", "test")
    options = {
        "l2_grid": Option(DEFAULT_GRID, _grid, "comma-separated positive L2 strengths, e.g. 1e-4,1e-3,1e-2",
                          show=_show_grid),
        "max_iter": Option(1000, positive_int, "L-BFGS iterations per fit, a positive integer"),
        "patience": Option(2, nonnegative_int,
                           "stop the grid walk after this many strengths in a row below the best val "
                           "top-1 (0 walks the whole grid)"),
        "concat": Option(0, _concat, "none, or bestN: also probe the concatenation of the N layers around "
                                     "the best single layer by val top-1 (the paper: best5)",
                         show=lambda n: f"best{n}" if n else "none"),
    }
    columns = {("val", "top1"): "val top-1", ("test", "top1"): "test top-1", ("val", "l2"): "chosen L2"}

    def run(self, ctx: RunContext) -> list[dict]:
        import torch

        from bench.layers import SEP, is_group

        torch.manual_seed(ctx.seed)
        grid, acts, window = ctx.options["l2_grid"], ctx.acts, ctx.options["concat"]
        ytr, yva, yte = (acts[s].labels for s in ("train", "val", "test"))
        n_classes = int(max(ytr.max(), yva.max(), yte.max())) + 1
        singles = [layer for layer in ctx.layers if not is_group(layer)]
        if window and not singles:
            raise BenchError("-o concat=bestN needs single layers to choose the best from; add them to --layers")
        records, val_top1 = [], {}
        fits = len(ctx.layers) + (1 if window and len(singles) > 1 else 0)

        def probe(layer, bar, **extra):
            Xtr, Xva, Xte = (acts[s].read(layer) for s in ("train", "val", "test"))
            fit = probe_layer(Xtr, ytr, Xva, yva, Xte, yte, grid, n_classes, ctx.options["max_iter"], ctx.device,
                              on_fit=lambda: bar.advance(1), patience=ctx.options["patience"])
            val_top1[layer] = fit.val
            ctx.keep_predictions("val", layer, fit.val_pred)
            ctx.keep_predictions("test", layer, fit.test_pred)
            return [
                {"layer": layer, "split": "val", "metric": "top1", "value": fit.val, "stderr": fit.val_se,
                 "n": len(yva), **extra},
                {"layer": layer, "split": "test", "metric": "top1", "value": fit.test, "stderr": fit.test_se,
                 "n": len(yte), **extra},
                {"layer": layer, "split": "val", "metric": "l2", "value": fit.l2, "stderr": None, "n": len(yva),
                 **extra},
            ]

        with ctx.progress("linear probe", fits * (len(grid) + 1)) as bar:
            for layer in ctx.layers:
                records += probe(layer, bar)
            if window and len(singles) > 1:
                best = max(singles, key=lambda layer: val_top1[layer])  # the shallowest on a tie
                group = SEP.join(window_around(singles, best, window))
                if group not in val_top1:
                    records += probe(group, bar, concat=f"best{window}")
        return records
