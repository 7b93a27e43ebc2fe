"""Weighted linear fits in numpy: the surrogates of LIME and the Kernel SHAP regression.

Each fit is scikit-learn's estimator with ``sample_weight`` written out, so results can be
checked against it (and against LIME and Captum, which call it):

- ``linear``: ``min Σᵢ wᵢ (yᵢ − b − xᵢ·β)²`` (``LinearRegression``);
- ``ridge``: ``min Σᵢ wᵢ (yᵢ − b − xᵢ·β)² + α‖β‖²`` (``Ridge``, LIME's surrogate);
- ``lasso``: ``min (1 / 2Σw) Σᵢ wᵢ (yᵢ − b − xᵢ·β)² + α‖β‖₁`` (``Lasso``, Captum's),
  by cyclic coordinate descent on the weighted Gram matrix, to a tight tolerance.

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
        beta = _lasso(xc * root[:, None], yc * root, alpha, tol, max_iter)
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
