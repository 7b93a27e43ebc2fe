"""The model: loading, canonical graph IR, graph queries, targets, errors, validation."""

from onnxplain.core.errors import (
    BackendCapabilityError,
    ExportError,
    InputValidationError,
    LayerNotFoundError,
    ModelLoadError,
    OnnxplainError,
    UnsupportedOperatorError,
)
from onnxplain.core.loading import load
from onnxplain.core.model import LayerSpec, Model, TensorSpec
from onnxplain.core.outputs import DetectionScore, OutputTarget, Reduction, SegmentationTarget
from onnxplain.core.targets import Channel, Neuron, Objective, resolve_target

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
    "Objective",
    "OnnxplainError",
    "OutputTarget",
    "Reduction",
    "SegmentationTarget",
    "TensorSpec",
    "UnsupportedOperatorError",
    "load",
    "resolve_target",
]
