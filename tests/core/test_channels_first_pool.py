"""A channels-last global pooling moved before its transpose (ChannelsFirstPoolPass).

ONNX Runtime's transpose optimiser writes Swin's head as ``X (N, H, W, C) →
ReduceMean(axes=[1, 2]) → Transpose(0, 3, 1, 2)``, leaving no channels-first map in the
graph; the canonical graph pools ``Transpose(X)`` over axes [2, 3] instead. The reference
is the raw graph on ONNX Runtime, and CAM = h·w × Grad-CAM on the recovered map.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import max_rel_err
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox


def _channels_last_head(opset: int) -> onnx.ModelProto:
    """conv → NHWC → LayerNormalization over C → mean over (H, W), then channels first →
    flatten → linear: the head ONNX Runtime's optimiser leaves of a Swin."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(6, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.ones(6, np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(size=6).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.normal(size=(6, 4)).astype(np.float32), "fc"),
    ]
    mean_axes = {"axes": [1, 2]}
    mean_inputs = ["ln"]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([1, 2], np.int64), "axes"))
        mean_axes, mean_inputs = {}, ["ln", "axes"]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["nhwc", "gamma", "beta"], ["ln"], axis=-1),
        helper.make_node("ReduceMean", mean_inputs, ["pooled"], keepdims=1, **mean_axes),
        helper.make_node("Transpose", ["pooled"], ["pooled_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Flatten", ["pooled_nchw"], ["features"]),
        helper.make_node("MatMul", ["features", "fc"], ["logits"]),
    ]
    info = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "g", [info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [info("logits", TensorProto.FLOAT, ["n", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize("opset", [17, 18])
def test_the_pooled_map_is_channels_first_and_the_outputs_unchanged(opset):
    proto = _channels_last_head(opset)
    x = np.random.default_rng(1).random((3, 3, 8, 8), dtype=np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    raw = session.run(None, {"x": x})[0]
    model = ox.load(proto)
    assert max_rel_err(model.predict(x), raw) < 1e-6
    layer = model.find_layer()
    assert layer.name == "ln__nchw" and tuple(layer.shape[1:]) == (6, 8, 8)
    head = model.classifier_head()
    assert head is not None and head.feature_map == "ln__nchw" and head.weight.shape == (4, 6)
    kwargs = {"target": 2, "relu_attributions": False, "upsample": False}
    cam = ox.CAM(model).attribute(x, **kwargs)
    grad = ox.GradCAM(model).attribute(x, **kwargs)
    assert max_rel_err(cam, 64 * grad) < 1e-5


def test_a_transpose_that_does_not_move_channels_first_stays():
    proto = _channels_last_head(17)
    for node in proto.graph.node:  # (N, 1, 1, C) → (N, C, 1, 1) by another permutation
        if node.op_type == "Transpose" and list(node.attribute[0].ints) == [0, 3, 1, 2]:
            node.attribute[0].ints[:] = [0, 3, 2, 1]
    model = ox.load(proto)
    assert sum(n.op_type == "Transpose" for n in model.ir.graph) == 2
    assert model.classifier_head() is None
