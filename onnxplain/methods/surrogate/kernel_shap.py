"""Kernel SHAP: Lundberg & Lee, "A unified approach to interpreting model predictions",
NeurIPS 2017.

The Shapley values φ of the value function v(z) = f(h_x(z)) are the coefficients of the
weighted linear regression

    φ = argmin Σ_{z ≠ ∅, 1} π(z) (v(z) − φ₀ − Σ_j φ_j z_j)²,
    π(z) = (M − 1) / (C(M, |z|) · |z| · (M − |z|)),

subject to φ₀ = v(∅) = f(baseline) and Σ_j φ_j = v(1) − v(∅) = f(x) − f(baseline)
(efficiency), both enforced exactly here by eliminating one coefficient. When all
2^M − 2 coalitions fit in ``n_samples`` they are enumerated with weights π and the
result is the exact Shapley values; otherwise coalitions are drawn from π (a size k with
probability ∝ (M − 1)/(k(M − k)), then k features uniformly) in antithetic pairs z,
1 − z, each with weight 1.
"""

from __future__ import annotations

from math import comb
from typing import Any

import numpy as np

from onnxplain.backends.base import Capability
from onnxplain.core.errors import InputValidationError
from onnxplain.core.targets import TargetLike
from onnxplain.core.validation import validate_params
from onnxplain.infill import Infill
from onnxplain.methods.surrogate._linear import shapley_fit, weighted_r2
from onnxplain.methods.surrogate.base import (
    SurrogateAttribution,
    SurrogateFit,
    SurrogateParams,
    parse_samples,
)

#: The largest number of features whose 2^M − 2 coalitions ``exact=True`` enumerates.
MAX_EXACT_FEATURES = 20


class _KernelShapParams(SurrogateParams):
    exact: bool | None = None


def shapley_kernel(m: int, sizes: np.ndarray) -> np.ndarray:
    """π for coalitions of ``sizes`` kept features out of ``m`` (0 < size < m)."""
    sizes = np.asarray(sizes)
    binom = np.array([comb(m, int(k)) for k in range(m + 1)], dtype=np.float64)
    return (m - 1) / (binom[sizes] * sizes * (m - sizes))


def all_coalitions(m: int) -> np.ndarray:
    """Every coalition of ``m`` features except the empty and the full one, (2^m − 2, m)."""
    codes = np.arange(1, 2**m - 1, dtype=np.int64)
    return ((codes[:, None] >> np.arange(m)) & 1).astype(bool)


def kernel_samples(m: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` coalitions drawn from the Shapley kernel in antithetic pairs (z, 1 − z)."""
    if m < 2 or n == 0:
        return np.zeros((0, m), dtype=bool)
    sizes = np.arange(1, m)
    p = 1.0 / (sizes * (m - sizes))
    half = -(-n // 2)
    k = rng.choice(sizes, size=half, p=p / p.sum())
    ranks = rng.random((half, m)).argsort(1).argsort(1)
    z = ranks < k[:, None]
    return np.concatenate([z, ~z])[:n]


class KernelShap(SurrogateAttribution):
    """Kernel SHAP on any model that runs forward (Captum's argument names).

    ``feature_mask``, ``baselines`` / ``infill`` / ``background``, ``samples``,
    ``batch_size`` and ``perturbations_per_eval`` are as in :class:`Lime`; with a
    ``background`` data set, v(z) is the mean over its rows (shap's KernelExplainer).
    ``n_samples``: coalitions per example besides the empty and full ones (default
    2M + 2048, as shap). ``exact``: ``None`` enumerates all 2^M − 2 coalitions when they
    fit in ``n_samples``, ``True`` always (M ≤ 20), ``False`` never. Explicit ``samples``
    are taken as draws from the kernel (weight 1 each, as Captum's); the empty and full
    coalitions among them are dropped, being constraints.

    Returns φ in the input's shape (``return_input_shape=False``: (N, M)); they sum to
    f(x) − f(baseline) exactly. ``return_surrogate=True`` adds a :class:`SurrogateFit`
    whose ``intercept`` is f(baseline) (shap's expected value).

    >>> import numpy as np, onnxplain as ox, onnxplain.segmentation as seg
    >>> from onnxplain.methods.surrogate import KernelShap
    >>> model = ox.load(ox.examples.tiny_cnn())
    >>> x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    >>> mask = seg.grid(x, cell_size=8)  # 4 superpixels: exact, 2^4 − 2 coalitions
    >>> phi, fit = KernelShap(model).attribute(x, target=1, feature_mask=mask, return_surrogate=True)
    >>> np.allclose(fit.coefficients.sum(1), model.predict(x)[:, 1] - fit.intercept, atol=1e-5)
    True
    """

    requires = frozenset({Capability.FORWARD})

    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: TargetLike = None,
        feature_mask: Any = None,
        n_samples: int | None = None,
        perturbations_per_eval: int | None = None,
        return_input_shape: bool = True,
        infill: Infill | None = None,
        background: Any = None,
        samples: Any = None,
        exact: bool | None = None,
        batch_size: int | None = None,
        seed: int | None = 0,
        return_surrogate: bool = False,
        show_progress: bool | None = None,
    ) -> np.ndarray | tuple[np.ndarray, SurrogateFit]:
        p = validate_params(
            _KernelShapParams, "KernelShap", n_samples=n_samples,
            perturbations_per_eval=perturbations_per_eval, batch_size=batch_size, seed=seed,
            exact=exact,
        )
        setup = self._setup(inputs, baselines, infill, background, feature_mask, target, p, show_progress)
        feats = setup.features
        given = parse_samples(samples, feats, len(setup.x)) if samples is not None else None
        coalitions, weights = [], []
        for i, m in enumerate(feats.sizes):
            if given is not None:
                z = given[i][(given[i].sum(1) > 0) & (given[i].sum(1) < m)]
                w = np.ones(len(z))
            elif self._exact(m, p):
                z = all_coalitions(m)
                w = shapley_kernel(m, z.sum(1))
            else:
                budget = p.n_samples if p.n_samples is not None else 2 * m + 2048
                z = kernel_samples(m, budget, setup.rng)
                w = np.ones(len(z))
            coalitions.append(z)
            weights.append(w)
        ends = [np.stack([np.zeros(m, bool), np.ones(m, bool)]) for m in feats.sizes]
        values, _ = self._responses(setup, [np.concatenate([e, z]) for e, z in zip(ends, coalitions)],
                                    "KernelShap")
        phis, base, r2 = [], [], []
        for z, w, v in zip(coalitions, weights, values):
            phi = shapley_fit(z, v[2:], w, v[0], v[1])
            phis.append(phi)
            base.append(v[0])
            r2.append(weighted_r2(v[2:], v[0] + z @ phi, w) if len(z) else 1.0)
        attr = feats.to_input_shape(phis, setup.x.dtype) if return_input_shape else feats.to_columns(phis)
        if not return_surrogate:
            return attr
        fit = SurrogateFit(feats.to_columns(phis), np.array(base), np.array(r2), feats.feature_ids,
                           np.array([len(z) for z in coalitions]))
        return attr, fit

    @staticmethod
    def _exact(m: int, p: _KernelShapParams) -> bool:
        if p.exact is False:
            return False
        if p.exact:
            if m > MAX_EXACT_FEATURES:
                raise InputValidationError(
                    f"KernelShap: exact=True enumerates 2^M − 2 coalitions, too many for M = {m} "
                    f"features (at most {MAX_EXACT_FEATURES}); group features with a feature_mask "
                    "or use exact=None"
                )
            return True
        budget = p.n_samples if p.n_samples is not None else 2 * m + 2048
        return 2**m - 2 <= budget
