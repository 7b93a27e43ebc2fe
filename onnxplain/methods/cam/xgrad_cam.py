"""XGrad-CAM: Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and
Explanation of CNNs", BMVC 2020.

    w_k^c = Σ_ij ( A^k_ij / Σ_ab A^k_ab ) ∂y^c / ∂A^k_ij
    L^c   = ReLU( Σ_k w_k^c A^k )

A channel whose activations sum to zero gets weight 0 (pytorch-grad-cam adds 1e-7 to the
denominator instead; the two differ only for channels whose sum is that small).
"""

from __future__ import annotations

import numpy as np

from onnxplain.methods.cam.base import CAMBase, LayerData


class XGradCAM(CAMBase):
    """Gradients weighted by each position's share of its channel's activation."""

    def channel_weights(self, data: LayerData) -> np.ndarray:
        a = data.activations.astype(np.float64)
        g = data.gradients.astype(np.float64)
        total = a.sum(axis=(2, 3))
        weighted = (g * a).sum(axis=(2, 3))
        return np.where(total != 0, weighted / np.where(total != 0, total, 1), 0.0)
