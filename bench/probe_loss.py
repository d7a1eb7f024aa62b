"""The linear probe's objective, evaluated fast: mean cross-entropy of a multinomial logistic
regression plus lam/2 ||W||^2 (bias not penalized), its gradient and, for the solver's
preconditioner, its curvature, in blocks of rows.

Written by hand rather than through autograd and ``torch.matmul``: the fit is bound by two skinny
products over the features per evaluation, which run through oneDNN's linear for float32 on the
CPU (``_onednn_linear``; addmm elsewhere) on features aligned for it (``as_features``). The solver
that calls these is ``bench.probe_solver``; ``bench perf --only probe`` measures the whole.
"""

from __future__ import annotations

import functools

import numpy as np

BLOCK_ELEMENTS = 1 << 22  # logits per block of rows in the probe's loss: 16 MiB of float32


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


@functools.cache
def _onednn_linear():
    """oneDNN's matmul, ``linear(x, w) = x w^T`` (the op torch's own compiler emits for CPU
    linears), or None where this torch lacks it. The probe's two products
    are skinny (classes x d times the d x n features transposed, and classes x n times them), a
    shape MKL's sgemm serves badly on some CPUs (docs/performance.md); strided views (the
    transposes) are read in place."""
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
    evaluation."""
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
    through oneDNN for float32 on the CPU (``_onednn_linear``, over twice as fast there:
    docs/performance.md) and through addmm elsewhere.
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
        # log-probabilities in one fused pass (logsumexp and then subtracting it is a second pass
        # over the logits). The loss's terms row by row before summing: sums of
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
# needs, and over all of Fashion-MNIST's 54,000 rows the block's product costs as much as an
# evaluation again, for the same evaluation counts (docs/performance.md).
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


def objective(X, y, W, b, lam: float) -> float:
    """What the probe minimizes, mean cross-entropy + lam/2 ||W||^2, in float64 on the CPU whatever
    precision or device the solver worked in: the number to compare two solvers by."""
    import torch

    X, W, b = (torch.as_tensor(np.asarray(a.cpu() if torch.is_tensor(a) else a), dtype=torch.float64)
               for a in (X, W, b))
    logp = torch.log_softmax(X @ W + b, dim=1)
    return float(-logp[np.arange(len(X)), np.asarray(y)].mean() + 0.5 * lam * (W**2).sum())
