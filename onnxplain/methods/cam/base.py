"""The class-activation-map base: a variant only says how channels are weighted.

    L^c = ReLU( Σ_k w_k^c A^k )

``A`` is the feature map of ``layer`` (N, K, h, w). Subclasses implement
``channel_weights(activations, gradients) -> (N, K)``; hooks, targets, ReLU and
upsampling live here.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from onnxplain.backends.base import Backend, Capability
from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import Model
from onnxplain.core.targets import TargetLike
from onnxplain.methods.base import Attribution, resize_bilinear


class CAMBase(Attribution):
    """Base of the CAM family. ``layer``: a tensor name from ``model.layers()`` or
    ``"auto"`` (the last spatial feature map before global pooling)."""

    requires: ClassVar[frozenset[Capability]] = frozenset({Capability.ACTIVATIONS, Capability.GRADIENTS})

    def __init__(self, model: Model | Backend, layer: str = "auto", backend: str | Backend = "auto",
                 **backend_options: Any) -> None:
        super().__init__(model, backend, **backend_options)
        if self.model is None:
            raise InputValidationError(f"{type(self).__name__} needs a Model to find its layer")
        self.layer = self.model.find_layer(layer)
        if len(self.layer.shape) != 4:
            raise InputValidationError(
                f"layer {self.layer.name!r} has shape {self.layer.shape}; CAMs need a 4-D "
                "(N, C, H, W) feature map, see model.layers()"
            )

    def channel_weights(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def attribute(
        self,
        inputs: Any,
        target: TargetLike = None,
        relu_attributions: bool = True,
        upsample: bool = True,
    ) -> np.ndarray:
        """The map per example: (N, H, W) at the input's size, or (N, h, w) at the
        layer's size with ``upsample=False`` (bilinear, align_corners=False)."""
        x = self._inputs(inputs)
        objective = self._objective(x, target)
        name = self.layer.name
        res = self.backend.gradients(x, objective, wrt=[name])
        acts, grads = res.activations[name], res.gradients[name]
        weights = self.channel_weights(acts, grads)
        cam = np.einsum("nk,nkhw->nhw", weights, acts)
        if relu_attributions:
            cam = np.maximum(cam, 0)
        if upsample and x.ndim == 4:
            cam = resize_bilinear(cam, x.shape[2:])
        return cam.astype(np.float32)
