"""Layer coverage: grouped, depthwise, dilated and strided Convs, average pooling with
padding, Concat of branches, asymmetric padding, Gemm with alpha/beta/transB."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from lrp_models import export
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox
from onnxplain.methods import lrp

torch = pytest.importorskip("torch")


class _Branchy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, 6)

    def forward(self, x):
        a = torch.relu(self.stem(x))
        left = torch.relu(self.depthwise(a))
        right = torch.relu(self.grouped(a))
        return self.fc(torch.flatten(self.pool(torch.cat([left, right], 1)), 1))


@pytest.fixture(scope="module")
def branchy():
    torch.manual_seed(5)
    net = _Branchy().eval()
    x = np.random.default_rng(4).random((2, 3, 32, 32), dtype=np.float32)
    return net, export(net, torch.from_numpy(x)), x


def test_grouped_dilated_convs_concat_and_padded_average_pool_match_zennit(branchy):
    zennit = pytest.importorskip("zennit")
    from zennit.composites import EpsilonPlusFlat

    net, model, x = branchy
    xt = torch.from_numpy(x).requires_grad_(True)
    with EpsilonPlusFlat().context(net) as modified:
        out = modified(xt)
        (theirs,) = torch.autograd.grad(out, xt, torch.eye(6)[[1, 1]])
    theirs = theirs.numpy() * out[:, 1].detach().numpy().reshape(-1, 1, 1, 1)
    ours = lrp.LRP(model, lrp.EpsilonPlusFlat()).attribute(x, target=1)
    assert zennit is not None and np.abs(ours - theirs).max() <= 1e-3 * np.abs(theirs).max()


def test_lrp0_is_gradient_times_input_through_every_layer_kind(branchy):
    _, model, x = branchy
    composite = lrp.Composite([(("Conv", "Gemm", "MatMul"), lrp.LRP0())], stabilizer=0.0)
    relevance = lrp.LRP(model, composite).attribute(x, target=4)
    gxi = ox.InputXGradient(model).attribute(x, target=4)
    np.testing.assert_allclose(relevance, gxi, atol=1e-5 * np.abs(gxi).max())


def test_asymmetric_padding_and_gemm_attributes():
    rng = np.random.default_rng(6)

    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv", strides=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Transpose", ["r"], ["t"], name="transpose", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["f"], name="reshape"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", alpha=0.5, beta=2.0),
    ]
    inits = [
        init("w", 4, 3, 3, 3),
        init("b", 4),
        init("fc_w", 4 * 3 * 3, 3),
        init("fc_b", 3),
        numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "same",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 7, 7])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    model = ox.load(proto)
    x = rng.random((2, 3, 7, 7), dtype=np.float32)
    composite = lrp.Composite([(("Conv", "Gemm"), lrp.LRP0())], stabilizer=0.0)
    relevance = lrp.LRP(model, composite).attribute(x, target=0)
    gxi = ox.InputXGradient(model).attribute(x, target=0)
    np.testing.assert_allclose(relevance, gxi, atol=1e-4 * np.abs(gxi).max())
