"""HiResCAM: Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations
of convolutional neural networks", arXiv:2011.08891, 2020.

    L^c = ReLU( Σ_k ∂y^c / ∂A^k ⊙ A^k )

Element-wise gradient × activation summed over channels; for a network whose score is
GAP → linear in A, summing L^c over positions gives y^c minus the bias, which is
HiResCAM's faithfulness argument (before the ReLU).
"""

from __future__ import annotations

import numpy as np

from onnxplain.methods.cam.base import CAMBase, LayerData


class HiResCAM(CAMBase):
    """Element-wise: each activation weighted by its own gradient."""

    def raw_map(self, data: LayerData) -> np.ndarray:
        return (data.gradients.astype(np.float64) * data.activations).sum(axis=1)
