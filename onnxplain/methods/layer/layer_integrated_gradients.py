"""Layer integrated gradients (Captum's ``LayerIntegratedGradients``): integrated gradients
(Sundararajan et al., ICML 2017) along a straight path in the space of a layer's output.

With a = A^l(x) and a' = A^l(x') the layer's values for the input and the baseline,

    LIG_j(x) = (a_j − a'_j) · ∫₀¹ ∂S_c(x; A^l ← a' + α(a − a')) / ∂A^l_j dα

where ``A^l ← v`` means the forward pass runs on x with the layer's value replaced by v
(the backend's ``overrides``). Completeness: Σ_j LIG_j ≈ S_c(x) − S_c(x') when every path
from the input to the output passes through the layer. The quadrature rules are those of
:class:`~onnxplain.methods.gradient.IntegratedGradients`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from onnxplain.backends.base import Backend, Capability
from onnxplain.core.model import Model
from onnxplain.core.targets import TargetLike
from onnxplain.core.validation import validate_params
from onnxplain.methods.base import expand_baseline
from onnxplain.methods.gradient.integrated_gradients import (
    Method,
    _IGParams,
    convergence_delta,
    path_integral,
)
from onnxplain.methods.layer.base import LayerAttribution


class LayerIntegratedGradients(LayerAttribution):
    """Integrated gradients of ``layer``'s output, shape (N, *layer shape); with
    ``multiply_by_inputs=False`` the path-averaged gradient without the (a − a') factor.

    ``internal_batch_size`` bounds how many path points go through the model at once.
    """

    requires: ClassVar[frozenset[Capability]] = frozenset({Capability.ACTIVATIONS, Capability.GRADIENTS})

    def __init__(self, model: Model | Backend, layer: str, multiply_by_inputs: bool = True,
                 backend: str | Backend = "auto", **backend_options: Any) -> None:
        super().__init__(model, layer, backend, **backend_options)
        self.multiply_by_inputs = bool(multiply_by_inputs)

    def attribute(
        self,
        inputs: Any,
        target: TargetLike = None,
        baselines: Any = None,
        n_steps: int = 50,
        method: Method = "gausslegendre",
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        show_progress: bool | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        p = validate_params(_IGParams, "LayerIntegratedGradients", n_steps=n_steps, method=method,
                            internal_batch_size=internal_batch_size)
        x = self._inputs(inputs)
        base = expand_baseline(baselines, x)
        objective = self._objective(x, target)
        name = self.layer.name
        n = len(x)
        both = self.backend.forward(np.concatenate([x, base]), outputs=[name])[name]
        layer_x, layer_base = both[:n], both[n:]

        def gradient(points: np.ndarray, examples: np.ndarray) -> np.ndarray:
            return self.backend.gradients(x[examples], objective.take(examples), wrt=[name],
                                          overrides={name: points}).gradients[name]

        total = path_integral(self, layer_base, layer_x, gradient, p, show_progress)
        diff = layer_x - layer_base
        attributions = (total * diff if self.multiply_by_inputs else total).astype(layer_x.dtype)
        if not return_convergence_delta:
            return attributions
        return attributions, convergence_delta(self, attributions, x, base, objective)

