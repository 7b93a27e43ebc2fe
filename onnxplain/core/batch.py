"""Fixed batch dimensions: make them dynamic when that provably keeps the computation.

Production exports often fix the batch to 1 (or another size B). Methods evaluate many
perturbed copies of an input at once, so a fixed batch would mean one runtime call per
copy. :func:`make_batch_dynamic` rewrites the graph:

1. the input's first dim (B) and every output's first dim equal to B become the
   symbolic ``"batch"``; inferred shapes of intermediate values are cleared (stale
   ``value_info`` would keep the old size) and inferred again;
2. each ``Reshape`` whose constant shape starts with B while its data input starts
   with the symbolic batch gets ``0`` there (copy the input's batch; ``-1`` when
   ``allowzero=1``), and each such ``Resize`` to constant sizes (an interpolation to the
   network's input size inside the graph) reads its batch from its data with ``Shape``,
   repeated until nothing changes.

The rewritten graph is kept only if ONNX Runtime runs it on a batch of 2B random inputs
and gives the same outputs as the original graph run on each B-row part (max |Δ| ≤
1e-4 · max |output|). Otherwise the original is kept, the backends run it B rows at a
time (padding the last call), and the reason is returned (``load`` warns with it).

ONNX Runtime is onnxplain's reference runtime and a hard dependency, so this one check
uses it directly rather than through a backend.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common as passes

from onnxplain._compat import ORT_DISABLED_OPTIMIZERS
from onnxplain.core.canonical import ShapeInferencePass, add_initializer

logger = logging.getLogger(__name__)

BATCH = "batch"
#: Relative tolerance of the batch-2B vs B-at-a-time comparison.
VERIFY_RTOL = 1e-4


def _first_dim(value: ir.Value) -> object:
    if value.shape is None or len(value.shape) == 0:
        return None
    return value.shape[0]


def _maybe_batch(dim: object) -> bool:
    """The batch, or a dim inference could not tell (a Resize to sizes computed from its
    input's Shape): a rewrite that was wrong there fails the check of :func:`_verify`."""
    return dim is None or isinstance(dim, ir.SymbolicDim)


def _infer(model: ir.Model) -> ir.Model:
    return ShapeInferencePass()(model).model


def _int64(graph: ir.Graph, name: str, values: Any) -> ir.Value:
    return add_initializer(graph, name, np.asarray(values, np.int64))


_RESIZED = "__dynamic_batch_resize"


def _resize_sizes(graph: ir.Graph, node: ir.Node, fixed: int) -> bool:
    """A Resize to constant ``sizes`` (B, C, h, w) of a tensor with the symbolic batch: its
    sizes become (the data's batch, C, h, w), read with Shape (a size cannot be 0)."""
    if node.op_type != "Resize" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 4:
        return False
    data, sizes = node.inputs[0], node.inputs[3]
    const = sizes.const_value if sizes is not None else None
    if const is None or not _maybe_batch(_first_dim(data)):
        return False
    values = const.numpy().astype(np.int64)
    if values.ndim != 1 or len(values) == 0 or values[0] != fixed:
        return False
    stem = f"{node.name or 'resize'}__dynamic_batch"
    shape = ir.node("Shape", [data], name=f"{stem}_shape")
    first = [shape.outputs[0], _int64(graph, f"{stem}_0", [0]), _int64(graph, f"{stem}_1", [1])]
    batch = ir.node("Slice", first, name=f"{stem}_slice")
    joined = ir.node("Concat", [batch.outputs[0], _int64(graph, f"{stem}_rest", values[1:])], {"axis": 0},
                     name=f"{stem}_sizes")
    for new in (shape, batch, joined):
        graph.insert_before(node, new)
    node.replace_input_with(3, joined.outputs[0])
    node.name = f"{node.name}{_RESIZED}"
    # the sizes are computed now; say what they hold so that inference carries the batch on
    node.outputs[0].shape = ir.Shape([_first_dim(data), *(int(v) for v in values[1:])])
    return True


def _rewrite(model: ir.Model, fixed: int) -> int:
    """Rewrite the Reshape and Resize constants of ``model`` in place; returns how many
    changed."""
    changed = 0
    graph = model.graph
    for node in list(graph):
        if _resize_sizes(graph, node, fixed):
            changed += 1
            continue
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        shape_value = node.inputs[1]
        const = shape_value.const_value if shape_value is not None else None
        if const is None or not _maybe_batch(_first_dim(node.inputs[0])):
            continue
        shape = const.numpy().astype(np.int64)
        if shape.ndim != 1 or len(shape) == 0 or shape[0] != fixed:
            continue
        allowzero = node.attributes.get("allowzero")
        new = shape.copy()
        if allowzero is not None and allowzero.as_int() == 1:
            if (shape == -1).any():
                continue
            new[0] = -1
        else:
            new[0] = 0
        node.replace_input_with(1, _int64(graph, f"{node.name or 'reshape'}__dynamic_batch_shape", new))
        changed += 1
    return changed


def _forget_shapes(model: ir.Model) -> None:
    """Clear the inferred shapes of the intermediate tensors (a rewritten Resize leaves its
    consumers' fixed batch stale), but those of the Resizes :func:`_resize_sizes` set."""
    outputs = {id(v) for v in model.graph.outputs}
    for node in model.graph:
        if node.op_type == "Resize" and node.name.endswith(_RESIZED):
            continue
        for value in node.outputs:
            if id(value) not in outputs:
                value.shape = None


def _candidate(model: ir.Model, fixed: int) -> ir.Model:
    proto = ir.to_proto(model)
    for vi in list(proto.graph.value_info):
        proto.graph.value_info.remove(vi)
    for value in (*proto.graph.input[:1], *proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == fixed:
            dims[0].Clear()
            dims[0].dim_param = BATCH
    candidate = _infer(ir.from_proto(proto))
    for _ in range(16):
        if not _rewrite(candidate, fixed):
            break
        _forget_shapes(candidate)
        candidate = _infer(candidate)
    for node in candidate.graph:  # the marks _forget_shapes reads, taken off
        if node.name.endswith(_RESIZED):
            node.name = node.name[: -len(_RESIZED)]
    passes.RemoveUnusedNodesPass()(candidate)
    return candidate


def _run(session, name: str, x: np.ndarray) -> list[np.ndarray]:
    return session.run(None, {name: x})


def _verify(original: ir.Model, candidate: ir.Model, fixed: int) -> str | None:
    """None when the candidate agrees with the original on 2·``fixed`` rows; else why not."""
    value = original.graph.inputs[0]
    dims = value.shape
    if dims is None or not all(isinstance(d, int) and d > 0 for d in list(dims)[1:]):
        return f"the input's other dims {dims} are not all static, so the rewrite cannot be checked"
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - a hard dependency
        return "onnxruntime is not installed to check the rewrite"
    dtype = np.dtype(value.dtype.numpy())
    x = np.random.default_rng(0).standard_normal((2 * fixed, *list(dims)[1:])).astype(dtype)
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # a candidate that fails is reported by the warning, not logged
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        ref_sess = ort.InferenceSession(
            ir.to_proto(original).SerializeToString(), opts, providers=["CPUExecutionProvider"],
            disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS),
        )
        ref = [
            np.concatenate(parts)
            for parts in zip(
                *(_run(ref_sess, value.name, x[i : i + fixed]) for i in range(0, 2 * fixed, fixed))
            )
        ]
    except Exception as exc:  # the original must run; if not, leave it to the backends
        return f"the original model does not run on ONNX Runtime ({type(exc).__name__})"
    try:
        sess = ort.InferenceSession(
            ir.to_proto(candidate).SerializeToString(), opts, providers=["CPUExecutionProvider"],
            disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS),
        )
        got = _run(sess, value.name, x)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        return f"the graph still depends on the batch size: {first}"
    for r, g, out in zip(ref, got, original.graph.outputs):
        if r.shape != g.shape:
            return f"output {out.name!r} has shape {g.shape} at batch {2 * fixed}, expected {r.shape}"
        if np.issubdtype(r.dtype, np.floating):
            err = float(np.abs(r.astype(np.float64) - g).max()) if r.size else 0.0
            if not err <= VERIFY_RTOL * max(float(np.abs(r).max()) if r.size else 0.0, 1e-6):
                return f"output {out.name!r} changes by {err:.3g} when examples share a batch"
        elif not np.array_equal(r, g):
            return f"output {out.name!r} changes when examples share a batch"
    return None


def fixed_batch_size(model: ir.Model) -> int | None:
    """The fixed size of the first input's batch dim, or None when it is dynamic."""
    if not model.graph.inputs:
        return None
    dim = _first_dim(model.graph.inputs[0])
    return dim if isinstance(dim, int) and dim > 0 else None


def _unsqueeze(graph: ir.Graph, value: ir.Value, name: str, opset: int) -> ir.Node:
    """A new ``Unsqueeze`` of axis 0 of ``value`` named ``name`` (not yet in the graph)."""
    if opset >= 13:
        node = ir.node("Unsqueeze", inputs=[value, _int64(graph, f"{name}__batch_axis", [0])],
                       name=f"{name}__batched")
    else:
        node = ir.node("Unsqueeze", inputs=[value], attributes={"axes": [0]}, name=f"{name}__batched")
    out = node.outputs[0]
    out.type = value.type
    out.shape = ir.Shape([1, *value.shape]) if value.shape is not None else None
    return node


def add_batch_axis(model: ir.Model) -> list[str]:
    """Give back the batch axis that outputs of a model exported for one image dropped.

    A model whose input batch is fixed to 1 and that returns ``logits[0]`` or
    ``softmax(logits[0], 0)`` has an output of (K,) where every method expects (1, K): an
    output whose first dim is a fixed size other than 1 (or a scalar) has no batch axis.
    Each such output gets an ``Unsqueeze`` of axis 0, in place, under its own name; a final
    ``Softmax``/``LogSoftmax`` of a vector gets it on its input instead (its axis becomes 1),
    so that its logits are found too. The names changed are returned. The batch then stays
    fixed (the graph reads row 0), and the backends run the model one row per call, as for
    any fixed batch.
    """
    if fixed_batch_size(model) != 1:
        return []
    graph = model.graph
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 13))
    changed = []
    for index, out in enumerate(list(graph.outputs)):
        shape = out.shape
        if shape is None or (len(shape) > 0 and not (isinstance(shape[0], int) and shape[0] != 1)):
            continue
        name = out.name
        producer = out.producer()
        if producer is not None and producer.op_type in ("Softmax", "LogSoftmax") \
                and producer.domain in ("", "ai.onnx") and len(shape) == 1 and producer.inputs[0] is not None:
            node = _unsqueeze(graph, producer.inputs[0], f"{name}__logits", opset)
            graph.insert_before(producer, node)
            producer.replace_input_with(0, node.outputs[0])
            producer.attributes["axis"] = ir.AttrInt64("axis", 1)
            out.shape = ir.Shape([1, *shape])
        else:
            out.name = f"{name}__unbatched"
            node = _unsqueeze(graph, out, name, opset)
            node.outputs[0].name = name
            graph.append(node)
            graph.outputs[index] = node.outputs[0]
        changed.append(name)
    return changed


def make_batch_dynamic(model: ir.Model) -> tuple[ir.Model, str | None]:
    """``(model with a dynamic batch, None)``, or ``(model unchanged, reason)``.

    ``model`` itself is never modified. A model whose batch is already dynamic comes back
    as is with no reason.
    """
    fixed = fixed_batch_size(model)
    if fixed is None:
        return model, None
    try:
        candidate = _candidate(model, fixed)
    except Exception as exc:  # pragma: no cover - a graph the passes cannot handle
        return model, f"the batch dim could not be rewritten ({type(exc).__name__}: {exc})"
    reason = _verify(model, candidate, fixed)
    if reason is not None:
        logger.info("batch stays fixed at %s: %s", fixed, reason)
        return model, reason
    return candidate, None


def onnx_batch_note(fixed: int, reason: str) -> str:
    """The warning load() gives when the batch stays fixed."""
    return (
        f"the model's batch dimension is fixed to {fixed} and could not be made dynamic ({reason}); "
        f"onnxplain will run it {fixed} row(s) per call, which is slower for methods that "
        "evaluate many inputs"
    )


__all__ = ["fixed_batch_size", "make_batch_dynamic", "onnx_batch_note"]
