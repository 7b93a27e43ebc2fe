"""Layer gradient × activation (Captum's ``LayerGradientXActivation``), the layer form of
input × gradient (Shrikumar et al. 2016, arXiv 1605.01713):

    attribution = A^l(x) ⊙ ∂S_c / ∂A^l(x)
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from onnxplain.backends.base import Backend, Capability
from onnxplain.core.model import Model
from onnxplain.core.targets import TargetLike
from onnxplain.methods.layer.base import LayerAttribution


class LayerGradientXActivation(LayerAttribution):
    """The target's gradient at ``layer`` times the layer's activation; with
    ``multiply_by_inputs=False``, the layer gradient alone."""

    requires: ClassVar[frozenset[Capability]] = frozenset({Capability.GRADIENTS})

    def __init__(self, model: Model | Backend, layer: str, multiply_by_inputs: bool = True,
                 backend: str | Backend = "auto", **backend_options: Any) -> None:
        super().__init__(model, layer, backend, **backend_options)
        self.multiply_by_inputs = bool(multiply_by_inputs)

    def attribute(self, inputs: Any, target: TargetLike = None) -> np.ndarray:
        x = self._inputs(inputs)
        name = self.layer.name
        res = self.backend.gradients(x, self._objective(x, target), wrt=[name])
        grads = res.gradients[name]
        return res.activations[name] * grads if self.multiply_by_inputs else grads
