"""Localisation: does the map point at the object? Pointing game and energy-based pointing
game against object masks or bounding boxes. Needs no model."""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxplain.core.errors import InputValidationError
from onnxplain.core.validation import as_numbers
from onnxplain.metrics._common import MetricResult, check_real


def _maps(attributions: Any) -> np.ndarray:
    a = as_numbers(attributions, "attributions")
    if a.ndim == 4:
        a = a.sum(axis=1)
    if a.ndim != 3:
        raise InputValidationError(
            f"attributions must have shape (N, H, W) or (N, C, H, W), got {np.shape(attributions)}"
        )
    return a


def regions_of(masks: Any = None, boxes: Any = None, shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """(N, H, W) bool regions from ``masks`` (N, H, W) or ``boxes``: per example one box
    ``(x0, y0, x1, y1)`` in pixels (x1, y1 exclusive) or a list of boxes (their union)."""
    if (masks is None) == (boxes is None):
        raise InputValidationError("pass exactly one of masks= (N, H, W) or boxes= (N, 4) / lists of boxes")
    n, h, w = shape
    if masks is not None:
        m = np.asarray(masks)
        if m.shape != (n, h, w):
            raise InputValidationError(f"masks must have shape {(n, h, w)}, got {m.shape}")
        return m.astype(bool)
    if len(boxes) != n:
        raise InputValidationError(f"boxes has {len(boxes)} entries but there are {n} maps")
    out = np.zeros((n, h, w), dtype=bool)
    for i, bx in enumerate(boxes):
        arr = np.asarray(bx, dtype=np.float64).reshape(-1, 4)
        for x0, y0, x1, y1 in arr:
            if x1 <= x0 or y1 <= y0:
                raise InputValidationError(f"box {(x0, y0, x1, y1)} of example {i} is empty (x0, y0, x1, y1)")
            out[i, max(int(y0), 0) : int(np.ceil(y1)), max(int(x0), 0) : int(np.ceil(x1))] = True
    return out


def pointing_game(
    attributions: Any,
    masks: Any = None,
    boxes: Any = None,
    tolerance: float = 0.0,
) -> MetricResult:
    """The pointing game (Zhang, Lin, Brandt, Shen & Sclaroff 2016, "Top-down neural
    attention by excitation backprop"): a hit when the map's maximum lies on the object,
    or within ``tolerance`` pixels of it (the paper used 15 px at 224×224).

    ``attributions`` (N, H, W) or (N, C, H, W) (channels summed); the object as ``masks``
    (N, H, W) bool or ``boxes`` (see :func:`regions_of`). When several pixels share the
    maximum, a hit is any of them on the object (as Quantus's ``PointingGame``); a
    constant map points nowhere and is a miss. ``scores``: 1.0 for a hit, 0.0 for a miss
    (their mean is the accuracy).

    >>> import numpy as np
    >>> from onnxplain.metrics import pointing_game
    >>> maps = np.zeros((2, 8, 8)); maps[0, 2, 2] = 1; maps[1, 7, 7] = 1
    >>> pointing_game(maps, boxes=[(0, 0, 4, 4), (0, 0, 4, 4)]).scores
    array([1., 0.])
    """
    a = _maps(attributions)
    regions = regions_of(masks, boxes, a.shape)
    tolerance = check_real(tolerance, "tolerance (pixels)")
    hits = np.zeros(len(a))
    for i in range(len(a)):
        if a[i].max() == a[i].min() or not regions[i].any():
            continue
        peaks = np.argwhere(a[i] == a[i].max())
        if tolerance == 0:
            hits[i] = float(regions[i][peaks[:, 0], peaks[:, 1]].any())
            continue
        obj = np.argwhere(regions[i])
        d2 = ((peaks[:, None, :] - obj[None, :, :]) ** 2).sum(-1)
        hits[i] = float(d2.min() <= tolerance**2)
    return MetricResult("pointing_game", hits, details={"tolerance": tolerance})


def energy_pointing_game(attributions: Any, masks: Any = None, boxes: Any = None) -> MetricResult:
    """The energy-based pointing game (Wang et al. 2020, Score-CAM): the share of the
    map's positive mass that falls on the object,

        proportion = Σ_{(i,j) ∈ object} L⁺_ij / Σ_{(i,j)} L⁺_ij,   L⁺ = max(L, 0).

    A map with no positive mass scores 0. Arguments as :func:`pointing_game`.
    """
    a = np.maximum(_maps(attributions), 0)
    regions = regions_of(masks, boxes, a.shape)
    total = a.reshape(len(a), -1).sum(axis=1)
    inside = (a * regions).reshape(len(a), -1).sum(axis=1)
    share = np.divide(inside, total, out=np.zeros_like(inside), where=total > 0)
    return MetricResult("energy_pointing_game", share)
