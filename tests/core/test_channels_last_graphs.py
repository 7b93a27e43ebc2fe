"""A tf2onnx-style channels-last graph: every convolution wrapped in NHWC ↔ NCHW
transposes, hard-swish and a squeeze-and-excitation block computed channels last, a
per-channel constant shared by two nodes. The canonical graph is channels first
(SinkChannelsLastTransposePass, CancelTransposePairsPass, ChannelsFirstPoolPass); the
reference is the raw graph on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import max_rel_err
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox
from onnxplain.methods import lrp


def _tf2onnx_style() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    arrays = {
        "w1": rng.normal(size=(6, 3, 3, 3)) * 0.5, "scale": rng.uniform(0.5, 1.5, size=6),
        "w_se1": rng.normal(size=(3, 6, 1, 1)), "w_se2": rng.normal(size=(6, 3, 1, 1)),
        "fc": rng.normal(size=(6, 4)), "three": np.array(3.0), "six": np.array(6.0), "zero": np.array(0.0),
        "sixth": np.array(1 / 6),
    }
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in arrays.items()]

    def conv(x: str, w: str, out: str) -> list[onnx.NodeProto]:  # NHWC → NCHW → Conv → NHWC
        return [helper.make_node("Transpose", [x], [f"{out}_in"], perm=[0, 3, 1, 2]),
                helper.make_node("Conv", [f"{out}_in", w], [f"{out}_nchw"], pads=[0, 0, 0, 0]),
                helper.make_node("Transpose", [f"{out}_nchw"], [out], perm=[0, 2, 3, 1])]

    nodes = [
        *conv("x", "w1", "c1"),
        helper.make_node("Mul", ["c1", "scale"], ["bn"]),
        # hard-swish written out: bn · relu6(bn + 3) / 6
        helper.make_node("Add", ["bn", "three"], ["hs_add"]),
        helper.make_node("Clip", ["hs_add", "zero", "six"], ["hs_clip"]),
        helper.make_node("Mul", ["hs_clip", "sixth"], ["hs_gate"]),
        helper.make_node("Mul", ["bn", "hs_gate"], ["h"]),
        # squeeze-and-excitation, pooled channels last
        helper.make_node("ReduceMean", ["h"], ["se_pool"], axes=[1, 2], keepdims=1),
        *conv("se_pool", "w_se1", "se1"),
        helper.make_node("Relu", ["se1"], ["se_relu"]),
        *conv("se_relu", "w_se2", "se2"),
        helper.make_node("Sigmoid", ["se2"], ["se_gate"]),
        helper.make_node("Mul", ["h", "se_gate"], ["excited"]),
        helper.make_node("Mul", ["excited", "scale"], ["scaled"]),  # the shared per-channel constant
        helper.make_node("ReduceMean", ["scaled"], ["pooled"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["pooled", "fc"], ["logits"]),
    ]
    info = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "tf2onnx_style", [info("x", TensorProto.FLOAT, ["n", 10, 10, 3])],
                              [info("logits", TensorProto.FLOAT, ["n", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.fixture(scope="module")
def pair():
    proto = _tf2onnx_style()
    onnx.checker.check_model(proto)
    return proto, ox.load(proto)


def _raw(proto: onnx.ModelProto, x: np.ndarray, *names: str) -> list[np.ndarray]:
    """The raw graph's tensors ``names`` on ONNX Runtime."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    proto.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        list(names), {"x": x})


def test_the_canonical_graph_is_channels_first_and_computes_the_same(pair):
    proto, model = pair
    x = np.random.default_rng(1).random((3, 10, 10, 3), dtype=np.float32)
    assert max_rel_err(model.predict(x), _raw(proto, x, "logits")[0]) < 1e-6
    # one transpose before the pooling, and the pair load() puts before the first convolution
    # (the channels-first input it adds, moved channels last as the graph reads it)
    transposes = [n.name for n in model.ir.graph if n.op_type == "Transpose"]
    assert len(transposes) == 3
    assert model.find_layer().name == "scaled__nchw" and tuple(model.find_layer().shape[1:]) == (6, 8, 8)


def test_the_squeeze_and_excitation_gate_is_found_channels_first(pair):
    proto, model = pair
    x = np.random.default_rng(2).random((2, 10, 10, 3), dtype=np.float32)
    (gate,) = model.attention_gates()
    assert gate.kind == "se" and gate.activation == "Sigmoid"
    maps = ox.AttentionMaps(model).attribute(x, upsample=False)
    np.testing.assert_allclose(maps[gate.name], _raw(proto, x, "se_gate")[0][:, 0, 0, :], atol=1e-6)


def test_lrp_finds_the_gates_of_hard_swish_and_the_se_block(pair):
    proto, model = pair
    x = np.random.default_rng(3).random((2, 10, 10, 3), dtype=np.float32)
    # LRP-0 with every gate passing relevance to its signal, no stabilisers: the relevance
    # sums to the score (no biases anywhere)
    composite = lrp.Composite([(("Conv", "MatMul"), lrp.LRP0())], epsilon=0.0, stabilizer=0.0)
    relevance = lrp.LRP(model, composite).attribute(x, target=1)
    np.testing.assert_allclose(relevance.reshape(2, -1).sum(1), model.predict(x)[:, 1], rtol=1e-4)
