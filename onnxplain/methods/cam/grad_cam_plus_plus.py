"""Grad-CAM++: Chattopadhay et al., "Grad-CAM++: Generalized Gradient-Based Visual
Explanations for Deep Convolutional Networks", WACV 2018 (arXiv:1710.11063), eqs. 19 and 7.

The paper explains the exponential of the score, Y^c = exp(S^c). With g = ∂S^c/∂A^k_ij
and a network piecewise linear in A (ReLU: the higher derivatives of S^c vanish),
∂Y/∂A = e^S g, ∂²Y/∂A² = e^S g², ∂³Y/∂A³ = e^S g³, so e^S cancels in the closed form

    α^kc_ij = g² / ( 2 g² + Σ_ab A^k_ab g³ )          (0 where the denominator is 0)
    w^c_k   = Σ_ij α^kc_ij ReLU( ∂Y^c/∂A^k_ij ) = e^{S^c} Σ_ij α^kc_ij ReLU(g)
    L^c     = ReLU( Σ_k w^c_k A^k )

which is what we compute (in float64). pytorch-grad-cam computes the same α (with 1e-6
added to the denominator) but weights by ReLU(g) instead of ReLU(e^S g): its weights are
ours divided by e^{S^c}, one positive factor per example, so the maps agree up to that
factor and exactly after normalisation. ``exponential=False`` drops the factor and gives
pytorch-grad-cam's scale (needed when |S^c| > 87, where e^S leaves float32's range). The authors'
code further divides α by its sum over positions, per channel; neither eq. 19 nor
pytorch-grad-cam does, and neither do we.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydantic

from onnxplain.backends.base import Backend
from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import LayerSpec, Model
from onnxplain.core.validation import Params, validate_params
from onnxplain.methods.cam.base import CAMBase, LayerData

_MAX_EXPONENT = 87.0  # e^±87 stays inside float32's normal range, in which maps are returned


class _Params(Params):
    exponential: pydantic.StrictBool


class GradCAMPlusPlus(CAMBase):
    """Grad-CAM++ with the paper's exponential output (``exponential=True``, default)."""

    def __init__(self, model: Model | Backend, layer: str | LayerSpec = "auto",
                 backend: str | Backend = "auto", exponential: bool = True, **backend_options: Any) -> None:
        self.exponential = validate_params(_Params, "GradCAMPlusPlus", exponential=exponential).exponential
        super().__init__(model, layer, backend, **backend_options)

    def channel_weights(self, data: LayerData) -> np.ndarray:
        a, g = data.activations.astype(np.float64), data.gradients.astype(np.float64)
        g2 = g * g
        denominator = 2 * g2 + a.sum(axis=(2, 3), keepdims=True) * g2 * g
        alpha = np.where(denominator != 0, g2 / np.where(denominator != 0, denominator, 1), 0.0)
        weights = (alpha * np.maximum(g, 0)).sum(axis=(2, 3))
        if not self.exponential:
            return weights
        scores = data.scores.astype(np.float64)
        if (np.abs(scores) > _MAX_EXPONENT).any():
            raise InputValidationError(
                f"GradCAMPlusPlus: exp(score) is outside float32's range for target scores "
                f"{scores.tolist()}; use GradCAMPlusPlus(..., exponential=False), which only drops "
                "that positive factor per example"
            )
        return weights * np.exp(scores)[:, None]
