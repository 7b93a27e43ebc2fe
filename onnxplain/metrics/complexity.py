"""Complexity: how concentrated is a map? Sparseness (Gini index) and entropy. Needs no model."""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxplain.core.errors import InputValidationError
from onnxplain.core.validation import as_numbers
from onnxplain.metrics._common import MetricResult


def _flat(attributions: Any) -> np.ndarray:
    a = as_numbers(attributions, "attributions")
    if a.ndim < 2:
        raise InputValidationError(f"attributions must have a batch axis (N, ...), got shape {a.shape}")
    return np.abs(a.reshape(len(a), -1))


def sparseness(attributions: Any) -> MetricResult:
    """The Gini index of |attributions| (Chalasani, Chen, Chowdhury, Wu & Jha 2020, as
    Quantus's ``Sparseness``): with the n values sorted ascending a_(1) ≤ … ≤ a_(n)
    (plus 1e-7, so an all-zero map is defined),

        G = Σ_k (2k − n − 1) a_(k) / ( n Σ_k a_(k) ),

    0 for a uniform map, → 1 when one value holds all the mass. Higher is sparser.
    """
    a = np.sort(_flat(attributions) + 1e-7, axis=1)
    n = a.shape[1]
    k = np.arange(1, n + 1)
    gini = ((2 * k - n - 1) * a).sum(axis=1) / (n * a.sum(axis=1))
    return MetricResult("sparseness", gini)


def entropy(attributions: Any) -> MetricResult:
    """Shannon entropy of the normalised |attributions| (Bhatt, Weller & Moura 2020,
    Quantus's ``Complexity``): p = |a| / Σ|a|, H = −Σ p log p (nats). Lower is simpler;
    an all-zero map gets NaN."""
    a = _flat(attributions)
    total = a.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = a / total
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    h[total[:, 0] == 0] = np.nan
    return MetricResult("entropy", h)
