"""Export a Keras 3 model to ONNX (``model.export(format="onnx")``) and load it, checked.

Keras 3 exports through its active backend (``KERAS_BACKEND``): ``torch`` (torch.onnx;
the lightest, no TensorFlow needed), ``jax`` (jax2onnx) or ``tensorflow`` (tf2onnx). The
exported model keeps the Keras input layout, channels-last (N, H, W, C) for images.

Keras' export calls the model without ``training=False``, so layers that differ in
training, the random augmentation layers Keras' tutorials put inside the model
(``RandomFlip``, ``RandomRotation``, ...), are exported as they train: with random ops the
exporters refuse, or random outputs the check catches. When Keras' export fails or its
model does not compute what ``model(x, training=False)`` does, the model is exported again
in inference mode by the backend's own exporter (torch.onnx on a module that calls it with
``training=False``, tf2onnx on the TensorFlow backend, jax2onnx on the function that calls
it so on the JAX backend, which also takes layers jax2onnx cannot trace with a symbolic
batch, such as ``Resizing``: see :func:`onnxplain.adapters.jax.export`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from onnxplain._compat import triton_before_tensorflow
from onnxplain.adapters._common import (
    as_example,
    check_rtol,
    explicit_pads,
    first_line,
    quiet_export,
    require,
    verified_model,
)
from onnxplain.core.errors import ExportError, InputValidationError
from onnxplain.core.model import Model


def export(model: Any, example: Any, opset: int | None = None, rtol: float = 1e-4) -> Model:
    """Export the Keras 3 ``model`` to ONNX and return the loaded :class:`Model`.

    Parameters
    ----------
    model : keras.Model
        A Keras 3 model with one image input, in the layout it was built with (Keras'
        default is channels-last, so the ONNX model takes (N, H, W, C)).
    example : array-like
        An input batch (N, ...), N ≥ 1. The model is called on it first (which builds a
        subclassed model), the export is run on it and must match Keras:
        max |Δ| ≤ ``rtol`` × max |output|, else :class:`~onnxplain.ExportError`.
    opset : int, optional
        ONNX opset to export with (the backend's default otherwise).
    rtol : float
        Tolerance of the check, relative to the largest output.

    The batch dimension stays dynamic. Needs ``pip install onnxplain[keras]`` (Keras with
    the torch backend: set ``KERAS_BACKEND=torch`` before importing keras); a ``jax``
    backend also needs ``onnxplain[jax]``, a ``tensorflow`` backend ``onnxplain[tensorflow]``.

    Examples
    --------
    >>> import os; os.environ.setdefault("KERAS_BACKEND", "torch")  # doctest: +SKIP
    >>> import keras, numpy as np, onnxplain as ox  # doctest: +SKIP
    >>> layers = keras.layers  # doctest: +SKIP
    >>> net = keras.Sequential([keras.Input((32, 32, 3)), layers.Conv2D(4, 3),
    ...                         layers.GlobalAveragePooling2D(), layers.Dense(3)])  # doctest: +SKIP
    >>> x = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)  # doctest: +SKIP
    >>> ox.adapters.keras.export(net, x).inputs[0].shape  # doctest: +SKIP
    ('batch', 32, 32, 3)
    """
    keras = require("keras", "keras", "Keras 3")
    if not isinstance(model, keras.Model):
        raise InputValidationError(f"export() takes a keras.Model, got {type(model).__name__}")
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool) or opset < 7):
        raise InputValidationError(f"opset must be an int ≥ 7 or None, got {opset!r}")
    rtol = check_rtol(rtol)
    x = as_example(example)
    backend = keras.backend.backend()
    if backend == "torch":
        require("torch", "keras", "torch (the Keras backend)")
    elif backend == "jax":
        require("jax2onnx", "jax", "jax2onnx (Keras' ONNX exporter on the jax backend)")
    elif backend == "tensorflow":
        triton_before_tensorflow()
        require("tf2onnx", "tensorflow", "tf2onnx (Keras' ONNX exporter on the tensorflow backend)")
    else:
        raise ExportError(
            f"Keras exports ONNX from the torch, jax and tensorflow backends, not {backend!r}; "
            "set KERAS_BACKEND before importing keras"
        )
    try:
        expected = keras.ops.convert_to_numpy(model(x, training=False))
    except Exception as exc:
        raise InputValidationError(
            f"the Keras model does not run on the example of shape {x.shape}: {exc}"
        ) from exc
    import onnx

    try:
        with tempfile.TemporaryDirectory(prefix="onnxplain-keras-") as folder:
            path = Path(folder) / "model.onnx"
            try:
                with quiet_export():  # the jax backend exports through jax2onnx
                    model.export(str(path), format="onnx", verbose=False, opset_version=opset)
                proto = onnx.load(str(path))  # with any external data, while the folder exists
            except Exception as exc:
                raise ExportError(
                    f"Keras could not export the model to ONNX on the {backend} backend: {first_line(exc)}"
                ) from exc
        return verified_model(explicit_pads(proto), x, expected, rtol, f"keras ({backend} backend)",
                              layout=_layout(x))
    except ExportError as first:
        try:
            return _export_for_inference(model, x, backend, opset, rtol)
        except ExportError as second:
            raise ExportError(f"{first}; exported in inference mode instead: {second}") from first


def _layout(x: Any) -> str:
    """The layout Keras builds images in, ``image_data_format``: the graph cannot always
    show it (a crop, a clip or a resize before the first convolution hides the transpose
    that reveals it)."""
    import keras

    if x.ndim != 4:
        return "auto"
    return "NHWC" if keras.config.image_data_format() == "channels_last" else "NCHW"


def _export_for_inference(model: Any, x: Any, backend: str, opset: int | None, rtol: float) -> Model:
    """``model(x, training=False)`` exported by the backend's exporter (see the module)."""
    if backend == "tensorflow":
        from onnxplain.adapters import tensorflow

        return tensorflow.export(model, x, opset=opset, rtol=rtol, layout=_layout(x))  # training=False
    if backend == "jax":
        from onnxplain.adapters import jax as jax_adapter

        return jax_adapter.export(lambda images: model(images, training=False), x, opset=opset, rtol=rtol,
                                  layout=_layout(x))
    import torch

    from onnxplain.adapters import torch as torch_adapter

    class Inference(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.model(images, training=False)

    return torch_adapter.export(Inference(), x, opset=opset, rtol=rtol)
