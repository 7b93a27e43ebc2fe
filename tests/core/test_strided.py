"""Identity ``as_strided`` gathers of dynamo exports are dropped at load; others stay."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox


class _PermutedPool(torch.nn.Module):
    """Swin's head in small: a channels-last LayerNorm permuted back, adaptive average
    pooling, flatten, linear. torch's dynamo exporter writes the flatten of the pooled,
    permuted map as a Gather with indices from Range(batch size)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.norm = torch.nn.LayerNorm(8)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture(scope="module")
def exported():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    program = torch.onnx.export(_PermutedPool().eval(), (x,), dynamo=True,
                                dynamic_shapes={"x": {0: "batch"}}, verbose=False)
    return program.model_proto, x.numpy()


def test_the_identity_gather_is_dropped_and_the_head_recognised(exported):
    proto, x = exported
    assert "Gather" in {n.op_type for n in proto.graph.node}  # the export's habit
    model = ox.load(proto)
    ops = {n.op_type for n in model.ir.graph}
    assert "Gather" not in ops and "Range" not in ops
    for batch in (1, 3):
        xb = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        ref = ort.InferenceSession(proto.SerializeToString()).run(None, {proto.graph.input[0].name: xb})[0]
        np.testing.assert_array_equal(model.predict(xb), ref)
    # the GAP → linear head is visible again: CAM runs, and equals h·w × Grad-CAM there
    assert model.classifier_head() is not None
    cam = ox.CAM(model).attribute(x, target=1, upsample=False, relu_attributions=False)
    grad = ox.GradCAM(model, layer=ox.CAM(model).layer.name).attribute(
        x, target=1, upsample=False, relu_attributions=False)
    np.testing.assert_allclose(cam / 64, grad, atol=1e-5 * np.abs(grad).max())


@pytest.mark.parametrize("order, dropped", [(range(6), True), (range(5, -1, -1), False)])
def test_only_a_gather_in_the_tensors_own_order_is_dropped(order, dropped):
    """Gather(Reshape(a, [-1]), indices) of a (1, 1, 2, 3) map: dropped for 0..5 in the
    map's shape, kept for any other order; the outputs equal the original graph's."""
    init = [numpy_helper.from_array(np.array(list(order), np.int64).reshape(1, 1, 2, 3), "idx"),
            numpy_helper.from_array(np.array([-1], np.int64), "flat"),
            numpy_helper.from_array(np.full((1, 1, 1, 1), 2.0, np.float32), "w"),
            numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3), "ramp"),
            numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["a"]),
         helper.make_node("Reshape", ["a", "flat"], ["f"]),
         helper.make_node("Gather", ["f", "idx"], ["g"]),
         helper.make_node("Mul", ["g", "ramp"], ["m"]),
         helper.make_node("ReduceSum", ["m", "axes"], ["output"], keepdims=0)],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 2, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1])], init)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(proto)
    model = ox.load(proto, dynamic_batch=False)
    assert ("Gather" not in {n.op_type for n in model.ir.graph}) == dropped
    x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    ref = ort.InferenceSession(proto.SerializeToString()).run(None, {"input": x})[0]
    np.testing.assert_array_equal(model.predict(x), ref)
