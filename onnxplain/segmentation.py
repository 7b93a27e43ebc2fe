"""Superpixels: the interpretable features of LIME and SHAP on images.

Every function takes images (N, C, H, W), channels first like the rest of onnxplain, and
returns a ``feature_mask`` (N, H, W) of int64 labels, 0..K_n−1 for image n, which
:class:`~onnxplain.methods.surrogate.Lime`, ``KernelShap`` and ``ShapleyValueSampling``
accept as is (any other integer mask works too).

- :func:`grid`: square cells, no dependency;
- :func:`slic` (Achanta et al., TPAMI 2012), :func:`quickshift` (Vedaldi & Soatto, ECCV
  2008; LIME's default) and :func:`felzenszwalb` (Felzenszwalb & Huttenlocher, IJCV
  2004) from scikit-image, an optional extra: ``pip install "onnxplain[segmentation]"``.

Images are usually normalised for the model; scikit-image's colour-based algorithms
expect values in [0, 1], so each image is min-max rescaled first (``rescale=True``).

>>> import numpy as np, onnxplain.segmentation as seg
>>> seg.grid(np.zeros((2, 3, 4, 6), np.float32), cell_size=2)[0]
array([[0, 0, 1, 1, 2, 2],
       [0, 0, 1, 1, 2, 2],
       [3, 3, 4, 4, 5, 5],
       [3, 3, 4, 4, 5, 5]])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pydantic

from onnxplain.core.errors import InputValidationError
from onnxplain.core.validation import Params, validate_params

__all__ = ["felzenszwalb", "grid", "quickshift", "slic"]

EXTRA = "segmentation"


def _skimage_segmentation() -> Any:
    try:
        import skimage.segmentation
    except ImportError:
        raise ImportError(
            "onnxplain.segmentation's slic, quickshift and felzenszwalb need scikit-image; "
            f'install the extra: pip install "onnxplain[{EXTRA}]" (or use segmentation.grid, '
            "which needs nothing)"
        ) from None
    return skimage.segmentation


def _images(images: Any, what: str) -> np.ndarray:
    if hasattr(images, "detach") and hasattr(images, "cpu"):
        images = images.detach().cpu().numpy()
    x = np.asarray(images)
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.number) or x.dtype == bool:
        raise InputValidationError(
            f"{what}: images must be a numeric array (N, C, H, W), got "
            f"{type(images).__name__} of shape {np.shape(images)}"
        )
    if not np.isfinite(x).all():
        raise InputValidationError(f"{what}: images contain NaN or Inf values")
    return x


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels 0..K−1 in order of first appearance by value."""
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int64)


def _per_image(
    images: Any, what: str, rescale: bool, segment: Callable[[np.ndarray, int], np.ndarray]
) -> np.ndarray:
    """Run ``segment(image (H, W, C) float64, channels)`` on every image."""
    x = _images(images, what).astype(np.float64)
    out = np.empty((x.shape[0], *x.shape[2:]), dtype=np.int64)
    for n, img in enumerate(x):
        if rescale:
            low, high = img.min(), img.max()
            img = (img - low) / (high - low) if high > low else np.zeros_like(img)
        out[n] = _relabel(np.asarray(segment(np.moveaxis(img, 0, -1), img.shape[0])))
    return out


class _GridParams(Params):
    cell_size: tuple[pydantic.PositiveInt, pydantic.PositiveInt]


def grid(images: Any, cell_size: int | tuple[int, int] = 16) -> np.ndarray:
    """Square cells of ``cell_size`` pixels (an int or (height, width)), numbered row by row;
    cells at the far edges are clipped. ``images``: (N, C, H, W) images, or their shape."""
    if isinstance(images, tuple) and all(isinstance(d, (int, np.integer)) for d in images):
        shape = images
    else:
        shape = _images(images, "grid").shape
    if len(shape) != 4:
        raise InputValidationError(f"grid: images must have shape (N, C, H, W), got {shape}")
    cells = (cell_size, cell_size) if isinstance(cell_size, (int, np.integer)) else tuple(cell_size)
    p = validate_params(_GridParams, "grid", cell_size=cells)
    n, _, h, w = shape
    ch, cw = p.cell_size
    columns = -(-w // cw)
    labels = (np.arange(h)[:, None] // ch) * columns + np.arange(w)[None, :] // cw
    return np.broadcast_to(labels.astype(np.int64), (n, h, w)).copy()


class _SlicParams(Params):
    n_segments: pydantic.PositiveInt
    compactness: pydantic.PositiveFloat
    sigma: pydantic.NonNegativeFloat


def slic(
    images: Any,
    n_segments: int = 100,
    compactness: float = 10.0,
    sigma: float = 0.0,
    rescale: bool = True,
    **kwargs: Any,
) -> np.ndarray:
    """SLIC superpixels: k-means in (colour, position) space, about ``n_segments`` per
    image; ``compactness`` trades colour for shape. Other keyword arguments go to
    ``skimage.segmentation.slic``."""
    p = validate_params(_SlicParams, "slic", n_segments=n_segments, compactness=compactness, sigma=sigma)
    sk = _skimage_segmentation()

    def segment(img: np.ndarray, channels: int) -> np.ndarray:
        options = dict(convert2lab=channels == 3, start_label=0)
        options.update(kwargs)
        return sk.slic(img, n_segments=p.n_segments, compactness=p.compactness, sigma=p.sigma,
                       channel_axis=-1, **options)

    return _per_image(images, "slic", rescale, segment)


class _QuickshiftParams(Params):
    kernel_size: pydantic.PositiveFloat
    max_dist: pydantic.PositiveFloat
    ratio: float = pydantic.Field(ge=0, le=1)


def quickshift(
    images: Any,
    kernel_size: float = 4,
    max_dist: float = 200,
    ratio: float = 0.2,
    rescale: bool = True,
    seed: int = 0,
    **kwargs: Any,
) -> np.ndarray:
    """Quickshift mode seeking, with LIME's defaults (``kernel_size=4, max_dist=200,
    ratio=0.2``). Other keyword arguments go to ``skimage.segmentation.quickshift``."""
    p = validate_params(_QuickshiftParams, "quickshift", kernel_size=kernel_size, max_dist=max_dist,
                        ratio=ratio)
    sk = _skimage_segmentation()

    def segment(img: np.ndarray, channels: int) -> np.ndarray:
        options = dict(convert2lab=channels == 3, rng=seed)
        options.update(kwargs)
        return sk.quickshift(img, kernel_size=p.kernel_size, max_dist=p.max_dist, ratio=p.ratio,
                             channel_axis=-1, **options)

    return _per_image(images, "quickshift", rescale, segment)


class _FelzenszwalbParams(Params):
    scale: pydantic.PositiveFloat
    sigma: pydantic.NonNegativeFloat
    min_size: pydantic.PositiveInt


def felzenszwalb(
    images: Any,
    scale: float = 100.0,
    sigma: float = 0.5,
    min_size: int = 50,
    rescale: bool = True,
    **kwargs: Any,
) -> np.ndarray:
    """Felzenszwalb's graph-based segmentation; a larger ``scale`` gives larger segments.
    Other keyword arguments go to ``skimage.segmentation.felzenszwalb``."""
    p = validate_params(_FelzenszwalbParams, "felzenszwalb", scale=scale, sigma=sigma, min_size=min_size)
    sk = _skimage_segmentation()

    def segment(img: np.ndarray, channels: int) -> np.ndarray:
        with warnings.catch_warnings():  # the channel axis is known: no need to guess
            warnings.filterwarnings("ignore", message="Got image with third dimension")
            return sk.felzenszwalb(img, scale=p.scale, sigma=p.sigma, min_size=p.min_size,
                                   channel_axis=-1, **kwargs)

    return _per_image(images, "felzenszwalb", rescale, segment)
