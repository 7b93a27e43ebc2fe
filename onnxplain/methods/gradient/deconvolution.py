"""Deconvolution (deconvnet): Zeiler & Fergus, ECCV 2014 ("Visualizing and understanding
convolutional networks").

At every rectifier the backward pass applies the ReLU to the incoming gradient g and
ignores the forward switch:

    R(l) = 1[g > 0] ⊙ g                    (Captum: relu(grad_output))

Convolutions and pooling keep their ordinary gradients (transposed filters, switches).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxplain.backends.base import BackwardRule
from onnxplain.core.targets import TargetLike
from onnxplain.methods.base import GradientView
from onnxplain.methods.gradient._modified import ModifiedReluGradient


class Deconvolution(ModifiedReluGradient):
    """Deconvnet attributions (Captum's ``Deconvolution``), the rule ``"deconvnet"`` at
    every Relu, LeakyRelu and Clip(min=0) node of the graph."""

    def backward_rule(self) -> BackwardRule:
        return BackwardRule("deconvnet")

    def attribute(self, inputs: Any, target: TargetLike = None) -> np.ndarray:
        x = self._inputs(inputs)
        return self._modified_gradients(x, target)

    def _gradient_view(self) -> GradientView:
        return self._view()
