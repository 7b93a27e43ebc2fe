"""Attributions to pictures: channel reduction, sign handling, clipping, smoothing,
colour, overlay. Numpy only.

The normalisation follows Captum's ``visualization._normalize_attr``, per example:
channels are summed (``channel_reduce="sum"``), the sign is handled (``"absolute"``:
``|a|``; ``"positive"``: ``max(a, 0)``; ``"negative"``: ``max(−a, 0)``; ``"all"``: ``a``;
Captum's ``"absolute_value"`` is accepted too),
and the result is divided by the value at which the cumulative sum of the sorted
magnitudes reaches ``100 − outlier_perc`` percent of their total, then clipped. So the
few largest values (``outlier_perc`` percent of the attribution mass) saturate instead of
washing out the rest. The maps are in [0, 1], or [−1, 1] for ``sign="all"``.

>>> import numpy as np
>>> from onnxplain.viz import heatmap
>>> attr = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
>>> m = heatmap.attribution_map(attr, sign="absolute")
>>> m.shape, float(m.min()) >= 0, float(m.max())
((2, 8, 8), True, 1.0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from onnxplain.core.errors import InputValidationError
from onnxplain.core.layout import LAYOUTS
from onnxplain.viz import colormaps

if TYPE_CHECKING:
    from onnxplain.preprocess import Preprocess

Sign = Literal["absolute", "positive", "negative", "all"]
ChannelReduce = Literal["sum", "mean", "max_abs", "l2"]
Layout = Literal["NCHW", "NHWC", "NHW"]

SIGNS: tuple[str, ...] = ("absolute", "positive", "negative", "all")
#: Colour map used per sign when none is given: jet for magnitudes, as CAM papers show
#: them over images, and a blue–white–red diverging map for signed values.
DEFAULT_CMAPS: dict[str, str] = {"absolute": "jet", "positive": "jet", "negative": "jet", "all": "bwr"}


def _sign(sign: str) -> str:
    """``sign`` checked; Captum's name ``"absolute_value"`` is accepted for ``"absolute"``."""
    if sign == "absolute_value":
        return "absolute"
    if sign not in SIGNS:
        raise InputValidationError(f"sign must be one of {', '.join(SIGNS)}, got {sign!r}")
    return sign


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise InputValidationError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")


def to_nhwc(x: np.ndarray, layout: Layout = "NCHW") -> np.ndarray:
    """A batch of samples as (N, H, W, C): from (N, C, H, W) or (N, H, W, C).

    A single sample (C, H, W) / (H, W, C) gets a batch axis; a batch of 2-D maps
    (N, H, W), such as CAM outputs or an ``"NHW"`` model's images, gets a channel axis of
    size 1 (an NHW model's (N, 1, H, W) arrays are read as NCHW).
    """
    _check_layout(layout)
    x = np.asarray(x)
    if x.ndim == 3:
        return x[..., None]
    if x.ndim != 4:
        raise InputValidationError(
            f"expected a batch (N, C, H, W) / (N, H, W, C) or maps (N, H, W), got shape {x.shape}"
        )
    return x if layout == "NHWC" else x.transpose(0, 2, 3, 1)


def image_to_uint8(
    x: np.ndarray, layout: Layout = "NCHW", preprocess: Preprocess | None = None
) -> np.ndarray:
    """Model inputs → displayable (N, H, W, 3) uint8.

    ``x``: a batch (N, C, H, W) / (N, H, W, C) / (N, H, W) as ``layout`` says, or one
    image (C, H, W) / (H, W, C) / (H, W).

    With ``preprocess``, its arithmetic is undone exactly. Without, uint8 passes through,
    floats already in [0, 1] are scaled by 255, and anything else is stretched per image
    from its minimum to its maximum. One channel is repeated to three; with more than three
    the first three are shown.
    """
    if preprocess is not None:
        return preprocess.to_display(np.asarray(x))
    arr = np.asarray(x)
    if arr.ndim == (2 if layout == "NHW" else 3):  # one image
        arr = arr[None]
    arr = to_nhwc(arr, layout)
    if arr.dtype == np.uint8:
        out = arr
    else:
        f = arr.astype(np.float64)
        if f.size and f.min() >= 0 and f.max() <= 1:
            f = f * 255
        else:
            lo = f.min(axis=(1, 2, 3), keepdims=True)
            hi = f.max(axis=(1, 2, 3), keepdims=True)
            f = (f - lo) / np.where(hi > lo, hi - lo, 1) * 255
        out = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    c = out.shape[-1]
    if c == 1:
        return np.repeat(out, 3, axis=-1)
    if c == 2:
        return np.concatenate([out, out[..., :1]], axis=-1)
    return np.ascontiguousarray(out[..., :3])


def reduce_channels(
    attr: np.ndarray, layout: Layout = "NCHW", channel_reduce: ChannelReduce = "sum"
) -> np.ndarray:
    """(N, C, H, W) / (N, H, W, C) attributions → (N, H, W) maps; (N, H, W) passes through."""
    a = np.asarray(attr, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim == 3:
        return a
    a = to_nhwc(a, layout)
    if channel_reduce == "sum":
        return a.sum(axis=-1)
    if channel_reduce == "mean":
        return a.mean(axis=-1)
    if channel_reduce == "max_abs":
        return np.abs(a).max(axis=-1)
    if channel_reduce == "l2":
        return np.sqrt((a * a).sum(axis=-1))
    raise InputValidationError(
        f"channel_reduce must be 'sum', 'mean', 'max_abs' or 'l2', got {channel_reduce!r}"
    )


def cumulative_sum_threshold(values: np.ndarray, percentile: float) -> float:
    """The value at which the cumulative sum of the sorted ``values`` (non-negative)
    first reaches ``percentile`` percent of their total (Captum's threshold)."""
    if not 0 <= percentile <= 100:
        raise InputValidationError(f"percentile must lie in [0, 100], got {percentile}")
    flat = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if flat.size == 0:
        return 0.0
    if percentile == 100:
        return float(flat[-1])
    sums = np.cumsum(flat)
    return float(flat[np.searchsorted(sums, sums[-1] * 0.01 * percentile, side="left")])


def gaussian_blur(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Blur (N, H, W) maps with a Gaussian of ``sigma`` pixels (reflecting the edges)."""
    if sigma < 0:
        raise InputValidationError(f"smooth (the blur's sigma in pixels) must be >= 0, got {sigma}")
    maps = np.asarray(maps, dtype=np.float64)
    if sigma == 0:
        return maps
    radius = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()

    def blur(a: np.ndarray, axis: int) -> np.ndarray:
        pad = [(0, 0)] * a.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(a, pad, mode="symmetric" if a.shape[axis] > 1 else "edge")
        out = np.zeros_like(a)
        for k, w in enumerate(kernel):
            out += w * np.take(padded, np.arange(k, k + a.shape[axis]), axis=axis)
        return out

    return blur(blur(maps, 1), 2)


def attribution_map(
    attr: np.ndarray,
    layout: Layout = "NCHW",
    sign: Sign = "absolute",
    outlier_perc: float = 2.0,
    smooth: float = 0.0,
    channel_reduce: ChannelReduce = "sum",
    subtract_min: bool = False,
) -> np.ndarray:
    """Attributions → (N, H, W) maps in [0, 1] (``sign="all"``: [−1, 1]), per example.

    ``attr``: (N, C, H, W) / (N, H, W, C) as ``layout`` says, or maps (N, H, W) (e.g.
    CAM). ``outlier_perc``: the percent of attribution mass allowed to saturate (0: scale
    by the maximum). ``smooth``: Gaussian blur sigma in pixels, applied after the sign.
    ``subtract_min``: subtract each map's minimum after the sign, for maps that sit on
    a large offset (RISE's expected scores); not with ``sign="all"``.
    """
    sign = _sign(sign)
    if not 0 <= outlier_perc < 100:
        raise InputValidationError(f"outlier_perc must lie in [0, 100), got {outlier_perc}")
    maps = reduce_channels(attr, layout, channel_reduce)
    if not np.isfinite(maps).all():
        raise InputValidationError("the attributions contain NaN or Inf values")
    if sign == "absolute":
        maps = np.abs(maps)
    elif sign == "positive":
        maps = np.maximum(maps, 0)
    elif sign == "negative":
        maps = np.maximum(-maps, 0)
    if subtract_min:
        if sign == "all":
            raise InputValidationError("subtract_min would move the zero of a signed map; use another sign")
        maps = maps - maps.min(axis=(1, 2), keepdims=True)
    maps = gaussian_blur(maps, smooth)
    out = np.empty_like(maps)
    for i, m in enumerate(maps):
        threshold = cumulative_sum_threshold(np.abs(m), 100 - outlier_perc)
        out[i] = m / threshold if threshold > 0 else np.zeros_like(m)
    return np.clip(out, -1 if sign == "all" else 0, 1)


def colorize(maps: np.ndarray, cmap: str | None = None, sign: Sign = "absolute") -> np.ndarray:
    """Maps from :func:`attribution_map` → (N, H, W, 3) uint8. ``sign="all"`` maps
    [−1, 1] onto the colour map (0 in the middle); the others map [0, 1]."""
    sign = _sign(sign)
    cmap = cmap or DEFAULT_CMAPS[sign]
    lo = -1.0 if sign == "all" else 0.0
    return colormaps.apply(maps, cmap, lo, 1.0)


def resize_rgb(images: np.ndarray, size: tuple[int, int], resample: str = "bilinear") -> np.ndarray:
    """Resize (N, H, W, 3) uint8 images to (height, width) with Pillow."""
    from PIL import Image

    h, w = size
    if images.shape[1:3] == (h, w):
        return images
    mode = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}[resample]
    return np.stack([np.asarray(Image.fromarray(im).resize((w, h), mode)) for im in images])


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (N, h, w) float maps (Pillow, mode F)."""
    from PIL import Image

    h, w = size
    if maps.shape[1:3] == (h, w):
        return maps
    return np.stack([
        np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR))
        for m in maps
    ]).astype(np.float64)


def overlay(
    images: np.ndarray,
    maps: np.ndarray,
    cmap: str | None = None,
    sign: Sign = "absolute",
    alpha: float = 0.5,
    grayscale: bool = False,
    weighted: bool = False,
) -> np.ndarray:
    """Blend coloured ``maps`` (N, H, W) over ``images`` (N, H, W, 3) uint8.

    ``alpha``: the heat map's weight. ``grayscale``: show the image in grey under the
    colours (Captum's ``blended_heat_map``). ``weighted``: scale ``alpha`` per pixel by
    the map's magnitude, so unimportant pixels show the plain image. Maps of another size
    than the images are resized bilinearly.
    """
    if not 0 <= alpha <= 1:
        raise InputValidationError(f"alpha must lie in [0, 1], got {alpha}")
    images = np.asarray(images)
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim == 2:
        maps = maps[None]
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise InputValidationError(
            f"images must be (N, H, W, 3) uint8 (see image_to_uint8), got {images.shape} {images.dtype}"
        )
    if len(maps) != len(images):
        raise InputValidationError(f"{len(maps)} maps for {len(images)} images")
    maps = resize_maps(maps, images.shape[1:3])
    heat = colorize(maps, cmap, sign).astype(np.float64)
    base = images.astype(np.float64)
    if grayscale:
        base = np.repeat((base @ np.array([0.299, 0.587, 0.114]))[..., None], 3, axis=-1)
    a = alpha * (np.abs(maps)[..., None] if weighted else 1.0)
    return np.clip(np.rint((1 - a) * base + a * heat), 0, 255).astype(np.uint8)


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The boundary pixels of a boolean (H, W) mask: inside, with a neighbour outside."""
    m = np.asarray(mask, dtype=bool)
    inner = m.copy()
    for _ in range(width):
        p = np.pad(inner, 1, mode="edge")
        inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def draw_outline(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (0, 255, 0),
                 width: int = 1) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with the outline of ``mask`` drawn on it; a mask of
    another size is scaled to the image (nearest neighbour)."""
    mask = np.asarray(mask, dtype=bool)
    h, w = image.shape[:2]
    if mask.shape != (h, w):
        rows = (np.arange(h) * mask.shape[0] // h)
        cols = (np.arange(w) * mask.shape[1] // w)
        mask = mask[rows][:, cols]
    out = image.copy()
    out[mask_outline(mask, width)] = colour
    return out


__all__ = [
    "DEFAULT_CMAPS",
    "SIGNS",
    "attribution_map",
    "colorize",
    "cumulative_sum_threshold",
    "draw_outline",
    "gaussian_blur",
    "image_to_uint8",
    "mask_outline",
    "overlay",
    "reduce_channels",
    "resize_maps",
    "resize_rgb",
    "to_nhwc",
]
