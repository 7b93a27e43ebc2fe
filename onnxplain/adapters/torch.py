"""Export a PyTorch module to ONNX and load it, checking the export against the module."""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any, Literal

import numpy as np

from onnxplain.core.errors import ExportError, InputValidationError
from onnxplain.core.loading import load
from onnxplain.core.model import Model

logger = logging.getLogger(__name__)

Exporter = Literal["auto", "dynamo", "legacy"]


def _to_proto(module: Any, example: Any, exporter: str, opset: int | None, dynamic_batch: bool):
    import onnx
    import torch

    if exporter == "dynamo":
        kwargs: dict[str, Any] = {}
        if dynamic_batch:
            name = next(iter(__import__("inspect").signature(module.forward).parameters))
            kwargs["dynamic_shapes"] = {name: {0: torch.export.Dim("batch")}}
        if opset is not None:
            kwargs["opset_version"] = opset
        program = torch.onnx.export(
            module, (example,), dynamo=True, input_names=["input"], output_names=["output"],
            verbose=False, **kwargs,
        )
        return program.model_proto
    buffer = io.BytesIO()
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    kwargs = {"opset_version": opset} if opset is not None else {}
    torch.onnx.export(
        module, (example,), buffer, dynamo=False, input_names=["input"], output_names=["output"],
        dynamic_axes=axes, **kwargs,
    )
    return onnx.load_from_string(buffer.getvalue())


def export(
    module: Any,
    example: Any,
    exporter: Exporter = "auto",
    opset: int | None = None,
    dynamic_batch: bool = True,
    rtol: float = 1e-4,
) -> Model:
    """Export ``module`` (in eval mode) to ONNX and return the loaded :class:`Model`.

    ``example``: an input batch (torch tensor or numpy array), N ≥ 1. ``exporter``:
    ``"dynamo"`` (torch.export based), ``"legacy"`` (TorchScript based) or ``"auto"``
    (dynamo, falling back to legacy when it fails or disagrees). The export is run on
    ``example`` and must match the module: max |Δ| ≤ ``rtol`` × max |output|.
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise InputValidationError(f"export() takes a torch.nn.Module, got {type(module).__name__}")
    if exporter not in ("auto", "dynamo", "legacy"):
        raise InputValidationError(f"exporter must be 'auto', 'dynamo' or 'legacy', got {exporter!r}")
    x = torch.as_tensor(np.asarray(example) if not isinstance(example, torch.Tensor) else example)
    if not torch.is_floating_point(x) or x.dim() < 2:
        raise InputValidationError("example must be a floating-point batch (N, ...)")
    module = module.eval()
    # torch's exporter needs an example batch of at least 2 to keep the batch dynamic.
    trace_x = torch.cat([x, x]) if dynamic_batch and len(x) == 1 else x
    with torch.no_grad():
        expected = module(x).detach().cpu().numpy()
    order = ["dynamo", "legacy"] if exporter == "auto" else [exporter]
    problems = []
    for which in order:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                proto = _to_proto(module, trace_x, which, opset, dynamic_batch)
            model = load(proto)
            got = model.predict(x.detach().cpu().numpy())
        except Exception as exc:  # try the next exporter, report all at the end
            problems.append(f"{which}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            continue
        err = float(np.abs(got - expected).max())
        scale = float(np.abs(expected).max())
        if err <= rtol * max(scale, 1e-12):
            model.source = f"<torch export: {which}>"
            return model
        problems.append(
            f"{which}: the export differs from the module by {err:.3g} (max |output| {scale:.3g})"
        )
    raise ExportError("could not export the module to ONNX: " + "; ".join(problems))
