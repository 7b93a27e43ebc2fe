"""Identity ``as_strided`` gathers: replace them with the tensor they copy.

torch's dynamo exporter writes some views (``as_strided`` in the decompositions of
adaptive average pooling and of permutes, in ConvNeXt and Swin exports) as a flatten and a
``Gather`` whose indices are computed at run time from the batch size
(``Shape`` → ``Range`` → ``Mul`` → ``Add`` ...). Where those indices are ``0, 1, …`` in the
source tensor's own shape, the gather is a copy, but it hides the graph's structure (a global
pooling → linear head is no longer recognised, so CAM refuses a Swin transformer) and costs
a gather of the whole tensor in every forward pass.

:func:`drop_identity_gathers` finds ``Gather(Reshape(x, [-1]), indices)`` whose indices
depend on the input's shape only, evaluates them for batch sizes 1, 2 and 3 (the shapes
they read replaced by their values: nothing of the network runs), and where they are the
identity for each, sends the gather's consumers to ``x``. Anything it cannot prove is left
as it is.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxplain.core.canonical import _const_array
from onnxplain.core.constant_fold import evaluate
from onnxplain.core.model import _dims

logger = logging.getLogger(__name__)

_ONNX = ("", "ai.onnx")


def _shape_only(value: ir.Value) -> list[ir.Node] | None:
    """The ``Shape`` nodes ``value`` is computed from, when it depends on tensors only
    through their shapes (integer arithmetic on them and constants); None otherwise."""
    shapes: list[ir.Node] = []
    seen: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if v is None or v.const_value is not None:
            continue
        node = v.producer()
        if node is None:
            return None  # a graph input read as data
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "Shape" and node.domain in _ONNX:
            shapes.append(node)
            continue
        if v.dtype is not None and v.dtype not in (ir.DataType.INT64, ir.DataType.INT32):
            return None
        stack.extend(node.inputs)
    return shapes


def _shape_value(node: ir.Node, batch: int, batch_dim: object) -> np.ndarray | None:
    """What ``node`` (a Shape) gives at ``batch``: only for a tensor whose first dim is the
    input's batch dim ``batch_dim`` and whose other dims are fixed."""
    dims = _dims(node.inputs[0])
    if not dims or dims[0] != batch_dim or any(not isinstance(d, int) for d in dims[1:]):
        return None
    full = np.array([batch, *dims[1:]], dtype=np.int64)
    start = node.attributes["start"].as_int() if "start" in node.attributes else 0
    end = node.attributes["end"].as_int() if "end" in node.attributes else len(full)
    return full[start:end]


def _evaluate(graph: ir.Graph, targets: list[ir.Value], shapes: list[ir.Node], batch: int,
              batch_dim: object, opset: int) -> list[np.ndarray] | None:
    """``targets`` with every Shape in ``shapes`` replaced by its value at ``batch``."""
    consts: dict[int, np.ndarray] = {}
    for node in shapes:
        value = _shape_value(node, batch, batch_dim)
        if value is None:
            return None
        consts[id(node.outputs[0])] = value
    return evaluate(graph, targets, consts, opset)


def drop_identity_gathers(model: ir.Model) -> int:
    """Send the consumers of every identity ``as_strided`` gather to the tensor it copies
    (in place); returns how many were dropped. See the module docstring."""
    graph = model.graph
    found: list[tuple[ir.Node, ir.Value, ir.Value, list[ir.Node]]] = []
    for node in graph:
        if node.op_type != "Gather" or node.domain not in _ONNX or len(node.inputs) != 2:
            continue
        if "axis" in node.attributes and node.attributes["axis"].as_int() != 0:
            continue
        data, indices = node.inputs
        flat = data.producer() if data is not None else None
        if flat is None or flat.op_type != "Reshape" or flat.domain not in _ONNX:
            continue
        target = _const_array(flat.inputs[1] if len(flat.inputs) > 1 else None)
        source = flat.inputs[0]
        dims = _dims(source) if source is not None else None
        if target is None or target.tolist() != [-1] or not dims or None in dims[1:] or indices is None:
            continue
        if any(not isinstance(d, int) for d in dims[1:]) or source.dtype != node.outputs[0].dtype:
            continue
        shapes = _shape_only(indices)
        if shapes is not None:
            found.append((node, source, indices, shapes))
    if not found:
        return 0
    opset = model.opset_imports.get("", 17)
    proven = [True] * len(found)
    batch_dim = (_dims(graph.inputs[0]) or (None,))[0] if len(graph.inputs) == 1 else None
    if batch_dim is None:
        return 0
    shapes = list({id(s): s for _, _, _, ss in found for s in ss}.values())
    for batch in [batch_dim] if isinstance(batch_dim, int) else [1, 2, 3]:
        try:
            values = _evaluate(graph, [f[2] for f in found], shapes, batch, batch_dim, opset)
        except Exception as exc:  # an index graph ONNX Runtime cannot run alone: leave it
            logger.debug("identity-gather check skipped: %s", exc)
            return 0
        if values is None:
            return 0
        for i, ((_, source, _, _), got) in enumerate(zip(found, values)):
            dims = (batch, *_dims(source)[1:])
            size = int(np.prod(dims))
            proven[i] = proven[i] and tuple(got.shape) == dims and np.array_equal(
                got.ravel(), np.arange(size))
    dropped = 0
    for (node, source, _, _), ok in zip(found, proven):
        if ok:
            out = node.outputs[0]
            if out.is_graph_output():
                continue
            out.replace_all_uses_with(source)
            dropped += 1
    return dropped
