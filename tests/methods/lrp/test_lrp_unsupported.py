"""Nodes without a rule are refused before anything runs, all of them at once; mapping a
rule to them makes LRP run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import zennit_relevance
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


def test_unsupported_node_is_named_and_a_mapped_rule_makes_it_run():
    model = _model("convtranspose")
    with pytest.raises(ox.UnsupportedOperatorError) as info:
        lrp.LRP(model, lrp.Composite(LRP0))
    assert "'deconv'" in str(info.value) and "ConvTranspose" in str(info.value)
    assert info.value.operators == ["ConvTranspose"]
    assert not model._backends  # refused before any backend was built

    method = lrp.LRP(model, lrp.Composite([*LRP0, (lrp.Select(name="deconv"), lrp.LRP0())], **EXACT))
    x = np.random.default_rng(1).random((2, 3, 8, 8), dtype=np.float32)
    relevance = method.attribute(x, target=2)
    # LRP-0 and the unstabilised proportional rule on linear nodes keep R = x ⊙ ∂S/∂x
    gxi = ox.InputXGradient(model).attribute(x, target=2)
    np.testing.assert_allclose(relevance, gxi, atol=1e-5 * np.abs(gxi).max())


@pytest.mark.filterwarnings("ignore:Pytorch's nearest neighbor:UserWarning")
def test_upsampling_routes_relevance_as_the_gradient_by_default():
    """Nearest upsampling copies: routing each copy's relevance back to its source keeps
    LRP-0's R = x ⊙ ∂S/∂x."""
    model = _model("resize")
    assert lrp.Composite(LRP0).assign(model).rules["upsample"] == lrp.Gradient()
    x = np.random.default_rng(1).random((2, 3, 8, 8), dtype=np.float32)
    relevance = lrp.LRP(model, lrp.Composite(LRP0, **EXACT)).attribute(x, target=2)
    gxi = ox.InputXGradient(model).attribute(x, target=2)
    assert np.abs(gxi).max() > 0
    np.testing.assert_allclose(relevance, gxi, atol=1e-5 * np.abs(gxi).max())


def test_every_offending_node_is_listed():
    model = _model("convtranspose")
    # no rule for Conv either: both the Convs and the ConvTranspose are reported, in one error
    with pytest.raises(ox.UnsupportedOperatorError) as info:
        lrp.LRP(model, lrp.Composite([("Gemm", lrp.Epsilon())]))
    message = str(info.value)
    for name in ("'conv1' (Conv", "'deconv' (ConvTranspose"):
        assert name in message
    assert info.value.operators == ["Conv", "ConvTranspose"]


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_lrp_through_upsampling_is_zennits(mode, images):
    """zennit has no rule for ``nn.Upsample`` and passes the relevance back through it as
    the gradient: the same relevance as ours on the exported Resize."""
    pytest.importorskip("zennit")
    import torch
    from zennit.composites import EpsilonPlusFlat

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Upsample(scale_factor=2, mode=mode), torch.nn.Conv2d(6, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 4)).eval()
    x = images[:, :, :16, :16]
    model = ox.adapters.torch.export(net, torch.from_numpy(x))
    ref = zennit_relevance(EpsilonPlusFlat(), net, x, target=2, classes=4)
    ours = lrp.LRP(model, lrp.EpsilonPlusFlat()).attribute(x, target=2)
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(ours, ref, atol=1e-4 * np.abs(ref).max())


def test_local_response_normalisation_passes_relevance_through():
    """LRN gets the LRP toolbox's treatment, relevance passed through unchanged: with LRP-0
    on a network without biases the input's relevance sums to the score."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w1", (6, 3, 3, 3)), ("w2", (6, 6, 3, 3)), ("fc", (4, 6)))]
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("LRN", ["r1"], ["n1"], name="lrn", size=3, alpha=1e-2, beta=0.75, bias=1.0),
        helper.make_node("Conv", ["n1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "lrn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    model = ox.load(proto)
    composite = lrp.Composite(LRP0, **EXACT)
    assert composite.assign(model).rules["lrn"] == lrp.Pass()
    x = rng.random((2, 3, 8, 8), dtype=np.float32)
    relevance = lrp.LRP(model, composite).attribute(x, target=2)
    np.testing.assert_allclose(relevance.reshape(2, -1).sum(1), model.predict(x)[:, 2], rtol=1e-4)
