"""Quantized models: the float simulation that gradients and graph analyses work on.

ONNX Runtime's quantization tools write a model in one of three forms, all of which run
on the ``onnxruntime`` backend as they are:

- **QDQ** (``quantize_static``'s default, and what PyTorch exports for fake-quantized
  modules): weights stored as integers behind ``DequantizeLinear``, activations passed
  through ``QuantizeLinear → DequantizeLinear`` pairs around float operators;
- **QOperator**: integer operators (``QLinearConv``, ``QLinearMatMul``, and ONNX
  Runtime's ``com.microsoft`` ``QLinearAdd``, ``QGemm``, ``QLinearGlobalAveragePool``...);
- **dynamic** (``quantize_dynamic``): ``DynamicQuantizeLinear`` of each activation into
  ``ConvInteger`` / ``MatMulInteger``, rescaled by ``Cast`` and ``Mul``.

:func:`simulate` rewrites the last two into the first and folds every
``DequantizeLinear`` of constants into a float initializer. The result computes what the
ONNX operators define, in float, with each quantization kept as a ``QuantizeLinear →
DequantizeLinear`` pair on the activations it rounds: the graph that quantization-aware
training calls fake-quantized. :func:`onnxplain.load` keeps both graphs: ONNX Runtime runs
the model as it was written (so predictions are the deployed ones); the torch backend,
LRP and the graph queries (``layers()``, ``classifier_head()``) see the simulation, whose
weights are float tensors. Rounding there has the straight-through gradient of PyTorch's
``fake_quantize`` (1 where the rounded value is inside the integer range, 0 outside).

A fully quantized model may return its integer scores (its last ``QuantizeLinear`` or
``QLinear*`` output, not dequantized); :func:`onnxplain.load` appends the
``DequantizeLinear`` they stand for (:func:`onnxplain.core.canonical.float_outputs`), so
methods compare, soften and differentiate real scores, not integers.

The simulation and ONNX Runtime's integer kernels agree up to rounding: a value that
lands on the other side of a rounding boundary moves by one quantization step, and the
layers after it carry that on. Measured on a trained CNN quantized by
``quantize_static``: 1.6 % of the largest logit, no changed prediction. On an x86 CPU
without VNNI (AVX2 only), ONNX Runtime's u8s8 kernels also saturate their 16-bit sums unless
the model was quantized with ``reduce_range=True`` (7-bit weights): a QDQ CNN's logits moved
by 0.8 % of the largest on such a CPU and by 0 with the session option
``session.x64quantprecision=1``. ONNX Runtime's sessions are left as they come, so
predictions stay what the deployment computes on that CPU.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common as passes

from onnxplain.core.canonical import ShapeInferencePass, _const_array, add_initializer

#: Operators that only occur in quantized graphs.
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
        "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul",
        "QGemm", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid",
        "QLinearLeakyRelu", "QLinearConcat", "QLinearSoftmax", "QLinearReduceMean",
        "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention", "QLinearWhere",
    }
)
#: The nodes of the simulation that round an activation (a value up to one step).
ROUNDING_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
logger = logging.getLogger(__name__)

_ONNX = ("", "ai.onnx")
_MS = "com.microsoft"


def is_quantized(model: ir.Model) -> bool:
    """Whether the graph holds any quantization operator."""
    return any(node.op_type in QUANTIZED_OPS and node.domain in (*_ONNX, _MS) for node in model.graph)


def _attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int = 1,
               block_size: int = 0) -> np.ndarray:
    """ONNX ``DequantizeLinear``: ``(q − zero_point) · scale`` in ``scale``'s float type,
    per tensor (scalar scale), per axis (1-D scale along ``axis``) or per block."""
    scale = np.asarray(scale)
    zp = np.zeros((), np.int64) if zero_point is None else np.asarray(zero_point)
    if scale.ndim and q.ndim:
        axis %= q.ndim
        if block_size:  # each block's value repeated over its block, the last one cut short
            cut = tuple(slice(0, q.shape[axis]) if a == axis else slice(None) for a in range(q.ndim))
            scale = np.repeat(scale, block_size, axis=axis)[cut]
            zp = np.repeat(zp, block_size, axis=axis)[cut] if zp.ndim else zp
        elif scale.ndim == 1:
            shape = [1] * q.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zp = zp.reshape(shape) if zp.ndim == 1 else zp
    # (q − zp) is exact in float64, and one product rounded to float32 is the runtime's
    centred = q.astype(np.float64) - zp.astype(np.float64)
    return (centred * scale.astype(np.float64)).astype(scale.dtype)


#: numpy types of the integer element types QuantizeLinear writes, with their ranges.
_INTEGERS = {
    ir.DataType.UINT8: np.uint8, ir.DataType.INT8: np.int8, ir.DataType.UINT16: np.uint16,
    ir.DataType.INT16: np.int16,
}


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, dtype: type,
             axis: int = 1) -> np.ndarray:
    """ONNX ``QuantizeLinear`` (per tensor or per axis): round(x / scale) + zero point,
    rounding half to even and saturating, computed in float32 as ONNX Runtime does."""
    scale = np.asarray(scale, dtype=np.float32)
    zp = np.zeros((), np.float32) if zero_point is None else np.asarray(zero_point).astype(np.float32)
    if scale.ndim == 1 and x.ndim:
        shape = [1] * x.ndim
        shape[axis % x.ndim] = -1
        scale = scale.reshape(shape)
        zp = zp.reshape(shape) if zp.ndim == 1 else zp
    info = np.iinfo(dtype)
    y = np.rint(x.astype(np.float32) / scale) + zp
    return np.clip(y, info.min, info.max).astype(dtype)


def _folded(node: ir.Node) -> np.ndarray | None:
    """What a QuantizeLinear, DequantizeLinear or Reshape (``quantize_dynamic``'s bias)
    of constants computes (None otherwise)."""
    if node.op_type not in ("QuantizeLinear", "DequantizeLinear", "Reshape") or node.domain not in _ONNX:
        return None
    inputs = [_const_array(v) if v is not None else None for v in node.inputs]
    if node.op_type == "Reshape":
        if len(inputs) != 2 or inputs[0] is None or inputs[1] is None or _attr(node, "allowzero", 0):
            return None
        shape = [int(d) if d != 0 else inputs[0].shape[i] for i, d in enumerate(inputs[1].tolist())]
        return inputs[0].reshape(shape)
    if len(inputs) < 2 or inputs[0] is None or inputs[1] is None:
        return None
    if len(node.inputs) > 2 and node.inputs[2] is not None and inputs[2] is None:
        return None
    zp = inputs[2] if len(inputs) > 2 else None
    axis, block = _attr(node, "axis", 1), _attr(node, "block_size", 0)
    if node.op_type == "DequantizeLinear":
        return dequantize(inputs[0], inputs[1], zp, axis, block)
    out_type = node.outputs[0].dtype
    if block or out_type not in _INTEGERS:
        return None
    return quantize(inputs[0], inputs[1], zp, _INTEGERS[out_type], axis)


def _fold(graph: ir.Graph, node: ir.Node) -> bool:
    """Replace a QuantizeLinear, DequantizeLinear or Reshape of constants by the
    initializer it computes (a weight stored as integers, or fake-quantized by a PyTorch
    export)."""
    array = _folded(node)
    if array is None:
        return False
    out = node.outputs[0]
    if out.is_graph_output():
        return False
    name = out.name
    out.name = f"{name}__quantized"
    out.replace_all_uses_with(add_initializer(graph, name, array))
    graph.remove(node, safe=True)
    return True


def _copy_attrs(node: ir.Node, drop: tuple[str, ...] = ()) -> dict:
    return {k: a for k, a in node.attributes.items() if k not in drop}


class _Rewriter:
    """Writes one QOperator node as DequantizeLinear of its inputs, the float operator,
    and QuantizeLinear of its output (which keeps the node's output name)."""

    def __init__(self, graph: ir.Graph, node: ir.Node, done: dict) -> None:
        self.graph, self.node, self.new, self.done = graph, node, [], done
        self.base = node.name or node.outputs[0].name

    def dq(self, x: ir.Value, scale: ir.Value, zero_point: ir.Value | None, axis: int | None = None
           ) -> ir.Value:
        """``x`` dequantized: one tensor for all the nodes that read it, the graph's own
        DequantizeLinear of it if it has one (so that a gate's pooling and product read one
        feature map), else a new ``<x>_dequantized``."""
        key = (id(x), id(scale), id(zero_point), axis)
        if key in self.done:
            return self.done[key]
        for use in x.consumers():
            ins = [*use.inputs, None, None][:3]
            if (use.op_type == "DequantizeLinear" and use.domain in _ONNX and ins[0] is x and ins[1] is scale
                    and ins[2] is zero_point and _attr(use, "axis", 1) == (1 if axis is None else axis)):
                self.done[key] = use.outputs[0]
                return use.outputs[0]
        attrs = {} if axis is None else {"axis": axis}
        node = ir.node("DequantizeLinear", [x, scale, zero_point] if zero_point is not None else [x, scale],
                       attrs, name=f"{self.base}/dequantize_{len(self.new)}")
        taken = any(k[0] == id(x) for k in self.done)
        node.outputs[0].name = f"{x.name}_dequantized" + (f"_{len(self.done)}" if taken else "")
        node.outputs[0].dtype = scale.dtype
        self.new.append(node)
        self.done[key] = node.outputs[0]
        return node.outputs[0]

    def finish(self, op: str, inputs: list[ir.Value | None], attrs: dict,
               scale: ir.Value | None, zero_point: ir.Value | None, replaces: tuple[ir.Node, ...] = ()
               ) -> None:
        """Insert the float ``op`` (and the QuantizeLinear of its output, when ``scale``);
        its result takes the place of the node's output, or of the last of ``replaces``
        (nodes after it, removed with it: a dynamic product's Cast and rescaling Mul)."""
        out = (replaces[-1] if replaces else self.node).outputs[0]
        body = ir.node(op, inputs, attrs, name=f"{self.base}/float")
        self.new.append(body)
        result = body.outputs[0]
        result.dtype = ir.DataType.FLOAT
        if scale is not None:
            q = ir.node("QuantizeLinear", [result, scale, zero_point] if zero_point is not None
                        else [result, scale], name=f"{self.base}/quantize")
            self.new.append(q)
            result.name = f"{out.name}_float"
            result = q.outputs[0]
        self.graph.insert_before(self.node, self.new)
        name, dtype, shape = out.name, out.dtype, out.shape
        out.replace_all_uses_with(result, replace_graph_outputs=True)
        for node in (*reversed(replaces), self.node):
            self.graph.remove(node, safe=True)
        out.name = f"{name}__qoperator"
        result.name, result.shape = name, shape
        if scale is not None:  # contrib operators' outputs have no inferred type
            written = zero_point.dtype if zero_point is not None else None
            result.dtype = dtype or written or ir.DataType.UINT8


def _bias(graph: ir.Graph, bias: ir.Value | None, *scales: ir.Value | None) -> ir.Value | None:
    """An int32 bias of scale Π scales as a float constant (None when not constant)."""
    if bias is None:
        return None
    arrays = [_const_array(bias), *(_const_array(s) for s in scales)]
    if any(a is None for a in arrays):
        return None
    scale = np.float32(1)
    for a in arrays[1:]:
        scale = scale * a.astype(np.float32)  # float32 products, as the runtime's
    array = (arrays[0].astype(np.float64) * scale).astype(np.float32)
    return add_initializer(graph, f"{bias.name}_dequantized", array)


def _only_consumer(value: ir.Value, op_type: str) -> ir.Node | None:
    uses = list(value.consumers())
    if len(uses) != 1 or uses[0].op_type != op_type or value.is_graph_output():
        return None
    return uses[0]


def _rescaling(node: ir.Node) -> tuple[ir.Value, ir.Value, tuple[ir.Node, ...]] | None:
    """For ``ConvInteger(a, b, ...)`` or ``MatMulInteger`` as ``quantize_dynamic`` writes
    it — ``Mul(Cast(node), Mul(a_scale, b_scale))``, ``a_scale`` the scale that
    DynamicQuantizeLinear gave ``a``, ``b_scale`` a constant (reshaped for a per-channel
    convolution) — the two scales and the Cast and Mul; else None."""
    cast = _only_consumer(node.outputs[0], "Cast")
    mul = _only_consumer(cast.outputs[0], "Mul") if cast is not None else None
    dynamic = node.inputs[0].producer() if node.inputs[0] is not None else None
    if mul is None or dynamic is None or dynamic.op_type != "DynamicQuantizeLinear":
        return None
    scales = mul.inputs[1] if mul.inputs[0] is cast.outputs[0] else mul.inputs[0]
    product = scales.producer() if scales is not None else None
    if product is not None and product.op_type == "Reshape":
        product = product.inputs[0].producer() if product.inputs[0] is not None else None
    if product is None or product.op_type != "Mul":
        return None
    a_scale, b_scale = product.inputs[0], product.inputs[1]
    if b_scale is dynamic.outputs[1]:
        a_scale, b_scale = b_scale, a_scale
    if a_scale is not dynamic.outputs[1] or _const_array(b_scale) is None:
        return None
    return a_scale, b_scale, (cast, mul)


def _rewrite(graph: ir.Graph, node: ir.Node, done: dict) -> bool:
    """Rewrite a QOperator or integer node into float operators with QuantizeLinear /
    DequantizeLinear around them; False for a node that is not one (or has a form we
    leave to the torch backend to refuse). ``done``: the DequantizeLinear outputs made
    so far, by (tensor, scale, zero point, axis), shared by the nodes that read a tensor."""
    op, ins = node.op_type, list(node.inputs) + [None] * 10
    ms = node.domain == _MS
    if node.domain not in (*_ONNX, _MS):
        return False
    r = _Rewriter(graph, node, done)
    if op == "QLinearConv" and not ms:
        bias = _bias(graph, ins[8], ins[1], ins[4]) if ins[8] is not None else None
        if ins[8] is not None and bias is None:
            return False
        w_axis = 0 if ins[4].shape is not None and len(ins[4].shape) == 1 else None
        r.finish("Conv", [r.dq(ins[0], ins[1], ins[2]), r.dq(ins[3], ins[4], ins[5], w_axis), bias],
                 _copy_attrs(node), ins[6], ins[7])
    elif op == "QLinearMatMul" and not ms:
        b_axis = None
        if ins[4].shape is not None and len(ins[4].shape) == 1 and ins[3].shape is not None:
            b_axis = len(ins[3].shape) - 1
        r.finish("MatMul", [r.dq(ins[0], ins[1], ins[2]), r.dq(ins[3], ins[4], ins[5], b_axis)], {},
                 ins[6], ins[7])
    elif ms and op in ("QLinearAdd", "QLinearMul"):
        r.finish(op[len("QLinear"):], [r.dq(ins[0], ins[1], ins[2]), r.dq(ins[3], ins[4], ins[5])], {},
                 ins[6], ins[7])
    elif ms and op in ("QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid",
                       "QLinearLeakyRelu"):
        if _attr(node, "channels_last", 0):
            return False
        r.finish(op[len("QLinear"):], [r.dq(ins[0], ins[1], ins[2])], _copy_attrs(node, ("channels_last",)),
                 ins[3], ins[4])
    elif ms and op == "QLinearSoftmax":
        axis = _attr(node, "axis", -1)
        rank = len(ins[0].shape) if ins[0].shape is not None else None
        if _attr(node, "opset", 13) < 13 and not (axis == -1 or (rank is not None and axis == rank - 1)):
            return False  # the old semantics: a softmax over the flattened trailing axes
        r.finish("Softmax", [r.dq(ins[0], ins[1], ins[2])], {"axis": axis}, ins[3], ins[4])
    elif ms and op == "QLinearConcat":
        triples = node.inputs[2:]
        r.finish("Concat", [r.dq(*triples[i:i + 3]) for i in range(0, len(triples), 3)], _copy_attrs(node),
                 ins[0], ins[1])
    elif ms and op == "QGemm":
        alpha = node.attributes["alpha"].as_float() if "alpha" in node.attributes else 1.0
        bias = _bias(graph, ins[6], ins[1], ins[4]) if ins[6] is not None else None
        if ins[6] is not None and bias is None:
            return False
        b_axis = None
        if ins[4].shape is not None and len(ins[4].shape) == 1 and ins[4].shape[0] != 1:
            b_axis = 0 if _attr(node, "transB", 0) else 1
        if bias is not None and alpha != 1.0:  # Y = α·A·B + C: C's scale is α·a·b
            bias.const_value = ir.tensor(bias.const_value.numpy() * np.float32(alpha), name=bias.name)
        r.finish("Gemm", [r.dq(ins[0], ins[1], ins[2]), r.dq(ins[3], ins[4], ins[5], b_axis), bias],
                 _copy_attrs(node), ins[7], ins[8])
    elif op in ("ConvInteger", "MatMulInteger") and not ms:
        # Σ (a − a_zp)(b − b_zp) in float; with the rescaling quantize_dynamic writes after
        # it, (a − a_zp)·a_scale and (b − b_zp)·b_scale: the float layer with float weights
        rescaled = _rescaling(node)
        a_scale, b_scale, replaces = rescaled or (None, None, ())
        if rescaled is None:
            a_scale = b_scale = add_initializer(graph, f"{r.base}/unit_scale", np.array(1, np.float32))
        per_channel = [v for v in (ins[3], b_scale if rescaled else None)
                       if v is not None and v.shape is not None and len(v.shape) == 1 and v.shape[0] != 1]
        b_axis = None
        if per_channel:
            b_axis = 0 if op == "ConvInteger" else (len(ins[1].shape) - 1 if ins[1].shape is not None else 1)
        r.finish(op[:-len("Integer")], [r.dq(ins[0], a_scale, ins[2]), r.dq(ins[1], b_scale, ins[3], b_axis)],
                 _copy_attrs(node), None, None, replaces)
    else:
        return False
    return True


#: Producers after which a quantizer drops a ReLU into the range of the rounding.
_FUSES_RELU = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sum", "BatchNormalization"})


def _unfuse_relu(graph: ir.Graph, node: ir.Node) -> bool:
    """Put back the ReLU a quantizer fused into a rounding whose range starts at 0 (zero
    point at the integer minimum): Q(x) = Q(ReLU(x)) there, so the forward pass is the
    same, and rectifier methods (guided backpropagation, deconvnet) and LRP find it."""
    if node.op_type != "QuantizeLinear" or node.domain not in _ONNX or len(node.inputs) < 3:
        return False
    x, zero_point = node.inputs[0], _const_array(node.inputs[2])
    producer = x.producer() if x is not None else None
    if producer is None or producer.op_type not in _FUSES_RELU or zero_point is None or zero_point.size != 1:
        return False
    if not np.issubdtype(zero_point.dtype, np.integer) or zero_point.item() != np.iinfo(zero_point.dtype).min:
        return False
    relu = ir.node("Relu", [x], name=f"{node.name or x.name}/fused_relu")
    relu.outputs[0].name = f"{x.name}_relu"
    relu.outputs[0].dtype, relu.outputs[0].shape = x.dtype, x.shape
    graph.insert_before(node, relu)
    node.replace_input_with(0, relu.outputs[0])
    return True


def _forget_unknown_dims(graph: ir.Graph) -> None:
    """Drop the shapes that hold dims a previous inference could not name (``unk__N``,
    as ONNX Runtime's quantizer leaves on its QOperator tensors), to be inferred again
    from the input's: a tensor's batch dim is then the input's symbol."""
    for node in graph:
        for v in node.outputs:
            if v.shape is not None and not v.is_graph_output() and any(
                    not isinstance(d, int) and str(getattr(d, "value", d) or "").startswith("unk__")
                    for d in v.shape):
                v.shape = None


def simulate(model: ir.Model) -> ir.Model:
    """The float simulation of quantized ``model`` (a new IR model; see the module
    docstring): QOperator and integer nodes rewritten as float operators between
    DequantizeLinear and QuantizeLinear; every QuantizeLinear and DequantizeLinear of
    constants folded into the tensor it computes (in topological order, so a weight's
    Q → DQ pair folds whole); and the ReLUs quantizers fuse into a rounding put back."""
    copy = ir.from_proto(ir.to_proto(model))
    graph = copy.graph
    done: dict = {}  # the tensors dequantized so far
    rewritten = any([_rewrite(graph, node, done) for node in list(graph)])
    if rewritten:
        graph.sort()  # a node may now read the graph's own DequantizeLinear placed after it
    if any([_fold(graph, node) for node in list(graph)]):
        passes.RemoveUnusedNodesPass()(copy)  # and the integer weights behind the folds
    rewritten |= any([_unfuse_relu(graph, node) for node in list(graph)])
    if rewritten:  # the new tensors' shapes (and those contrib operators left unknown)
        passes.RemoveUnusedNodesPass()(copy)  # a dynamic product's scale Mul
        try:
            _forget_unknown_dims(graph)
            ShapeInferencePass()(copy)
        except Exception as exc:  # pragma: no cover - shapes are a convenience here
            logger.warning("shape inference of the quantized model's simulation failed: %s", exc)
    return copy
