"""What the layer methods share: the layer they attribute to."""

from __future__ import annotations

from typing import Any

from onnxplain.backends.base import Backend
from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import Model
from onnxplain.methods.base import Attribution


class LayerAttribution(Attribution):
    """Base of the layer methods. ``layer``: a tensor name (``model.layers()`` lists the
    feature maps; any named tensor works, e.g. a Gemm output), a node name, or ``"auto"``
    (the last feature map before global pooling). To attribute to a node's *input* (Captum's
    ``attribute_to_layer_input``), name the input tensor."""

    _input_shaped = False  # results are shaped like the layer, in the graph's own layout

    def __init__(self, model: Model | Backend, layer: str, backend: str | Backend = "auto",
                 **backend_options: Any) -> None:
        super().__init__(model, backend, **backend_options)
        if self.model is None:
            raise InputValidationError(f"{type(self).__name__} needs a Model to find its layer")
        if not isinstance(layer, str):
            raise InputValidationError(f"layer must be a tensor name or 'auto', got {layer!r}")
        self.layer = self.model.find_layer(layer)
        if self.layer.name == self.model.input_name:
            raise InputValidationError(
                f"layer {layer!r} is the model input; use the input methods (e.g. IntegratedGradients)"
            )
