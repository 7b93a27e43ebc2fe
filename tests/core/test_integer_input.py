"""Models that take integer images (uint8 and kin) and only turn them into floats: the
input becomes float32 (``canonical.float_input``), so gradient methods and perturbations
run, with the same results on integer values."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import max_rel_err
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox

RNG = np.random.default_rng(0)


class _Preprocessing(torch.nn.Module):
    """uint8 images → float, scaled and normalised inside the model → a small CNN; ``body``
    alone is the same function of the float pixel values, for the references."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = _Body()

    def forward(self, x):
        return self.body(x.float())


class _Body(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.Conv2d(6, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                       torch.nn.Linear(8, 4))

    def forward(self, x):
        return self.net((x / 255 - 0.5) / 0.25)


@pytest.fixture(scope="module", params=["dynamo", "legacy"])
def uint8_model(request):
    net = _Preprocessing().eval()
    x = torch.from_numpy(RNG.integers(0, 256, (2, 3, 16, 16), dtype=np.uint8))
    return net, ox.adapters.torch.export(net, x, exporter=request.param)


def test_a_uint8_input_becomes_float_and_predicts_the_same(uint8_model):
    net, model = uint8_model
    assert model.converted_from == "uint8" and model.input_spec.dtype == np.float32
    x = RNG.integers(0, 256, (3, 3, 16, 16), dtype=np.uint8)
    want = net(torch.from_numpy(x)).detach().numpy()
    for backend in ("onnxruntime", "torch"):  # integer arrays are taken as they are, and floats
        assert max_rel_err(model.backend(backend).predict(x), want) < 1e-5
        assert max_rel_err(model.backend(backend).predict(x.astype(np.float32)), want) < 1e-5


def test_a_saved_uint8_model_still_takes_integer_arrays(uint8_model, tmp_path):
    net, model = uint8_model
    again = ox.load(model.save(tmp_path / "uint8.onnx"))
    assert again.converted_from == "uint8"
    x = RNG.integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    assert max_rel_err(again.predict(x), net(torch.from_numpy(x)).detach().numpy()) < 1e-5


def test_gradients_and_perturbations_equal_captums_on_the_float_function(uint8_model):
    from captum.attr import Occlusion, Saliency

    net, model = uint8_model
    x = RNG.integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    xt = torch.from_numpy(x.astype(np.float32))
    ref = Saliency(net.body).attribute(xt.clone().requires_grad_(True), target=1, abs=False).numpy()
    assert max_rel_err(ox.Saliency(model).attribute(x, target=1, abs=False), ref) < 1e-4
    windows = {"sliding_window_shapes": (3, 4, 4), "strides": (3, 4, 4)}
    ref = Occlusion(net.body).attribute(xt, target=1, **windows).numpy()
    ours = ox.Occlusion(model).attribute(x, target=1, **windows, show_progress=False)
    assert max_rel_err(ours, ref) < 1e-4


def _dequantized_input(read_by: str = "DequantizeLinear"):
    """uint8 input → DequantizeLinear (per tensor) → Conv → Relu → GAP → Flatten → Gemm, as a
    fully quantized model begins; ``read_by="Add"``: the input is also added to a constant."""
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    fc = RNG.standard_normal((3, 4)).astype(np.float32)
    nodes = [helper.make_node("DequantizeLinear", ["input", "s", "z"], ["x"], name="dq"),
             helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["out"], transB=1)]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc"),
             numpy_helper.from_array(np.float32(0.02), "s"), numpy_helper.from_array(np.uint8(128), "z")]
    if read_by == "Add":
        nodes.insert(0, helper.make_node("Add", ["input", "z"], ["unused"]))
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("input", TensorProto.UINT8, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_a_dequantized_uint8_input_becomes_float_and_both_backends_equal_onnx_runtime():
    proto = _dequantized_input()
    x = RNG.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    want = ort.InferenceSession(proto.SerializeToString()).run(None, {"input": x})[0]
    model = ox.load(proto)
    assert model.converted_from == "uint8"
    for backend in ("onnxruntime", "torch"):
        assert max_rel_err(model.backend(backend).predict(x), want) < 1e-5
    assert np.isfinite(ox.IntegratedGradients(model).attribute(x, target=1, n_steps=8)).all()


def test_an_integer_input_read_otherwise_is_refused():
    with pytest.raises(ox.ModelLoadError, match="floating-point input"):
        ox.load(_dequantized_input(read_by="Add"))
