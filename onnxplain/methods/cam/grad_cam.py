"""Grad-CAM: Selvaraju et al., ICCV 2017.

    w_k^c = (1 / Z) Σ_ij ∂y^c / ∂A^k_ij        (global-average-pooled gradients)
"""

from __future__ import annotations

import numpy as np

from onnxplain.methods.cam.base import CAMBase


class GradCAM(CAMBase):
    """Channel weights are the spatial mean of the target's gradient."""

    def channel_weights(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        return gradients.mean(axis=(2, 3))
