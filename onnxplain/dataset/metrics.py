"""Per-image localisation scores against object masks, kept small and private to the
data set runner (the full metric suite lives in its own package).

- ``pointing_game`` (Zhang et al., "Top-down Neural Attention by Excitation Backprop",
  ECCV 2016 / IJCV 2018): 1 when the map's maximum lies on the object, within
  ``tolerance`` pixels of the mask (the paper uses 15 px at 224 px), else 0.
- ``energy`` (the energy-based pointing game of Wang et al., Score-CAM, CVPRW 2020):
  Σ_{mask} e / Σ e with e the positive part of the channel-summed map.
"""

from __future__ import annotations

import numpy as np

from onnxplain.core.errors import InputValidationError

METRICS = ("pointing_game", "energy")


def to_maps(attributions: np.ndarray, layout: str = "NCHW") -> np.ndarray:
    """(N, H, W) maps: CAM-style maps as they are, input-shaped attributions summed over channels."""
    a = np.asarray(attributions, dtype=np.float64)
    if a.ndim == 3:
        return a
    if a.ndim == 4:
        return a.sum(axis=1 if layout == "NCHW" else 3)
    raise InputValidationError(f"attributions of shape {a.shape} are neither (N, H, W) nor (N, C, H, W)")


def _fit(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if maps.shape[1:] == tuple(size):
        return maps
    from onnxplain.methods._resize import resize_bilinear

    return resize_bilinear(maps, size)


def pointing_game(
    attributions: np.ndarray, masks: np.ndarray, tolerance: float = 0.0, layout: str = "NCHW"
) -> np.ndarray:
    """1.0 per image where the maximum of the map lies within ``tolerance`` px of the mask."""
    masks = np.asarray(masks, dtype=bool)
    maps = _fit(to_maps(attributions, layout), masks.shape[1:])
    hits = np.zeros(len(maps))
    for i, (m, mask) in enumerate(zip(maps, masks)):
        r, c = np.unravel_index(np.argmax(m), m.shape)
        rows, cols = np.nonzero(mask)
        if rows.size:
            hits[i] = float(np.min((rows - r) ** 2 + (cols - c) ** 2) <= tolerance**2)
    return hits


def energy(attributions: np.ndarray, masks: np.ndarray, layout: str = "NCHW") -> np.ndarray:
    """The share of the positive attribution inside each mask (0 for an all-zero map)."""
    masks = np.asarray(masks, dtype=bool)
    maps = np.maximum(_fit(to_maps(attributions, layout), masks.shape[1:]), 0)
    total = maps.sum(axis=(1, 2))
    inside = (maps * masks).sum(axis=(1, 2))
    return np.where(total > 0, inside / np.where(total > 0, total, 1), 0.0)


def compute(
    names: tuple[str, ...], attributions: np.ndarray, masks: np.ndarray | None, layout: str, tolerance: float
) -> dict[str, np.ndarray]:
    if not names:
        return {}
    out = {}
    for name in names:
        if name == "pointing_game":
            out[name] = pointing_game(attributions, masks, tolerance, layout)
        elif name == "energy":
            out[name] = energy(attributions, masks, layout)
    return out
