"""Weighted linear fits in numpy: the surrogates of LIME and the Kernel SHAP regression.

Each fit is scikit-learn's estimator with ``sample_weight`` written out, so results can be
checked against it (and against LIME and Captum, which call it):

- ``linear``: ``min Σᵢ wᵢ (yᵢ − b − xᵢ·β)²`` (``LinearRegression``);
- ``ridge``: ``min Σᵢ wᵢ (yᵢ − b − xᵢ·β)² + α‖β‖²`` (``Ridge``, LIME's surrogate);
- ``lasso``: ``min (1 / 2Σw) Σᵢ wᵢ (yᵢ − b − xᵢ·β)² + α‖β‖₁`` (``Lasso``, Captum's),
  by cyclic coordinate descent to a tight tolerance or, with no more samples than
  features, by the homotopy (LARS-lasso), whose end the optimality conditions certify.

The intercept ``b`` is never penalised: X and y are centred by their weighted means.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np

SurrogateModel = Literal["lasso", "ridge", "linear"]


def weighted_fit(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    model: SurrogateModel = "lasso",
    alpha: float = 0.01,
    tol: float = 1e-10,
    max_iter: int = 100_000,
) -> tuple[np.ndarray, float]:
    """Fit ``y ≈ b + x·β`` with sample weights ``w``; returns (β, b)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    w = np.asarray(w, np.float64)
    total = w.sum()
    if not total > 0:
        raise ValueError("the sample weights sum to zero: no sample is near the explained input")
    sw = w / total
    x_mean = sw @ x
    y_mean = float(sw @ y)
    xc = x - x_mean
    yc = y - y_mean
    if model == "lasso":
        root = np.sqrt(sw)
        a, b = xc * root[:, None], yc * root
        # the path's steps grow with the samples: beyond ~500 coordinate descent is quicker
        beta = _lasso_path(a, b, alpha) if len(a) <= min(a.shape[1], 512) else None
        if beta is None:
            beta = _lasso(a, b, alpha, tol, max_iter)
    else:
        root = np.sqrt(w)[:, None]
        a, b = xc * root, yc * root[:, 0]
        n, m = a.shape
        if model == "ridge" and alpha > 0 and m > n:
            # more features than samples: the same β from the n × n system, β = aᵀ(aaᵀ + αI)⁻¹b
            beta = a.T @ np.linalg.solve(a @ a.T + alpha * np.eye(n), b)
        else:
            if model == "ridge" and alpha > 0:
                a = np.vstack([a, np.sqrt(alpha) * np.eye(m)])
                b = np.concatenate([b, np.zeros(m)])
            beta = np.linalg.lstsq(a, b, rcond=None)[0]
    return beta, y_mean - float(x_mean @ beta)


def _lasso(a: np.ndarray, b: np.ndarray, alpha: float, tol: float, max_iter: int) -> np.ndarray:
    """Coordinate descent for ``min ½‖b − aβ‖² + α‖β‖₁`` (a: samples × features).

    Sweeps run over a working set: the nonzero coefficients and the zero ones that most
    violate their optimality condition |a_jᵀr| ≤ α (r = b − aβ; checked for all features
    at once, in one product). When the set has converged and no zero coefficient violates
    its condition, β is the optimum. A lasso optimum has at most as many nonzeros as
    samples, so a sweep costs about the samples, not the features: every pixel its own
    feature stays fast.
    """
    n, m = a.shape
    beta = np.zeros(m)
    r = b.astype(np.float64, copy=True)
    cols = np.ascontiguousarray(a.T)  # one feature's samples contiguous
    diag = np.einsum("ij,ij->i", cols, cols)
    usable = diag > 0
    bound = alpha * (1.0 + 1e-12)  # a violation, not rounding at the bound
    grow = max(2 * n, 512)  # zero coefficients added to the working set at a time
    sweeps = 0
    while True:
        excess = np.where(usable & (beta == 0), np.abs(cols @ r) - bound, 0.0)
        worst = np.flatnonzero(excess > 0)
        if sweeps and not len(worst):
            return beta
        if m <= grow:  # few features: sweep them all
            work = np.flatnonzero(usable)
        else:
            if len(worst) > grow:
                worst = worst[np.argpartition(excess[worst], -grow)[-grow:]]
            work = np.union1d(np.flatnonzero(beta), worst)
        while True:
            sweeps += 1
            biggest = 0.0
            for j in work:
                col = cols[j]
                rho = col @ r + diag[j] * beta[j]
                new = np.sign(rho) * max(abs(rho) - alpha, 0.0) / diag[j]
                change = new - beta[j]
                if change:
                    r -= change * col
                    beta[j] = new
                    biggest = max(biggest, abs(change))
            if sweeps >= max_iter:
                warnings.warn(f"the lasso surrogate did not converge in {max_iter} sweeps", RuntimeWarning,
                              stacklevel=3)
                return beta
            if biggest <= tol * max(np.abs(beta).max(initial=0.0), 1e-300):
                break


def _lasso_path(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray | None:
    """The same optimum by the homotopy (LARS-lasso; Efron et al. 2004, Osborne et al. 2000):
    β follows its piecewise-linear path from λ = max|aᵀb| down to α, a feature joining the
    active set where its correlation reaches λ and leaving where its coefficient reaches 0.

    Used where the samples are no more than the features (and at most 512), the regime in
    which coordinate descent crawls: at Captum's 50 samples with logits of size 10 it needs
    over 10⁵ sweeps over 64–200 features (8–80 s), and 44 s over 50 176 pixel features where
    the path takes 0.4 s. The path needs a few times as many steps as samples, each a solve
    on the active set, so with ~800 samples and more coordinate descent is quicker again. Its
    end is verified with :func:`_on_support`. None where the active set turns
    degenerate or the check fails: coordinate descent then takes over.
    """
    n, m = a.shape
    beta = np.zeros(m)
    corr = a.T @ b
    lam = float(np.abs(corr).max(initial=0.0))
    if lam <= alpha:
        return beta
    active = [int(np.argmax(np.abs(corr)))]
    sign = [float(np.sign(corr[active[0]]))]
    dropped = -1
    tiny = 1e-12 * lam
    for _ in range(8 * n + 16):
        idx = np.array(active)
        sub = a[:, idx]
        try:
            d = np.linalg.solve(sub.T @ sub, np.array(sign))
        except np.linalg.LinAlgError:
            return None
        u = sub @ d
        along = a.T @ u  # how fast each correlation falls as λ does
        with np.errstate(divide="ignore", invalid="ignore"):
            join = np.minimum(np.where(1 - along > 0, (lam - corr) / (1 - along), np.inf),
                              np.where(1 + along > 0, (lam + corr) / (1 + along), np.inf))
            leave = np.where(d != 0, -beta[idx] / d, np.inf)
        join[idx] = np.inf
        if dropped >= 0:
            join[dropped] = np.inf
        join[~(join > tiny)] = np.inf
        leave[~(leave > tiny)] = np.inf
        j, k = int(np.argmin(join)), int(np.argmin(leave))
        stop = lam - alpha
        step = min(join[j], leave[k], stop)
        beta[idx] += step * d
        lam -= step
        corr = a.T @ (b - a @ beta)
        dropped = -1
        if step >= stop:
            break
        if leave[k] <= join[j]:
            beta[active[k]] = 0.0
            dropped = active.pop(k)
            sign.pop(k)
        else:
            if len(active) >= n:
                return None
            active.append(j)
            sign.append(float(np.sign(corr[j])))
    else:
        return None
    return _on_support(a, b, beta, alpha)


def _on_support(a: np.ndarray, b: np.ndarray, beta: np.ndarray, alpha: float) -> np.ndarray | None:
    """The exact optimum, if ``beta``'s support S and signs s are the optimum's.

    On S the optimality conditions are linear, a_Sᵀ(b − a_S β_S) = α s, so β_S follows from
    one linear solve; it is the optimum when its signs are s and every other
    feature satisfies |a_jᵀ r| ≤ α. The homotopy's end is polished and checked with it: its
    coefficients carry the rounding of every step, and where columns tie (few samples, binary
    coalitions) it can end on a support that is not optimal.
    """
    support = np.flatnonzero(beta)
    if not len(support) or len(support) > len(a):
        return None
    sign = np.sign(beta[support])
    sub = a[:, support]
    gram = sub.T @ sub
    try:
        exact = np.linalg.solve(gram, sub.T @ b - alpha * sign)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.sign(exact) == sign):
        return None
    r = b - sub @ exact
    corr = a.T @ r
    # float64 rounding of aᵀr, whose terms are up to |a|·|b| (responses of 10⁸ happen)
    slack = 1e-9 * alpha + 1e-13 * float(np.abs(a).sum(axis=0).max() * np.abs(b).max())
    held = np.abs(corr[support] - alpha * sign) <= slack
    free = np.ones(len(beta), dtype=bool)
    free[support] = False
    if not held.all() or np.any(np.abs(corr[free]) > alpha * (1.0 + 1e-12) + slack):
        return None
    out = np.zeros_like(beta)
    out[support] = exact
    return out


def weighted_r2(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> float:
    """``1 − Σ w (y − ŷ)² / Σ w (y − ȳ_w)²`` (scikit-learn's ``score`` with weights)."""
    w = np.asarray(w, np.float64)
    y_mean = (w @ y) / w.sum()
    total = float(w @ (y - y_mean) ** 2)
    resid = float(w @ (y - pred) ** 2)
    if total == 0:
        return 1.0 if resid == 0 else 0.0
    return 1.0 - resid / total


def shapley_fit(z: np.ndarray, y: np.ndarray, w: np.ndarray, f_empty: float, f_full: float) -> np.ndarray:
    """Kernel SHAP's regression with both end-point constraints enforced exactly.

    ``min Σ wᵢ (yᵢ − φ₀ − zᵢ·φ)²`` subject to ``φ₀ = f(∅)`` and ``Σφ = f(x) − f(∅)``:
    the last coefficient is eliminated, ``φ_M = Δ − Σ_{j<M} φ_j``, which leaves an
    unconstrained weighted least-squares problem in M − 1 unknowns (Lundberg & Lee 2017).
    """
    z = np.asarray(z, np.float64)
    m = z.shape[1]
    delta = f_full - f_empty
    if m == 1:
        return np.array([delta])
    if len(z) == 0:
        return np.full(m, delta / m)
    target = np.asarray(y, np.float64) - f_empty - z[:, -1] * delta
    design = z[:, :-1] - z[:, -1:]
    root = np.sqrt(np.asarray(w, np.float64))
    head = np.linalg.lstsq(design * root[:, None], target * root, rcond=None)[0]
    return np.append(head, delta - head.sum())
