"""The graph the LRP family works on: a copy of the canonical graph with every
BatchNormalization that directly follows a Conv folded into it.

Folding gives the rule of the Conv the layer the network really computes
(W' = W·s, b' = (b − μ)·s + β, s = γ / √(σ² + ε)), as zennit's ``MergeBatchNorm``
canonizer does. Only this copy changes: the model's own graph, which every other method
uses, keeps its BatchNormalization nodes. A BatchNormalization that cannot be folded (its
input is not a Conv output used only by it) stays and is treated as an affine layer.
"""

from __future__ import annotations

import weakref

import numpy as np
import onnx_ir as ir

from onnxplain.core.canonical import add_initializer
from onnxplain.core.model import Model

_FOLDED: weakref.WeakKeyDictionary[Model, Model] = weakref.WeakKeyDictionary()


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return np.asarray(value.const_value.numpy())


def _fold_into(graph: ir.Graph, bn: ir.Node) -> bool:
    if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
        return False
    if any(len(list(o.uses())) or o.is_graph_output() for o in bn.outputs[1:]):
        return False  # training-mode outputs in use
    x = bn.inputs[0]
    conv = x.producer() if x is not None else None
    if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx"):
        return False
    if len(list(x.uses())) != 1 or x.is_graph_output() or bn.outputs[0].is_graph_output():
        return False
    params = [_const(v) for v in bn.inputs[1:5]]
    w = _const(conv.inputs[1]) if len(conv.inputs) > 1 else None
    has_bias = len(conv.inputs) > 2 and conv.inputs[2] is not None
    b = _const(conv.inputs[2]) if has_bias else None
    if w is None or any(p is None for p in params) or (has_bias and b is None):
        return False
    scale, shift, mean, var = (p.astype(np.float64) for p in params)
    eps = bn.attributes["epsilon"].as_float() if "epsilon" in bn.attributes else 1e-5
    s = scale / np.sqrt(var + eps)
    b = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
    w2 = (w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
    b2 = ((b - mean) * s + shift).astype(w.dtype)
    conv.replace_input_with(1, add_initializer(graph, f"{conv.name}.lrp_weight", w2))
    if has_bias:
        conv.replace_input_with(2, add_initializer(graph, f"{conv.name}.lrp_bias", b2))
    else:
        conv.resize_inputs(3)
        conv.replace_input_with(2, add_initializer(graph, f"{conv.name}.lrp_bias", b2))
    out = bn.outputs[0]
    name = out.name
    out.replace_all_uses_with(conv.outputs[0])
    graph.remove(bn, safe=True)
    conv.outputs[0].name = name  # the folded layer's output keeps the name users know
    return True


def fold_batch_norms(model: Model) -> Model:
    """``model`` with Conv → BatchNormalization pairs folded (a cached copy), or ``model``
    itself when there is nothing to fold."""
    if not any(n.op_type == "BatchNormalization" for n in model.ir.graph):
        return model
    found = _FOLDED.get(model)
    if found is not None:
        return found
    copy = ir.from_proto(model.proto())
    graph = copy.graph
    folded = sum(_fold_into(graph, node) for node in list(graph))
    if not folded:
        _FOLDED[model] = model
        return model
    kwargs = {"layout": model.layout} if hasattr(model, "layout") else {}
    if hasattr(model, "custom_op_libraries"):
        kwargs["custom_op_libraries"] = model.custom_op_libraries
    result = Model(copy, source=f"{model.source} (BatchNorm folded for LRP)", **kwargs)
    _FOLDED[model] = result
    return result
