"""onnx2torch converters for the operator versions and operators it lacks.

onnx2torch (last release 2024) looks converters up by the operator version in force at
the model's opset and knows versions up to opset 16 or so. Most later versions only
widened the accepted types, so the older converter is right for them; a few added
attributes or inputs, and there the older converter is right only when the node does not
use them (checked per node: a node that does is reported as unsupported). New operators
that CNN exports use (Gelu, GlobalMaxPool, Mish, opset-18 reductions and Split) get
converters of their own.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import onnx
import torch
from onnx import defs
from onnx2torch.node_converters.registry import (
    _CONVERTER_REGISTRY,
    OperationDescription,
    add_converter,
)
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxMapping,
    OperationConverterResult,
    get_const_value,
    onnx_mapping_from_node,
)
from torch import nn

_LOCK = threading.Lock()
_INSTALLED = False

Check = Callable[[OnnxNode, OnnxGraph], "str | None"]


def _no_check(node: OnnxNode, graph: OnnxGraph) -> str | None:
    return None


def _attr_default(name: str, default: object) -> Check:
    def check(node: OnnxNode, graph: OnnxGraph) -> str | None:
        value = node.attributes.get(name, default)
        if value != default:
            return f"attribute {name}={value!r} is not supported"
        return None

    return check


def _all(*checks: Check) -> Check:
    def check(node: OnnxNode, graph: OnnxGraph) -> str | None:
        for c in checks:
            problem = c(node, graph)
            if problem:
                return problem
        return None

    return check


def _no_input(index: int, what: str) -> Check:
    def check(node: OnnxNode, graph: OnnxGraph) -> str | None:
        values = node.input_values
        if len(values) > index and values[index]:
            return f"the {what} input is not supported"
        return None

    return check


def _unit_dilations(node: OnnxNode, graph: OnnxGraph) -> str | None:
    dil = node.attributes.get("dilations")
    if dil and any(d != 1 for d in dil):
        return f"dilations={dil} are not supported"
    return None


def _mode_not(*modes: str) -> Check:
    def check(node: OnnxNode, graph: OnnxGraph) -> str | None:
        mode = node.attributes.get("mode", "constant")
        if mode in modes:
            return f"mode={mode!r} is not supported"
        return None

    return check


def _resize_check(node: OnnxNode, graph: OnnxGraph) -> str | None:
    return _all(
        _attr_default("antialias", 0),
        _attr_default("keep_aspect_ratio_policy", "stretch"),
        _no_input(4, "axes"),
    )(node, graph) or (
        "coordinate_transformation_mode='half_pixel_symmetric' is not supported"
        if node.attributes.get("coordinate_transformation_mode") == "half_pixel_symmetric"
        else None
    )


# Operators whose later versions the older converter handles, with what it must check.
_ALIASES: dict[str, Check] = {
    **{op: _no_check for op in (
        "Acos", "Asin", "Atan", "Cos", "Sin", "Tan", "Cast", "Celu", "Constant",
        "ConstantOfShape", "Conv", "ConvTranspose", "DepthToSpace", "Dropout", "Einsum", "Elu",
        "Equal", "EyeLike", "Flatten", "GlobalAveragePool", "GreaterOrEqual", "LessOrEqual",
        "HardSigmoid", "HardSwish", "Identity", "InstanceNormalization", "IsInf", "IsNaN",
        "MaxPool", "Mod", "Range", "RoiAlign", "Round", "Selu", "Shape", "Softplus",
        "Softsign", "Squeeze", "TopK", "Transpose", "Unsqueeze", "Reshape",
    )},
    "AveragePool": _unit_dilations,
    "Pad": _all(_no_input(3, "axes"), _mode_not("wrap")),
    "Resize": _resize_check,
    "ScatterND": lambda node, graph: (
        None if node.attributes.get("reduction", "none") in ("none", "add", "mul")
        else f"reduction={node.attributes.get('reduction')!r} is not supported"
    ),
}

_REDUCES = (
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSumSquare",
)


def _versions(op: str) -> list[int]:
    """All ``since_version`` values of an operator up to the newest opset."""
    found = set()
    for v in range(1, defs.onnx_opset_version() + 1):
        try:
            found.add(defs.get_schema(op, max_inclusive_version=v).since_version)
        except Exception:
            pass
    return sorted(found)


def _registered(op: str) -> list[int]:
    return sorted(d.version for d in _CONVERTER_REGISTRY if d.operation_type == op and d.domain == "")


def _register(op: str, version: int, fn) -> None:
    if OperationDescription("", op, version) not in _CONVERTER_REGISTRY:
        add_converter(operation_type=op, version=version)(fn)


def _alias(op: str, old_version: int, check: Check):
    old = _CONVERTER_REGISTRY[OperationDescription("", op, old_version)]

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        problem = check(node, graph)
        if problem:
            raise NotImplementedError(f"{op}: {problem}")
        return old(node, graph)

    return convert


def _rewritten(node: OnnxNode, inputs: list[str], **attrs: object) -> OnnxNode:
    """A copy of ``node`` with other inputs and extra attributes."""
    proto = onnx.NodeProto()
    proto.CopyFrom(node.proto)
    del proto.input[:]
    proto.input.extend(inputs)
    for key, value in attrs.items():
        proto.attribute.append(onnx.helper.make_attribute(key, value))
    return OnnxNode(proto, unique_name=node.unique_name)


def _reduce_with_axes_input(op: str):
    old = _CONVERTER_REGISTRY[OperationDescription("", op, 13)]

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        values = node.input_values
        axes: list[int] = []
        if len(values) > 1 and values[1]:
            try:
                axes = [int(a) for a in get_const_value(values[1], graph).tolist()]
            except KeyError:
                raise NotImplementedError(f"{op}: axes must be a constant") from None
        if not axes and node.attributes.get("noop_with_empty_axes", 0):
            return OperationConverterResult(
                torch_module=nn.Identity(),
                onnx_mapping=OnnxMapping(inputs=(values[0],), outputs=node.output_values),
            )
        extra = {"axes": axes} if axes else {}
        new = _rewritten(node, [values[0]], **extra)
        result = old(new, graph)
        return OperationConverterResult(
            torch_module=result.torch_module,
            onnx_mapping=OnnxMapping(inputs=(values[0],), outputs=node.output_values),
        )

    return convert


class Gelu(nn.Module):
    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x, approximate=self.approximate)


class GlobalMaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True)


class Mish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.mish(x)


class SplitIntoN(nn.Module):
    """ONNX Split-18 with ``num_outputs``: chunks of ceil(dim / n), the last one smaller."""

    def __init__(self, axis: int, num_outputs: int) -> None:
        super().__init__()
        self.axis = axis
        self.num_outputs = num_outputs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        size = math.ceil(x.shape[self.axis] / self.num_outputs)
        return tuple(torch.split(x, size, dim=self.axis))


def _module_converter(factory: Callable[[OnnxNode], nn.Module]):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        return OperationConverterResult(torch_module=factory(node), onnx_mapping=onnx_mapping_from_node(node))

    return convert


def _split18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    n = node.attributes.get("num_outputs")
    if n is None:
        return _CONVERTER_REGISTRY[OperationDescription("", "Split", 13)](node, graph)
    return OperationConverterResult(
        torch_module=SplitIntoN(node.attributes.get("axis", 0), int(n)),
        onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values),
    )


def install() -> None:
    """Register every missing converter once per process (the registry is global)."""
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        for op, check in _ALIASES.items():
            have = _registered(op)
            if not have:
                continue
            for version in _versions(op):
                if version > max(have):
                    _register(op, version, _alias(op, max(have), check))
        for op in _REDUCES:
            for version in _versions(op):
                if version >= 18:
                    _register(op, version, _reduce_with_axes_input(op))
        for version in _versions("Split"):
            if version >= 18:
                _register("Split", version, _split18)
        gelu = _module_converter(lambda node: Gelu(node.attributes.get("approximate", "none")))
        for version in _versions("Gelu"):
            _register("Gelu", version, gelu)
        for version in _versions("GlobalMaxPool"):
            _register("GlobalMaxPool", version, _module_converter(lambda node: GlobalMaxPool()))
        for version in _versions("Mish"):
            _register("Mish", version, _module_converter(lambda node: Mish()))
        _INSTALLED = True
