"""Export a PyTorch module to ONNX and load it, checking the export against the module."""

from __future__ import annotations

import copy
import io
import logging
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from onnxplain.adapters._common import first_line, predict_on_cpu
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


def _scores_output(module: Any, x: Any) -> tuple[Any, Any]:
    """``module`` as a module that returns the class scores as one tensor, and those scores on
    ``x``. A module that returns a tensor is kept. One that returns a mapping (Hugging Face's
    ``ModelOutput``) is read at its ``"logits"`` key, or at its only tensor; a tuple or list of
    one tensor at that tensor. Anything else is refused: which output is the score is the
    caller's to say."""
    import torch

    with torch.no_grad():
        out = module(x)
    if isinstance(out, torch.Tensor):
        return module, out
    key: Any = None
    if isinstance(out, Mapping):
        tensors = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
        key = "logits" if "logits" in tensors else (tensors[0] if len(tensors) == 1 else None)
        what = f"a {type(out).__name__} with keys {list(out.keys())}"
    elif isinstance(out, (tuple, list)):
        key = 0 if len(out) == 1 and isinstance(out[0], torch.Tensor) else None
        what = f"a {type(out).__name__} of {len(out)} items"
    else:
        what = f"a {type(out).__name__}"
    if key is None:
        raise InputValidationError(
            f"the module returns {what}; export needs the class scores as one tensor: wrap the "
            "module in one whose forward returns them (e.g. module(x).logits)"
        )
    logger.info("exporting the module's output %r as the class scores", key)
    return _select(module, key), out[key]


def _select(module: Any, key: Any) -> Any:
    """``module(x)[key]`` as a module: the class scores of a module that returns several outputs."""
    import torch

    class Select(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, x: Any) -> Any:
            return self.module(x)[key]

    return Select().eval()


def export(
    module: Any,
    example: Any,
    exporter: Exporter = "auto",
    opset: int | None = None,
    dynamic_batch: bool = True,
    rtol: float = 1e-4,
) -> Model:
    """Export ``module`` (in eval mode) to ONNX and return the loaded :class:`Model`.

    ``example``: an input batch (torch tensor or numpy array), N ≥ 1; float, or integer
    images for a module that converts them itself (see :func:`onnxplain.load`). A module in
    float16 or bfloat16 (with an example of its type) is exported as it is and checked against
    a float32 copy of it, which computes what the loaded model computes. ``exporter``:
    ``"dynamo"`` (torch.export based), ``"legacy"`` (TorchScript based) or ``"auto"``
    (dynamo, falling back to legacy when it fails or disagrees). The export is run on
    ``example`` and must match the module: max |Δ| ≤ ``rtol`` × max |output|. A module
    that returns a mapping of outputs (a Hugging Face model's ``ModelOutput``) is exported
    with its ``"logits"`` (or its only tensor) as the output, one that returns a 1-tuple
    with its element; any other non-tensor output is refused.
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise InputValidationError(f"export() takes a torch.nn.Module, got {type(module).__name__}")
    if exporter not in ("auto", "dynamo", "legacy"):
        raise InputValidationError(f"exporter must be 'auto', 'dynamo' or 'legacy', got {exporter!r}")
    x = torch.as_tensor(np.asarray(example) if not isinstance(example, torch.Tensor) else example)
    integer = x.dtype in (torch.uint8, torch.int8, torch.int16)  # images as they are stored
    if not (torch.is_floating_point(x) or integer) or x.dim() < 2:
        raise InputValidationError("example must be a floating-point (or uint8, int8, int16) batch (N, ...)")
    module = module.eval()
    # torch's exporter needs an example batch of at least 2 to keep the batch dynamic.
    trace_x = torch.cat([x, x]) if dynamic_batch and len(x) == 1 else x
    module, scores = _scores_output(module, x)
    if x.dtype in (torch.float16, torch.bfloat16):
        # the graph runs in float32 (see load): checked against the same weights in float32,
        # which the module's own rounding would miss by far more than rtol
        with torch.no_grad():
            scores = copy.deepcopy(module).float()(x.float())
        x = x.float()
    expected = scores.detach().cpu().numpy()
    order = ["dynamo", "legacy"] if exporter == "auto" else [exporter]
    problems = []
    for which in order:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                proto = _to_proto(module, trace_x, which, opset, dynamic_batch)
            model = load(proto)
            got = predict_on_cpu(model, x.detach().cpu().numpy())
        except Exception as exc:  # try the next exporter, report all at the end
            problems.append(f"{which}: {first_line(exc)}")
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
