"""Work-arounds for clashes between the frameworks onnxplain may share a process with."""

from __future__ import annotations

import importlib
import importlib.util
import sys


def triton_before_tensorflow() -> None:
    """Keep torch's triton and TensorFlow from crashing the process.

    Loading triton (which the torch backend pulls in through torchvision) after tensorflow
    segfaults. Before tensorflow is imported, load triton first; once it is, mark triton
    as absent so torch runs without it (it only serves ``torch.compile``).
    """
    if "triton" in sys.modules:
        return
    if "tensorflow" in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]
    elif importlib.util.find_spec("triton") is not None:
        importlib.import_module("triton")


#: ONNX Runtime graph optimisers that change results, disabled in every session onnxplain
#: makes (``InferenceSession(..., disabled_optimizers=...)``; unknown names are ignored).
#: ``Pad_Fusion`` folds a constant zero ``Pad`` into a following ``MaxPool``'s pads, which
#: MaxPool fills with −∞: a window of negative values then pools to its maximum instead of
#: 0 (ONNX Runtime ≥ 1.17, measured on 1.31; BiT and every model that zero-pads before
#: max pooling, as TensorFlow's "same" padding is exported).
ORT_DISABLED_OPTIMIZERS = ("Pad_Fusion",)
