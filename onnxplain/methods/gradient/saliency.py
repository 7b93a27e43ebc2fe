"""Saliency (vanilla gradient): Simonyan, Vedaldi & Zisserman 2013, arXiv 1312.6034.

    attribution = |∂S_c(x) / ∂x|     (or the signed gradient with ``abs=False``)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxplain.backends.base import INPUT, Capability
from onnxplain.core.targets import TargetLike
from onnxplain.methods.base import Attribution, GradientView


class Saliency(Attribution):
    """Gradient of the target with respect to the input (Captum's ``Saliency``)."""

    requires = frozenset({Capability.GRADIENTS})

    def attribute(self, inputs: Any, target: TargetLike = None, abs: bool = True) -> np.ndarray:
        x = self._inputs(inputs)
        grads = self.backend.gradients(x, self._objective(x, target), wrt=[INPUT]).gradients[INPUT]
        return np.abs(grads) if abs else grads

    def _gradient_view(self, abs: bool = True) -> GradientView:
        return GradientView(post="abs" if abs else "gradient")
