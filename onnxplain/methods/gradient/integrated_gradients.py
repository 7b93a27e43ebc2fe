"""Integrated gradients: Sundararajan, Taly & Yan, ICML 2017.

    IG_i(x) = (x_i − x'_i) · ∫₀¹ ∂S_c(x' + α(x − x')) / ∂x_i dα

approximated by ``n_steps`` points of one of Captum's five rules (Riemann left, right,
middle, trapezoid, Gauss–Legendre). Completeness: Σ_i IG_i = S_c(x) − S_c(x') up to the
quadrature error, returned per example with ``return_convergence_delta=True``.

``riemann_trapezoid`` is the trapezoid rule (step 1/(n−1), halved at both ends, weights
summing to 1). Captum's version uses step 1/n, so its weights sum to (n−1)/n and its
attributions are ours × (n−1)/n, short of completeness by that factor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import pydantic

from onnxplain.backends.base import Capability, accumulate_path
from onnxplain.core.targets import Objective, TargetLike
from onnxplain.core.validation import Params, validate_params
from onnxplain.methods.base import Attribution, expand_baseline

Method = Literal["riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre"]


def approximation(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Step sizes and α points of an integration rule (Captum's definitions)."""
    n = n_steps
    if method == "gausslegendre":
        points, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * weights, 0.5 * (points + 1)
    if method == "riemann_trapezoid":
        if n < 2:
            raise ValueError("riemann_trapezoid needs n_steps >= 2")
        sizes = np.full(n, 1.0 / (n - 1))
        sizes[0] = sizes[-1] = 1.0 / (2 * (n - 1))
        return sizes, np.linspace(0, 1, n)
    sizes = np.full(n, 1.0 / n)
    if method == "riemann_left":
        return sizes, np.linspace(0, 1 - 1 / n, n)
    if method == "riemann_right":
        return sizes, np.linspace(1 / n, 1, n)
    if method == "riemann_middle":
        return sizes, np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n)
    raise ValueError(f"unknown integration method {method!r}")


class _IGParams(Params):
    n_steps: int = pydantic.Field(ge=1)
    method: Method
    internal_batch_size: int | None = pydantic.Field(default=None, ge=1)

    @pydantic.model_validator(mode="after")
    def _trapezoid(self) -> _IGParams:
        if self.method == "riemann_trapezoid" and self.n_steps < 2:
            raise ValueError("riemann_trapezoid needs n_steps >= 2")
        return self


def path_integral(
    method: Attribution,
    start: np.ndarray,
    end: np.ndarray,
    gradient: Callable[[np.ndarray, np.ndarray], np.ndarray],
    params: _IGParams,
    show_progress: bool | None,
) -> np.ndarray:
    """Σ_k w_k · g(start + α_k (end − start)) per example, in float64, for any gradient
    function ``gradient(points, examples)`` (row i of ``points`` belonging to example
    ``examples[i]``). At most ``internal_batch_size`` points (default: the backend's
    ``max_batch_size``) are evaluated at once; row r of the flattened (steps × examples)
    grid is step r // N of example r % N, as in Captum.
    """
    sizes, alphas = approximation(params.method, params.n_steps)
    return accumulate_path(start, end, alphas, sizes, gradient, _chunk(method, params),
                           _bar(method, show_progress))


def _chunk(method: Attribution, params: _IGParams) -> int:
    return params.internal_batch_size or method.backend.max_batch_size


def _bar(method: Attribution, show_progress: bool | None) -> Callable[[list[slice]], Iterable[slice]]:
    return lambda parts: method._progress(parts, len(parts), show_progress, type(method).__name__)


def convergence_delta(
    method: Attribution, attributions: np.ndarray, x: np.ndarray, base: np.ndarray, objective: Objective
) -> np.ndarray:
    """Σ attributions − (S_c(x) − S_c(baseline)) per example: the completeness gap."""
    n = len(x)
    ends = method._scores(np.concatenate([x, base]), objective.take(np.concatenate([np.arange(n)] * 2)))
    return attributions.reshape(n, -1).sum(1, dtype=np.float64) - (ends[:n] - ends[n:])


class IntegratedGradients(Attribution):
    """Integrated gradients along the straight path from ``baselines`` to the input.

    ``internal_batch_size`` bounds how many path points go through the model at once
    (default: the backend's ``max_batch_size``), so memory does not grow with
    ``n_steps`` or the number of examples.
    """

    requires = frozenset({Capability.GRADIENTS})

    def attribute(
        self,
        inputs: Any,
        target: TargetLike = None,
        baselines: Any = None,
        n_steps: int = 50,
        method: Method = "gausslegendre",
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        show_progress: bool | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        p = validate_params(_IGParams, "IntegratedGradients", n_steps=n_steps, method=method,
                            internal_batch_size=internal_batch_size)
        x = self._inputs(inputs)
        base = expand_baseline(baselines, x)
        objective = self._objective(x, target)
        sizes, alphas = approximation(p.method, p.n_steps)
        # the backend's own sum: on the torch backend the points, gradients and sum stay
        # on its device, and only the result comes back
        total = self.backend.path_integral(base, x, alphas, sizes, objective, _chunk(self, p),
                                           _bar(self, show_progress))
        attributions = (total * (x - base)).astype(x.dtype)
        if not return_convergence_delta:
            return attributions
        return attributions, convergence_delta(self, attributions, x, base, objective)

