"""Adapters turn a framework's model into an onnxplain Model (each framework is optional).

Each adapter exports the model to ONNX, runs the export and the original on the example
given, refuses an export that disagrees (:class:`~onnxplain.ExportError`), and returns the
loaded :class:`~onnxplain.Model`:

- ``onnxplain.adapters.torch.export(module, example)``: a torch module;
- ``onnxplain.adapters.keras.export(model, example)``: a Keras 3 model (``model.export``),
  input layout kept (NHWC);
- ``onnxplain.adapters.tensorflow.export(model, example)``: a SavedModel, ``tf.function``
  or TF Keras model (tf2onnx);
- ``onnxplain.adapters.jax.export(fn, example, params=...)``: a JAX function or a Flax
  linen/nnx module (jax2onnx);
- ``onnxplain.adapters.sklearn.export(estimator, image_shape, example)``: a scikit-learn
  pipeline on flattened images (skl2onnx).

Importing an adapter never imports its framework; exporting without the framework raises
:class:`FrameworkNotInstalledError` naming the pip extra (``pip install onnxplain[keras]``).
"""

import importlib
from typing import Any

from onnxplain.adapters._common import FrameworkNotInstalledError

_ADAPTERS = {"torch", "keras", "tensorflow", "jax", "sklearn"}

__all__ = ["FrameworkNotInstalledError", *sorted(_ADAPTERS)]


def __getattr__(name: str) -> Any:  # import a framework's adapter only when it is used
    if name in _ADAPTERS:
        return importlib.import_module(f"onnxplain.adapters.{name}")
    raise AttributeError(f"module 'onnxplain.adapters' has no attribute {name!r}")
