"""``auto_pad="SAME_UPPER"/"SAME_LOWER"`` written as explicit pads at load, where the input's
size is known: onnx2torch converts no auto_pad (the legacy exporter writes
``padding="same"`` so), and the torch backend then runs what ONNX Runtime runs."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox

RNG = np.random.default_rng(0)


def _graph(mode: str, size: int, stride: int, kernel: int):
    """Conv(auto_pad) → MaxPool(auto_pad, 3, stride 2) → AveragePool(auto_pad, 2) → GAP → Gemm."""
    w = RNG.standard_normal((4, 3, kernel, kernel)).astype(np.float32)
    fc = RNG.standard_normal((5, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], auto_pad=mode, strides=[stride, stride]),
        helper.make_node("MaxPool", ["c"], ["m"], auto_pad=mode, kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("AveragePool", ["m"], ["a"], auto_pad=mode, kernel_shape=[2, 2]),
        helper.make_node("GlobalAveragePool", ["a"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["output"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("size,stride,kernel", [(15, 2, 3), (16, 2, 4), (13, 3, 3)])
def test_same_padding_is_written_out_and_both_backends_equal_onnx_runtime(mode, size, stride, kernel):
    """(ONNX Runtime refuses a dilated Conv with auto_pad, so none is compared here.)"""
    proto = _graph(mode, size, stride, kernel)
    x = RNG.standard_normal((2, 3, size, size)).astype(np.float32)
    expected = ort.InferenceSession(proto.SerializeToString()).run(None, {"input": x})[0]
    model = ox.load(proto)
    assert all(node.attributes.get("auto_pad") is None or node.attributes["auto_pad"].as_string() == "NOTSET"
               for node in model.ir.graph)
    for backend in ("onnxruntime", "torch"):
        got = model.backend(backend).forward(x)[model.output_name]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=backend)
    sal = ox.Saliency(model).attribute(x, target=1)
    assert sal.shape == x.shape and np.isfinite(sal).all() and sal.any()


def test_same_padding_of_an_input_of_unknown_size_is_left_to_the_runtime():
    proto = _graph("SAME_UPPER", 15, 2, 3)
    proto.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    model = ox.load(proto)
    conv = next(node for node in model.ir.graph if node.op_type == "Conv")
    assert conv.attributes["auto_pad"].as_string() == "SAME_UPPER"
    x = RNG.standard_normal((2, 3, 15, 15)).astype(np.float32)
    expected = ort.InferenceSession(proto.SerializeToString()).run(None, {"input": x})[0]
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("ceil_mode", [0, 1])
def test_an_average_pool_padded_unequally_at_the_two_ends_converts_to_torch(count_include_pad, ceil_mode):
    """Pads (0, 1) on H and (1, 0) on W, as TensorFlow's "same" padding is exported:
    onnx2torch refused them; the torch backend equals ONNX Runtime."""
    nodes = [helper.make_node("AveragePool", ["input"], ["a"], kernel_shape=[3, 2], strides=[2, 2],
                              pads=[0, 1, 1, 0], count_include_pad=count_include_pad, ceil_mode=ceil_mode),
             helper.make_node("ReduceMean", ["a"], ["output"], axes=[2, 3], keepdims=0)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 9, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = RNG.standard_normal((2, 3, 9, 8)).astype(np.float32)
    model = ox.load(proto)
    expected = model.backend("onnxruntime").forward(x, outputs=["a"])["a"]
    got = model.backend("torch").forward(x, outputs=["a"])["a"]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
