"""Nodes without a rule are refused before anything runs, all of them at once; mapping a
rule to them makes LRP run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox
from onnxplain.methods import lrp


def _model(kind: str) -> ox.Model:
    """Conv → Relu → (Resize ×2 | ConvTranspose) → Relu → GlobalAveragePool → Flatten → Gemm."""
    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)

    inits = [init("w1", 4, 3, 3, 3), init("b1", 4), init("fc_w", 3, 4), init("fc_b", 3)]
    if kind == "resize":
        middle = [helper.make_node("Resize", ["r1", "", "scales"], ["up"], name="upsample", mode="nearest")]
        inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales"))
    else:
        middle = [
            helper.make_node(
                "ConvTranspose",
                ["r1", "wt", "bt"],
                ["up"],
                name="deconv",
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                output_padding=[1, 1],
            )
        ]
        inits += [init("wt", 4, 4, 3, 3), init("bt", 4)]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        *middle,
        helper.make_node("Relu", ["up"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        kind,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return ox.load(proto)


LRP0 = [(("Conv", "Gemm"), lrp.LRP0())]
EXACT = {"stabilizer": 0.0}  # no stabiliser at the proportional nodes either


@pytest.mark.parametrize(
    ("kind", "node", "op", "rule"),
    [
        ("resize", "upsample", "Resize", lrp.Norm(0.0)),
        ("convtranspose", "deconv", "ConvTranspose", lrp.LRP0()),
    ],
)
@pytest.mark.filterwarnings("ignore:Pytorch's nearest neighbor:UserWarning")
def test_unsupported_node_is_named_and_a_mapped_rule_makes_it_run(kind, node, op, rule):
    model = _model(kind)
    with pytest.raises(ox.UnsupportedOperatorError) as info:
        lrp.LRP(model, lrp.Composite(LRP0))
    assert repr(node) in str(info.value) and op in str(info.value)
    assert info.value.operators == [op]
    assert not model._backends  # refused before any backend was built

    method = lrp.LRP(model, lrp.Composite([*LRP0, (lrp.Select(name=node), rule)], **EXACT))
    x = np.random.default_rng(1).random((2, 3, 8, 8), dtype=np.float32)
    relevance = method.attribute(x, target=2)
    # LRP-0 and the unstabilised proportional rule on linear nodes keep R = x ⊙ ∂S/∂x
    gxi = ox.InputXGradient(model).attribute(x, target=2)
    np.testing.assert_allclose(relevance, gxi, atol=1e-5 * np.abs(gxi).max())


def test_every_offending_node_is_listed():
    model = _model("resize")
    # no rule for Conv either: both the Convs and the Resize are reported, in one error
    with pytest.raises(ox.UnsupportedOperatorError) as info:
        lrp.LRP(model, lrp.Composite([("Gemm", lrp.Epsilon())]))
    message = str(info.value)
    for name in ("'conv1' (Conv", "'upsample' (Resize"):
        assert name in message
    assert info.value.operators == ["Conv", "Resize"]
