"""Constant subgraphs: evaluate them once, at load, and keep their values as initializers.

Some exporters leave computations on weights in the graph. NF-ResNets' scaled weight
standardisation (timm's ``ScaledStdConv2d``) computes every convolution's kernel from its
parameters in each forward pass (``Reshape`` → ``BatchNormalization`` → ``Mul`` →
``Reshape``); weight transposes, casts and reshapes of constants are others. Their values
never depend on the input, yet a ``Conv`` whose kernel is computed is not a ``Conv`` with
weights to the torch conversion (onnx2torch reads kernels from initializers) nor to LRP's
rules, and ONNX Runtime recomputes them in every pass.

:class:`FoldConstantSubgraphsPass` finds the nodes of the standard domain whose inputs are
all constants (or the outputs of such nodes), evaluates the tensors they hand to the rest of
the graph in one ONNX Runtime session, and makes those tensors initializers. Left as they
are: random and quantization operators (a quantized model's runtime graph keeps its integer
weights), nodes with subgraphs, graph outputs, and results over ``MAX_ELEMENTS`` elements.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

logger = logging.getLogger(__name__)

_ONNX = ("", "ai.onnx")
#: Never folded: their value is drawn at run time, or they are what a quantized model runs.
_KEEP = frozenset({
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
})
#: The largest tensor (elements) a fold may write: a constant blown up by Expand or Tile
#: would make the model file larger than the computation it saves.
MAX_ELEMENTS = 1 << 24


def evaluate(graph: ir.Graph, targets: list[ir.Value], consts: dict[int, np.ndarray],
             opset: int) -> list[np.ndarray]:
    """The values of ``targets``, computed on ONNX Runtime from the graph's constants and
    the values in ``consts`` (by ``id`` of an ``ir.Value``): every node between them runs."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    nodes, seen = [], set()
    stack = list(targets)
    while stack:
        v = stack.pop()
        node = v.producer() if v is not None else None
        if node is None or id(node) in seen or id(v) in consts or v.const_value is not None:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(node.inputs)
    order = {id(n): i for i, n in enumerate(graph)}
    nodes.sort(key=lambda n: order[id(n)])
    proto_nodes, inits, names = [], [], {}

    def name_of(v: ir.Value) -> str:
        return names.setdefault(id(v), f"v{len(names)}")

    for v in {id(v): v for v in [*targets, *(v for n in nodes for v in n.inputs)] if v is not None}.values():
        array = consts.get(id(v))
        if array is None and v.const_value is not None:
            array = np.asarray(v.const_value.numpy())
        if array is not None:
            inits.append(numpy_helper.from_array(array, name_of(v)))
    for node in nodes:
        proto = ir.serde.serialize_node(node)
        del proto.input[:]
        del proto.output[:]
        proto.input.extend(name_of(v) if v is not None else "" for v in node.inputs)
        proto.output.extend(name_of(v) for v in node.outputs)
        proto.name = ""
        proto_nodes.append(proto)
    outputs = [helper.make_empty_tensor_value_info(name_of(t)) for t in targets]
    model = helper.make_model(helper.make_graph(proto_nodes, "constants", [], outputs, inits),
                              opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {})


def _foldable(node: ir.Node, constant: set[int], outputs: set[int]) -> bool:
    if node.domain not in _ONNX or node.op_type in _KEEP or node.op_type == "Constant":
        return False
    if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
        return False
    if any(id(v) in outputs for v in node.outputs):
        return False
    return all(v is None or v.const_value is not None or id(v) in constant for v in node.inputs)


class FoldConstantSubgraphsPass(ir.passes.InPlacePass):
    """Replace the tensors that constant subgraphs hand to the rest of the graph with
    initializers holding their values (see the module docstring)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        outputs = {id(v) for v in graph.outputs}
        constant: set[int] = set()  # ids of values computed from constants only
        folded: list[ir.Node] = []
        for node in graph:
            if _foldable(node, constant, outputs):
                folded.append(node)
                constant.update(id(v) for v in node.outputs)
        inside = {id(n) for n in folded}
        frontier = [v for n in folded for v in n.outputs if any(id(c) not in inside for c, _ in v.uses())]
        if not frontier:
            return ir.passes.PassResult(model, modified=False)
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 17))
        values = evaluate(graph, frontier, {}, opset)
        modified = False
        for value, array in zip(frontier, values):
            array = np.asarray(array)
            if array.size > MAX_ELEMENTS or array.dtype == object:
                continue
            name = value.name
            value.name = f"{name}__computed"
            folded_value = ir.Value(name=name, shape=ir.Shape(array.shape),
                                    type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                                    const_value=ir.tensor(array, name=name))
            graph.register_initializer(folded_value)
            ir.convenience.replace_all_uses_with(value, folded_value)
            modified = True
        if modified:
            logger.info("folded %d constant tensor(s) computed by %d node(s)", len(frontier), len(folded))
        return ir.passes.PassResult(model, modified=modified)
