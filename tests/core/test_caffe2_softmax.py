"""A Caffe2-era classifier (the ONNX model zoo's SqueezeNet 1.0, DenseNet-121, ...): opset 8,
weights listed as graph inputs (IR 3), a 1×1 convolution classifier, ReLU and global
average pooling giving (N, K, 1, 1) scores, and a Softmax over axis 1 of that 4-D tensor,
which the upgrade to opset 13 writes as Flatten → Softmax → Reshape.

The logits are found through the Reshape, so every method explains what it explains on
the same graph without its Softmax: saliency, LRP (which had no rule for the Softmax and
refused) and CAM (which refused the probabilities as not linear in the pooled maps) to
1e-6 of the maximum, and Score-CAM takes the output as the probabilities it already is.
"""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox

RNG = np.random.default_rng(0)
WEIGHTS = {
    "conv_w": RNG.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
    "conv_b": RNG.standard_normal(8).astype(np.float32) * 0.3,
    "cls_w": RNG.standard_normal((10, 8, 1, 1)).astype(np.float32) * 0.3,
    "cls_b": RNG.standard_normal(10).astype(np.float32) * 0.3 + 0.5,
}


def _caffe2_classifier(softmax: bool):
    nodes = [
        helper.make_node("Conv", ["data_0", "conv_w", "conv_b"], ["conv"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[3, 3], strides=[2, 2],
                         pads=[0, 0, 1, 1]),
        helper.make_node("Dropout", ["pool"], ["drop"], ratio=0.5),
        helper.make_node("Conv", ["drop", "cls_w", "cls_b"], ["cls"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["cls"], ["cls_relu"]),
        helper.make_node("GlobalAveragePool", ["cls_relu"], ["pool10"]),
    ]
    last = "pool10"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["pool10"], ["softmaxout_1"], axis=1))
        last = "softmaxout_1"
    weights = [numpy_helper.from_array(v, k) for k, v in WEIGHTS.items()]
    graph = helper.make_graph(
        nodes, "squeezenet_like",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, ["N", 3, 16, 16])]
        + [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in WEIGHTS.items()],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", 10, 1, 1])], weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    proto.ir_version = 3
    return proto


@pytest.fixture(scope="module")
def models():
    return ox.load(_caffe2_classifier(True)), ox.load(_caffe2_classifier(False))


def test_the_logits_are_found_through_the_reshape_after_the_softmax(models):
    model, twin = models
    assert [n.op_type for n in model.ir.graph][-3:] == ["Flatten", "Softmax", "Reshape"]
    assert model.output_softmax() == "Softmax" and model.logits() is not None
    assert twin.logits() is None
    x = RNG.standard_normal((2, 3, 16, 16)).astype(np.float32)
    logits = model.backend("onnxruntime").forward(x, outputs=[model.logits()])[model.logits()]
    np.testing.assert_allclose(logits.reshape(2, 10), twin.predict(x).reshape(2, 10), rtol=1e-6)


@pytest.mark.parametrize("method", ["saliency", "lrp", "cam", "scorecam"])
def test_methods_explain_the_logits_as_on_the_graph_without_its_softmax(models, method):
    model, twin = models
    x = RNG.standard_normal((2, 3, 16, 16)).astype(np.float32)
    run = {
        "saliency": lambda m: ox.Saliency(m).attribute(x, target=3),
        "lrp": lambda m: ox.LRP(m).attribute(x, target=3),
        "cam": lambda m: ox.CAM(m).attribute(x, target=3),
        "scorecam": lambda m: ox.ScoreCAM(m).attribute(x, target=3),
    }[method]
    ours, expected = run(model), run(twin)
    assert np.abs(expected).max() > 0
    assert np.abs(ours - expected).max() <= 1e-6 * np.abs(expected).max()


def test_a_softmax_right_at_the_output_is_found_whatever_its_batch_dim_is_called():
    """skl2onnx's MLP: an unnamed batch dim (shape inference's ``unk__0``) on a final Softmax."""
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w"], ["z"]),
         helper.make_node("Softmax", ["z"], ["p"], axis=1)],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 4, 4])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 5])],
        [numpy_helper.from_array(RNG.standard_normal((48, 5)).astype(np.float32), "w")])
    model = ox.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert model.logits() == "z" and model.output_softmax() == "Softmax"
