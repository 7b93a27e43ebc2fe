"""Input × gradient: Shrikumar et al. 2016 (arXiv 1605.01713).

    attribution = x ⊙ ∂S_c(x) / ∂x
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxplain.backends.base import INPUT, Capability
from onnxplain.core.targets import TargetLike
from onnxplain.methods.base import Attribution, GradientView


class InputXGradient(Attribution):
    """The input times the gradient of the target (Captum's ``InputXGradient``)."""

    requires = frozenset({Capability.GRADIENTS})

    def attribute(self, inputs: Any, target: TargetLike = None) -> np.ndarray:
        x = self._inputs(inputs)
        grads = self.backend.gradients(x, self._objective(x, target), wrt=[INPUT]).gradients[INPUT]
        return x * grads

    def _gradient_view(self) -> GradientView:
        return GradientView(post="times_input")
