"""The modified-backward family's one extension point: which nodes get which rule.

A method of this family (guided backpropagation, deconvnet, RectGrad) is a gradient in
which the backward pass of every rectifier node of the graph is replaced by a named rule.
The rule is data — a :class:`~onnxplain.backends.base.BackwardRule` — and the backend
implements it (for torch, :mod:`onnxplain.backends.torch_rules`), so no method file
touches a framework. The nodes are chosen on the IR by op type: every ``Relu``,
``LeakyRelu``, and ``Clip`` whose lower bound is 0 (ReLU6 and friends). Because each
ONNX node is its own module in the torch backend, a ReLU that the source framework
reused or applied in place (torchvision's ResNet blocks) or called as a function
(torchvision's GoogLeNet and DenseNet, which Captum's module hooks miss) is still one
node with its own rule.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np

from onnxplain.backends.base import INPUT, Backend, BackwardRule, Capability
from onnxplain.core.model import Model
from onnxplain.core.targets import TargetLike
from onnxplain.methods.base import Attribution, GradientView

RECTIFIER_OPS = ("Relu", "LeakyRelu", "Clip")


def _clip_lower_bound(node: Any) -> float | None:
    if "min" in node.attributes:  # Clip-6
        return float(node.attributes["min"].as_float())
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        const = node.inputs[1].const_value
        if const is not None:
            return float(np.asarray(const.numpy()).reshape(-1)[0])
    return None


def rectifier_nodes(model: Model) -> list[str]:
    """Names of the graph's rectifier nodes: Relu, LeakyRelu, and Clip with min 0."""
    names = []
    for node in model.ir.graph:
        if node.op_type in ("Relu", "LeakyRelu"):
            names.append(node.name)
        elif node.op_type == "Clip" and _clip_lower_bound(node) == 0.0:
            names.append(node.name)
    return names


class ModifiedReluGradient(Attribution):
    """Base of the family: the gradient with ``rule`` at every rectifier node.

    Subclasses say which rule (:meth:`backward_rule`) and how the gradient becomes an
    attribution (:meth:`attribute`).
    """

    requires: ClassVar[frozenset[Capability]] = frozenset({Capability.GRADIENTS, Capability.RULES})

    def __init__(self, model: Model | Backend, backend: str | Backend = "auto",
                 **backend_options: Any) -> None:
        super().__init__(model, backend, **backend_options)
        self.nodes = rectifier_nodes(self.model) if self.model is not None else []
        if not self.nodes:
            warnings.warn(
                f"{type(self).__name__}: the model has no Relu, LeakyRelu or Clip(min=0) node, "
                "so its attributions equal the plain gradient's",
                stacklevel=2,
            )

    def backward_rule(self, **params: float) -> BackwardRule:
        raise NotImplementedError

    def _view(self, **params: float) -> GradientView:
        """The gradient with the family's rule at every rectifier, as a GradientView."""
        rule = self.backward_rule(**params)
        return GradientView(rules={n: rule for n in self.nodes})

    def _modified_gradients(self, x: np.ndarray, target: TargetLike, **params: float) -> np.ndarray:
        objective = self._objective(x, target)
        result = self.backend.gradients(x, objective, wrt=[INPUT], rules=self._view(**params).rules)
        return result.gradients[INPUT]
