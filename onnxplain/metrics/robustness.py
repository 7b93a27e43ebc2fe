"""Robustness: does the map stay put when the input barely moves? Max-sensitivity
(Yeh et al. 2019, Captum's ``sensitivity_max``) and the local Lipschitz estimate
(Alvarez-Melis & Jaakkola 2018). Both recompute explanations, so they take an explainer:
an onnxplain method instance or ``explain(inputs, target=...) -> attributions``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import Model
from onnxplain.core.validation import check_input
from onnxplain.metrics._common import (
    Explainer,
    MetricResult,
    check_batch_size,
    check_model,
    check_positive_int,
    check_real,
    example_streams,
    explain,
    predict,
    progress,
    resolve_classes,
)


def uniform_noise(radius: float):
    """Perturbation for :func:`sensitivity_max`: x + U(−radius, radius), the L∞ ball
    (Captum's ``default_perturb_func``)."""

    def perturb(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return x + rng.uniform(-radius, radius, x.shape).astype(x.dtype)

    return perturb


def gaussian_noise(std: float):
    """Perturbation for :func:`local_lipschitz_estimate`: x + N(0, std²) (Quantus's default)."""

    def perturb(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return x + (rng.standard_normal(x.shape) * std).astype(x.dtype)

    return perturb


def _norm(v: np.ndarray, ord: Any) -> np.ndarray:
    v = v.reshape(len(v), -1)
    if ord in ("fro", 2, 2.0):
        return np.sqrt((v * v).sum(axis=1))
    if ord in ("inf", np.inf, float("inf")):
        return np.abs(v).max(axis=1)
    if isinstance(ord, (int, float)) and ord > 0:
        return (np.abs(v) ** ord).sum(axis=1) ** (1 / ord)
    raise InputValidationError(f"norm must be 'fro', 'inf' or a positive number, got {ord!r}")


def _perturbation(func: Any, default: Callable[[float], Any], size: Any, name: str) -> Any:
    """``func`` (checked to be callable), else ``default`` of ``size`` (checked)."""
    if func is None:
        return default(check_real(size, name))
    if not callable(func):
        raise InputValidationError(f"perturb_func must be a function (x, rng) -> perturbed x, got {func!r}")
    return func


def _model_of(explainer: Explainer, model: Model | None):
    if model is not None:
        return check_model(model)
    return getattr(explainer, "model", None)


def _sampled_max(
    name, explainer, inputs, target, model, perturb, n_samples, seed, batch_size, show_progress, ratio
) -> MetricResult:
    batch_size = check_batch_size(batch_size)
    s = check_positive_int(n_samples, "n_perturb_samples")
    model = _model_of(explainer, model)
    x = check_input(model, inputs)

    def pred():
        if model is None:
            raise InputValidationError("target=None needs a model (pass model=) to find the predicted class")
        return predict(model.backend("onnxruntime"), x, batch_size)

    classes = resolve_classes(target, len(x), pred)
    base = np.concatenate(
        [
            explain(explainer, x[i : i + batch_size], classes[i : i + batch_size])
            for i in range(0, len(x), batch_size)
        ]
    ).astype(np.float64)
    streams = example_streams(seed, len(x))
    best = np.full(len(x), -np.inf)
    for i in progress(range(len(x)), len(x), show_progress, name):
        done = 0
        while done < s:
            k = min(batch_size, s - done)
            xp = np.asarray(perturb(np.repeat(x[i : i + 1], k, axis=0), streams[i]), dtype=x.dtype)
            e = explain(explainer, xp, np.full(k, classes[i])).astype(np.float64)
            best[i] = max(best[i], float(ratio(base[i], e, x[i], xp).max()))
            done += k
    return MetricResult(name, best, details={"target": classes})


def sensitivity_max(
    explainer: Explainer,
    inputs: Any,
    target: Any = None,
    perturb_radius: float = 0.02,
    n_perturb_samples: int = 10,
    norm: Any = "fro",
    perturb_func: Any = None,
    model: Model | None = None,
    seed: int | None = 0,
    batch_size: int = 32,
    show_progress: bool | None = None,
) -> MetricResult:
    """Max-sensitivity (Yeh et al. 2019), as Captum's ``sensitivity_max``:

        SENS_max(Φ, x) = max_{j ≤ S} ‖Φ(x) − Φ(x + δ_j)‖ / ‖Φ(x)‖,  δ_j ~ U(L∞ ball of radius r)

    with S = ``n_perturb_samples``, r = ``perturb_radius``, ‖·‖ = ``norm`` (``"fro"``: the
    L2 norm of the flattened map, ``"inf"`` or a number p); a zero ‖Φ(x)‖ counts as 1, as
    in Captum. ``perturb_func(x_repeated, rng) -> perturbed`` replaces the uniform noise.
    Example i's noise comes from a stream seeded by ``(seed, i)``. ``target`` is kept
    fixed for the perturbed inputs (None: the class predicted for x, which needs
    ``model=`` unless the explainer is an onnxplain method). Lower is better.
    """
    perturb = _perturbation(perturb_func, uniform_noise, perturb_radius, "perturb_radius")

    def ratio(e0, e, x0, xp):
        den = _norm(e0[None], norm)
        den = np.where(den == 0, 1.0, den)
        return _norm(e - e0[None], norm) / den

    return _sampled_max(
        "sensitivity_max",
        explainer,
        inputs,
        target,
        model,
        perturb,
        n_perturb_samples,
        seed,
        batch_size,
        show_progress,
        ratio,
    )


def local_lipschitz_estimate(
    explainer: Explainer,
    inputs: Any,
    target: Any = None,
    perturb_std: float = 0.1,
    n_perturb_samples: int = 10,
    perturb_func: Any = None,
    model: Model | None = None,
    seed: int | None = 0,
    batch_size: int = 32,
    show_progress: bool | None = None,
) -> MetricResult:
    """The local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018, "On the robustness of
    interpretability methods"), as Quantus's ``LocalLipschitzEstimate``:

        L̂(x) = max_{j ≤ S} ‖Φ(x) − Φ(x'_j)‖₂ / ‖x − x'_j‖₂,   x'_j = x + N(0, σ²)

    with σ = ``perturb_std`` and S = ``n_perturb_samples``. Other arguments as
    :func:`sensitivity_max`. Lower is better.
    """
    perturb = _perturbation(perturb_func, gaussian_noise, perturb_std, "perturb_std")

    def ratio(e0, e, x0, xp):
        dx = _norm((xp - x0[None]).astype(np.float64), 2)
        return _norm(e - e0[None], 2) / np.where(dx == 0, np.inf, dx)

    return _sampled_max(
        "local_lipschitz_estimate",
        explainer,
        inputs,
        target,
        model,
        perturb,
        n_perturb_samples,
        seed,
        batch_size,
        show_progress,
        ratio,
    )
