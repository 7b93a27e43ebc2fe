"""Layer activation: the value of an intermediate tensor (Captum's ``LayerActivation``).

    attribution = A^l(x)
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from onnxplain.backends.base import Capability
from onnxplain.methods.layer.base import LayerAttribution


class LayerActivation(LayerAttribution):
    """The activations of ``layer``, shape (N, *layer shape). Forward passes only, so
    ``backend="auto"`` runs it on ONNX Runtime."""

    requires: ClassVar[frozenset[Capability]] = frozenset({Capability.ACTIVATIONS})

    def attribute(self, inputs: Any) -> np.ndarray:
        x = self._inputs(inputs)
        return self.backend.forward(x, outputs=[self.layer.name])[self.layer.name]
