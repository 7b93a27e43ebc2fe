"""Helpers of the data set tests (a module name no other test folder uses)."""

from __future__ import annotations

import numpy as np

from onnxplain.data import shapes


def stream_shapes(n: int, seed: int = 5, start: int = 0):
    """Image ``i`` of ``shapes.generate(n, seed)``, one at a time, never all in memory."""
    for i in range(start, n):
        rng = np.random.default_rng([seed, i])
        label = int(rng.integers(len(shapes.CLASSES)))
        image, _ = shapes.render(label, rng, shapes.IMAGE_SIZE, True)
        yield image.transpose(2, 0, 1).astype(np.float32)
