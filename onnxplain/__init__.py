"""onnxplain: explain image classifiers exported to ONNX, from any framework.

>>> import numpy as np, onnxplain as ox
>>> model = ox.load(ox.examples.tiny_cnn())
>>> x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
>>> ox.IntegratedGradients(model).attribute(x, target=1, n_steps=8).shape
(2, 3, 16, 16)
"""

from onnxplain import adapters, backends, data, examples, infill, preprocess, segmentation, viz
from onnxplain.core import (
    BackendCapabilityError,
    Channel,
    ExportError,
    InputValidationError,
    LayerNotFoundError,
    LayerSpec,
    Model,
    ModelLoadError,
    Neuron,
    OnnxplainError,
    TensorSpec,
    UnsupportedOperatorError,
    load,
)
from onnxplain.methods import *  # noqa: F403  (the method classes, listed in methods.__all__)
from onnxplain.methods import __all__ as _methods
from onnxplain.preprocess import Preprocess, read_image

__version__ = "0.1.0"

__all__ = [
    "BackendCapabilityError",
    "Channel",
    "ExportError",
    "InputValidationError",
    "LayerNotFoundError",
    "LayerSpec",
    "Model",
    "ModelLoadError",
    "Neuron",
    "OnnxplainError",
    "Preprocess",
    "TensorSpec",
    "UnsupportedOperatorError",
    "adapters",
    "backends",
    "data",
    "examples",
    "infill",
    "load",
    "preprocess",
    "read_image",
    "segmentation",
    "viz",
    *_methods,
]
