"""onnxplain: explain image classifiers exported to ONNX, from any framework.

>>> import numpy as np, onnxplain as ox
>>> model = ox.load(ox.examples.tiny_cnn())
>>> x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
>>> ox.IntegratedGradients(model).attribute(x, target=1, n_steps=8).shape
(2, 3, 16, 16)
"""

from onnxplain import (
    adapters,
    attacks,
    backends,
    data,
    dataset,
    examples,
    infill,
    metrics,
    preprocess,
    segmentation,
    viz,
)
from onnxplain.core import (
    BackendCapabilityError,
    Channel,
    DetectionScore,
    ExportError,
    InputValidationError,
    LayerNotFoundError,
    LayerSpec,
    Model,
    ModelLoadError,
    Neuron,
    OnnxplainError,
    OutputTarget,
    Reduction,
    SegmentationTarget,
    TensorSpec,
    UnsupportedOperatorError,
    load,
)
from onnxplain.dataset import explain_dataset, read_dataset, spray
from onnxplain.methods import *  # noqa: F403  (the method classes, listed in methods.__all__)
from onnxplain.methods import __all__ as _methods
from onnxplain.methods import lrp
from onnxplain.preprocess import Preprocess, read_image

__version__ = "0.1.0"

__all__ = [
    "BackendCapabilityError",
    "Channel",
    "DetectionScore",
    "ExportError",
    "InputValidationError",
    "LayerNotFoundError",
    "LayerSpec",
    "Model",
    "ModelLoadError",
    "Neuron",
    "OnnxplainError",
    "OutputTarget",
    "Reduction",
    "SegmentationTarget",
    "Preprocess",
    "TensorSpec",
    "UnsupportedOperatorError",
    "adapters",
    "attacks",
    "backends",
    "data",
    "dataset",
    "examples",
    "explain_dataset",
    "infill",
    "load",
    "lrp",
    "metrics",
    "preprocess",
    "read_dataset",
    "read_image",
    "segmentation",
    "spray",
    "viz",
    *_methods,
]
