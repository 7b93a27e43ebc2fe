"""``Resize`` on the torch backend computes what ONNX Runtime computes, in every mode.

onnx2torch maps Resize onto ``F.interpolate``, which knows few of ONNX's modes (it refused
``antialias``, ``axes``, ``keep_aspect_ratio_policy`` and ``half_pixel_symmetric``, differed
from ONNX Runtime on nearest rounding, ``asymmetric`` linear and cubic coordinates and
``cubic_coeff_a``/``exclude_outside``, and could not resize channels-last axes at all). The
module of our own is checked against ONNX Runtime on the bare operator (float32 on both
sides: 1e-5 of the largest value), and its gradients against Captum on the module a
torch model with an antialiased ``F.interpolate`` was exported from.
"""

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import max_rel_err
from onnx import helper, numpy_helper

import onnxplain as ox
from onnxplain.backends.torch_resize import Resize

TOL = 1e-5
SHAPE = (2, 3, 12, 10)
#: Up, down, mixed, to one pixel, by scales and by sizes.
RESIZES = [
    {"sizes": [2, 3, 17, 23]}, {"sizes": [2, 3, 5, 7]}, {"sizes": [2, 3, 1, 1]},
    {"scales": [1, 1, 1.5, 0.7]}, {"scales": [1, 1, 2.0, 3.0]}, {"scales": [1, 1, 0.35, 0.5]},
]
TRANSFORMS = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "half_pixel_symmetric"]


def _resize_graph(attrs, scales=None, sizes=None, roi=None, opset=19) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.array(roi if roi is not None else [], np.float32), "roi")]
    inputs = ["x", "roi"]
    if scales is not None:
        inits.append(numpy_helper.from_array(np.array(scales, np.float32), "scales"))
        inputs.append("scales")
    else:
        inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
        inputs += ["", "sizes"]
    graph = helper.make_graph(
        [helper.make_node("Resize", inputs, ["y"], **attrs)], "resize",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _compare(attrs, shape=SHAPE, scales=None, sizes=None, roi=None, opset=19):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    proto = _resize_graph(attrs, scales, sizes, roi, opset)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]

    def tensor(v, dtype):
        return None if v is None else torch.tensor(v, dtype=dtype)

    ours = Resize(**attrs)(torch.from_numpy(x), tensor(roi if roi is not None else [], torch.float32),
                           tensor(scales, torch.float32), tensor(sizes, torch.int64)).numpy()
    assert ours.shape == expected.shape
    assert max_rel_err(ours, expected) < TOL, attrs


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_every_coordinate_transform_equals_onnx_runtime(mode):
    for transform, resize in itertools.product(TRANSFORMS, RESIZES):
        _compare({"mode": mode, "coordinate_transformation_mode": transform}, **resize)


@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
def test_every_nearest_rounding_equals_onnx_runtime(nearest_mode):
    for transform, resize in itertools.product(TRANSFORMS, RESIZES):
        _compare({"mode": "nearest", "coordinate_transformation_mode": transform,
                  "nearest_mode": nearest_mode}, **resize)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_antialiasing_and_cubic_options_equal_onnx_runtime(mode):
    for transform, resize, antialias, exclude in itertools.product(
        ["half_pixel", "pytorch_half_pixel", "align_corners"], RESIZES, [0, 1], [0, 1]
    ):
        if exclude and mode == "linear":
            continue
        _compare({"mode": mode, "coordinate_transformation_mode": transform, "antialias": antialias,
                  "exclude_outside": exclude, "cubic_coeff_a": -0.5 if exclude else -0.75}, **resize)


@pytest.mark.parametrize(("shape", "attrs", "resize"), [
    # channels-last axes (Keras' Resizing, jax.image.resize), scales and sizes per axis
    ((2, 12, 10, 3), {"mode": "linear"}, {"scales": [1, 0.5, 0.4, 1]}),
    ((2, 12, 10, 3), {"mode": "linear", "axes": [1, 2]}, {"scales": [2.0, 1.5]}),
    ((2, 12, 10, 3), {"mode": "linear", "axes": [1, 2], "antialias": 1}, {"sizes": [5, 4]}),
    ((2, 12, 10, 3), {"mode": "cubic", "antialias": 1}, {"scales": [1, 0.5, 0.4, 1]}),
    ((2, 12, 10, 3), {"mode": "linear", "axes": [1, 2], "keep_aspect_ratio_policy": "not_larger"},
     {"sizes": [20, 30]}),
    (SHAPE, {"mode": "cubic", "axes": [2, 3], "keep_aspect_ratio_policy": "not_smaller"}, {"sizes": [7, 9]}),
    # crops, with the value outside them
    (SHAPE, {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
             "extrapolation_value": 3.0}, {"sizes": [2, 3, 9, 9], "roi": [0, 0, -0.2, 0.1, 1, 1, 0.8, 1.3]}),
    (SHAPE, {"mode": "nearest", "coordinate_transformation_mode": "tf_crop_and_resize"},
     {"scales": [1, 1, 1.5, 2.0], "roi": [0, 0, 0.1, 0.1, 1, 1, 0.8, 0.9]}),
    (SHAPE, {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize", "axes": [2, 3]},
     {"scales": [1.5, 2.0], "roi": [0.1, -0.1, 0.8, 0.9]}),
    # opset 11's transform for nearest
    (SHAPE, {"mode": "nearest", "coordinate_transformation_mode": "tf_half_pixel_for_nn"},
     {"scales": [1, 1, 1.7, 0.6], "opset": 11}),
])
def test_axes_crops_and_aspect_policies_equal_onnx_runtime(shape, attrs, resize):
    _compare(attrs, shape, **resize)


def test_long_axes_are_resized_tap_by_tap_as_onnx_runtime_does():
    """An axis much longer than the kernel is gathered per tap, not multiplied by a matrix."""
    _compare({"mode": "linear"}, (1, 2, 300, 7), sizes=[1, 2, 90, 7])
    _compare({"mode": "cubic", "antialias": 1}, (1, 2, 7, 700), sizes=[1, 2, 7, 64])


def _image_model(layout: str) -> onnx.ModelProto:
    """Resize (antialiased, by half) → Conv → ReLU → GAP → Gemm, channels first or last
    (then the Resize scales the H and W axes of the NHWC input, followed by the Transpose
    to NCHW that channels-last exports write)."""
    rng = np.random.default_rng(1)
    scales = [1, 1, 0.5, 0.5] if layout == "NCHW" else [1, 0.5, 0.5, 1]
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="linear", antialias=1)]
    first = "r"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["r"], ["rt"], perm=[0, 3, 1, 2]))
        first = "rt"
    nodes += [
        helper.make_node("Conv", [first, "w"], ["c"]), helper.make_node("Relu", ["c"], ["a"]),
        helper.make_node("GlobalAveragePool", ["a"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    inits = [numpy_helper.from_array(np.array(scales, np.float32), "scales"),
             numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "fc")]
    shape = ["N", 3, 24, 20] if layout == "NCHW" else ["N", 24, 20, 3]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, shape)],
                              [helper.make_tensor_value_info("y", 1, ["N", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def test_a_channels_last_input_resized_before_its_transpose_is_read_as_nhwc_and_explained():
    """The layout is read through the Resize, and the saliency of the NHWC graph is the
    NCHW graph's, transposed."""
    nchw = ox.load(_image_model("NCHW").SerializeToString())
    nhwc = ox.load(_image_model("NHWC").SerializeToString())
    assert nhwc.layout == "NHWC" and nchw.layout == "NCHW"
    x = np.random.default_rng(2).standard_normal((2, 3, 24, 20)).astype(np.float32)
    expected = ox.Saliency(nchw).attribute(x, target=1)
    ours = ox.Saliency(nhwc).attribute(x.transpose(0, 2, 3, 1), target=1)
    assert max_rel_err(ours, expected.transpose(0, 2, 3, 1)) < TOL


class _Resized(torch.nn.Module):
    """A CNN that resizes its input first, as torchvision's Resize(antialias=True) does."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mode = mode
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        x = torch.nn.functional.interpolate(x, size=(20, 18), mode=self.mode, antialias=True)
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_an_antialiased_interpolation_has_captums_saliency(mode):
    from captum.attr import Saliency

    module = _Resized(mode).eval()
    x = torch.randn(2, 3, 45, 37, generator=torch.Generator().manual_seed(3))
    model = ox.adapters.torch.export(module, x, exporter="dynamo")
    ours = ox.Saliency(model).attribute(x.numpy(), target=1)
    expected = Saliency(module).attribute(x.clone().requires_grad_(), target=1).numpy()
    assert max_rel_err(ours, expected) < 1e-4
