"""Pictures of explanations, with numpy and Pillow (matplotlib optional).

>>> import numpy as np
>>> from onnxplain import viz
>>> x = np.random.default_rng(0).random((2, 3, 32, 32)).astype(np.float32)
>>> attr = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
>>> maps = viz.attribution_map(attr, sign="absolute", outlier_perc=2)      # (2, 32, 32) in [0, 1]
>>> pictures = viz.overlay(viz.image_to_uint8(x), maps, cmap="jet", alpha=0.5)
>>> pictures.shape, pictures.dtype
((2, 32, 32, 3), dtype('uint8'))
>>> figure = viz.compare(x, {"random": attr}, engine="pillow")            # a PIL image
>>> figure.size[0] > 2 * 128
True

- :mod:`~onnxplain.viz.heatmap`: samples to pixels (``to_nhwc``, ``image_to_uint8``),
  ``attribution_map`` (Captum-like ``sign`` and ``outlier_perc``, ``smooth``),
  ``colorize``, ``overlay``, mask outlines.
- :mod:`~onnxplain.viz.colormaps`: colour maps as numpy lookup tables.
- :mod:`~onnxplain.viz.figure`: ``compare`` (methods × images) and ``image_grid``.
- :mod:`~onnxplain.viz.html`: ``html_report``, a self-contained HTML page.
"""

from onnxplain.viz import colormaps
from onnxplain.viz.colormaps import COLORMAPS
from onnxplain.viz.figure import compare, image_grid, overlays
from onnxplain.viz.heatmap import (
    DEFAULT_CMAPS,
    SIGNS,
    attribution_map,
    colorize,
    draw_outline,
    gaussian_blur,
    image_to_uint8,
    overlay,
    reduce_channels,
    to_nhwc,
)
from onnxplain.viz.html import html_report

__all__ = [
    "COLORMAPS",
    "DEFAULT_CMAPS",
    "SIGNS",
    "attribution_map",
    "colorize",
    "colormaps",
    "compare",
    "draw_outline",
    "gaussian_blur",
    "html_report",
    "image_grid",
    "image_to_uint8",
    "overlay",
    "overlays",
    "reduce_channels",
    "to_nhwc",
]
