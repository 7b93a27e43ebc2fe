"""CAM: Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016.

For a network whose scores are a linear layer on globally average-pooled features,

    y^c = Σ_k W_ck · GAP(A^k) + b_c,      w_k^c = W_ck,      L^c = ReLU( Σ_k W_ck A^k )

The IR finds the head, the scores as an affine function of the pooled features
(:meth:`onnxplain.Model.classifier_head`), and reads W from its initializers, so CAM needs
only forward passes and runs on ONNX Runtime. On such a network Grad-CAM's weights are
W_ck / (h·w): CAM is Grad-CAM times h·w (the identity the Grad-CAM paper proves).
"""

from __future__ import annotations

import numpy as np

from onnxplain.backends.base import Capability
from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import ClassifierHead, LayerSpec
from onnxplain.methods.cam.base import CAMBase, LayerData


class CAM(CAMBase):
    """Class weights of the GAP → fully-connected head. ``layer`` can only be ``"auto"``
    (or the pooled tensor itself): CAM is defined at the input of that pooling."""

    requires = frozenset({Capability.FORWARD, Capability.ACTIVATIONS})

    def _find_layer(self, layer: str) -> LayerSpec:
        head = self.model.classifier_head()
        if head is None:
            raise InputValidationError(
                "CAM needs class scores that are a weighted sum of globally average-pooled "
                "feature maps (GAP → linear layers with constant weights, no activation in "
                "between), and this model has none; use GradCAM, which needs no such head"
            )
        spec = self.model.find_layer(head.feature_map)
        if layer != "auto" and self.model.find_layer(layer).name != spec.name:
            raise InputValidationError(
                f"CAM is defined only at the input of the global pooling, {spec.name!r}, not "
                f"{layer!r}; use layer='auto', or GradCAM for other layers"
            )
        self.head: ClassifierHead = head
        return spec

    def channel_weights(self, data: LayerData) -> np.ndarray:
        objective = data.objective
        if objective.kind != "index" or objective.index.shape[1] != 1 \
                or objective.tensor not in (*self.model.output_names, self.model.logits()):
            raise InputValidationError(
                "CAM explains output classes: target must be None, an int or one int per example"
            )
        classes = objective.index[:, 0]
        if (classes >= self.head.weight.shape[0]).any():
            raise InputValidationError(
                f"target {classes.tolist()} out of range: the classifier head has "
                f"{self.head.weight.shape[0]} classes"
            )
        return self.head.weight[classes]
