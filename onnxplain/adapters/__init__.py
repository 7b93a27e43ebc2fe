"""Adapters turn a framework's model into an onnxplain Model (each framework is optional).

``onnxplain.adapters.torch.export(module, example)`` exports a torch module.
"""

import importlib
from typing import Any

_ADAPTERS = {"torch"}


def __getattr__(name: str) -> Any:  # import a framework's adapter only when it is used
    if name in _ADAPTERS:
        return importlib.import_module(f"onnxplain.adapters.{name}")
    raise AttributeError(f"module 'onnxplain.adapters' has no attribute {name!r}")
