"""Guided Grad-CAM: Selvaraju et al., ICCV 2017 ("Grad-CAM: visual explanations from deep
networks via gradient-based localization").

    GuidedGradCAM_c(x) = GuidedBackprop_c(x) ⊙ upsample(L^c_Grad-CAM)

the Grad-CAM map of ``layer`` (ReLU applied, one channel) resized to the input and
multiplied into every input channel of the guided-backpropagation attribution, as
Captum's ``GuidedGradCam`` (which resizes with ``interpolate_mode="nearest"`` by default).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np

from onnxplain.backends.base import Backend, Capability
from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import Model
from onnxplain.core.targets import TargetLike
from onnxplain.core.validation import Params, validate_params
from onnxplain.methods._resize import resize_bilinear, resize_nearest
from onnxplain.methods.base import Attribution
from onnxplain.methods.cam.grad_cam import GradCAM
from onnxplain.methods.gradient.guided_backprop import GuidedBackprop

InterpolateMode = Literal["nearest", "bilinear"]


class _GGCParams(Params):
    interpolate_mode: InterpolateMode


class GuidedGradCAM(Attribution):
    """Guided backpropagation times the upsampled Grad-CAM of ``layer`` (a tensor name from
    ``model.layers()``, or ``"auto"``: the last feature map before global pooling)."""

    requires: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.ACTIVATIONS, Capability.GRADIENTS, Capability.RULES}
    )

    def __init__(self, model: Model | Backend, layer: str = "auto", backend: str | Backend = "auto",
                 **backend_options: Any) -> None:
        super().__init__(model, backend, **backend_options)
        self.grad_cam = GradCAM(self.backend, layer=layer)
        self.guided_backprop = GuidedBackprop(self.backend)
        self.layer = self.grad_cam.layer

    def attribute(
        self, inputs: Any, target: TargetLike = None, interpolate_mode: InterpolateMode = "nearest"
    ) -> np.ndarray:
        """Attributions shaped like ``inputs`` (N, C, H, W)."""
        p = validate_params(_GGCParams, "GuidedGradCAM", interpolate_mode=interpolate_mode)
        x = self._inputs(inputs)
        if x.ndim != 4:
            raise InputValidationError(f"GuidedGradCAM needs image inputs (N, C, H, W), got {x.shape}")
        if target is None:  # resolve once so both parts explain the same class
            target = self._objective(x, None).index[:, 0]
        cam = self.grad_cam.attribute(x, target=target, relu_attributions=True, upsample=False)
        resize = resize_nearest if p.interpolate_mode == "nearest" else resize_bilinear
        cam = resize(cam, x.shape[2:])
        guided = self.guided_backprop.attribute(x, target=target)
        return (guided * cam[:, None]).astype(np.float32)
