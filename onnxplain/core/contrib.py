"""ONNX Runtime's fused operators written back as the standard operators they fuse.

A model saved after ONNX Runtime's extended optimisation (``optimized_model_filepath``), or
by ``onnxruntime.transformers.optimizer`` (Hugging Face Optimum's ``-O1`` and above), holds
``com.microsoft`` operators that fuse a few standard ones: ``FusedConv`` (Conv, an optional
sum, an activation), ``FusedGemm``, ``BiasGelu``, ``FastGelu``, ``QuickGelu`` and
``SkipLayerNormalization``. onnx2torch converts none of them, so gradient, CAM and LRP
methods were refused on such a model, and LRP has no rules for them. Written out they are
what they compute: ONNX Runtime's own optimiser fuses them again when it runs the graph.

A node is left as it is when an input or attribute it needs is not a constant (a computed
clip bound), when it uses an output the standard operators do not give (a
SkipLayerNormalization's mean or inverse standard deviation), or when the model's opset has
no ``LayerNormalization`` (before 17).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from onnxplain.core.canonical import add_initializer, take_place

MS = "com.microsoft"
#: The fused operators written out.
UNFUSED = ("FusedConv", "FusedGemm", "BiasGelu", "FastGelu", "QuickGelu", "SkipLayerNormalization")


class _Writer:
    """New nodes before ``anchor``, named after it, with constants registered once."""

    def __init__(self, graph: ir.Graph, anchor: ir.Node, index: int) -> None:
        self.graph, self.anchor, self.nodes = graph, anchor, []
        # unique however the graph names its nodes (unnamed ones: by their output)
        self.prefix = f"{anchor.name or anchor.outputs[0].name}__unfused{index}"
        self.dtype = next((v.dtype for v in anchor.inputs if v is not None and v.dtype is not None), None)

    def const(self, tag: str, value: float | list[float] | np.ndarray) -> ir.Value:
        name = f"{self.prefix}__{tag}"
        dtype = self.dtype.numpy() if self.dtype is not None else np.float32
        return add_initializer(self.graph, name, np.asarray(value, dtype=dtype))

    def op(self, op_type: str, inputs: list[ir.Value | None], tag: str, copied: list[ir.Attr] | None = None,
           **attrs: object) -> ir.Value:
        attributes = {a.name: a for a in copied or []} | attrs  # ir.node types the Python values
        node = ir.node(op_type, inputs, attributes, name=f"{self.prefix}__{tag}")
        node.outputs[0].name = f"{self.prefix}__{tag}"
        if self.dtype is not None:
            node.outputs[0].dtype = self.dtype
        self.nodes.append(node)
        return node.outputs[0]

    def gelu(self, x: ir.Value, tanh: bool) -> ir.Value:
        """0.5 · x · (1 + erf(x / √2)), or with tanh(√(2/π) (x + 0.044715 x³)) (FastGelu)."""
        if tanh:
            cube = self.op("Mul", [self.op("Mul", [x, x], "sq"), x], "cube")
            inner = self.op("Add", [x, self.op("Mul", [cube, self.const("k", 0.044715)], "kx3")], "inner")
            squashed = self.op("Tanh", [self.op("Mul", [inner, self.const("c", math.sqrt(2 / math.pi))],
                                                "scaled")], "tanh")
        else:
            scaled = self.op("Div", [x, self.const("sqrt2", math.sqrt(2.0))], "div")
            squashed = self.op("Erf", [scaled], "erf")
        gate = self.op("Mul", [self.op("Add", [squashed, self.const("one", 1.0)], "plus1"),
                               self.const("half", 0.5)], "gate")
        return self.op("Mul", [x, gate], "gelu")

    def activation(self, x: ir.Value, name: str, params: list[float]) -> ir.Value | None:
        """``name`` applied to ``x`` as FusedConv/FusedGemm name them; None if unknown."""
        if name in ("Relu", "Tanh", "Sigmoid"):
            return self.op(name, [x], "act")
        if name == "LeakyRelu":
            return self.op(name, [x], "act", alpha=float(params[0]) if params else 0.01)
        if name == "HardSigmoid":
            alpha, beta = (list(params) + [0.2, 0.5][len(params):])[:2]
            return self.op(name, [x], "act", alpha=float(alpha), beta=float(beta))
        if name == "Clip" and len(params) == 2:
            return self.op(name, [x, self.const("min", params[0]), self.const("max", params[1])], "act")
        return None


def _attr(node: ir.Node, name: str, default: object = None) -> object:
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _present(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index and node.inputs[index] is not None else None


_ACTIVATIONS = ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "HardSigmoid", "Clip")


def _writable(node: ir.Node, opset: int) -> bool:
    """``node`` can be written out (checked before any node is made)."""
    if node.op_type in ("FusedConv", "FusedGemm"):
        name = str(_attr(node, "activation", "") or "")
        params = list(_attr(node, "activation_params", []) or [])
        return not name or (name in _ACTIVATIONS and (name != "Clip" or (
            node.op_type == "FusedConv" and len(params) == 2)))
    if node.op_type == "SkipLayerNormalization":
        return opset >= 17 and not any(o.uses() for o in node.outputs[1:3])
    return True


def _write(node: ir.Node, w: _Writer) -> dict[int, ir.Value]:
    """The values that replace ``node``'s outputs (index → value)."""
    op, x = node.op_type, node.inputs[0]
    if op in ("FusedConv", "FusedGemm"):
        standard = "Conv" if op == "FusedConv" else "Gemm"
        copied = [a for k, a in node.attributes.items() if not k.startswith("activation")]
        y = w.op(standard, list(node.inputs[:3]), standard.lower(), copied)
        z = _present(node, 3) if op == "FusedConv" else None
        if z is not None:  # FusedConv's sum input: act(Conv(X) + Z)
            y = w.op("Add", [y, z], "sum")
        name = str(_attr(node, "activation", "") or "")
        if op == "FusedConv":
            params = [float(p) for p in _attr(node, "activation_params", []) or []]
        else:
            params = [float(_attr(node, "activation_alpha", 0.01)),
                      float(_attr(node, "activation_beta", 0.5))]
        if name == "LeakyRelu":
            params = params[:1]
        act = w.activation(y, name, params) if name else y
        assert act is not None  # _writable checked the activation
        return {0: act}
    if op in ("BiasGelu", "FastGelu"):
        bias = _present(node, 1)
        y = w.op("Add", [x, bias], "bias") if bias is not None else x
        return {0: w.gelu(y, tanh=op == "FastGelu")}
    if op == "QuickGelu":
        alpha = float(_attr(node, "alpha", 1.702))
        return {0: w.op("Mul", [x, w.op("Sigmoid", [w.op("Mul", [x, w.const("alpha", alpha)], "ax")], "sig")],
                        "quick_gelu")}
    # SkipLayerNormalization: LayerNorm(input (+ bias) + skip), the sum in the order the
    # layers it fused add (a linear layer's bias, then the residual); output 3 is that sum
    bias = _present(node, 4)
    total = w.op("Add", [x, bias], "bias") if bias is not None else x
    total = w.op("Add", [total, node.inputs[1]], "skip")
    eps = float(_attr(node, "epsilon", 1e-12))
    normed = w.op("LayerNormalization", [total, node.inputs[2], _present(node, 3)], "layer_norm",
                  axis=-1, epsilon=eps)
    return {0: normed, 3: total}


def unfuse(model: ir.Model) -> int:
    """Write ONNX Runtime's fused operators (:data:`UNFUSED`) in ``model`` out in place;
    the number written out."""
    graph = model.graph
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    count = 0
    for node in list(graph):
        if node.domain != MS or node.op_type not in UNFUSED or not node.inputs or node.inputs[0] is None:
            continue
        if not _writable(node, opset):
            continue
        writer = _Writer(graph, node, count)
        replaced = _write(node, writer)
        graph.insert_before(node, writer.nodes)
        for index, value in replaced.items():
            if index >= len(node.outputs):
                continue
            out = node.outputs[index]
            if not out.uses() and not out.is_graph_output():  # an optional output not used
                continue
            take_place(out, value)
        graph.remove(node, safe=True)
        count += 1
    return count
