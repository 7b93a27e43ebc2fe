"""Resizing (N, h, w) maps as ``torch.nn.functional.interpolate`` does, as separable matrix
products.

A 1-D linear resize is an (n_out, n_in) matrix with at most two non-zeros per row, so a
bilinear resize is ``Ry @ M @ Rxᵀ``: two batched matrix products that come out C-contiguous
(a gather-and-blend along the last axis leaves the result strided, which slows every
operation after it) and cost a few milliseconds for a batch of 224×224 maps.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def interp_matrix(n_in: int, n_out: int, align_corners: bool = False) -> np.ndarray:
    """(n_out, n_in) float64 matrix of 1-D linear resizing like
    ``torch.nn.functional.interpolate(mode="bilinear")``: ``align_corners=False`` maps pixel
    centres (the source index ``(i + ½)·n_in/n_out − ½``, clipped at 0), ``True`` maps the
    corner pixels onto each other (``i·(n_in − 1)/(n_out − 1)``, ``nn.UpsamplingBilinear2d``)."""
    if align_corners:
        src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = src - i0
    m = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1 - w)
    np.add.at(m, (rows, i1), w)
    m.setflags(write=False)
    return m


@functools.lru_cache(maxsize=64)
def _matrix(n_in: int, n_out: int, align_corners: bool, dtype: np.dtype) -> np.ndarray:
    m = interp_matrix(n_in, n_out, align_corners).astype(dtype)
    m.setflags(write=False)
    return m


def resize_bilinear(maps: np.ndarray, size: tuple[int, int], align_corners: bool = False) -> np.ndarray:
    """Resize (N, h, w) maps to (N, H, W) like ``torch.nn.functional.interpolate``
    (``mode="bilinear"``, ``align_corners`` as given), in the maps' float dtype (float64
    for integer maps). The result is a new C-contiguous array."""
    _, h, w = maps.shape
    out_h, out_w = int(size[0]), int(size[1])
    dtype = np.result_type(maps.dtype, np.float32)
    if (h, w) == (out_h, out_w):
        return maps.astype(dtype, copy=True)
    ry = _matrix(h, out_h, bool(align_corners), dtype)
    rx = _matrix(w, out_w, bool(align_corners), dtype)
    return np.matmul(np.matmul(ry, maps.astype(dtype, copy=False)), rx.T)


def resize_nearest(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (N, h, w) maps to (N, H, W) like ``torch.nn.functional.interpolate``
    (``mode="nearest"``: source index floor(i · h / H), computed in float32)."""
    _, h, w = maps.shape

    def axis(n_in: int, n_out: int) -> np.ndarray:
        scale = np.float32(n_in) / np.float32(n_out)
        src = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
        return np.minimum(src, n_in - 1)

    return np.ascontiguousarray(maps[:, axis(h, size[0])][:, :, axis(w, size[1])])
