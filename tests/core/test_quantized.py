"""Quantized models: ONNX Runtime runs them as written; gradients, LRP and CAM work on their
float simulation (onnxplain.core.quantized).

The references:

- a PyTorch module fake-quantized by hand (``torch.fake_quantize_per_tensor_affine`` on
  every activation, ``..._per_channel_affine`` on the weights) is what quantization-aware
  training runs; its TorchScript export is a QDQ graph. Captum's Saliency and Integrated
  Gradients on the module are the straight-through gradients our simulation must give,
  zennit's EpsilonPlusFlat on it (its weights dequantized into the layers) the LRP;
- ``onnxruntime.quantization.quantize_static`` writes the QDQ graph deployments ship. There
  we check that predictions are ONNX Runtime's on the file as written, that every method
  runs, and identities that survive quantization (CAM = h·w × Grad-CAM).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import max_rel_err, zennit_relevance
from torch import nn

import onnxplain as ox
from onnxplain.core.quantized import dequantize, quantize
from onnxplain.methods import lrp
from onnxplain.methods.gradient._modified import rectifier_nodes

ACT_SCALE, WEIGHT_BITS = 0.05, 8


def _fq(x: torch.Tensor, scale: float = ACT_SCALE, zero_point: int = 0) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, -128, 127)


class _FakeQuantCNN(nn.Module):
    """conv → ReLU → conv → ReLU → GAP → linear, every activation fake-quantized to int8.
    ``quantize_weights``: the convolutions' weights fake-quantized per output channel in
    forward (exported as integer constants behind Q → DQ); otherwise the layers hold the
    dequantized weights themselves, which zennit's rules need."""

    def __init__(self, quantize_weights: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1, stride=2)
        self.fc = nn.Linear(12, 5)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        # a module, not Tensor.mean: zennit gives module pooling its Norm rule, as we do
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.quantize_weights = quantize_weights
        for conv in (self.conv1, self.conv2):  # per output channel, as an observer would fix them
            conv.register_buffer("w_scale", (conv.weight.detach().abs().amax(dim=(1, 2, 3)) / 127).float())
            conv.register_buffer("w_zero", torch.zeros(conv.out_channels, dtype=torch.int32))
        if not quantize_weights:
            with torch.no_grad():
                for conv in (self.conv1, self.conv2):
                    conv.weight.copy_(self._weight(conv))

    @staticmethod
    def _weight(conv: nn.Conv2d) -> torch.Tensor:
        return torch.fake_quantize_per_channel_affine(conv.weight, conv.w_scale, conv.w_zero, 0, -128, 127)

    def _conv(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        if not self.quantize_weights:
            return conv(x)
        return nn.functional.conv2d(x, self._weight(conv), conv.bias, conv.stride, conv.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _fq(x, 1 / 64)
        x = _fq(self.relu1(self._conv(self.conv1, x)))
        x = _fq(self.relu2(self._conv(self.conv2, x)))
        x = _fq(self.pool(x).flatten(1))
        return self.fc(x)


def _export(net: nn.Module, x: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (x,), buffer, dynamo=False, opset_version=13, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "n"}, "output": {0: "n"}})
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).random((3, 3, 16, 16), dtype=np.float32)


@pytest.fixture(scope="module", params=[True, False], ids=["int8-weights", "float-weights"])
def qat(request, images):
    net = _FakeQuantCNN(quantize_weights=request.param).eval()
    proto = onnx.load_from_string(_export(net, torch.from_numpy(images)))
    return net, proto


def test_a_fake_quantized_export_is_quantized_and_its_simulation_folds_the_weights(qat):
    net, proto = qat
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 4
    model = ox.load(proto)
    assert model.quantized
    sim_ops = [n.op_type for n in model.ir.graph]
    # weights: no Q/DQ left behind constants; activations: the four pairs stay
    assert sim_ops.count("QuantizeLinear") == sim_ops.count("DequantizeLinear") == 4
    for node in model.ir.graph:
        if node.op_type == "Conv":
            assert node.inputs[1].const_value is not None
    # layers() lists float maps only: never the rounded integers
    assert all(model.ir.graph.node(s.node).op_type != "QuantizeLinear" for s in model.layers())


def test_the_simulation_computes_what_the_fake_quantized_module_computes(qat, images):
    net, proto = qat
    model = ox.load(proto)
    with torch.no_grad():
        ref = net(torch.from_numpy(images)).numpy()
    # bit-level agreement is not promised (torch rounds x·(1/s), ONNX x/s): 1e-5
    assert max_rel_err(model.backend("torch").predict(images), ref) < 1e-5
    # ONNX Runtime's integer kernels cross a rounding boundary here and there (module doc)
    assert max_rel_err(model.predict(images), ref) < 0.05


@pytest.mark.parametrize("method", ["Saliency", "IntegratedGradients", "GuidedBackprop"])
def test_gradients_are_the_straight_through_gradients_of_captum(qat, images, method):
    captum_attr = pytest.importorskip("captum.attr")
    net, proto = qat
    model = ox.load(proto)
    x = torch.from_numpy(images).requires_grad_(True)
    kwargs = {"IntegratedGradients": {"n_steps": 16}, "Saliency": {"abs": False}}.get(method, {})
    ref = getattr(captum_attr, method)(net).attribute(x, target=2, **kwargs).detach().numpy()
    ours = getattr(ox, method)(model).attribute(images, target=2, **kwargs)
    assert np.abs(ref).max() > 0
    assert max_rel_err(ours, ref) < 1e-4


def test_lrp_passes_relevance_through_the_rounding_as_zennit_through_fake_quantize(images):
    zennit = pytest.importorskip("zennit")
    from zennit.composites import EpsilonPlusFlat

    net = _FakeQuantCNN(quantize_weights=False).eval()
    model = ox.load(onnx.load_from_string(_export(net, torch.from_numpy(images))))
    ref = zennit_relevance(EpsilonPlusFlat(), net, images, target=2, classes=5)
    ours = lrp.LRP(model, lrp.EpsilonPlusFlat()).attribute(images, target=2)
    assert zennit is not None and np.abs(ref).max() > 0
    assert max_rel_err(ours, ref) < 1e-3


# -- a model quantized by ONNX Runtime ----------------------------------------------------------


class _CNN(nn.Module):
    """conv-BN-ReLU, max pooling, a residual block, global average pooling, linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.fc(self.pool(self.head(x)).flatten(1))


FORMATS = ("qdq", "qoperator", "dynamic")


@pytest.fixture(scope="module")
def ort_quantized(tmp_path_factory, images):
    """The float CNN quantized by ONNX Runtime in its three formats (paths by format)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folder = tmp_path_factory.mktemp("quantized")
    # calibrated on the test images too, so that none of their activations saturates
    calibration = np.concatenate([images, np.random.default_rng(2).random((5, 3, 16, 16), dtype=np.float32)])
    (folder / "float.onnx").write_bytes(_export(_CNN().eval(), torch.from_numpy(images)))
    quant_pre_process(str(folder / "float.onnx"), str(folder / "pre.onnx"))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.batches, None)

    # reduce_range: 7-bit weights, which no CPU's integer kernels saturate (onnxplain.core.quantized:
    # on an AVX2-only CPU, the 8-bit QDQ model's CAM on ONNX Runtime moved 12 % off the simulation)
    for name, form in (("qdq", QuantFormat.QDQ), ("qoperator", QuantFormat.QOperator)):
        quantize_static(str(folder / "pre.onnx"), str(folder / f"{name}.onnx"), Reader(), quant_format=form,
                        per_channel=True, reduce_range=True)
    quantize_dynamic(str(folder / "pre.onnx"), str(folder / "dynamic.onnx"))
    return {name: folder / f"{name}.onnx" for name in FORMATS}


def _load(paths: dict, form: str) -> ox.Model:
    # ONNX Runtime writes QOperator's QLinearAdd and QLinearGlobalAveragePool in its own domain
    return ox.load(paths[form], allowed_domains=["com.microsoft"] if form == "qoperator" else ())


def test_the_three_formats_hold_what_they_are_named_for(ort_quantized):
    ops = {form: {n.op_type for n in onnx.load(str(path)).graph.node} for form, path in ort_quantized.items()}
    assert "QLinearConv" not in ops["qdq"] and "DequantizeLinear" in ops["qdq"]
    assert {"QLinearConv", "QLinearAdd", "QLinearGlobalAveragePool"} <= ops["qoperator"]
    assert {"ConvInteger", "DynamicQuantizeLinear"} <= ops["dynamic"]
    for form in FORMATS:  # each simulation is standard float operators and roundings
        model = _load(ort_quantized, form)
        assert model.quantized
        integer_ops = {"QLinearConv", "QLinearAdd", "ConvInteger", "MatMulInteger", "QGemm"}
        assert not {n.op_type for n in model.ir.graph} & integer_ops
        # the static quantizer fuses each ReLU into a rounding whose range starts at 0; the
        # simulation puts the four back, so guided backpropagation and LRP find them
        assert len(rectifier_nodes(model)) == 4, form


@pytest.mark.parametrize("form", FORMATS)
def test_predictions_are_onnx_runtimes_on_the_file_as_written(ort_quantized, images, tmp_path, form):
    model = _load(ort_quantized, form)
    session = ort.InferenceSession(str(ort_quantized[form]), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(model.predict(images), session.run(None, {"input": images})[0])
    # and a saved model is the graph as written, not its simulation
    saved = onnx.load(str(model.save(tmp_path / "again.onnx")))
    assert [n.op_type for n in saved.graph.node] == [n.op_type for n in model.runtime_ir.graph]
    assert _load({form: tmp_path / "again.onnx"}, form).quantized


@pytest.mark.parametrize("form", FORMATS)
def test_the_torch_simulation_is_close_to_onnx_runtimes_integer_kernels(ort_quantized, images, form):
    model = _load(ort_quantized, form)
    ours, ref = model.backend("torch").predict(images), model.predict(images)
    # rounding boundaries crossed differently by float and integer arithmetic (module doc)
    assert max_rel_err(ours, ref) < 0.05
    np.testing.assert_array_equal(ours.argmax(1), ref.argmax(1))


def test_the_qoperator_simulation_computes_what_the_qdq_one_does(ort_quantized, images):
    """The same calibration in two formats: one computation, so one gradient."""
    qdq, qop = _load(ort_quantized, "qdq"), _load(ort_quantized, "qoperator")
    assert max_rel_err(qop.backend("torch").predict(images), qdq.backend("torch").predict(images)) < 1e-6
    ref = ox.Saliency(qdq).attribute(images, target=3, abs=False)
    assert np.abs(ref).max() > 0
    assert max_rel_err(ox.Saliency(qop).attribute(images, target=3, abs=False), ref) < 1e-5


@pytest.mark.parametrize("form", FORMATS)
def test_cam_reads_the_dequantized_head_and_equals_hw_times_gradcam(ort_quantized, images, form):
    model = _load(ort_quantized, form)
    head = model.classifier_head()
    assert head is not None and head.rounded and head.weight.shape == (4, 16)
    kwargs = {"target": 1, "relu_attributions": False, "upsample": False}
    # on the simulation both: Grad-CAM's weights are W / (h·w) through the rounding of the
    # pooled features (straight-through, none saturates)
    cam = ox.CAM(model, backend="torch").attribute(images, **kwargs)
    grad = ox.GradCAM(model).attribute(images, **kwargs)
    h, w = cam.shape[-2:]
    assert max_rel_err(cam, h * w * grad) < 1e-5
    # on ONNX Runtime, the feature map is its integer kernels' (module doc)
    assert max_rel_err(ox.CAM(model).attribute(images, **kwargs), cam) < 0.05


@pytest.mark.parametrize("form", FORMATS)
@pytest.mark.parametrize("method", ["Saliency", "GuidedBackprop", "GradCAM", "LRP", "ScoreCAM",
                                    "AblationCAM", "Occlusion", "KernelShap"])
def test_every_family_explains_a_model_quantized_by_onnx_runtime(ort_quantized, images, method, form):
    model = _load(ort_quantized, form)
    kwargs = {"n_samples": 32} if method == "KernelShap" else {}
    kwargs.update({"sliding_window_shapes": (3, 4, 4)} if method == "Occlusion" else {})
    out = getattr(ox, method)(model).attribute(images, target=1, **kwargs)
    out = np.asarray(out)
    assert out.shape[0] == 3 and np.isfinite(out).all() and np.abs(out).max() > 0


def _integer_scores(path, folder):
    """The model at ``path`` without its last ``DequantizeLinear``: it returns the integer scores."""
    proto = onnx.load(str(path))
    last = proto.graph.node[-1]
    assert last.op_type == "DequantizeLinear" and last.output[0] == proto.graph.output[0].name
    zero = next(t for t in proto.graph.initializer if t.name == last.input[2])
    producer = next(n for n in proto.graph.node if last.input[0] in n.output)
    producer.output[:] = [last.output[0] if name == last.input[0] else name for name in producer.output]
    proto.graph.node.remove(last)
    proto.graph.output[0].type.tensor_type.elem_type = zero.data_type
    onnx.checker.check_model(proto)
    onnx.save(proto, str(folder / path.name))
    scale = next(t for t in proto.graph.initializer if t.name == last.input[1])
    return folder / path.name, onnx.numpy_helper.to_array(scale), onnx.numpy_helper.to_array(zero)


@pytest.mark.parametrize("form", ["qdq", "qoperator"])
def test_a_model_that_returns_integer_scores_is_explained_on_the_scores_they_stand_for(
        ort_quantized, images, tmp_path, form):
    """The file without its last DequantizeLinear returns 8-bit scores. Loaded, it returns
    (q − zero point)·scale, what the file with it returns, and every family explains it as
    that file: one computation."""
    path, scale, zero = _integer_scores(ort_quantized[form], tmp_path)
    q = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": images})[0]
    assert q.dtype in (np.int8, np.uint8)  # int8 with this ONNX Runtime's defaults
    model, full = _load({form: path}, form), _load(ort_quantized, form)
    got = model.predict(images)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, (q.astype(np.float32) - np.float32(zero)) * scale)
    np.testing.assert_array_equal(got, full.predict(images))
    kwargs = {"Occlusion": {"sliding_window_shapes": (3, 4, 4)}, "KernelShap": {"n_samples": 32}}
    for method in ("Saliency", "GradCAM", "LRP", "Occlusion", "KernelShap"):
        ours = getattr(ox, method)(model).attribute(images, target=1, **kwargs.get(method, {}))
        want = getattr(ox, method)(full).attribute(images, target=1, **kwargs.get(method, {}))
        assert np.abs(want).max() > 0, method
        np.testing.assert_allclose(ours, want, rtol=1e-6, atol=1e-7 * np.abs(want).max(), err_msg=method)


def test_integer_scores_behind_a_reshape_are_dequantized_with_the_rounding_they_hold():
    """float CNN → Gemm → QuantizeLinear (int8, scale 0.05) → Reshape, written by hand. The
    scores are ONNX Runtime's integers dequantized; Saliency is the float model's gradient
    (the rounding's straight-through gradient, no score saturates); an occluded patch
    changes the score by what the integers say."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    consts = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3,
              "fc": rng.standard_normal((5, 4)).astype(np.float32),
              "s": np.array(0.05, np.float32), "zp": np.array(3, np.int8), "shape": np.array([-1, 5])}

    def build(quantized: bool) -> onnx.ModelProto:
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["c"], ["r"]),
                 helper.make_node("GlobalAveragePool", ["r"], ["g"]),
                 helper.make_node("Flatten", ["g"], ["f"]),
                 helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
        if quantized:
            nodes += [helper.make_node("QuantizeLinear", ["y", "s", "zp"], ["q"]),
                      helper.make_node("Reshape", ["q", "shape"], ["scores"])]
        else:
            nodes += [helper.make_node("Reshape", ["y", "shape"], ["scores"])]
        kind = TensorProto.INT8 if quantized else TensorProto.FLOAT
        x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
        graph = helper.make_graph(nodes, "g", [x_info],
                                  [helper.make_tensor_value_info("scores", kind, ["N", 5])],
                                  [numpy_helper.from_array(v, k) for k, v in consts.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    file = build(True)
    session = ort.InferenceSession(file.SerializeToString(), providers=["CPUExecutionProvider"])
    q = session.run(None, {"x": x})[0]
    assert q.dtype == np.int8 and np.abs(q).max() < 127  # none saturates
    model, plain = ox.load(file), ox.load(build(False))
    np.testing.assert_array_equal(model.predict(x), (q.astype(np.float32) - 3) * np.float32(0.05))
    assert np.abs(model.predict(x) - plain.predict(x)).max() <= 0.025 + 1e-6  # half a step
    ref = ox.Saliency(plain).attribute(x, target=2, abs=False)
    ours = ox.Saliency(model).attribute(x, target=2, abs=False)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)
    occlusion = ox.Occlusion(model).attribute(x, target=2, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4))
    hidden = x.copy()
    hidden[:, :, :4, :4] = 0
    by_hand = (q[:, 2].astype(np.float32) - session.run(None, {"x": hidden})[0][:, 2]) * np.float32(0.05)
    np.testing.assert_allclose(occlusion[:, 0, 0, 0], by_hand, rtol=1e-6, atol=1e-7)


def test_quantize_and_dequantize_follow_the_onnx_definitions():
    x = np.array([-1.0, -0.25, 0.125, 0.375, 100.0], dtype=np.float32)
    # round half to even: 0.125 / 0.25 = 0.5 → 0, 0.375 / 0.25 = 1.5 → 2; saturate at 127
    q = quantize(x, np.float32(0.25), np.int8(0), np.int8)
    np.testing.assert_array_equal(q, [-4, -1, 0, 2, 127])
    np.testing.assert_array_equal(dequantize(q, np.float32(0.25), np.int8(0)), [-1, -0.25, 0, 0.5, 31.75])
    w = np.arange(12, dtype=np.int8).reshape(3, 4)
    per_row = dequantize(w, np.array([1, 2, 4], np.float32), np.array([0, 1, 2], np.int8), axis=0)
    np.testing.assert_array_equal(per_row, (w - np.array([[0], [1], [2]])) * np.array([[1], [2], [4]]))
    assert per_row.dtype == np.float32


def test_the_rounding_has_pytorch_fake_quantizes_straight_through_gradient():
    from onnxplain.backends.torch_converters import DequantizeLinear, QuantizeLinear

    # inside, on both ends of the range (a ReLU's zeros land on the lower one), and outside
    x = torch.tensor([-0.3, 0.0, 0.26, 12.76, 12.8, 20.0], requires_grad=True)
    ours = DequantizeLinear(axis=1)(QuantizeLinear(0, 255, axis=1)(x, torch.tensor(0.05), torch.tensor(0)),
                                    torch.tensor(0.05), torch.tensor(0))
    (ours_grad,) = torch.autograd.grad(ours.sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    ref = torch.fake_quantize_per_tensor_affine(x2, 0.05, 0, 0, 255)
    ref.sum().backward()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-7)
    torch.testing.assert_close(ours_grad, x2.grad, rtol=0, atol=0)
    assert ours_grad.tolist() == [0, 1, 1, 1, 0, 0]  # 12.76 rounds to 255, 12.8 to 256


def test_dynamic_quantization_is_onnx_runtimes_with_a_straight_through_gradient():
    from onnxplain.backends.torch_converters import DynamicQuantizeLinear

    x = np.random.default_rng(3).normal(0.4, 1.0, (2, 50)).astype(np.float32)
    node = onnx.helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    info = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [node], "g", [info("x", onnx.TensorProto.FLOAT, x.shape)],
        [info("y", onnx.TensorProto.UINT8, x.shape), info("s", onnx.TensorProto.FLOAT, []),
         info("z", onnx.TensorProto.UINT8, [])])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = session.run(None, {"x": x})
    xt = torch.from_numpy(x).requires_grad_(True)
    y, scale, zero_point = DynamicQuantizeLinear()(xt)
    np.testing.assert_array_equal(y.detach().numpy(), ref[0])
    assert scale.item() == pytest.approx(float(ref[1]), rel=1e-7) and zero_point.item() == ref[2]
    (grad,) = torch.autograd.grad(y.sum(), xt)
    np.testing.assert_allclose(grad.numpy(), 1 / scale.item(), rtol=1e-6)  # the range covers x


def test_incremental_occlusion_of_a_quantized_model_makes_full_passes(ort_quantized, images):
    """Its sub-models would run the float simulation, and the drops mix two computations."""
    model = _load(ort_quantized, "qdq")
    kwargs = {"target": 1, "sliding_window_shapes": (3, 4, 4), "strides": (3, 4, 4)}
    full = ox.Occlusion(model).attribute(images, **kwargs)
    np.testing.assert_array_equal(ox.Occlusion(model).attribute(images, incremental=True, **kwargs), full)


def test_the_command_line_loads_a_qoperator_model_with_its_domain_allowed(ort_quantized, capsys):
    import json

    from onnxplain.cli import main

    path = str(ort_quantized["qoperator"])
    assert main(["inspect", path, "--json"]) != 0  # ONNX Runtime's domain is refused by default
    capsys.readouterr()
    assert main(["inspect", path, "--json", "--allow-domain", "com.microsoft"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["quantized"] and info["head"]["channels"] == 16
    assert "saliency" in info["backends"]["torch"]["methods"] and info["backends"]["torch"]["status"] == "ok"
    # one float tensor per dequantized activation, named after it
    assert info["auto_layer"].endswith("_dequantized")


@pytest.fixture(scope="module", params=FORMATS)
def quantized_shapes(tmp_path_factory, request):
    """The bundled shapes CNN (a squeeze-and-excitation gate: Sigmoid → Mul) in each format
    (QOperator: its pooling and product QLinearGlobalAveragePool and QLinearMul; dynamic:
    its convolutions ConvInteger)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    from onnxplain.examples import shapes_model_path

    images = ox.examples.shapes_dataset(8, seed=3)[0]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{"input": images[i:i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self.rows, None)

    path = tmp_path_factory.mktemp("shapes") / "quantized.onnx"
    if request.param in ("qdq", "qoperator"):
        form = QuantFormat.QDQ if request.param == "qdq" else QuantFormat.QOperator
        quantize_static(str(shapes_model_path()), str(path), Reader(), quant_format=form)
    else:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(shapes_model_path()), str(path.with_name("pre.onnx")))
        quantize_dynamic(str(path.with_name("pre.onnx")), str(path))
        assert "ConvInteger" in {n.op_type for n in onnx.load(str(path)).graph.node}
    return _load({request.param: path}, request.param), images[:3]


def test_gates_are_found_through_their_rounding(quantized_shapes):
    model, images = quantized_shapes
    float_model = ox.load(ox.examples.shapes_model_path())
    kinds = [g.kind for g in model.attention_gates()]
    assert kinds == [g.kind for g in float_model.attention_gates()] == ["se"]
    maps = ox.AttentionMaps(model).attribute(images)
    assert all(np.isfinite(m).all() for m in maps.values())
    # LRP's gate rule finds the rounded Sigmoid and gives the feature map the relevance
    relevance = lrp.LRP(model, lrp.EpsilonPlusFlat()).attribute(images, target=1)
    assert np.isfinite(relevance).all() and np.abs(relevance).max() > 0


class _SiLUGate(nn.Module):
    """EfficientNet's gate: squeeze, 1×1 conv, SiLU (x·σ(x)), 1×1 conv, σ, product."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.reduce, self.expand = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.expand(nn.functional.silu(self.reduce(f.mean(dim=(2, 3), keepdim=True)))))
        return self.fc((f * gate).mean(dim=(2, 3)))


@pytest.mark.parametrize("form", ["qdq", "qoperator"])
def test_a_gate_with_a_rounded_silu_inside_is_found(tmp_path, images, form):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    (tmp_path / "float.onnx").write_bytes(_export(_SiLUGate().eval(), torch.from_numpy(images)))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{"input": images[i:i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self.rows, None)

    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "q.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ if form == "qdq" else QuantFormat.QOperator)
    model = _load({form: tmp_path / "q.onnx"}, form)
    assert [g.kind for g in model.attention_gates()] == ["se"]
