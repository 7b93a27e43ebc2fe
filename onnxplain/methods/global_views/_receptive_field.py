"""Receptive fields computed from the graph: which input pixels a unit of a feature map sees.

Along every path from the input, each axis keeps (J, A, R): the unit at index u of a
tensor sees input pixels [u·J + A, u·J + A + R). The input has (1, 0, 1). A Conv or
pooling node with kernel k, stride s, dilation d and leading pad p maps (J, A, R) to

    J' = J·s,   A' = A − p·J,   R' = R + (d·(k − 1))·J

Element-wise nodes, normalisations and Concat take the union of their inputs' fields.
Inputs broadcast over space (the (N, C, 1, 1) output of a squeeze-and-excitation branch)
are left out: they rescale channels but do not move where a unit looks. A node that
changes the spatial size any other way (Resize, Pad, Slice, Reshape, ConvTranspose, ...)
makes the field the whole input, and ``exact`` False.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx_ir as ir

if TYPE_CHECKING:
    from onnxplain.core.model import Model

_WINDOWED = {"Conv", "MaxPool", "AveragePool", "LpPool", "ConvInteger", "QLinearConv"}

Field = tuple[tuple[int, int, int], tuple[int, int, int]]  # per axis (J, A, R)


@dataclass(frozen=True)
class ReceptiveField:
    """The receptive field of the units of one feature map.

    ``jump``: input pixels between neighbouring units (per axis); ``start``: the first
    input pixel the unit (0, 0) sees (negative in the padding); ``size``: pixels per axis.
    ``exact`` is False when the graph had a node whose geometry is not modelled, and the
    field was widened to the whole input.
    """

    jump: tuple[int, int]
    start: tuple[int, int]
    size: tuple[int, int]
    exact: bool = True

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) in input pixels, bottom/right exclusive, not clipped."""
        top = row * self.jump[0] + self.start[0]
        left = col * self.jump[1] + self.start[1]
        return top, left, top + self.size[0], left + self.size[1]


def _ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else None


def _spatial(value: ir.Value) -> tuple | None:
    shape = value.shape
    if shape is None or len(shape) != 4:
        return None
    return tuple(d if isinstance(d, int) else None for d in list(shape)[2:])


def _window(node: ir.Node, field: Field) -> Field | None:
    data = node.inputs[0]
    kernel = _ints(node, "kernel_shape")
    if kernel is None and len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].shape:
        kernel = [d if isinstance(d, int) else None for d in list(node.inputs[1].shape)[2:]]
    if kernel is None or len(kernel) != 2 or None in kernel:
        return None
    strides = _ints(node, "strides") or [1, 1]
    dilations = _ints(node, "dilations") or [1, 1]
    pads = _ints(node, "pads") or [0, 0, 0, 0]
    auto = node.attributes.get("auto_pad")
    mode = auto.as_string() if auto is not None else "NOTSET"
    if mode == "VALID":
        pads = [0, 0, 0, 0]
    elif mode in ("SAME_UPPER", "SAME_LOWER"):
        size = _spatial(data)
        if size is None or None in size:
            return None
        pads = [0, 0, 0, 0]
        for axis in (0, 1):
            eff = dilations[axis] * (kernel[axis] - 1) + 1
            out = -(-size[axis] // strides[axis])
            total = max((out - 1) * strides[axis] + eff - size[axis], 0)
            pads[axis] = total // 2 if mode == "SAME_UPPER" else total - total // 2
    new = []
    for axis in (0, 1):
        j, a, r = field[axis]
        new.append((j * strides[axis], a - pads[axis] * j, r + dilations[axis] * (kernel[axis] - 1) * j))
    return new[0], new[1]


def _union(fields: list[Field]) -> Field | None:
    out = []
    for axis in (0, 1):
        jumps = {f[axis][0] for f in fields}
        if len(jumps) != 1:
            return None
        start = min(f[axis][1] for f in fields)
        end = max(f[axis][1] + f[axis][2] for f in fields)
        out.append((jumps.pop(), start, end - start))
    return out[0], out[1]


_GLOBAL = "global"  # depends on the whole input (or on geometry that is not modelled)


def _spatial_inputs(node: ir.Node, fields: dict, out_size: tuple) -> list:
    """The inputs' fields that locate the output: 4-D inputs that depend on the model input,
    without those broadcast over space (1×1 into a larger output)."""
    found = []
    for v in node.inputs:
        if v is None or v.name not in fields:
            continue
        size = _spatial(v)
        if size is None:
            continue
        if all(d == 1 for d in size) and any(d != 1 for d in out_size):
            continue
        found.append((size, fields[v.name]))
    return found


def receptive_field(model: Model, tensor: str) -> ReceptiveField:
    """The receptive field of the units of ``tensor`` (a 4-D feature map of ``model``)."""
    model.check_tensors([tensor])
    fields: dict[str, Field | str] = {model.input_name: ((1, 0, 1), (1, 0, 1))}
    for node in model.ir.graph:
        if not any(v is not None and v.name in fields for v in node.inputs):
            continue
        for out in node.outputs:
            out_size = _spatial(out)
            result: Field | str | None = None
            if out_size is None:
                result = _GLOBAL
            elif node.op_type in _WINDOWED:
                source = fields.get(node.inputs[0].name, _GLOBAL)
                result = _window(node, source) if source != _GLOBAL else _GLOBAL
            else:
                found = _spatial_inputs(node, fields, out_size)
                same = all(size == out_size for size, _ in found)
                if found and same and all(f != _GLOBAL for _, f in found):
                    result = _union([f for _, f in found])  # type: ignore[misc]
            fields[out.name] = result if result is not None else _GLOBAL
        if tensor in fields:
            break
    field = fields.get(tensor, _GLOBAL)
    if field == _GLOBAL:
        dims = list((model.input_spec.shape or ())[2:4]) + [None, None]
        h, w = (d if isinstance(d, int) and d > 0 else 1 << 20 for d in dims[:2])
        return ReceptiveField((0, 0), (0, 0), (h, w), exact=False)
    (jy, ay, ry), (jx, ax, rx) = field  # type: ignore[misc]
    return ReceptiveField((jy, jx), (ay, ax), (ry, rx), exact=True)
