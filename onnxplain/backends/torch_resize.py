"""ONNX ``Resize`` in torch, for every mode, axis and attribute the operator defines.

onnx2torch maps Resize onto ``torch.nn.functional.interpolate``, which computes only some of
ONNX's modes (nearest only as ``asymmetric`` + ``floor``, no ``antialias``, no
``cubic_coeff_a`` but -0.75, no ``exclude_outside``, no ``keep_aspect_ratio_policy``) and
only the axes after the first two, so a channels-last image resized by the graph (Keras'
``Resizing`` under JAX, ``jax.image.resize``) cannot run at all. Resize is separable: each
resized axis is one linear map, a few weighted taps per output position, computed here from
the operator's definition (the ONNX reference implementation's formulas, with the
coordinates in float32 as ONNX Runtime computes them) and applied as a matrix product or,
on long axes, as index selections, so gradients flow as through any linear map. They are
cached per input size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

_MODES = ("nearest", "linear", "cubic")
_TRANSFORMS = (
    "half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
    "tf_crop_and_resize", "tf_half_pixel_for_nn",
)
_NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")
_POLICIES = ("stretch", "not_larger", "not_smaller")
#: Axes up to this many input positions per tap are resized by one (out, in) matrix product,
#: longer ones by a gather per tap (measured on 2 CPU cores: the product wins up to ~100).
_DENSE_PER_TAP = 64


def original_coordinates(transform: str, out: int, size: int, scale: float,
                         start: float = 0.0, end: float = 1.0) -> np.ndarray:
    """Where each of ``out`` resized positions samples an axis of length ``size`` (float32,
    as ONNX Runtime computes it)."""
    f = np.float32
    y = np.arange(out, dtype=f)
    s = f(scale)
    if transform == "half_pixel":
        return (y + f(0.5)) / s - f(0.5)
    if transform == "pytorch_half_pixel":
        return (y + f(0.5)) / s - f(0.5) if out > 1 else np.zeros(out, f)
    if transform == "half_pixel_symmetric":
        adjustment = f(out) / (s * f(size))
        offset = f(size) / f(2) * (f(1) - adjustment)
        return offset + (y + f(0.5)) / s - f(0.5)
    if transform == "tf_half_pixel_for_nn":
        return (y + f(0.5)) / s
    if transform == "align_corners":
        return y * f(size - 1) / f(out - 1) if out > 1 else np.zeros(out, f)
    if transform == "asymmetric":
        return y / s
    # tf_crop_and_resize
    if out > 1:
        return f(start) * f(size - 1) + y * (f(end) - f(start)) * f(size - 1) / f(out - 1)
    return np.full(out, f(0.5) * (f(start) + f(end)) * f(size - 1), f)


def nearest_indices(x: np.ndarray, size: int, rounding: str, downsampling: bool) -> np.ndarray:
    """The source index of each position ``x`` under ``nearest_mode`` ``rounding``."""
    x = x.astype(np.float64)
    if rounding == "round_prefer_floor":
        i = np.ceil(x - 0.5)
    elif rounding == "round_prefer_ceil":
        i = np.floor(x + 0.5)
    elif rounding == "floor":
        i = np.floor(x)
    elif rounding == "ceil":
        i = np.ceil(x)
    else:  # "simple", Resize-10's: up rounds down, down rounds up
        i = np.ceil(x) if downsampling else np.trunc(x)
    return np.clip(i, 0, size - 1).astype(np.int64)


def _kernel(mode: str, t: np.ndarray, a: float) -> np.ndarray:
    t = np.abs(t)
    if mode == "linear":
        return np.clip(1.0 - t, 0.0, 1.0)
    t2, t3 = t * t, t * t * t
    return np.where(
        t <= 1, (a + 2) * t3 - (a + 3) * t2 + 1,
        np.where(t < 2, a * t3 - 5 * a * t2 + 8 * a * t - 4 * a, 0.0),
    )


def interpolation_taps(mode: str, x: np.ndarray, size: int, scale: float, cubic_coeff_a: float,
                       exclude_outside: bool, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """The source indices and weights, each (out, taps), with which linear or cubic
    interpolation at positions ``x`` reads an axis of length ``size``. Taps outside the axis
    read its edge, or are dropped and the rest renormalised with ``exclude_outside``;
    ``antialias`` widens the kernel by 1 / ``scale`` when downsampling."""
    support = 1 if mode == "linear" else 2
    s = min(scale, 1.0) if antialias else 1.0
    first = math.floor(-support / s) + 1
    taps = np.arange(first, 2 - first)
    x = x.astype(np.float64)
    base = np.ceil(x) - 1  # the tap left of x; x itself when x is a whole number
    ratio = x - base
    w = _kernel(mode, (taps[None, :] - ratio[:, None]) * s, cubic_coeff_a)
    if antialias:
        w = w / w.sum(axis=1, keepdims=True)
    index = base[:, None].astype(np.int64) + taps[None, :]
    if exclude_outside:
        w = np.where((index < 0) | (index >= size), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    return np.clip(index, 0, size - 1), w


class Resize(nn.Module):
    """``Resize`` (opsets 10–19+) and ``Upsample`` as a torch module: ``forward(x, roi,
    scales, sizes)`` with ONNX's inputs (empty or None where absent)."""

    def __init__(self, mode: str = "nearest", coordinate_transformation_mode: str = "half_pixel",
                 nearest_mode: str = "round_prefer_floor", cubic_coeff_a: float = -0.75,
                 exclude_outside: int = 0, extrapolation_value: float = 0.0, antialias: int = 0,
                 axes: Sequence[int] | None = None, keep_aspect_ratio_policy: str = "stretch") -> None:
        super().__init__()
        for name, value, allowed in (
            ("mode", mode, _MODES), ("coordinate_transformation_mode",
                                     coordinate_transformation_mode, _TRANSFORMS),
            ("nearest_mode", nearest_mode, _NEAREST),
            ("keep_aspect_ratio_policy", keep_aspect_ratio_policy, _POLICIES),
        ):
            if value not in allowed:
                raise NotImplementedError(f"Resize: {name}={value!r} is not supported")
        self.mode = mode
        self.transform = coordinate_transformation_mode
        self.nearest_mode = nearest_mode
        self.cubic_coeff_a = float(cubic_coeff_a)
        self.exclude_outside = bool(exclude_outside)
        self.extrapolation_value = float(extrapolation_value)
        self.antialias = bool(antialias) and mode != "nearest"
        self.axes = None if axes is None else [int(a) for a in axes]
        self.policy = keep_aspect_ratio_policy
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = {}

    # -- sizes -----------------------------------------------------------------------------
    def _plan(self, shape: Sequence[int], roi: torch.Tensor | None, scales: torch.Tensor | None,
              sizes: torch.Tensor | None) -> list[tuple[int, int, int, float, float, float]]:
        """(axis, in, out, scale, roi start, roi end) for each axis the node resizes."""
        rank = len(shape)
        axes = list(range(rank)) if self.axes is None else [a % rank for a in self.axes]
        given_sizes = sizes is not None and sizes.numel() > 0
        given_scales = scales is not None and scales.numel() > 0
        f = np.float32
        if given_sizes:
            outs = [int(v) for v in sizes.tolist()]
            factors = [float(f(o) / f(shape[a])) for a, o in zip(axes, outs)]
            if self.policy != "stretch":
                pick = min if self.policy == "not_larger" else max
                scale = pick(factors)
                factors = [scale] * len(axes)
                outs = [int(math.floor(f(scale) * f(shape[a]) + f(0.5))) for a in axes]
        elif given_scales:
            factors = [float(v) for v in scales.tolist()]
            outs = None
        else:
            raise NotImplementedError("Resize: neither scales nor sizes is given")
        if len(factors) != len(axes):
            raise NotImplementedError(
                f"Resize: {len(factors)} scales or sizes for {len(axes)} axes"
            )
        crop = self.transform == "tf_crop_and_resize" and roi is not None and roi.numel() > 0
        bounds = roi.tolist() if crop else []
        plan = []
        for i, axis in enumerate(axes):
            start, end = (bounds[i], bounds[len(axes) + i]) if crop else (0.0, 1.0)
            size = int(shape[axis])
            # from scales: floor(size * scale), the crop's extent left out as ONNX Runtime does
            out = outs[i] if outs is not None else int(math.floor(f(size) * f(factors[i])))
            if out == size and factors[i] == 1.0 and (start, end) == (0.0, 1.0):
                continue
            plan.append((axis, size, out, factors[i], start, end))
        return plan

    def _axis(self, size: int, out: int, scale: float, start: float, end: float, device: torch.device,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """How one axis is resized: (indices (out,), None) for nearest, (None, an (out, in)
        matrix) or (indices, weights), each (taps, out), for the other modes; and the mask of
        positions outside the crop (tf_crop_and_resize) or None."""
        key = (size, out, scale, start, end, device, dtype)
        if key not in self._cache:
            self._cache[key] = self._build(size, out, scale, start, end, device, dtype)
        return self._cache[key]

    @torch.inference_mode(False)  # cached tensors made under inference mode could not enter autograd
    def _build(self, size: int, out: int, scale: float, start: float, end: float, device: torch.device,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        x = original_coordinates(self.transform, out, size, scale, start, end)
        outside = None
        if self.transform == "tf_crop_and_resize":
            flags = (x < 0) | (x > size - 1)
            if flags.any():
                outside = torch.as_tensor(flags, device=device)
        if self.mode == "nearest":
            index = nearest_indices(x, size, self.nearest_mode, scale < 1)
            return torch.as_tensor(index, device=device), None, outside
        index, w = interpolation_taps(self.mode, x, size, scale, self.cubic_coeff_a,
                                      self.exclude_outside, self.antialias)
        if size <= _DENSE_PER_TAP * index.shape[1]:  # one small matrix product is faster
            matrix = np.zeros((out, size))
            np.add.at(matrix, (np.arange(out)[:, None], index), w)
            return None, torch.as_tensor(matrix, dtype=dtype, device=device), outside
        return (torch.as_tensor(index.T.copy(), device=device),
                torch.as_tensor(w.T.copy(), dtype=dtype, device=device), outside)

    def forward(self, x: torch.Tensor, roi: torch.Tensor | None = None,
                scales: torch.Tensor | None = None, sizes: torch.Tensor | None = None) -> torch.Tensor:
        dtype = x.dtype if x.is_floating_point() else torch.float32
        outside_any = None
        y = x if x.is_floating_point() or self.mode == "nearest" else x.to(dtype)
        for axis, size, out, scale, start, end in self._plan(x.shape, roi, scales, sizes):
            index, weights, outside = self._axis(size, out, scale, start, end, y.device, dtype)
            view = [1] * y.dim()  # a vector along the resized axis
            view[axis] = out
            if weights is None:
                y = y.index_select(axis, index)
            elif index is None:
                y = torch.tensordot(y, weights, dims=([axis], [1])).movedim(-1, axis)
            else:  # one gather per tap: O(taps) per output, where the matrix costs O(size)
                y = sum(y.index_select(axis, i) * w.view(view) for i, w in zip(index, weights))
            if outside is not None:
                flags = outside.view(view)
                outside_any = flags if outside_any is None else outside_any | flags
        if outside_any is not None:
            y = torch.where(outside_any, torch.as_tensor(self.extrapolation_value, dtype=y.dtype,
                                                         device=y.device), y)
        return y if y.dtype == x.dtype else y.round().to(x.dtype)
