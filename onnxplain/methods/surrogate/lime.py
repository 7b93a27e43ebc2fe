"""LIME: Ribeiro, Singh & Guestrin, "Why should I trust you?", KDD 2016.

Around each example x, a linear model g(z) = b + Σ_j β_j z_j of the interpretable
features is fitted to the model on random coalitions z (each feature kept with
probability ½), weighted by their proximity to x:

    β = argmin Σ_z π_x(z) (f(h_x(z)) − g(z))² + Ω(β),   π_x(z) = exp(−d(x, h_x(z))² / 2σ²)

with d the cosine distance and σ = ``kernel_width`` (Captum's default kernel: d between
the input and the perturbed input, σ = 1), and Ω a lasso (α‖β‖₁, Captum's default
surrogate), ridge (α‖β‖², the ``lime`` package's) or no penalty. The attribution of
each input value is the coefficient β_j of its feature.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pydantic

from onnxplain.backends.base import Capability
from onnxplain.core.errors import InputValidationError
from onnxplain.core.targets import TargetLike
from onnxplain.core.validation import validate_params
from onnxplain.infill import Infill
from onnxplain.methods.surrogate._linear import SurrogateModel, weighted_fit, weighted_r2
from onnxplain.methods.surrogate.base import (
    SurrogateAttribution,
    SurrogateFit,
    SurrogateParams,
    interpretable_distance,
    parse_samples,
)


class _LimeParams(SurrogateParams):
    kernel_width: pydantic.PositiveFloat = 1.0
    distance_mode: Literal["cosine", "euclidean"] = "cosine"
    distance_space: Literal["input", "interpretable"] = "input"
    interpretable_model: Literal["lasso", "ridge", "linear"] = "lasso"
    alpha: pydantic.NonNegativeFloat = 0.01

    @pydantic.field_validator("kernel_width")
    @classmethod
    def _kernel_denominator_representable(cls, value: float) -> float:
        # the kernel divides by 2σ²: it must neither underflow to 0 nor overflow
        if not 0.0 < 2.0 * value * value < float("inf"):
            raise ValueError(
                f"must be finite with 2·kernel_width² a positive float64 (about 1e-154..1e154), got {value}"
            )
        return value


class Lime(SurrogateAttribution):
    """LIME on any model that runs forward (Captum's argument names).

    ``feature_mask``: the interpretable features (e.g. ``onnxplain.segmentation.slic(x)``,
    (N, H, W); without one every input value is a feature). Removed features take the
    ``baselines`` (default 0), an ``infill`` strategy, or the rows of a ``background``
    data set (responses averaged). ``n_samples`` coalitions per example (default 1000, as
    ``lime``'s images; Captum's 25 rarely gives a stable fit), each feature kept with
    probability ½, or explicit ``samples`` (S, M) / (N, S, M) of 0/1, one column per
    sorted feature id. All examples' samples share forward passes of ``batch_size`` rows
    (``perturbations_per_eval`` × N when given).

    The proximity kernel is exp(−d²/2σ²) with ``kernel_width`` σ and ``distance_mode``
    measured in the ``distance_space`` ``"input"`` (Captum's default) or ``"interpretable"``
    (between z and all-ones, as the ``lime`` package, whose image default is σ = 0.25).
    ``interpretable_model``: ``"lasso"`` (Captum's default, ``alpha=0.01``), ``"ridge"``
    (``lime``'s, with ``alpha=1``) or ``"linear"``.

    Returns the coefficients in the input's shape (``return_input_shape=False``: (N, M)),
    and with ``return_surrogate=True`` also a :class:`SurrogateFit` (R², intercept).
    """

    requires = frozenset({Capability.FORWARD})

    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: TargetLike = None,
        feature_mask: Any = None,
        n_samples: int = 1000,
        perturbations_per_eval: int | None = None,
        return_input_shape: bool = True,
        infill: Infill | None = None,
        background: Any = None,
        samples: Any = None,
        kernel_width: float = 1.0,
        distance_mode: Literal["cosine", "euclidean"] = "cosine",
        distance_space: Literal["input", "interpretable"] = "input",
        interpretable_model: SurrogateModel = "lasso",
        alpha: float = 0.01,
        batch_size: int | None = None,
        seed: int | None = 0,
        return_surrogate: bool = False,
        show_progress: bool | None = None,
    ) -> np.ndarray | tuple[np.ndarray, SurrogateFit]:
        p = validate_params(
            _LimeParams, "Lime", n_samples=n_samples, perturbations_per_eval=perturbations_per_eval,
            batch_size=batch_size, seed=seed, kernel_width=kernel_width, distance_mode=distance_mode,
            distance_space=distance_space, interpretable_model=interpretable_model, alpha=alpha,
        )
        setup = self._setup(inputs, baselines, infill, background, feature_mask, target, p, show_progress)
        feats = setup.features
        if samples is not None:
            zs = parse_samples(samples, feats, len(setup.x))
        else:
            zs = [setup.rng.random((p.n_samples, m)) < 0.5 for m in feats.sizes]
        in_input = p.distance_space == "input"
        values, dists = self._responses(setup, zs, "Lime", distance=p.distance_mode if in_input else None)
        coefs, intercepts, r2 = [], [], []
        for i, (z, y) in enumerate(zip(zs, values)):
            d = dists[i] if in_input else interpretable_distance(z, p.distance_mode)
            with np.errstate(over="ignore"):  # d²/2σ² = inf: a weight of exactly 0, checked next
                w = np.exp(-(d**2) / (2.0 * p.kernel_width * p.kernel_width))
            if not w.sum() > 0:
                raise InputValidationError(
                    f"Lime: every sample's proximity weight is 0 (distances {d.min():.3g}..{d.max():.3g} "
                    f"are too large for kernel_width={p.kernel_width}); raise kernel_width or use "
                    "distance_mode='cosine'"
                )
            beta, b = weighted_fit(z, y, w, p.interpretable_model, p.alpha)
            coefs.append(beta)
            intercepts.append(b)
            r2.append(weighted_r2(y, b + z @ beta, w))
        attr = feats.to_input_shape(coefs, setup.x.dtype) if return_input_shape else feats.to_columns(coefs)
        if not return_surrogate:
            return attr
        fit = SurrogateFit(feats.to_columns(coefs), np.array(intercepts), np.array(r2),
                           feats.feature_ids, np.array([len(z) for z in zs]))
        return attr, fit
