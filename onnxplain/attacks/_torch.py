"""The differentiable model behind the attacks: the torch backend's converted module."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import Model


def torch_module(model: Model, device: str = "auto", softplus_beta: float | None = None) -> tuple[Any, Any]:
    """``(forward, device)``: ``forward(x_tensor) -> output tensor`` (the model's primary
    output) on the torch backend's module. ``softplus_beta``: use a copy of the module in
    which every ReLU is Softplus(β) (Dombrowski et al. 2019), so second derivatives exist;
    the backend's own module is never modified."""
    import torch

    if not isinstance(model, Model):
        raise InputValidationError(
            f"attacks take an onnxplain Model (from ox.load), got {type(model).__name__}"
        )
    backend = model.backend("torch", device=device) if device != "auto" else model.backend("torch")
    module = backend.module
    if softplus_beta is not None:
        module = copy.deepcopy(module)
        for name, sub in list(module.named_modules()):
            if isinstance(sub, torch.nn.ReLU):
                parent, _, attr = name.rpartition(".")
                setattr(
                    module.get_submodule(parent) if parent else module,
                    attr,
                    torch.nn.Softplus(beta=float(softplus_beta)),
                )
    index = model.output_names.index(model.output_name)

    def forward(x):
        out = module(x)
        return out[index] if isinstance(out, (tuple, list)) else out

    return forward, torch.device(backend.device)


def to_tensor(x: np.ndarray, device) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
