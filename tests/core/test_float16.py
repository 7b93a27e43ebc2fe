"""float16, bfloat16 and float64 exports are computed in float32, and opsets 9 to the newest load and
explain.

A float16 model's weights are the float32 model's rounded to float16 (relative error up
to 2^-11 ≈ 4.9e-4 per weight). Upcast to float32 they are exact, so every method on the
float16 export equals the method on a float32 export of the rounded weights (1e-5). Against
the original float32 model, outputs, Grad-CAM and Occlusion maps agree within
``F16_RTOL`` (max |Δ| / max |ref|); input gradients do not always (a ReLU or max-pool
switch that flips under the weight rounding moves gradient between pixels: 9.6e-2 on
one of our inputs), so Saliency is compared with the rounded weights only.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import max_rel_err, small_cnn

import onnxplain as ox

F16_RTOL = 1e-2


def _export(net: torch.nn.Module, x: torch.Tensor, opset: int | None = None) -> onnx.ModelProto:
    buffer = io.BytesIO()
    kwargs = {"opset_version": opset} if opset is not None else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            (x,),
            buffer,
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            **kwargs,
        )
    return onnx.load_from_string(buffer.getvalue())


def _rounded_cnn() -> torch.nn.Module:
    net = small_cnn()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(p.half().float())
    return net


@pytest.fixture(scope="module")
def pair():
    x = torch.randn(2, 3, 32, 32)
    fp32 = _export(small_cnn(), x)
    fp16 = _export(small_cnn().half(), x.half())
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    return ox.load(fp32), ox.load(fp16), fp16, ox.load(_export(_rounded_cnn(), x))


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(7).standard_normal((2, 3, 32, 32)).astype(np.float32)


def test_float16_models_are_computed_in_float32(pair, x):
    fp32, fp16, proto, _ = pair
    assert fp16.converted_from == "float16" and fp16.input_dtype == np.float32
    ours = fp16.predict(x.astype(np.float16))  # float16 arrays are accepted as they are
    native = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = native.run(None, {"input": x.astype(np.float16)})[0]
    assert max_rel_err(ours, theirs) < F16_RTOL
    assert max_rel_err(ours, fp32.predict(x)) < F16_RTOL


@pytest.mark.parametrize(
    "method, kwargs",
    [
        (ox.Saliency, {}),
        (ox.GradCAM, {}),
        (ox.Occlusion, {"sliding_window_shapes": (3, 8, 8), "strides": (3, 4, 4)}),
    ],
)
def test_methods_on_a_float16_export_equal_float32_with_its_weights(pair, x, method, kwargs):
    fp32, fp16, _, rounded = pair
    ours = method(fp16).attribute(x, target=1, **kwargs)
    assert ours.dtype == np.float32
    assert max_rel_err(ours, method(rounded).attribute(x, target=1, **kwargs)) < 1e-5
    if method is not ox.Saliency:  # see the module docstring
        assert max_rel_err(ours, method(fp32).attribute(x, target=1, **kwargs)) < F16_RTOL


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_module_exports_and_is_computed_in_float32(x, exporter, dtype):
    """The torch adapter checks a float16 or bfloat16 module's export against the module's
    weights in float32 (its own rounding missed rtol, so both were refused). ONNX has no
    bfloat16 Conv, so a bfloat16 export is no valid ONNX as it is: it loads computed in
    float32 too. Both predict the module within its rounding, and saliency is Captum's on the
    module's own weights in float32 (every float16 and bfloat16 is a float32)."""
    from captum.attr import Saliency

    module = small_cnn().to(dtype)
    xb = torch.from_numpy(x).to(dtype)
    model = ox.adapters.torch.export(module, xb, exporter=exporter)
    assert model.converted_from == str(dtype).split(".")[1] and model.input_dtype == np.float32
    native = module(xb).float().detach().numpy()
    assert max_rel_err(model.predict(xb.float().numpy()), native) < 2e-2  # bfloat16: 8 bits
    same = small_cnn().to(dtype).float()
    expected = Saliency(same).attribute(xb.float().requires_grad_(), target=1).numpy()
    assert max_rel_err(ox.Saliency(model).attribute(xb.float().numpy(), target=1), expected) < 1e-4


def test_float64_models_are_computed_in_float32_where_onnx_runtime_has_no_double_kernels(x, tmp_path):
    """ONNX Runtime runs no float64 Conv on CPU: the float64 export is converted, predicts
    the double-precision module within float32 rounding, and its methods equal the float32
    export's (the same weights rounded to float32, the graph the conversion makes)."""
    net = small_cnn()
    fp64 = _export(small_cnn().double(), torch.randn(2, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):  # the file as it is
        ort.InferenceSession(fp64.SerializeToString(), providers=["CPUExecutionProvider"])
    model = ox.load(fp64)
    assert model.converted_from == "float64" and model.input_dtype == np.float32
    with torch.no_grad():
        want = net.double()(torch.from_numpy(x.astype(np.float64))).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float64 arrays are the model's own: no precision warning
        got = model.predict(x.astype(np.float64))
    assert max_rel_err(got, want) < 1e-5
    fp32 = ox.load(_export(small_cnn(), torch.from_numpy(x)))
    for method, kwargs in ((ox.Saliency, {}), (ox.GradCAM, {}), (ox.LRP, {}),
                           (ox.Occlusion, {"sliding_window_shapes": (3, 8, 8), "strides": (3, 8, 8)})):
        ours = method(model).attribute(x, target=1, **kwargs)
        assert ours.dtype == np.float32
        assert max_rel_err(ours, method(fp32).attribute(x, target=1, **kwargs)) < 1e-5, method.__name__
    again = ox.load(model.save(tmp_path / "f64.onnx"))
    assert again.converted_from == "float64"


@pytest.mark.parametrize("opset", [9, onnx.defs.onnx_opset_version()])
def test_oldest_and_newest_opsets_load_and_explain(pair, x, opset):
    fp32, _, _, _ = pair
    if opset == 9:
        proto = _export(small_cnn(), torch.randn(2, 3, 32, 32), opset=9)
    else:
        proto = onnx.version_converter.convert_version(fp32.proto(), opset)
    assert proto.opset_import[0].version == opset
    model = ox.load(proto)
    runtime_newest, _ = ox.core.loading.runtime_limits()
    assert model.opset == (13 if opset < 11 else min(opset, runtime_newest))
    np.testing.assert_allclose(model.predict(x), fp32.predict(x), atol=1e-5)
    for method, kwargs in [
        (ox.Saliency, {}),
        (ox.GradCAM, {}),
        (ox.Occlusion, {"sliding_window_shapes": (3, 8, 8), "strides": (3, 8, 8)}),
    ]:
        ours = method(model).attribute(x, target=3, **kwargs)
        assert max_rel_err(ours, method(fp32).attribute(x, target=3, **kwargs)) < 1e-5, method.__name__


def test_an_opset_7_export_of_ir_version_3_explains_with_every_backend(x):
    """IR 3 lists initializers as inputs; the upgraded, canonical graph does not, and LRP's
    derived graph (BatchNorm merged into the convolution) leaves one unused: both need IR 4."""
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 4)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    old = _export(net, torch.from_numpy(x), opset=7)
    assert old.ir_version == 3 and any(n.op_type == "BatchNormalization" for n in old.graph.node)
    model, current = ox.load(old), ox.load(_export(net, torch.from_numpy(x)))
    with torch.no_grad():
        np.testing.assert_allclose(model.predict(x), net(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
    for method in (ox.LRP, ox.Saliency, ox.GradCAM):
        ours = method(model).attribute(x, target=2)
        assert max_rel_err(ours, method(current).attribute(x, target=2)) < 1e-5, method.__name__
