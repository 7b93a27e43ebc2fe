"""onnx2torch converters for the operator versions and operators it lacks.

onnx2torch (last release 2024) looks converters up by the operator version in force at
the model's opset and knows versions up to opset 16 or so. Most later versions only
widened the accepted types, so the older converter is right for them; a few added
attributes or inputs, and there the older converter is right only when the node does not
use them (checked per node: a node that does is reported as unsupported). New operators
that CNN exports use (Gelu, GlobalMaxPool, Mish, opset-18 reductions and Split,
GroupNormalization, RMSNormalization, GridSample, AffineGrid, Resize in all its modes) get
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

from onnxplain.backends.torch_resize import Resize

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


class _Resize10(Resize):
    """Resize-10 and Upsample-9: ``(x, scales)``, asymmetric coordinates."""

    def forward(self, x: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, None, scales)


def _resize(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Every Resize version from 11 on (onnx2torch's interpolate computes few of its modes)."""
    a = node.attributes
    module = Resize(
        mode=a.get("mode", "nearest"),
        coordinate_transformation_mode=a.get("coordinate_transformation_mode", "half_pixel"),
        nearest_mode=a.get("nearest_mode", "round_prefer_floor"),
        cubic_coeff_a=a.get("cubic_coeff_a", -0.75),
        exclude_outside=a.get("exclude_outside", 0),
        extrapolation_value=a.get("extrapolation_value", 0.0),
        antialias=a.get("antialias", 0),
        axes=a.get("axes"),
        keep_aspect_ratio_policy=a.get("keep_aspect_ratio_policy", "stretch"),
    )
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def _resize10(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    module = _Resize10(mode=node.attributes.get("mode", "nearest"),
                       coordinate_transformation_mode="asymmetric", nearest_mode="simple")
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def _split18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    n = node.attributes.get("num_outputs")
    if n is None:
        return _CONVERTER_REGISTRY[OperationDescription("", "Split", 13)](node, graph)
    return OperationConverterResult(
        torch_module=SplitIntoN(node.attributes.get("axis", 0), int(n)),
        onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values),
    )


#: The integer range of each quantized element type.
_INTEGER_RANGES = {
    onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127),
    onnx.TensorProto.UINT16: (0, 65535), onnx.TensorProto.INT16: (-32768, 32767),
    onnx.TensorProto.UINT4: (0, 15), onnx.TensorProto.INT4: (-8, 7),
}


def _element_type(name: str, graph: OnnxGraph) -> int | None:
    if name in graph.initializers:
        return graph.initializers[name].proto.data_type
    for info in (*graph.proto.value_info, *graph.proto.input, *graph.proto.output):
        if info.name == name:
            return info.type.tensor_type.elem_type
    return None


def _per_axis(v: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """A 1-D scale or zero point shaped to broadcast along ``axis`` of ``x``."""
    if v.dim() != 1 or x.dim() == 0:
        return v
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return v.reshape(shape)


def _round_saturate(y: torch.Tensor, shift: torch.Tensor | None, low: int, high: int) -> torch.Tensor:
    """round(y) + shift, saturated to [low, high], with the straight-through gradient of
    PyTorch's ``fake_quantize``: 1 where the rounded value is inside the range, its ends
    included (torch.clamp's gradient is 0 there, and a ReLU's zeros sit on the lower end),
    0 outside. Rounds half to even, as ONNX."""
    y = y + (torch.round(y) - y).detach()
    if shift is not None:
        y = y + shift
    inside = (y >= low) & (y <= high)
    return torch.where(inside, y, y.detach().clamp(low, high))


class QuantizeLinear(nn.Module):
    """ONNX QuantizeLinear computed in float, with the straight-through gradient of
    PyTorch's ``fake_quantize``: round(x / scale) + zero point, clamped to the integer
    range; the gradient is 1 where the rounded value is inside the range, 0 outside. The
    result holds the integer values in ``scale``'s float type (its consumers are
    DequantizeLinear nodes)."""

    def __init__(self, low: int, high: int, axis: int) -> None:
        super().__init__()
        self.low, self.high, self.axis = low, high, axis

    def forward(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None
                ) -> torch.Tensor:
        shift = None if zero_point is None else _per_axis(zero_point.to(x.dtype), x, self.axis)
        return _round_saturate(x / _per_axis(scale, x, self.axis), shift, self.low, self.high)


class DequantizeLinear(nn.Module):
    """ONNX DequantizeLinear: (q − zero point) · scale, per tensor or per axis."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None
                ) -> torch.Tensor:
        q = q.to(scale.dtype)
        if zero_point is not None:
            q = q - _per_axis(zero_point.to(scale.dtype), q, self.axis)
        return q * _per_axis(scale, q, self.axis)


class DynamicQuantizeLinear(nn.Module):
    """ONNX DynamicQuantizeLinear (uint8 over the range of ``x`` and 0), with the
    straight-through gradient to ``x``; the scale and zero point are held constant, as a
    calibration observer's are."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        low = torch.clamp(x.detach().min(), max=0)
        high = torch.clamp(x.detach().max(), min=0)
        scale = (high - low) / 255
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero_point = torch.clamp(torch.round(-low / safe), 0, 255)
        return _round_saturate(x / safe, zero_point, 0, 255), scale, zero_point


def _quantize_linear(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    if node.attributes.get("block_size", 0):
        raise NotImplementedError("QuantizeLinear: block quantization is not supported")
    values = node.input_values
    if len(values) > 2 and values[2]:
        elem = _element_type(values[2], graph)
    else:
        elem = node.attributes.get("output_dtype", 0) or onnx.TensorProto.UINT8
    if elem not in _INTEGER_RANGES:
        what = onnx.TensorProto.DataType.Name(elem) if elem else "an unknown type"
        raise NotImplementedError(f"QuantizeLinear: quantizing to {what} is not supported")
    low, high = _INTEGER_RANGES[elem]
    return OperationConverterResult(
        torch_module=QuantizeLinear(low, high, node.attributes.get("axis", 1)),
        onnx_mapping=onnx_mapping_from_node(node),
    )


def _dequantize_linear(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    if node.attributes.get("block_size", 0):
        raise NotImplementedError("DequantizeLinear: block quantization is not supported")
    return OperationConverterResult(
        torch_module=DequantizeLinear(node.attributes.get("axis", 1)),
        onnx_mapping=onnx_mapping_from_node(node),
    )


class Col2Im(nn.Module):
    """ONNX ``Col2Im`` (2-D): ``torch.nn.functional.fold``, the adjoint of ``unfold``
    (VOLO's outlook attention folds its windows back with it)."""

    def __init__(self, size: list[int], kernel: list[int], dilation: list[int], padding: list[int],
                 stride: list[int]) -> None:
        super().__init__()
        self.size, self.kernel, self.dilation = size, kernel, dilation
        self.padding, self.stride = padding, stride

    def forward(self, x: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.fold(x, self.size, self.kernel, self.dilation, self.padding, self.stride)


class GridSample(nn.Module):
    """ONNX ``GridSample`` (opsets 16–22, 2-D): ``torch.nn.functional.grid_sample``, which
    spatial transformer networks export to."""

    _MODES = {"bilinear": "bilinear", "linear": "bilinear", "nearest": "nearest",
              "bicubic": "bicubic", "cubic": "bicubic"}

    def __init__(self, mode: str, padding_mode: str, align_corners: bool) -> None:
        super().__init__()
        if mode not in self._MODES:
            raise NotImplementedError(f"GridSample: mode={mode!r} is not supported")
        if padding_mode not in ("zeros", "border", "reflection"):
            raise NotImplementedError(f"GridSample: padding_mode={padding_mode!r} is not supported")
        self.mode, self.padding_mode, self.align_corners = self._MODES[mode], padding_mode, align_corners

    def forward(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise NotImplementedError(f"GridSample: only 2-D images are supported, got rank {x.dim()}")
        return torch.nn.functional.grid_sample(x, grid, mode=self.mode, padding_mode=self.padding_mode,
                                               align_corners=self.align_corners)


class AffineGrid(nn.Module):
    """ONNX ``AffineGrid`` (2-D): ``torch.nn.functional.affine_grid``."""

    def __init__(self, align_corners: bool) -> None:
        super().__init__()
        self.align_corners = align_corners

    def forward(self, theta: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        shape = [int(v) for v in size.tolist()]
        if len(shape) != 4:
            raise NotImplementedError(f"AffineGrid: only 2-D grids are supported, got size {shape}")
        return torch.nn.functional.affine_grid(theta, shape, align_corners=self.align_corners)


class GroupNormalization(nn.Module):
    """ONNX ``GroupNormalization`` (opset 21; opset 18's, with a scale per group, is
    deprecated and refused by ONNX's checker): ``group_norm``, scale and bias per channel."""

    def __init__(self, num_groups: int, epsilon: float) -> None:
        super().__init__()
        self.num_groups, self.epsilon = num_groups, epsilon

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.group_norm(x, self.num_groups, scale, bias, eps=self.epsilon)


class RMSNormalization(nn.Module):
    """ONNX ``RMSNormalization`` (opset 23): x / sqrt(mean(x², axes from ``axis``) + ε) · scale."""

    def __init__(self, axis: int, epsilon: float) -> None:
        super().__init__()
        self.axis, self.epsilon = axis, epsilon

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        axes = tuple(range(self.axis % x.dim(), x.dim()))
        return x * torch.rsqrt(x.pow(2).mean(dim=axes, keepdim=True) + self.epsilon) * scale


def _grid_sample(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    a = node.attributes
    module = GridSample(a.get("mode", "linear"), a.get("padding_mode", "zeros"),  # 16's "bilinear"
                        bool(a.get("align_corners", 0)))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def _col2im(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    names = node.input_values
    if len(names) < 3 or names[1] not in graph.initializers or names[2] not in graph.initializers:
        raise NotImplementedError("Col2Im: image_shape and block_shape must be constants")
    size = [int(v) for v in graph.initializers[names[1]].to_torch().reshape(-1).tolist()]
    kernel = [int(v) for v in graph.initializers[names[2]].to_torch().reshape(-1).tolist()]
    if len(size) != 2:
        raise NotImplementedError(f"Col2Im: only 2-D images are supported, got image_shape {size}")
    dilation = list(node.attributes.get("dilations", [1, 1]))
    stride = list(node.attributes.get("strides", [1, 1]))
    pads = list(node.attributes.get("pads", [0, 0, 0, 0]))
    if pads[:2] != pads[2:]:
        raise NotImplementedError(f"Col2Im: asymmetric pads {pads} are not supported")
    return OperationConverterResult(
        torch_module=Col2Im(size, kernel, dilation, pads[:2], stride),
        onnx_mapping=OnnxMapping(inputs=(names[0],), outputs=node.output_values),
    )


class LSTM(nn.Module):
    """ONNX ``LSTM`` as ``torch.nn.LSTM`` (one layer; forward, reverse or bidirectional;
    ``layout=0``, the only one ONNX Runtime runs). ONNX orders the gates i, o, f, c; torch
    i, f, c, o."""

    def __init__(self, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None, direction: str,
                 outputs: int = 3) -> None:
        super().__init__()
        dirs, four_h, inputs = w.shape
        hidden = four_h // 4
        self.hidden, self.dirs, self.reverse = hidden, dirs, direction == "reverse"
        self.outputs = outputs  # how many of Y, Y_h, Y_c the node names
        self.lstm = nn.LSTM(inputs, hidden, bidirectional=dirs == 2)
        order = torch.cat([torch.arange(0, hidden), torch.arange(2 * hidden, 4 * hidden),
                           torch.arange(hidden, 2 * hidden)])
        b = b if b is not None else torch.zeros(dirs, 8 * hidden, dtype=w.dtype)
        with torch.no_grad():
            for d in range(dirs):
                suffix = "_reverse" if d == 1 else ""
                getattr(self.lstm, f"weight_ih_l0{suffix}").copy_(w[d][order])
                getattr(self.lstm, f"weight_hh_l0{suffix}").copy_(r[d][order])
                getattr(self.lstm, f"bias_ih_l0{suffix}").copy_(b[d][:four_h][order])
                getattr(self.lstm, f"bias_hh_l0{suffix}").copy_(b[d][four_h:][order])

    def forward(self, x: torch.Tensor, initial_h: torch.Tensor | None = None,
                initial_c: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.reverse:
            x = x.flip(0)
        state = None
        if initial_h is not None or initial_c is not None:
            zeros = x.new_zeros(self.dirs, x.shape[1], self.hidden)
            state = (initial_h if initial_h is not None else zeros,
                     initial_c if initial_c is not None else zeros)
        y, (h, c) = self.lstm(x, state)
        if self.reverse:
            y = y.flip(0)
        # (seq, batch, dirs · H) → (seq, dirs, batch, H)
        y = y.reshape(y.shape[0], y.shape[1], self.dirs, self.hidden).permute(0, 2, 1, 3)
        return (y, h, c)[:self.outputs] if self.outputs > 1 else y


def _lstm(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    names = list(node.input_values) + [""] * (8 - len(node.input_values))
    attrs = node.attributes
    if any(names[i] and names[i] not in graph.initializers for i in (1, 2, 3)):
        raise NotImplementedError("LSTM: W, R and B must be constants")
    if names[4] or names[7]:
        raise NotImplementedError("LSTM: sequence_lens and peepholes (P) are not supported")
    activations = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    default = ["sigmoid", "tanh", "tanh"] * (len(activations) // 3)
    if activations and [a.lower() for a in activations] != default:
        raise NotImplementedError(f"LSTM: activations {activations} are not supported")
    if attrs.get("clip") is not None or attrs.get("input_forget", 0) or attrs.get("layout", 0):
        raise NotImplementedError("LSTM: clip, input_forget and layout=1 are not supported")
    direction = attrs.get("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction

    def const(i: int) -> torch.Tensor | None:
        return graph.initializers[names[i]].to_torch().float() if names[i] else None

    return OperationConverterResult(
        torch_module=LSTM(const(1), const(2), const(3), direction, len(node.output_values)),
        onnx_mapping=OnnxMapping(inputs=(names[0], names[5], names[6]), outputs=node.output_values),
    )


class PaddedAvgPool(nn.Module):
    """AveragePool with pads that differ at the two ends of an axis (TensorFlow's and
    ``auto_pad="SAME_*"``'s odd padding unit), which onnx2torch refuses: zero padding, then
    the pooling; without ``count_include_pad`` each window's sum is divided by the count of
    its positions inside the map (the pooled padded ones)."""

    def __init__(self, kernel: list[int], strides: list[int], pads: list[int], ceil: bool,
                 count_pad: bool) -> None:
        super().__init__()
        n = len(kernel)
        self.pool = getattr(torch.nn.functional, f"avg_pool{n}d")
        self.kernel, self.strides, self.ceil, self.count_pad = kernel, strides, ceil, count_pad
        # F.pad takes (last axis begin, end, the axis before, ...); ONNX: begins then ends
        self.pads = [p for i in reversed(range(n)) for p in (pads[i], pads[n + i])]

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.nn.functional.pad(x, self.pads), self.kernel, self.strides, 0, self.ceil)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self._pooled(x)
        if self.count_pad:
            return pooled
        return pooled / self._pooled(torch.ones_like(x[:1, :1]))


def _avg_pool(old):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        attrs = node.attributes
        pads = list(attrs.get("pads", []))
        n = len(pads) // 2
        if not pads or pads[:n] == pads[n:] or attrs.get("auto_pad", "NOTSET") != "NOTSET":
            return old(node, graph)
        kernel = list(attrs["kernel_shape"])
        if len(kernel) != n or n not in (1, 2, 3) or any(d != 1 for d in attrs.get("dilations", [1] * n)):
            return old(node, graph)  # its own refusal
        module = PaddedAvgPool(kernel, list(attrs.get("strides", [1] * n)), pads,
                               bool(attrs.get("ceil_mode", 0)), bool(attrs.get("count_include_pad", 0)))
        return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))

    return convert


def _layer_norm(old):
    """onnx2torch's LayerNormalization takes the normalised shape from the input's declared
    shape, and builds ``nn.LayerNorm([0])`` where a dim is unknown there (timm's SAM ViT,
    legacy export): the normalised shape is then read from the input at run time."""
    from onnx2torch.node_converters.layer_norm import OnnxLayerNorm
    from onnx2torch.utils.common import get_shape_from_value_info

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        axis = node.attributes.get("axis", -1)
        info = graph.value_info.get(node.input_values[0])
        shape = get_shape_from_value_info(info) if info is not None else None
        if shape and all(isinstance(d, int) and d > 0 for d in shape[axis:]):
            return old(node, graph)
        module = OnnxLayerNorm(axis=axis, epsilon=node.attributes.get("epsilon", 1e-5))
        return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))

    return convert


class ConstantReshape(nn.Module):
    """Reshape to a shape that is a constant of the graph, held as Python ints: onnx2torch's
    Reshape reads its shape tensor on every call, element by element (on a GPU, a device
    sync per dimension in the middle of the pass)."""

    def __init__(self, shape: tuple[int, ...], allowzero: bool = False) -> None:
        super().__init__()
        self.shape = shape
        self.allowzero = allowzero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.allowzero:
            return torch.reshape(x, self.shape)
        # ONNX: a 0 copies the input's size on that axis (unless allowzero)
        return torch.reshape(x, tuple(x.shape[i] if d == 0 else d for i, d in enumerate(self.shape)))


def _reshape(old):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        values = node.input_values
        try:
            shape = tuple(int(d) for d in get_const_value(values[1], graph).reshape(-1).tolist())
        except KeyError:  # a shape computed in the graph: onnx2torch's module reads it per call
            return old(node, graph)
        return OperationConverterResult(
            torch_module=ConstantReshape(shape, bool(node.attributes.get("allowzero", 0))),
            onnx_mapping=OnnxMapping(inputs=(values[0],), outputs=node.output_values),
        )

    return convert


def _slice_plan(starts: list[int], ends: list[int], axes: list[int], steps: list[int]):
    """ONNX Slice's arguments as torch indexing: the axes to flip (a negative step flips
    the axis and slices it forward, as onnx2torch does) and index tuples for the leading
    (non-negative) and trailing (negative) axes. Python ints: no int64 overflow at the
    bounds, and tuples (torch reads a list of slices as a tensor index in time)."""
    flip: list[int] = []
    by_axis: dict[int, slice] = {}
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step < 0:
            flip.append(axis)
            start, end, step = -start - 1, -end - 1, -step
        by_axis[axis] = slice(start, end, step)
    everything = slice(None)
    leading = tuple(by_axis.get(a, everything) for a in range(max(axes) + 1))
    trailing = tuple(by_axis.get(a, everything) for a in range(min(axes), 0))
    return flip, leading, (Ellipsis, *trailing) if trailing else ()


def _sliced(x: torch.Tensor, plan) -> torch.Tensor:
    flip, leading, trailing = plan
    if flip:
        x = torch.flip(x, dims=flip)
    if leading:
        x = x[leading]
    if trailing:
        x = x[trailing]
    return x


class ConstantSlice(nn.Module):
    """Slice with constant starts, ends, axes and steps, held as Python slices (onnx2torch's
    Slice reads its four tensors on every call: device syncs on a GPU)."""

    def __init__(self, starts: list[int], ends: list[int], axes: list[int], steps: list[int]) -> None:
        super().__init__()
        self.plan = _slice_plan(starts, ends, axes, steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _sliced(x, self.plan)


class ComputedSlice(nn.Module):
    """Slice whose arguments the graph computes: read on every call, then as
    :class:`ConstantSlice` (onnx2torch's indexes with a list of slices, which torch warns it
    will read as a tensor index)."""

    def forward(self, x: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor,
                axes: torch.Tensor | None = None, steps: torch.Tensor | None = None) -> torch.Tensor:
        def ints(t: torch.Tensor) -> list[int]:
            return [int(v) for v in t.reshape(-1).tolist()]

        begin, stop = ints(starts), ints(ends)
        along = ints(axes) if axes is not None else list(range(len(begin)))
        stride = ints(steps) if steps is not None else [1] * len(begin)
        return _sliced(x, _slice_plan(begin, stop, along, stride))


def _constant_ints(node: OnnxNode, graph: OnnxGraph, index: int) -> list[int] | None:
    """Input ``index`` of ``node`` as Python ints when it is a constant of the graph; None
    when it is absent; KeyError when it is computed."""
    values = node.input_values
    if len(values) <= index or not values[index]:
        return None
    return [int(v) for v in get_const_value(values[index], graph).reshape(-1).tolist()]


def _slice(old):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        try:
            starts, ends, axes, steps = (_constant_ints(node, graph, i) for i in (1, 2, 3, 4))
        except KeyError:  # computed in the graph: read on every call
            return OperationConverterResult(torch_module=ComputedSlice(),
                                            onnx_mapping=onnx_mapping_from_node(node))
        if not starts:
            return old(node, graph)
        axes = axes if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
        return OperationConverterResult(
            torch_module=ConstantSlice(starts, ends, axes, steps),
            onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values),
        )

    return convert


class ConstantSqueeze(nn.Module):
    """Squeeze of constant axes, all at once (onnx2torch's squeezes them one by one in
    descending order, which for several negative axes squeezes the wrong one)."""

    def __init__(self, axes: list[int]) -> None:
        super().__init__()
        self.axes = tuple(axes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.squeeze(x, dim=self.axes)


class ConstantUnsqueeze(nn.Module):
    """Unsqueeze at constant axes of the output (negative ones counted from its end), in
    ascending order of the output's axes (onnx2torch sorts the raw numbers, which for
    negative axes inserts at the wrong places)."""

    def __init__(self, axes: list[int]) -> None:
        super().__init__()
        self.axes = tuple(axes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank = x.dim() + len(self.axes)
        for axis in sorted(a % rank for a in self.axes):
            x = torch.unsqueeze(x, axis)
        return x


def _axes_op(module: type[nn.Module]):
    """Squeeze or Unsqueeze with axes held as Python ints: an attribute (before opset 13) or a
    constant input (onnx2torch reads that tensor on every call)."""

    def wrap(old):
        def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
            axes = node.attributes.get("axes")
            if axes is None:
                try:
                    axes = _constant_ints(node, graph, 1)
                except KeyError:
                    return old(node, graph)
            if not axes:  # Squeeze without axes: every axis of size 1, as onnx2torch does it
                return old(node, graph)
            return OperationConverterResult(
                torch_module=module([int(a) for a in axes]),
                onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values),
            )

        return convert

    return wrap


def _split(old):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        from onnx2torch.node_converters.split import OnnxSplit

        try:
            sizes = _constant_ints(node, graph, 1)
        except KeyError:
            return old(node, graph)
        if sizes is None:  # equal parts: onnx2torch's module reads no tensor then
            return old(node, graph)
        module = OnnxSplit(len(node.output_values), node.attributes.get("axis", 0), sizes)
        return OperationConverterResult(
            torch_module=module,
            onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values),
        )

    return convert


def _pad(old):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        from onnx2torch.node_converters.pad import OnnxPadStatic

        values = node.input_values
        mode = node.attributes.get("mode", "constant")
        if (len(values) > 3 and values[3]) or mode == "wrap":  # what the old converter refuses
            return old(node, graph)
        try:
            pads = _constant_ints(node, graph, 1)
            fill = get_const_value(values[2], graph) if len(values) > 2 and values[2] else None
        except KeyError:
            return old(node, graph)
        if pads is None or (fill is not None and fill.numel() != 1):
            return old(node, graph)
        module = OnnxPadStatic.create_from_onnx_params(
            pads, mode, 0.0 if fill is None else float(fill.reshape(-1)[0]))
        return OperationConverterResult(
            torch_module=module,
            onnx_mapping=OnnxMapping(inputs=(values[0],), outputs=node.output_values),
        )

    return convert


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
        for version in _versions("QuantizeLinear"):
            _register("QuantizeLinear", version, _quantize_linear)
        for version in _versions("DequantizeLinear"):
            _register("DequantizeLinear", version, _dequantize_linear)
        for version in _versions("LSTM"):
            _register("LSTM", version, _lstm)
        for version in _versions("Resize"):  # replaces onnx2torch's
            fn = _resize10 if version == 10 else _resize
            _CONVERTER_REGISTRY[OperationDescription("", "Resize", version)] = fn
        for version in _versions("Upsample"):
            if version >= 9:
                _CONVERTER_REGISTRY[OperationDescription("", "Upsample", version)] = _resize10
        for version in _versions("GroupNormalization"):
            if version >= 21:
                _register("GroupNormalization", version, _module_converter(lambda node: GroupNormalization(
                    int(node.attributes["num_groups"]), float(node.attributes.get("epsilon", 1e-5)))))
        for version in _versions("RMSNormalization"):
            _register("RMSNormalization", version, _module_converter(lambda node: RMSNormalization(
                int(node.attributes.get("axis", -1)), float(node.attributes.get("epsilon", 1e-5)))))
        for version in _versions("GridSample"):  # mode "bilinear" until 20, "linear" from 20
            _register("GridSample", version, _grid_sample)
        for version in _versions("AffineGrid"):
            _register("AffineGrid", version, _module_converter(
                lambda node: AffineGrid(bool(node.attributes.get("align_corners", 0)))))
        for version in _versions("Col2Im"):
            _register("Col2Im", version, _col2im)
        for version in _registered("LayerNormalization"):  # wraps onnx2torch's: unknown dims
            key = OperationDescription("", "LayerNormalization", version)
            _CONVERTER_REGISTRY[key] = _layer_norm(_CONVERTER_REGISTRY[key])
        for version in _registered("AveragePool"):  # wraps onnx2torch's: asymmetric pads
            key = OperationDescription("", "AveragePool", version)
            _CONVERTER_REGISTRY[key] = _avg_pool(_CONVERTER_REGISTRY[key])
        # wrap onnx2torch's (and the aliases) where the inputs it reads per call are constants
        for op, wrap, since in (("Reshape", _reshape, 5), ("Slice", _slice, 10), ("Split", _split, 13),
                                ("Pad", _pad, 11), ("Squeeze", _axes_op(ConstantSqueeze), 1),
                                ("Unsqueeze", _axes_op(ConstantUnsqueeze), 1)):
            for version in _registered(op):
                if version >= since:
                    key = OperationDescription("", op, version)
                    _CONVERTER_REGISTRY[key] = wrap(_CONVERTER_REGISTRY[key])
        for version in _versions("DynamicQuantizeLinear"):
            _register("DynamicQuantizeLinear", version,
                      _module_converter(lambda node: DynamicQuantizeLinear()))
        _INSTALLED = True
