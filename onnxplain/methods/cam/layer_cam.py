"""LayerCAM: Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for
Localization", IEEE Transactions on Image Processing 30, 2021.

    w^kc_ij = ReLU( ∂y^c / ∂A^k_ij )                   (one weight per position)
    L^c     = ReLU( Σ_k w^kc ⊙ A^k )
"""

from __future__ import annotations

import numpy as np

from onnxplain.methods.cam.base import CAMBase, LayerData


class LayerCAM(CAMBase):
    """Element-wise: each activation weighted by the positive part of its own gradient."""

    def raw_map(self, data: LayerData) -> np.ndarray:
        g = np.maximum(data.gradients.astype(np.float64), 0)
        return (g * data.activations).sum(axis=1)
