"""Guided backpropagation: Springenberg, Dosovitskiy, Brox & Riedmiller, ICLR-W 2015
("Striving for simplicity: the all convolutional net").

At every rectifier, with forward input z and incoming gradient g:

    R(l) = 1[z > 0] ⊙ 1[g > 0] ⊙ g        (Captum: relu(grad_input))

and the attribution is R at the input. Every other node keeps its ordinary gradient.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxplain.backends.base import BackwardRule
from onnxplain.core.targets import TargetLike
from onnxplain.methods.base import GradientView
from onnxplain.methods.gradient._modified import ModifiedReluGradient


class GuidedBackprop(ModifiedReluGradient):
    """Guided backpropagation (Captum's ``GuidedBackprop``), the rule ``"guided"`` applied
    to every Relu, LeakyRelu and Clip(min=0) node of the graph."""

    def backward_rule(self) -> BackwardRule:
        return BackwardRule("guided")

    def attribute(self, inputs: Any, target: TargetLike = None) -> np.ndarray:
        x = self._inputs(inputs)
        return self._modified_gradients(x, target)

    def _gradient_view(self) -> GradientView:
        return self._view()
