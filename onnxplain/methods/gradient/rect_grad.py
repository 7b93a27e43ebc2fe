"""Rectified gradient (RectGrad): Kim, Seo, Jeon, Koo, Choe & Jeon 2019, "Why are saliency
maps noisy? Cause of and solution to noisy saliency maps" (arXiv 1902.04893).

At every rectifier with output (activation) a and incoming gradient g, only the units
whose importance a ⊙ g reaches the q-th percentile τ of the example's importances pass
their gradient:

    R(l) = 1[a ⊙ g ≥ τ] ⊙ f'(z) ⊙ g,     τ = percentile_q(a ⊙ g)   (per example)

and the attribution is x ⊙ R(0) (the authors' code multiplies by the input;
``multiply_by_inputs=False`` returns R(0)). Paper default q = 98. The ordinary derivative
f'(z) is kept, so q = 0 gives the plain gradient; for τ > 0 — q = 98 in practice — it is
the authors' rule ``where(a·g > τ, g, 0)``. The authors' optional padding trick (zeroing
gradients at the border of SAME convolutions) is not applied.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydantic

from onnxplain.backends.base import Backend, BackwardRule
from onnxplain.core.model import Model
from onnxplain.core.targets import TargetLike
from onnxplain.core.validation import Params, validate_params
from onnxplain.methods.base import GradientView
from onnxplain.methods.gradient._modified import ModifiedReluGradient


class _RectGradParams(Params):
    q: float = pydantic.Field(ge=0.0, le=100.0)


class RectGrad(ModifiedReluGradient):
    """RectGrad attributions; ``q`` is the percentile threshold of each rectifier."""

    def __init__(self, model: Model | Backend, multiply_by_inputs: bool = True,
                 backend: str | Backend = "auto", **backend_options: Any) -> None:
        super().__init__(model, backend, **backend_options)
        self.multiply_by_inputs = bool(multiply_by_inputs)

    def backward_rule(self, q: float = 98.0) -> BackwardRule:
        return BackwardRule("rectgrad", {"q": q})

    def attribute(self, inputs: Any, target: TargetLike = None, q: float = 98.0) -> np.ndarray:
        p = validate_params(_RectGradParams, "RectGrad", q=q)
        x = self._inputs(inputs)
        grads = self._modified_gradients(x, target, q=p.q)
        return x * grads if self.multiply_by_inputs else grads

    def _gradient_view(self, q: float = 98.0) -> GradientView:
        p = validate_params(_RectGradParams, "RectGrad", q=q)
        view = self._view(q=p.q)
        return GradientView(view.rules, "times_input" if self.multiply_by_inputs else "gradient")
