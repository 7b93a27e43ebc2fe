"""What the adapters share: lazy imports that name the pip extra, the check of an export
against the original, and explicit padding for exporters that emit auto_pad=SAME."""

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox
from onnxplain.adapters import FrameworkNotInstalledError
from onnxplain.adapters._common import explicit_pads, verified_model

X = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)


def conv_model(auto_pad: str, stride: int) -> onnx.ModelProto:
    w = numpy_helper.from_array(
        np.random.default_rng(1).standard_normal((4, 3, 4, 4)).astype(np.float32), "w"
    )
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], auto_pad=auto_pad, strides=[stride, stride]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 9, 9])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("adapter", "module", "extra"),
    [
        ("keras", "keras", "keras"),
        ("jax", "jax2onnx", "jax"),
        ("tensorflow", "tf2onnx", "tensorflow"),
        ("sklearn", "skl2onnx", "sklearn"),
    ],
)
def test_a_missing_framework_names_the_pip_extra(monkeypatch, adapter, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    export = getattr(ox.adapters, adapter).export  # the adapter itself imports without it
    args = (object(), (3, 4, 4), X) if adapter == "sklearn" else (object(), X)
    with pytest.raises(FrameworkNotInstalledError, match=rf"pip install onnxplain\[{extra}\]"):
        export(*args)
    assert issubclass(FrameworkNotInstalledError, (ox.OnnxplainError, ImportError))


def test_an_export_that_disagrees_with_the_original_is_refused_with_the_difference():
    proto = conv_model("NOTSET", 1)
    expected = ox.load(proto).predict(X)
    assert verified_model(proto, X, expected, 1e-5, "test").source == "<test export>"
    with pytest.raises(ox.ExportError, match=r"max \|Δ\| = 0\.5"):
        verified_model(proto, X, expected + 0.5, 1e-4, "test")
    with pytest.raises(ox.ExportError, match="shape"):
        verified_model(proto, X, expected[:, :2], 1e-4, "test")


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("stride", [1, 2])
def test_explicit_pads_compute_what_auto_pad_computes(auto_pad, stride):
    proto = conv_model(auto_pad, stride)
    expected = ox.load(proto).predict(X)  # ONNX Runtime implements auto_pad
    fixed = explicit_pads(conv_model(auto_pad, stride))
    conv = fixed.graph.node[0]
    assert "auto_pad" not in {a.name for a in conv.attribute}
    np.testing.assert_allclose(ox.load(fixed).predict(X), expected, atol=1e-5)
    # and the gradient backend, which lacks auto_pad, now converts the model
    assert ox.Saliency(ox.load(fixed)).attribute(X[:1], target=0).shape == (1, 3, 9, 9)


def test_an_adapters_check_computes_the_export_on_the_cpu(small_model, images, monkeypatch):
    """Where the default backend runs on a GPU (ONNX Runtime's CUDA provider computes in TF32
    by default, about 1e-3 off), the check runs the export on the CPU; where it runs on the
    CPU, its own session serves and no second one is built."""
    from onnxplain.adapters._common import predict_on_cpu

    expected = small_model.predict(images)
    sessions = len(small_model._backends)
    np.testing.assert_array_equal(predict_on_cpu(small_model, images), expected)
    assert len(small_model._backends) == sessions

    class OnGpu:
        device = "cuda"

    real = small_model.backend
    asked = []

    def backend(name="onnxruntime", **options):
        asked.append(options)
        return real(name, **options) if options else OnGpu()

    monkeypatch.setattr(small_model, "backend", backend)
    np.testing.assert_array_equal(predict_on_cpu(small_model, images), expected)
    assert {"device": "cpu"} in asked
