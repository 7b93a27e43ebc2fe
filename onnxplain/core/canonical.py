"""Canonicalisation: make any exporter's ONNX graph uniform before anything else sees it.

Each pass fixes one habit of a real exporter (measured on torch's two exporters, Paddle,
tf2onnx): local functions, weights behind ``Identity`` or ``Constant`` nodes, initializers
listed as graph inputs, ``Reshape(allowzero=1)`` where no zero is in the shape, dead
nodes, computations on constants (weight standardisation; :mod:`onnxplain.core.constant_fold`),
transposes that cancel, casts to the type a tensor has,
missing shapes, duplicate or empty names, gathers that copy a tensor in its own
order (dynamo's ``as_strided``), a channels-last global pooling before its transpose
(ONNX Runtime's transpose optimiser). Nothing that changes the computation:
BatchNorm and activations stay separate nodes, so rules and layer boundaries survive.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper
from onnx_ir.passes import common as passes

from onnxplain.core.constant_fold import FoldConstantSubgraphsPass

logger = logging.getLogger(__name__)


def _const_array(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None:
        return None
    try:
        return tensor.numpy()
    except Exception:  # pragma: no cover - exotic tensor types
        return None


#: Operators that pass the entries of their first input (Concat: of every input) into
#: their output, for :func:`_no_zero`.
_ENTRIES_FROM = frozenset({"Concat", "Gather", "Slice", "Unsqueeze", "Squeeze", "Cast", "Identity",
                           "Reshape", "Flatten"})


def _no_zero(value: ir.Value | None, positive: bool = False, depth: int = 0) -> bool:
    """Whether integer tensor ``value`` provably holds no 0 (``positive``: only numbers
    > 0): a constant; a ``Shape`` (its input's dims, ≥ 1 because onnxplain never runs an
    empty tensor); their entries picked, reshaped or concatenated; products of such tensors,
    and sums of positive ones."""
    if value is None or depth > 32:
        return False
    const = _const_array(value)
    if const is not None:
        return bool((const > 0).all() if positive else (const != 0).all())
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type == "Shape":
        return True
    if node.op_type in _ENTRIES_FROM:
        ins = node.inputs if node.op_type == "Concat" else node.inputs[:1]
        return all(_no_zero(v, positive, depth + 1) for v in ins)
    if node.op_type in ("Mul", "Add") and len(node.inputs) == 2:
        strict = positive or node.op_type == "Add"
        return all(_no_zero(v, strict, depth + 1) for v in node.inputs)
    return False


#: Operators whose outputs are sequences of tensors.
_SEQUENCE_OPS = frozenset({"SplitToSequence", "SequenceConstruct", "SequenceEmpty", "SequenceInsert",
                           "SequenceErase"})


class ShapeInferencePass(passes.ShapeInferencePass):
    """onnx_ir's shape inference (not strict), then the sequences it typed as tensors left
    untyped again: it writes SplitToSequence's ``seq(tensor(float))`` as ``tensor(float)``
    (torch's dynamo exporter, ``optimize=False``: ShuffleNet's channel split), and ONNX
    Runtime refuses the graph."""

    def __init__(self) -> None:
        super().__init__(strict_mode=False)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = super().call(model)
        for node in ir.traversal.RecursiveGraphIterator(result.model.graph):
            if node.op_type in _SEQUENCE_OPS and node.domain in ("", "ai.onnx"):
                for out in node.outputs:
                    if isinstance(out.type, ir.TensorType):
                        out.type, out.shape = None, None
        return result


def add_initializer(graph: ir.Graph, name: str, array: Any) -> ir.Value:
    """A new initializer of ``graph`` holding ``array`` (with its dtype and shape), named
    ``name``, or ``name_1``, ``name_2``, ... where an initializer has that name already."""
    array = np.asarray(array)
    unique, i = name, 0
    while unique in graph.initializers:
        i += 1
        unique = f"{name}_{i}"
    value = ir.Value(name=unique, const_value=ir.tensor(array, name=unique), shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    graph.register_initializer(value)
    return value


class NormalizeReshapeAllowZeroPass(ir.passes.InPlacePass):
    """Drop ``allowzero=1`` from Reshape nodes whose shape holds no zero: a constant one, or
    one computed from tensor dims (:func:`_no_zero`; the unoptimised dynamo export of a
    dynamic batch, ``Concat(Shape(x)[0:1], [-1])``).

    With no zero in the shape, ``allowzero`` has no effect; torch's dynamo exporter
    sets it everywhere, and onnx2torch refuses it.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
                continue
            attr = node.attributes.get("allowzero")
            if attr is None or attr.as_int() == 0:
                continue
            if _no_zero(node.inputs[1] if len(node.inputs) > 1 else None):
                node.attributes.pop("allowzero")
                modified = True
        return ir.passes.PassResult(model, modified=modified)


_F16 = onnx.TensorProto.FLOAT16
_F32 = onnx.TensorProto.FLOAT
_F64 = onnx.TensorProto.DOUBLE


def _retype_tensor(t: onnx.TensorProto, source: int) -> bool:
    if t.data_type != source:
        return False
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    return True


def _retype_type(tp: onnx.TypeProto, source: int) -> bool:
    which = tp.WhichOneof("value")
    if which == "tensor_type" and tp.tensor_type.elem_type == source:
        tp.tensor_type.elem_type = _F32
        return True
    if which in ("sequence_type", "optional_type"):
        return _retype_type(getattr(tp, which).elem_type, source)
    return False


def _retype_graph(graph: onnx.GraphProto, source: int) -> bool:
    """Every ``source``-typed tensor, value and type target of ``graph`` made float32."""
    changed = False
    for t in graph.initializer:
        changed |= _retype_tensor(t, source)
    for v in (*graph.input, *graph.output, *graph.value_info):
        changed |= _retype_type(v.type, source)
    for node in graph.node:
        changed |= _retype_node(node, source)
    return changed


def _retype_node(node: onnx.NodeProto, source: int) -> bool:
    changed = False
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.TENSOR:
            changed |= _retype_tensor(attr.t, source)
        elif attr.type == onnx.AttributeProto.GRAPH:
            changed |= _retype_graph(attr.g, source)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for g in attr.graphs:
                changed |= _retype_graph(g, source)
        elif attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i == source:
            attr.i = _F32  # Cast(to=source), RandomNormal(dtype=source), EyeLike, ...
            changed = True
    return changed


def _retype(proto: onnx.ModelProto, source: int) -> bool:
    changed = _retype_graph(proto.graph, source)
    for fn in proto.functions:
        for node in fn.node:
            changed |= _retype_node(node, source)
    return changed


def upcast_float16(proto: onnx.ModelProto) -> bool:
    """Turn a float16 graph into a float32 one, in place; True when anything changed.

    Every float16 initializer, constant, ``Cast``/``dtype`` target, input, output and
    value type becomes float32. The weights are converted exactly (every float16 is a
    float32), so the float32 graph computes the float16 model's function without its
    intermediate rounding: results agree with the float16 model to float16 precision
    (about 1e-3 relative). Both backends then run it (torch's CPU kernels and onnx2torch
    lack float16 for many ops), and users may pass float16 or float32 arrays.
    """
    return _retype(proto, _F16)


def upcast_bfloat16(proto: onnx.ModelProto) -> bool:
    """Turn a bfloat16 graph into a float32 one, in place, as :func:`upcast_float16` does
    (every bfloat16 is a float32 too). ONNX defines few operators for bfloat16 (not
    ``Conv``), so a model a torch module in bfloat16 exports is not valid ONNX as it is and
    runs nowhere; the float32 graph computes its function without its rounding."""
    return _retype(proto, onnx.TensorProto.BFLOAT16)


def downcast_float64(proto: onnx.ModelProto) -> bool:
    """Turn a float64 image model into a float32 one, in place; True when it was converted.

    ONNX Runtime has no float64 kernels for convolutions and pooling on CPU, so a model
    exported in double precision (``module.double()``, Keras' ``floatx="float64"``) runs
    nowhere as it is. Converted like :func:`upcast_float16`, every float64 tensor and type
    becomes float32: the weights rounded to float32 (relative 6e-8), the results within
    float32 rounding of the model's. Only a model that takes float64 and whose operators are
    all standard ones is converted; ``ai.onnx.ml`` graphs (scikit-learn's, in double) run
    on ONNX Runtime as they are.
    """
    inits = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in inits]
    standard = all(n.domain in ("", "ai.onnx") for n in proto.graph.node) and not proto.functions
    if not standard or not any(v.type.tensor_type.elem_type == _F64 for v in inputs):
        return False
    return _retype(proto, _F64)


#: Integer input types whose every value float32 holds exactly, by name (float_input).
INTEGER_INPUTS = {onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT8: "int8",
                  onnx.TensorProto.UINT16: "uint16", onnx.TensorProto.INT16: "int16"}
#: The floating-point element types.
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.BFLOAT16}


def float_input(proto: onnx.ModelProto) -> str | None:
    """Give a model that takes integer images (uint8, int8, uint16, int16) and only turns them
    into floats a float32 input, in place; returns the integer type's name, or None when the
    model has no such input (it is then left as it is).

    The input must be read only by ``Cast`` to a float type (a preprocessing export's
    ``x.float()``, tf2onnx's uint8 serving signatures) or by a per-tensor
    ``DequantizeLinear`` (a fully quantized model's input), which becomes ``(x − zero
    point) · scale`` in float. On integer values the model computes what it did; between
    them, the same formula, which gradients and perturbations need.
    """
    inits = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in inits]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type not in INTEGER_INPUTS:
        return None
    value, graph = inputs[0], proto.graph
    dtype = value.type.tensor_type.elem_type
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    # the input and its casts to its own type (Keras' torch backend casts uint8 to uint8 first)
    names, same = {value.name}, []
    for node in graph.node:
        if node.op_type == "Cast" and node.input and node.input[0] in names and _cast_to(node) == dtype:
            names.add(node.output[0])
            same.append(node)
    readers = [n for n in graph.node if set(n.input) & names and n not in same]
    outputs = {o.name for o in graph.output}
    if not readers or names & outputs or any(_read_in_subgraphs(graph, name) for name in names):
        return None
    for node in readers:
        if node.domain not in ("", "ai.onnx") or node.input[0] not in names or set(node.input[1:]) & names:
            return None
        if node.op_type == "Cast" and _cast_to(node) in FLOAT_TYPES:
            continue
        if node.op_type != "DequantizeLinear" or any(a.name == "block_size" and a.i for a in node.attribute):
            return None
        params = [consts.get(name) for name in node.input[1:3]] + [None] * (3 - len(node.input))
        if params[0] is None or params[0].size != 1 or (len(node.input) > 2 and node.input[2] and
                                                        (params[1] is None or params[1].size != 1)):
            return None
    for node in readers:
        if node.op_type == "DequantizeLinear":
            _dequantize_as_float(graph, node, consts)
    for node in same:  # now casts of floats to float32, which keep their values
        next(a for a in node.attribute if a.name == "to").i = onnx.TensorProto.FLOAT
    for info in (value, *(v for v in graph.value_info if v.name in names)):
        info.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return INTEGER_INPUTS[dtype]


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _read_in_subgraphs(graph: onnx.GraphProto, name: str) -> bool:
    """Whether a subgraph (If, Loop, Scan) of ``graph`` reads ``name`` from the outer scope."""
    for node in graph.node:
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                if any(name in n.input for n in sub.node) or _read_in_subgraphs(sub, name):
                    return True
    return False


def _dequantize_as_float(graph: onnx.GraphProto, node: onnx.NodeProto, consts: dict) -> None:
    """``DequantizeLinear(x, scale, zero_point)`` of a per-tensor quantized input rewritten
    in place as ``Mul(Sub(x, zero_point), scale)`` with float constants."""
    scale = consts[node.input[1]].astype(np.float32).reshape(())
    zero = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(())
    base = node.name or node.output[0]
    names = (f"{base}__zero_point_float", f"{base}__scale_float", f"{base}__centred")
    graph.initializer.extend([numpy_helper.from_array(np.asarray(zero, np.float32).reshape(()), names[0]),
                              numpy_helper.from_array(scale, names[1])])
    sub = onnx.helper.make_node("Sub", [node.input[0], names[0]], [names[2]], name=f"{base}__sub")
    index = list(graph.node).index(node)
    node.op_type = "Mul"
    del node.input[:]
    node.input.extend([names[2], names[1]])
    del node.attribute[:]
    graph.node.insert(index, sub)


#: The inputs of each quantizing operator that hold its output's scale and zero point (float_outputs).
_OUTPUT_QUANTIZATION = {
    "QuantizeLinear": (1, 2), "QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QLinearAdd": (6, 7),
    "QLinearMul": (6, 7), "QGemm": (7, 8), "QLinearConcat": (0, 1), "QLinearGlobalAveragePool": (3, 4),
    "QLinearAveragePool": (3, 4), "QLinearSigmoid": (3, 4), "QLinearLeakyRelu": (3, 4),
    "QLinearSoftmax": (3, 4), "QLinearReduceMean": (3, 4),
}
#: Operators that move integer values without changing them.
_MOVES_VALUES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"})


def float_outputs(proto: onnx.ModelProto) -> list[str]:
    """Dequantize, in place, the outputs of a quantized model that returns integer scores
    (uint8, int8, uint16, int16: a fully quantized model's ``QuantizeLinear`` or ``QLinear*``
    output, perhaps reshaped); returns their names.

    Each such output becomes ``DequantizeLinear`` of the integers, under the output's name:
    the real scores ``(q − zero point) · scale`` the integers stand for, which differences,
    softmaxes and gradients are about. ONNX Runtime computes the integers as the file does;
    the float simulation sees a rounding followed by its dequantization, whose gradient is
    the straight-through one. Outputs with a per-channel scale, or whose scale is not a
    constant, are left as they are.
    """
    graph = proto.graph
    producer = {name: node for node in graph.node for name in node.output}
    consts = {t.name: t for t in graph.initializer}
    consts.update({n.output[0]: n.attribute[0].t for n in graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    done = []
    for out in graph.output:
        dtype = out.type.tensor_type.elem_type
        if dtype not in INTEGER_INPUTS or (dtype in (onnx.TensorProto.UINT16, onnx.TensorProto.INT16)
                                           and version < 21):
            continue
        node = producer.get(out.name)
        while node is not None and node.op_type in _MOVES_VALUES and node.domain in ("", "ai.onnx"):
            node = producer.get(node.input[0])
        if node is None or node.op_type not in _OUTPUT_QUANTIZATION:
            continue
        if node.domain not in ("", "ai.onnx", "com.microsoft") or _read_in_subgraphs(graph, out.name):
            continue
        i, j = _OUTPUT_QUANTIZATION[node.op_type]
        scale = node.input[i] if len(node.input) > i else ""
        zero = node.input[j] if len(node.input) > j else ""
        if scale not in consts or numpy_helper.to_array(consts[scale]).size != 1:
            continue
        quantized = f"{out.name}/quantized"
        for reader in graph.node:
            reader.input[:] = [quantized if name == out.name else name for name in reader.input]
            reader.output[:] = [quantized if name == out.name else name for name in reader.output]
        graph.node.append(onnx.helper.make_node(
            "DequantizeLinear", [quantized, scale, *([zero] if zero else [])], [out.name],
            name=f"{out.name}/dequantize"))
        out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        done.append(out.name)
    return done


_UNARY = {"Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Clip", "Elu", "Selu", "Celu", "HardSigmoid",
          "HardSwish", "Softplus", "Gelu", "Mish", "Cast", "Identity", "Neg", "Abs", "Exp", "Erf", "Sqrt"}
_BINARY = {"Add", "Sub", "Mul", "Div"}


def _perm(node: ir.Node) -> tuple[int, ...] | None:
    attr = node.attributes.get("perm")
    return tuple(attr.as_ints()) if attr is not None else None


def _nhwc_source(value: ir.Value | None) -> ir.Value | None:
    """The channels-first tensor ``value`` is ``Transpose(perm=[0, 2, 3, 1])`` of, if it is."""
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != "Transpose" or _perm(producer) != (0, 2, 3, 1):
        return None
    return producer.inputs[0]


def take_place(old: ir.Value, new: ir.Value) -> None:
    """``new`` replaces ``old`` for every consumer and graph output, under ``old``'s name
    (the names users and CAMs know the tensors by); ``old`` is renamed ``<name>__replaced``."""
    name = old.name
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    old.name = f"{name}__replaced"
    new.name = name


def _channel_constant(graph: ir.Graph, value: ir.Value | None) -> ir.Value | None:
    """A constant that broadcasts over the channel axis of NHWC, (…, C), as the same
    constant for NCHW, (1, C, 1, 1), registered in ``graph`` once however many nodes use
    it; scalars stay. None when it is no such constant."""
    array = _const_array(value)
    if array is None or array.ndim > 4:
        return None
    if array.size == 1:
        return value
    if any(d != 1 for d in array.shape[:-1]):
        return None
    name = f"{value.name}__nchw"
    if name in graph.initializers:
        return graph.initializers[name]
    return add_initializer(graph, name, array.reshape(1, -1, 1, 1))


class SinkChannelsLastTransposePass(ir.passes.InPlacePass):
    """Move ``Transpose(perm=[0, 2, 3, 1])`` below element-wise ops (activations, casts,
    per-channel bias adds and scales, and products and sums of two maps moved channels last
    alike: Keras' hard-swish and squeeze-and-excitation products, residual adds), so that
    the feature maps keep a channels-first twin.

    Keras 3 exports (torch backend) and unoptimised tf2onnx graphs go back to NHWC after
    every convolution and apply the bias and the activation there: ``Conv → Transpose →
    Add(bias) → Relu``. After this pass the graph computes ``Conv → Add → Relu →
    Transpose`` (bias reshaped to (1, C, 1, 1)): the same values, each channels-last
    tensor keeping its name as the output of the final transpose, and its channels-first
    twin named ``<name>__nchw`` (CAMs read that one, see ``Model.find_layer``).
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for _ in range(256):
            moved = False
            for node in list(graph):
                moved |= self._sink(graph, node)
            if not moved:
                break
            modified = True
        return ir.passes.PassResult(model, modified=modified)

    @staticmethod
    def _sink(graph: ir.Graph, node: ir.Node) -> bool:
        if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1 or not node.inputs:
            return False
        unary = node.op_type in _UNARY and node.op_type != "PRelu"
        if not (unary or node.op_type in _BINARY) or node.inputs[0] is None:
            return False
        if node.op_type in _BINARY:
            # each operand channels last moved back, or a per-channel constant; at least one moved
            if len(node.inputs) != 2 or not any(_nhwc_source(v) is not None for v in node.inputs):
                return False
            inputs = [_nhwc_source(v) or _channel_constant(graph, v) for v in node.inputs]
            if any(v is None for v in inputs):
                return False
        else:
            source = _nhwc_source(node.inputs[0])
            if source is None:
                return False
            if any(v is not None and _const_array(v) is None for v in node.inputs[1:]):
                return False  # e.g. Clip with computed bounds
            inputs = [source, *node.inputs[1:]]
        out = node.outputs[0]
        name = out.name
        twin = ir.Node(node.domain, node.op_type, inputs,
                       attributes=list(node.attributes.values()), name=f"{node.name}__nchw")
        twin.outputs[0].name = f"{name}__nchw"
        back = ir.Node("", "Transpose", [twin.outputs[0]], attributes=[ir.AttrInt64s("perm", [0, 2, 3, 1])],
                       name=f"{node.name}__to_nhwc")
        if out.dtype is not None:  # an untyped value must stay untyped (no Tensor(None))
            twin.outputs[0].dtype = back.outputs[0].dtype = out.dtype
        if out.shape is not None:
            back.outputs[0].shape = out.shape
        graph.insert_after(node, [twin, back])
        take_place(out, back.outputs[0])
        graph.remove(node, safe=True)
        return True


class SplitToSequenceAtPass(ir.passes.InPlacePass):
    """``SequenceAt(SplitToSequence(x, split), i)`` for constant ``split`` and indices ``i``
    (every use of the sequence) as the outputs of one ``Split``: torch's dynamo exporter
    writes ``torch.chunk`` so with its optimiser off (ShuffleNet's channel split), and
    onnx2torch converts no sequence operator."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 17))
        graph, modified = model.graph, False
        for node in list(graph):
            if node.op_type != "SplitToSequence" or node.domain not in ("", "ai.onnx") \
                    or len(node.inputs) < 2:
                continue
            axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
            sizes = self._sizes(node, axis)
            uses = [user for user, _ in node.outputs[0].uses()]
            index = [_const_array(u.inputs[1]) if u.op_type == "SequenceAt" and len(u.inputs) > 1 else None
                     for u in uses]
            if sizes is None or not uses or node.outputs[0].is_graph_output() \
                    or any(i is None or i.size != 1 or not -len(sizes) <= int(i) < len(sizes) for i in index):
                continue
            split = np.asarray(sizes, np.int64)
            if opset >= 13:
                value = add_initializer(graph, f"{node.name}.split", split)
                new = ir.node("Split", [node.inputs[0], value], {"axis": axis}, num_outputs=len(sizes),
                              name=node.name)
            else:
                new = ir.node("Split", [node.inputs[0]], {"axis": axis, "split": split.tolist()},
                              num_outputs=len(sizes), name=node.name)
            graph.insert_before(node, new)
            x = node.inputs[0]
            if x is not None and x.shape is not None:  # each piece: x's shape, its size on the axis
                for piece, size in zip(new.outputs, sizes):
                    piece.dtype = x.dtype
                    piece.shape = ir.Shape([size if d == axis % len(x.shape) else dim
                                            for d, dim in enumerate(x.shape)])
            for user, i in zip(uses, index):
                take_place(user.outputs[0], new.outputs[int(i) % len(sizes)])
                graph.remove(user, safe=True)
            graph.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified=modified)

    @staticmethod
    def _sizes(node: ir.Node, axis: int) -> list[int] | None:
        """The sizes of the pieces: ``split`` as given, or a scalar's pieces of ``axis``."""
        split = _const_array(node.inputs[1])
        if split is None or split.ndim > 1:
            return None
        if split.ndim == 1:
            return [int(s) for s in split] if split.size else None
        x, step = node.inputs[0], int(split)
        dims = list(x.shape) if x is not None and x.shape is not None else None
        if dims is None or not -len(dims) <= axis < len(dims) or not isinstance(dims[axis], int) or step < 1:
            return None
        size = dims[axis]
        return [step] * (size // step) + ([size % step] if size % step else [])


class NoOpCastPass(ir.passes.InPlacePass):
    """Send the consumers of a ``Cast`` to the type its input already has to that input.
    Keras 3 exports through torch cast every result to float32 again (``Cast(to=FLOAT)``
    after each operation), which hides a head's MatMul → Add and a gate's sigmoid."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            if node.op_type != "Cast" or node.domain not in ("", "ai.onnx") or node.inputs[0] is None:
                continue
            to, source, out = node.attributes.get("to"), node.inputs[0], node.outputs[0]
            if to is None or source.dtype is None or out.is_graph_output() or source.is_graph_input():
                continue
            if source.dtype == ir.DataType(to.as_int()):
                out.replace_all_uses_with(source)
                modified = True
        return ir.passes.PassResult(model, modified=modified)


class CancelTransposePairsPass(ir.passes.InPlacePass):
    """Send the consumers of ``Transpose(Transpose(x, p), q)`` to ``x`` where the two
    permutations cancel: tf2onnx wraps every convolution in NHWC ↔ NCHW transposes and its
    own optimiser, when it gives up on a graph, leaves the pairs; after
    :class:`SinkChannelsLastTransposePass` they sit between any two channels-first nodes
    (an SE block's Conv → ReLU → Conv) and hide the pattern."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx") or node.inputs[0] is None:
                continue
            inner = node.inputs[0].producer()
            if inner is None or inner.op_type != "Transpose" or inner.domain not in ("", "ai.onnx"):
                continue
            p, q, out = _perm(inner), _perm(node), node.outputs[0]
            if p is None or q is None or len(p) != len(q) or out.is_graph_output():
                continue
            if all(p[q[i]] == i for i in range(len(q))) and inner.inputs[0] is not None:
                out.replace_all_uses_with(inner.inputs[0])
                modified = True
        return ir.passes.PassResult(model, modified=modified)


class _RewriteEachNode(ir.passes.InPlacePass):
    """A pass that offers each node of the graph to ``_rewrite(graph, node)``, which returns
    whether it rewrote it."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = any([self._rewrite(graph, node) for node in list(graph)])
        return ir.passes.PassResult(model, modified=modified)

    @staticmethod
    def _rewrite(graph: ir.Graph, node: ir.Node) -> bool:
        raise NotImplementedError


class CastLikePass(_RewriteEachNode):
    """``CastLike(x, like)`` as ``Cast(x, to=like's type)`` where that type is known: the
    torch dynamo exporter writes it for every Python scalar when its optimiser is off
    (``optimize=False``), and onnx2torch converts no CastLike."""

    @staticmethod
    def _rewrite(graph: ir.Graph, node: ir.Node) -> bool:
        if node.op_type != "CastLike" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            return False
        x, like = node.inputs[0], node.inputs[1]
        if x is None or like is None or like.dtype is None:
            return False
        cast = ir.node("Cast", [x], {"to": like.dtype}, name=node.name)
        graph.insert_before(node, cast)
        cast.outputs[0].type, cast.outputs[0].shape = node.outputs[0].type, node.outputs[0].shape
        take_place(node.outputs[0], cast.outputs[0])
        graph.remove(node, safe=True)
        return True


def _reduction_axes(node: ir.Node) -> tuple[np.ndarray | None, bool]:
    """A Reduce node's constant axes (None where it has none or they are computed), and
    whether it takes them as an input (opset 18 on) rather than an attribute."""
    by_input = len(node.inputs) > 1 and node.inputs[1] is not None
    axes = _const_array(node.inputs[1]) if by_input else (
        np.asarray(node.attributes["axes"].as_ints()) if "axes" in node.attributes else None)
    return axes, by_input


def _nchw_twin(node: ir.Node, x: ir.Value) -> ir.Node:
    """``Transpose(x, [0, 3, 1, 2])``: the channels-last map ``x`` channels first, named
    ``<x>__nchw``, for ``node`` to pool."""
    first = ir.Node("", "Transpose", [x], attributes=[ir.AttrInt64s("perm", [0, 3, 1, 2])],
                    name=f"{node.name}__nchw_input")
    first.outputs[0].name = f"{x.name}__nchw"
    first.outputs[0].shape = ir.Shape([x.shape[0], x.shape[3], x.shape[1], x.shape[2]])
    if x.dtype is not None:  # an untyped value must stay untyped (no Tensor(None))
        first.outputs[0].dtype = x.dtype
    return first


def _spatial_pool(graph: ir.Graph, node: ir.Node, nchw: ir.Value, by_input: bool) -> ir.Node:
    """``node``, a reduction over a channels-last map's H and W, as the same reduction of its
    channels-first twin ``nchw`` over axes [2, 3] (axes as an input where ``node`` has them so)."""
    attrs = [a for k, a in node.attributes.items() if k != "axes"]
    inputs = [nchw]
    if by_input:
        inputs.append(add_initializer(graph, f"{node.name}__nchw_axes", np.array([2, 3], np.int64)))
    else:
        attrs.append(ir.AttrInt64s("axes", [2, 3]))
    pool = ir.Node(node.domain, node.op_type, inputs, attributes=attrs, name=f"{node.name}__nchw")
    if nchw.dtype is not None:
        pool.outputs[0].dtype = nchw.dtype
    return pool


class ChannelsLastHeadPoolPass(_RewriteEachNode):
    """Pool channels first a channels-last map that a classifier pools with no transpose to
    say so: timm's Sequencer ends ``X (N, H, W, C) → ReduceMean(axes=[1, 2], keepdims=0) →
    Linear``, X a LayerNorm's output. The axes alone do not tell channels from rows; the
    linear layer does: it takes C = X's last dim, which is not X's second (else the graph is
    left as it is). Written as ``X → Transpose(0, 3, 1, 2)`` (``<X>__nchw``, the map CAMs
    read) ``→ ReduceMean(axes=[2, 3])``: the same values, summed in another order."""

    @staticmethod
    def _linear_inputs(value: ir.Value) -> int | None:
        """The input size of the Gemm/MatMul (with a constant weight) that reads ``value``
        through reshapes, or None."""
        while True:
            uses = list(value.consumers())
            if len(uses) != 1 or uses[0].inputs[0] is not value:
                return None
            node = uses[0]
            if node.op_type in ("Flatten", "Reshape", "Squeeze", "Identity"):
                value = node.outputs[0]
                continue
            w = _const_array(node.inputs[1]) if len(node.inputs) > 1 else None
            if node.op_type not in ("Gemm", "MatMul") or w is None or w.ndim != 2:
                return None
            trans = node.attributes.get("transB")
            transposed = node.op_type == "Gemm" and trans is not None and trans.as_int() == 1
            return int(w.shape[1] if transposed else w.shape[0])

    @staticmethod
    def _rewrite(graph: ir.Graph, node: ir.Node) -> bool:
        if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx") or not node.inputs:
            return False
        x, out = node.inputs[0], node.outputs[0]
        keep = node.attributes.get("keepdims")
        if x is None or x.shape is None or len(x.shape) != 4 or keep is None or keep.as_int() != 0:
            return False
        if out.is_graph_output() or _nhwc_source(x) is not None:
            return False  # a map moved channels last: ChannelsFirstPoolPass's and CAM's own reading
        axes, by_input = _reduction_axes(node)
        dims = list(x.shape)
        if axes is None or {int(a) % 4 for a in axes.reshape(-1)} != {1, 2}:
            return False
        if not isinstance(dims[3], int) or dims[1] == dims[3]:
            return False
        if ChannelsLastHeadPoolPass._linear_inputs(out) != dims[3]:
            return False
        first = _nchw_twin(node, x)
        pool = _spatial_pool(graph, node, first.outputs[0], by_input)
        pool.outputs[0].shape = out.shape
        graph.insert_before(node, [first, pool])
        take_place(out, pool.outputs[0])
        graph.remove(node, safe=True)
        return True


class ChannelsFirstPoolPass(_RewriteEachNode):
    """Pool channels first what a graph pools channels last and then moves channels first.

    ONNX Runtime's transpose optimiser (its offline optimisation, and
    ``onnxruntime.quantization``'s pre-processing) moves the ``Transpose(perm=[0, 3, 1, 2])``
    of a channels-last map (Swin's head) below its global pooling: ``X (N, H, W, C) →
    ReduceMean(axes=[1, 2]) → Transpose``. Then no channels-first map is a tensor of the
    graph, and CAMs have none to read. This pass writes it back as ``X → Transpose →
    ReduceMean(axes=[2, 3])``: the same values (summed in another order), the pooled map
    named ``<X>__nchw``, the pooled vector keeping the transpose's output name.
    """

    @staticmethod
    def _rewrite(graph: ir.Graph, node: ir.Node) -> bool:
        if node.op_type not in ("ReduceMean", "ReduceMax") or node.domain not in ("", "ai.onnx"):
            return False
        x, out = (node.inputs[0] if node.inputs else None), node.outputs[0]
        keep = node.attributes.get("keepdims")
        if x is None or x.shape is None or len(x.shape) != 4 or (keep is not None and keep.as_int() == 0):
            return False
        axes, by_input = _reduction_axes(node)
        uses = list(out.consumers())
        if axes is None or {int(a) % 4 for a in axes.reshape(-1)} != {1, 2} or len(uses) != 1:
            return False
        back = uses[0]
        if back.op_type != "Transpose" or _perm(back) != (0, 3, 1, 2) or out.is_graph_output():
            return False
        # X is itself a channels-first map moved channels last (SinkChannelsLastTransposePass
        # leaves its twin ``<X>__nchw``): pool that one
        first, nchw = None, _nhwc_source(x)
        if nchw is None:
            first = _nchw_twin(node, x)
            nchw = first.outputs[0]
        pool = _spatial_pool(graph, node, nchw, by_input)
        pooled = back.outputs[0]
        pool.outputs[0].shape = pooled.shape
        graph.insert_before(node, [first, pool] if first is not None else [pool])
        take_place(pooled, pool.outputs[0])
        graph.remove([back, node], safe=True)
        return True


class EinsumAsMatMulPass(_RewriteEachNode):
    """Write a two-operand ``Einsum`` that is a matrix product as ``Transpose → MatMul →
    Transpose``: CvT's attention (``bhlk,bhtk->bhlt``, ``bhlt,bhtv->bhlv``) and dense layers
    written as ``bld,dk->blk``. Then LRP's rules for MatMul (the attention rule among them),
    CAM's heads and every other pattern read them as the MatMuls they are. Handled: batch
    letters in both operands and the output, one contracted letter, one letter free in B
    and one free in A (or, without batch letters, any number free in A); and a constant B
    without batch letters, any number of letters contracted and free (Keras' dense layers
    to and from attention heads, ``abc,cde->abde``, ``abcd,cde->abe``), its weight reshaped
    to a matrix. Each letter once per operand, no ellipsis. Other equations stay Einsums."""

    @staticmethod
    def _letters(equation: str) -> tuple[str, str, str] | None:
        """The letters of A, of B and of the output of a two-operand equation with an explicit
        output, each letter once per operand and no ellipsis; else None."""
        if "." in equation or "->" not in equation:
            return None
        ins, out = equation.replace(" ", "").split("->")
        if ins.count(",") != 1:
            return None
        a, b = ins.split(",")
        return None if any(len(set(t)) != len(t) for t in (a, b, out)) else (a, b, out)

    @staticmethod
    def _plan(equation: str) -> tuple[list[int], list[int], list[int]] | None:
        """The permutations of A, of B and of the MatMul's output to the Einsum's output."""
        letters = EinsumAsMatMulPass._letters(equation)
        if letters is None:
            return None
        a, b, out = letters
        if not set(out) <= set(a) | set(b):
            return None
        batch = [c for c in a if c in b and c in out]
        contract = [c for c in a if c in b and c not in out]
        free_a, free_b = [c for c in a if c not in b], [c for c in b if c not in a]
        if any(c not in out for c in free_a + free_b) or len(contract) != 1 or len(free_b) != 1:
            return None
        if [c for c in b if c in batch] != batch or (batch and len(free_a) != 1) or not free_a:
            return None
        order_a, order_b = batch + free_a + contract, batch + contract + free_b
        product = batch + free_a + free_b
        return [a.index(c) for c in order_a], [b.index(c) for c in order_b], [product.index(c) for c in out]

    @staticmethod
    def _weight_plan(equation: str, weight: np.ndarray) -> tuple[list[int], int, np.ndarray, list[int],
                                                                  list[int]] | None:
        """A computed A times a constant B (Keras' dense layers to and from attention heads,
        ``abc,cde->abde`` and ``abcd,cde->abe``), any number of letters contracted and free
        in B: (A's permutation to its free then contracted letters, the number of contracted
        letters, B as a (contracted, free) matrix, the sizes of B's free letters, the
        permutation of the product's letters (A's free, then B's) to the output's)."""
        letters = EinsumAsMatMulPass._letters(equation)
        if letters is None:
            return None
        a, b, out = letters
        if len(b) != weight.ndim or set(out) != (set(a) | set(b)) - (set(a) & set(b)):
            return None
        contract = [c for c in a if c in b]  # in both operands, so not in the output (checked above)
        free_a, free_b = [c for c in a if c not in b], [c for c in b if c not in a]
        if not contract or not free_a or not free_b:
            return None
        sizes = [weight.shape[b.index(c)] for c in free_b]
        matrix = weight.transpose([b.index(c) for c in contract + free_b]).reshape(
            int(np.prod([weight.shape[b.index(c)] for c in contract])), -1)
        product = free_a + free_b
        perm = [a.index(c) for c in free_a + contract]
        return perm, len(contract), matrix, sizes, [product.index(c) for c in out]

    @staticmethod
    def _rewrite_weight(graph: ir.Graph, node: ir.Node, plan) -> None:
        """``node`` as Transpose → Reshape → MatMul by the reshaped weight → Reshape → Transpose."""
        perm, contracted, matrix, sizes, out_perm = plan
        new: list[ir.Node] = []
        dtype = node.outputs[0].dtype

        def step(op: str, inputs: list[ir.Value], tag: str, **attrs: object) -> ir.Value:
            made = ir.node(op, inputs, attrs, name=f"{node.name}__{tag}")
            made.outputs[0].name = f"{node.outputs[0].name}__{tag}"
            if dtype is not None:
                made.outputs[0].dtype = dtype
            new.append(made)
            return made.outputs[0]

        x = node.inputs[0]
        free = len(perm) - contracted
        if perm != sorted(perm):
            x = step("Transpose", [x], "a", perm=perm)
        if contracted > 1:  # the contracted letters as one axis
            shape = add_initializer(graph, f"{node.name}__a_shape", np.array([0] * free + [-1], np.int64))
            x = step("Reshape", [x, shape], "a_flat")
        weight = matrix.astype(node.inputs[1].dtype.numpy() if node.inputs[1].dtype else matrix.dtype)
        y = step("MatMul", [x, add_initializer(graph, f"{node.name}__weight", weight)], "matmul")
        if len(sizes) > 1:  # B's free letters apart again
            shape = np.array([0] * free + sizes, dtype=np.int64)
            y = step("Reshape", [y, add_initializer(graph, f"{node.name}__out_shape", shape)], "out_split")
        if out_perm != sorted(out_perm):
            y = step("Transpose", [y], "out", perm=out_perm)
        graph.insert_before(node, new)
        take_place(node.outputs[0], y)
        graph.remove(node, safe=True)

    @staticmethod
    def _rewrite(graph: ir.Graph, node: ir.Node) -> bool:
        if node.op_type != "Einsum" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            return False
        eq = node.attributes.get("equation")
        plan = EinsumAsMatMulPass._plan(eq.as_string()) if eq is not None else None
        if plan is None and eq is not None and node.inputs[0] is not None:
            weight = _const_array(node.inputs[1])
            weighted = EinsumAsMatMulPass._weight_plan(eq.as_string(), weight) if weight is not None else None
            if weighted is not None:
                EinsumAsMatMulPass._rewrite_weight(graph, node, weighted)
                return True
        if plan is None or any(v is None for v in node.inputs):
            return False
        new: list[ir.Node] = []

        def transposed(value: ir.Value, perm: list[int], tag: str) -> ir.Value:
            if perm == sorted(perm):
                return value
            t = ir.Node("", "Transpose", [value], attributes=[ir.AttrInt64s("perm", perm)],
                        name=f"{node.name}__{tag}")
            t.outputs[0].name = f"{node.outputs[0].name}__{tag}"
            if value.dtype is not None:  # an untyped value must stay untyped (no Tensor(None))
                t.outputs[0].dtype = value.dtype
            new.append(t)
            return t.outputs[0]

        a = transposed(node.inputs[0], plan[0], "a")
        b = transposed(node.inputs[1], plan[1], "b")
        matmul = ir.Node("", "MatMul", [a, b], name=f"{node.name}__matmul")
        matmul.outputs[0].name = f"{node.outputs[0].name}__matmul"
        if node.outputs[0].dtype is not None:
            matmul.outputs[0].dtype = node.outputs[0].dtype
        new.append(matmul)
        result = matmul.outputs[0]
        if plan[2] != sorted(plan[2]):
            result = transposed(result, plan[2], "out")
        graph.insert_before(node, new)
        take_place(node.outputs[0], result)
        graph.remove(node, safe=True)
        return True


def same_pads(sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int], upper: bool) -> list[int]:
    """The explicit pads (begins, then ends) that ``auto_pad="SAME_UPPER"`` (``upper``) or
    ``"SAME_LOWER"`` mean for an input of spatial ``sizes``: output ceil(size / stride), the
    total max((out − 1)·stride + (k − 1)·dilation + 1 − size, 0), its odd unit at the end
    (UPPER) or the start (LOWER), as the ONNX operators define it."""
    begins, ends = [], []
    for size, k, stride, dilation in zip(sizes, kernel, strides, dilations):
        total = max((-(-size // stride) - 1) * stride + (k - 1) * dilation + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if upper else large)
        ends.append(large if upper else small)
    return begins + ends


class ExplicitSamePadsPass(ir.passes.InPlacePass):
    """Write ``auto_pad="SAME_UPPER"``/``"SAME_LOWER"`` of a Conv or pooling as the explicit
    pads it stands for, where the input's spatial size is known: torch's legacy exporter
    writes ``padding="same"`` so (Hugging Face's EfficientNet), and onnx2torch converts no
    auto_pad, so every gradient method was refused (:func:`same_pads`)."""

    OPS = ("Conv", "MaxPool", "AveragePool", "LpPool")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in model.graph:
            if node.op_type not in self.OPS or node.domain not in ("", "ai.onnx"):
                continue
            pads = self._pads(node)
            if pads is not None:
                node.attributes.pop("auto_pad")
                node.attributes["pads"] = ir.AttrInt64s("pads", pads)
                modified = True
        return ir.passes.PassResult(model, modified=modified)

    @staticmethod
    def _pads(node: ir.Node) -> list[int] | None:
        attrs = node.attributes
        mode = attrs["auto_pad"].as_string() if "auto_pad" in attrs else "NOTSET"
        x = node.inputs[0] if node.inputs else None
        if mode not in ("SAME_UPPER", "SAME_LOWER") or x is None or x.shape is None or len(x.shape) < 3:
            return None
        sizes = list(x.shape)[2:]
        if "kernel_shape" in attrs:
            kernel = list(attrs["kernel_shape"].as_ints())
        else:  # a Conv's kernel is its weight's spatial shape
            w = node.inputs[1] if len(node.inputs) > 1 else None
            kernel = list(w.shape)[2:] if w is not None and w.shape is not None else []
        n = len(sizes)
        strides = list(attrs["strides"].as_ints()) if "strides" in attrs else [1] * n
        dilations = list(attrs["dilations"].as_ints()) if "dilations" in attrs else [1] * n
        dims = [sizes, kernel, strides, dilations]
        if any(len(d) != n or not all(isinstance(v, int) for v in d) for d in dims):
            return None
        return same_pads(sizes, kernel, strides, dilations, upper=mode == "SAME_UPPER")


class WholeMapAveragePoolPass(ir.passes.InPlacePass):
    """Write an ``AveragePool`` whose one window covers the whole map as the
    ``GlobalAveragePool`` it is: Hugging Face's EfficientNet pools with
    ``AvgPool2d(1280, ceil_mode=True)`` on a 2×2 map, which hid its CAM head. Only where the
    map's spatial size is known, no padding or dilation, and one window reaches every
    position: kernel = size, or (ceil mode) kernel − size < stride, the window clipped to
    the map, its mean over the map alone (as torch and ONNX Runtime divide)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            if node.op_type != "AveragePool" or node.domain not in ("", "ai.onnx") or not self._whole(node):
                continue
            pool = ir.Node("", "GlobalAveragePool", [node.inputs[0]], name=f"{node.name}__global")
            out = node.outputs[0]
            pool.outputs[0].shape, pool.outputs[0].dtype = out.shape, out.dtype
            model.graph.insert_before(node, pool)
            take_place(out, pool.outputs[0])
            model.graph.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified=modified)

    @staticmethod
    def _whole(node: ir.Node) -> bool:
        x = node.inputs[0] if node.inputs else None
        if x is None or x.shape is None or len(x.shape) < 3 or len(node.outputs) != 1:
            return False
        sizes = list(x.shape)[2:]
        attrs = node.attributes
        kernel = list(attrs["kernel_shape"].as_ints()) if "kernel_shape" in attrs else []
        strides = list(attrs["strides"].as_ints()) if "strides" in attrs else [1] * len(kernel)
        pads = list(attrs["pads"].as_ints()) if "pads" in attrs else []
        dilations = list(attrs["dilations"].as_ints()) if "dilations" in attrs else []
        auto_pad = attrs["auto_pad"].as_string() if "auto_pad" in attrs else "NOTSET"
        ceil = "ceil_mode" in attrs and attrs["ceil_mode"].as_int() == 1
        if len(kernel) != len(sizes) or any(not isinstance(n, int) for n in sizes):
            return False
        if any(pads) or any(d != 1 for d in dilations) or auto_pad not in ("NOTSET", "VALID"):
            return False
        return all(k == n or (ceil and 0 < k - n < s) for k, n, s in zip(kernel, sizes, strides))


class FlattenedMapPoolPass(_RewriteEachNode):
    """Pool a map whose positions a graph flattens before pooling as the pooling over its
    spatial axes it is: ``x (N, C, H, W) → Reshape (N, C, H·W) → ReduceMean(axes=[2])`` (the
    idiom ``x.flatten(2).mean(-1)``, as Hugging Face's SwiftFormer ends) becomes ``x →
    ReduceMean(axes=[2, 3])``, followed by a Reshape to (N, C, 1) where the mean kept its
    axis. Then CAM's head finder and ``layer="auto"`` see the map. Only where C, H and W are
    known (ReduceMax likewise)."""

    @staticmethod
    def _rewrite(graph: ir.Graph, node: ir.Node) -> bool:
        if node.op_type not in ("ReduceMean", "ReduceMax") or node.domain not in ("", "ai.onnx"):
            return False
        flat, out = (node.inputs[0] if node.inputs else None), node.outputs[0]
        reshape = flat.producer() if flat is not None else None
        if reshape is None or reshape.op_type != "Reshape" or flat.shape is None or len(flat.shape) != 3:
            return False
        x = reshape.inputs[0]
        dims = list(x.shape) if x is not None and x.shape is not None else []
        if len(dims) != 4 or not all(isinstance(d, int) for d in dims[1:]):
            return False
        # the same batch (a size or a named symbol) and C: the last dim is then H·W, known or
        # not (legacy exports compute the shape)
        batch, last = dims[0], flat.shape[2]
        if batch is None or (not isinstance(batch, int) and batch.value is None) or flat.shape[0] != batch:
            return False
        if flat.shape[1] != dims[1] or (isinstance(last, int) and last != dims[2] * dims[3]):
            return False
        axes, by_input = _reduction_axes(node)
        if axes is None or {int(a) % 3 for a in axes.reshape(-1)} != {2}:
            return False
        keep = node.attributes.get("keepdims")
        pool = _spatial_pool(graph, node, x, by_input)
        nodes = [pool]
        if keep is None or keep.as_int() == 1:  # (N, C, 1, 1) → (N, C, 1)
            shape = add_initializer(graph, f"{node.name}__shape", np.array([0, dims[1], 1], np.int64))
            nodes.append(ir.Node("", "Reshape", [pool.outputs[0], shape], name=f"{node.name}__unflatten"))
            pool.outputs[0].shape = ir.Shape([dims[0], dims[1], 1, 1])
        nodes[-1].outputs[0].shape, nodes[-1].outputs[0].dtype = out.shape, out.dtype
        graph.insert_before(node, nodes)
        take_place(out, nodes[-1].outputs[0])
        graph.remove(node, safe=True)
        return True


class ConstantIfPass(ir.passes.InPlacePass):
    """An ``If`` whose condition is a constant is the branch it takes: that branch's nodes
    move into the graph in its place, and its results take the ``If``'s outputs.

    Exports leave such ones (``torch.cond`` on a flag, tf2onnx's conditionals on a
    training switch or on a shape known once the model is frozen). onnx2torch converts no
    ``If``, so gradient, CAM and LRP methods were refused on them, and the graph analyses
    (layers, heads, attention) do not look into subgraphs. Ifs nested in the branch taken
    come up in the graph and are taken in turn.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, modified = model.graph, False
        while True:
            node = next((n for n in graph if n.op_type == "If" and n.domain in ("", "ai.onnx")
                         and _const_array(n.inputs[0]) is not None
                         and _const_array(n.inputs[0]).size == 1), None)
            if node is None:
                return ir.passes.PassResult(model, modified=modified)
            taken = "then_branch" if bool(_const_array(node.inputs[0]).reshape(-1)[0]) else "else_branch"
            branch = node.attributes[taken].as_graph()
            other = node.attributes["else_branch" if taken == "then_branch" else "then_branch"].as_graph()
            for dropped in ir.traversal.RecursiveGraphIterator(other):  # no longer a use of outer values
                for i in range(len(dropped.inputs)):
                    dropped.replace_input_with(i, None)
            moved, results = list(branch), list(branch.outputs)
            branch.outputs.clear()
            if moved:
                branch.remove(moved)  # still connected: they move, not go
                graph.insert_before(node, moved)
            for name, init in list(branch.initializers.items()):
                branch.initializers.pop(name)
                graph.register_initializer(init)
            for out, result in zip(node.outputs, results):
                if result.producer() not in moved:  # an outer value or a constant: copy it
                    copy = ir.node("Identity", [result], name=f"{node.name or out.name}__taken")
                    graph.insert_before(node, copy)
                    result = copy.outputs[0]
                    result.type, result.shape = out.type, out.shape
                take_place(out, result)
            graph.remove(node, safe=True)
            modified = True


class UnfuseContribOpsPass(ir.passes.InPlacePass):
    """ONNX Runtime's fused operators written out (:mod:`onnxplain.core.contrib`)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxplain.core.contrib import unfuse

        return ir.passes.PassResult(model, modified=unfuse(model) > 0)


class AttentionOpPass(ir.passes.InPlacePass):
    """The standard ``Attention`` operator written out (:mod:`onnxplain.core.sdpa`); with
    ``infer``, the new values' shapes inferred after."""

    def __init__(self, infer: bool = False) -> None:
        super().__init__()
        self.infer = infer

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxplain.core.sdpa import write_out

        modified = write_out(model) > 0
        if modified and self.infer:
            model = ShapeInferencePass()(model).model
        return ir.passes.PassResult(model, modified=modified)


class IdentityGatherPass(ir.passes.InPlacePass):
    """Drop the identity ``as_strided`` gathers of dynamo exports
    (:func:`onnxplain.core.strided.drop_identity_gathers`)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxplain.core.strided import drop_identity_gathers

        return ir.passes.PassResult(model, modified=drop_identity_gathers(model) > 0)


def _steps() -> list[ir.passes.PassBase]:
    """The canonicalisation passes, in the order they run."""
    return [
        passes.InlinePass(),
        passes.RemoveInitializersFromInputsPass(),
        passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        passes.IdentityEliminationPass(),
        CastLikePass(),
        UnfuseContribOpsPass(),
        FoldConstantSubgraphsPass(),
        AttentionOpPass(),
        ConstantIfPass(),
        SplitToSequenceAtPass(),
        NormalizeReshapeAllowZeroPass(),
        SinkChannelsLastTransposePass(),
        CancelTransposePairsPass(),
        passes.RemoveUnusedNodesPass(),
        passes.RemoveUnusedFunctionsPass(),
        passes.TopologicalSortPass(),
        passes.NameFixPass(),
        EinsumAsMatMulPass(),
        ShapeInferencePass(),
        AttentionOpPass(infer=True),  # again: the sizes it needs may be known only now
        ExplicitSamePadsPass(),
        SplitToSequenceAtPass(),  # again: a scalar split needs the shape inferred now
        CastLikePass(),  # again: the types of computed tensors are known now
        NoOpCastPass(),
        WholeMapAveragePoolPass(),
        FlattenedMapPoolPass(),
        ChannelsFirstPoolPass(),
        ChannelsLastHeadPoolPass(),
        IdentityGatherPass(),
        passes.RemoveUnusedNodesPass(),
    ]


def canonicalize(read: Callable[[], ir.Model]) -> ir.Model:
    """The model ``read()`` returns, canonicalised by the passes of :func:`_steps` in order.

    A pass that raises on a graph is skipped, and must not block loading. Passes edit in
    place, so one that fails midway may have left part of its edits: the model is then read
    again (``read`` returns a fresh copy each call) and the passes before it run again
    without it, so nothing half-done stays.
    """
    skipped: set[int] = set()
    while True:
        model = read()
        for i, step in enumerate(_steps()):
            if i in skipped:
                continue
            try:
                model = step(model).model
            except Exception as exc:  # noqa: BLE001 - a pass that cannot handle a graph is left out
                logger.warning("canonicalisation pass %s skipped: %s", type(step).__name__, exc)
                skipped.add(i)
                break
        else:
            return model
