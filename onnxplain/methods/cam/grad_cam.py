"""Grad-CAM: Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017.

    w_k^c = (1 / Z) Σ_ij ∂y^c / ∂A^k_ij        (global-average-pooled gradients)
    L^c   = ReLU( Σ_k w_k^c A^k )
"""

from __future__ import annotations

import numpy as np

from onnxplain.methods.cam.base import CAMBase, LayerData


class GradCAM(CAMBase):
    """Channel weights are the spatial mean of the target's gradient (torch backend)."""

    def channel_weights(self, data: LayerData) -> np.ndarray:
        return data.gradients.astype(np.float64).mean(axis=(2, 3))
