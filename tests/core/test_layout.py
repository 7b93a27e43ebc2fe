"""Channels-last (NHWC) models: detected on load, explained in the user's layout.

The NHWC model is what Keras/tf2onnx produce: the (N, H, W, C) input goes through a
``Transpose(perm=[0, 3, 1, 2])`` into a channels-first network. It is exported here from
the channels-first test CNN wrapped as ``net(x.permute(0, 3, 1, 2))``, so every method
must give the channels-first model's result, transposed (tolerance 1e-5 relative for
gradients, exact up to float rounding for forward-only methods).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import max_rel_err, small_cnn
from torch import nn

import onnxplain as ox
from onnxplain.segmentation import grid


class ChannelsLast(nn.Module):
    """``net`` behind the transpose Keras/tf2onnx put after an NHWC input."""

    def __init__(self, net: nn.Module, scale: float | None = None) -> None:
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:  # a Rescaling layer before the transpose
            x = x * self.scale + 0.5
        return self.net(x.permute(0, 3, 1, 2))


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


@pytest.fixture(scope="module")
def pair():
    net = small_cnn()
    x = torch.randn(2, 3, 32, 32)
    nchw = ox.adapters.torch.export(net, x, exporter="legacy")
    nhwc = ox.adapters.torch.export(ChannelsLast(net), x.permute(0, 2, 3, 1), exporter="legacy")
    return nchw, nhwc


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)


def test_layout_is_detected_and_the_graph_input_becomes_channels_first(pair):
    nchw, nhwc = pair
    assert nchw.layout == "NCHW" and nhwc.layout == "NHWC"
    assert nhwc.input_spec.shape[1:] == (3, 32, 32) and nhwc.user_input_shape[1:] == (32, 32, 3)
    assert nhwc.ir.graph.node(0).op_type == "Transpose"


def test_rescaling_before_the_transpose_is_still_nhwc():
    net = ChannelsLast(small_cnn(), scale=2.0)
    model = ox.adapters.torch.export(net, torch.randn(2, 16, 16, 3), exporter="legacy")
    assert model.layout == "NHWC"
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(model.predict(x), net(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_layout_override_and_bad_values(pair, x):
    nchw, _ = pair
    forced = ox.load(nchw.proto(), layout="NCHW")
    assert forced.layout == "NCHW"
    with pytest.raises(ox.InputValidationError, match="layout"):
        ox.load(nchw.proto(), layout="HWC")


def test_predict_takes_the_users_layout_and_names_it_in_errors(pair, x):
    nchw, nhwc = pair
    np.testing.assert_allclose(nhwc.predict(_nhwc(x)), nchw.predict(x), atol=1e-5)
    with pytest.raises(ox.InputValidationError, match="NHWC"):
        nhwc.predict(x)  # channels-first array given to an NHWC model


def test_gradient_methods_equal_the_channels_first_model_transposed(pair, x):
    nchw, nhwc = pair
    xl = _nhwc(x)
    sal = ox.Saliency(nhwc).attribute(xl, target=1)
    assert sal.shape == xl.shape
    assert max_rel_err(sal, _nhwc(ox.Saliency(nchw).attribute(x, target=1))) < 1e-5
    base = np.random.default_rng(4).standard_normal((3, 32, 32)).astype(np.float32)
    ig = ox.IntegratedGradients(nhwc).attribute(xl, target=[0, 2], baselines=_nhwc(base[None])[0], n_steps=8)
    ref = ox.IntegratedGradients(nchw).attribute(x, target=[0, 2], baselines=base, n_steps=8)
    assert max_rel_err(ig, _nhwc(ref)) < 1e-5


def test_per_channel_baselines_and_smoothing_noise_in_the_users_layout(pair, x):
    nchw, nhwc = pair
    means = [0.1, -0.2, 0.3]  # one per channel: the last axis of an NHWC image
    ig = ox.IntegratedGradients(nhwc).attribute(_nhwc(x), target=1, baselines=means, n_steps=4)
    ref = ox.IntegratedGradients(nchw).attribute(
        x, target=1, baselines=np.reshape(means, (3, 1, 1)), n_steps=4
    )
    assert max_rel_err(ig, _nhwc(ref)) < 1e-5
    noise = np.random.default_rng(5).standard_normal((2, *x.shape)).astype(np.float32)
    smooth = ox.NoiseTunnel(ox.Saliency(nhwc)).attribute(
        _nhwc(x), nt_samples=2, target=1, noise=np.moveaxis(noise, 2, -1)
    )
    ref = ox.NoiseTunnel(ox.Saliency(nchw)).attribute(x, nt_samples=2, target=1, noise=noise)
    assert max_rel_err(smooth, _nhwc(ref)) < 1e-5


def test_cams_upsample_in_the_spatial_axes(pair, x):
    nchw, nhwc = pair
    cam = ox.GradCAM(nhwc).attribute(_nhwc(x), target=3)
    assert cam.shape == (2, 32, 32)
    assert max_rel_err(cam, ox.GradCAM(nchw).attribute(x, target=3)) < 1e-5
    small = ox.GradCAM(nhwc).attribute(_nhwc(x), target=3, upsample=False)
    assert small.shape == (2, 16, 16)


def test_occlusion_windows_are_given_in_the_users_layout(pair, x):
    nchw, nhwc = pair
    ours = ox.Occlusion(nhwc).attribute(
        _nhwc(x), target=2, sliding_window_shapes=(8, 8, 3), strides=(4, 4, 3), baselines=0.1
    )
    ref = ox.Occlusion(nchw).attribute(
        x, target=2, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), baselines=0.1
    )
    assert ours.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(ours, _nhwc(ref), atol=1e-5)


def test_rise_and_lime_with_masks_in_the_users_layout(pair, x):
    nchw, nhwc = pair
    xl = _nhwc(x)
    rise = ox.RISE(nhwc).attribute(xl, target=1, n_masks=64, s=4, seed=3)
    np.testing.assert_allclose(rise, ox.RISE(nchw).attribute(x, target=1, n_masks=64, s=4, seed=3), atol=1e-5)
    segments = grid(x, cell_size=8)  # (N, H, W): no channel axis, the same in both layouts
    kwargs = dict(target=1, n_samples=40, seed=2, interpretable_model="linear")
    lime = ox.Lime(nhwc).attribute(xl, feature_mask=segments, **kwargs)
    np.testing.assert_allclose(
        lime, _nhwc(ox.Lime(nchw).attribute(x, feature_mask=segments, **kwargs)), atol=1e-4
    )
    # a per-value mask (1, H, W, C) in the user's layout: each channel its own feature
    per_channel = (segments[:1, :, :, None] * 3 + np.arange(3)).astype(np.int64)
    ablation = ox.FeatureAblation(nhwc).attribute(xl, target=1, feature_mask=per_channel)
    ref = ox.FeatureAblation(nchw).attribute(x, target=1, feature_mask=np.moveaxis(per_channel, -1, 1))
    np.testing.assert_allclose(ablation, _nhwc(ref), atol=1e-5)


def test_channels_last_global_pooling_still_finds_the_cam_layer():
    """tf2onnx leaves Keras' GlobalAveragePooling2D as a mean over axes (1, 2) of a
    channels-last map: the CAM layer is the channels-first tensor it transposes."""

    class KerasLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv, self.fc = nn.Conv2d(3, 6, 3, padding=1), nn.Linear(6, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = torch.relu(self.conv(x.permute(0, 3, 1, 2)))
            return self.fc(a.permute(0, 2, 3, 1).mean((1, 2)))

    net = KerasLike().eval()
    model = ox.adapters.torch.export(net, torch.randn(2, 16, 16, 3), exporter="legacy")
    layer = model.find_layer()
    assert layer.shape[1:] == (6, 16, 16)
    x = torch.randn(2, 16, 16, 3, requires_grad=True)
    acts = torch.relu(net.conv(x.permute(0, 3, 1, 2)))
    acts.retain_grad()
    net.fc(acts.permute(0, 2, 3, 1).mean((1, 2)))[:, 2].sum().backward()
    ref = torch.relu((acts.grad.mean((2, 3), keepdim=True) * acts).sum(1)).detach().numpy()
    cam = ox.GradCAM(model).attribute(x.detach().numpy(), target=2, upsample=False)
    assert max_rel_err(cam, ref) < 1e-5
    assert ox.CAM(model).attribute(x.detach().numpy(), target=2).shape == (2, 16, 16)


def test_keras_style_channels_last_activations_are_read_through_their_channels_first_twin():
    """Keras 3 (torch backend) exports go back to NHWC after each convolution and add the
    bias and the activation there; the canonical graph sinks those transposes, so a CAM
    on the channels-last ReLU reads its (N, K, h, w) twin."""

    class KerasTorchLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(2)
            self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
            self.bias = nn.Parameter(torch.randn(6))
            self.fc = nn.Linear(6 * 16 * 16, 4)

        def features(self, x: torch.Tensor) -> torch.Tensor:  # NHWC in, NHWC out
            return torch.relu(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + self.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.features(x).flatten(1))  # flattened in (H, W, C) order

    net = KerasTorchLike().eval()
    model = ox.adapters.torch.export(net, torch.randn(2, 16, 16, 3), exporter="legacy")
    relu = [s for s in model.layers() if s.op_type == "Transpose"][-1]  # the NHWC ReLU output
    assert relu.shape[1:] == (16, 16, 6)
    assert model.channels_first_layer(relu).shape[1:] == (6, 16, 16)
    x = torch.randn(2, 16, 16, 3, requires_grad=True)
    acts = net.features(x)
    acts.retain_grad()
    net.fc(acts.flatten(1))[:, 1].sum().backward()
    a, g = acts.permute(0, 3, 1, 2), acts.grad.permute(0, 3, 1, 2)
    ref = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1)).detach().numpy()
    cam = ox.GradCAM(model, layer=relu.name).attribute(x.detach().numpy(), target=1, upsample=False)
    assert max_rel_err(cam, ref) < 1e-5
    np.testing.assert_allclose(model.predict(x.detach().numpy()), net(x).detach().numpy(), atol=1e-5)


def _export_proto(module: nn.Module, x: torch.Tensor):
    """``module``'s legacy export with input ``"x"``, batch dynamic, as a ModelProto."""
    import io
    import warnings

    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), buffer, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


def _quantized_input(module: nn.Module, x: torch.Tensor) -> ox.Model:
    """``module``'s export with its input quantized to int8 first (QuantizeLinear →
    DequantizeLinear, per tensor), as an integer TFLite model converted by tf2onnx begins."""
    from onnx import helper, numpy_helper

    proto = _export_proto(module, x)
    graph = proto.graph
    graph.initializer.extend([numpy_helper.from_array(np.array(0.03, np.float32), "q_scale"),
                              numpy_helper.from_array(np.array(0, np.int8), "q_zero")])
    for node in graph.node:
        node.input[:] = ["x_dq" if i == "x" else i for i in node.input]
    graph.node.insert(0, helper.make_node("DequantizeLinear", ["x_q", "q_scale", "q_zero"], ["x_dq"]))
    graph.node.insert(0, helper.make_node("QuantizeLinear", ["x", "q_scale", "q_zero"], ["x_q"]))
    return ox.load(proto)


def test_a_quantized_channels_last_input_is_still_nhwc(x):
    """Quantize → Dequantize before the transpose (TFLite int8 models through tf2onnx) was
    read as NCHW, so windows and CAMs took the image's rows for channels. Gradient methods
    equal the channels-first model's with the same quantization, transposed."""
    net, example = small_cnn(), torch.randn(2, 3, 32, 32)
    nchw = _quantized_input(net, example)
    nhwc = _quantized_input(ChannelsLast(net), example.permute(0, 2, 3, 1))
    assert nhwc.layout == "NHWC" and nhwc.quantized and nchw.layout == "NCHW"
    for method in (ox.Saliency, ox.GradCAM):
        expected = method(nchw).attribute(x, target=1)
        expected = _nhwc(expected) if expected.ndim == 4 else expected
        assert max_rel_err(method(nhwc).attribute(_nhwc(x), target=1), expected) < 1e-5


class _Before(nn.Module):
    """``op`` on the NHWC images, then the transpose to NCHW and the network."""

    def __init__(self, net: nn.Module, op: str) -> None:
        super().__init__()
        self.net, self.op = net, op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "crop":  # Keras' CenterCrop, Cropping2D
            x = x[:, 2:-2, 3:-3, :]
        elif self.op == "pad":  # ZeroPadding2D
            x = torch.nn.functional.pad(x, (0, 0, 2, 2, 2, 2))
        elif self.op == "clip":  # ReLU(max_value=6), then a rescaling
            x = torch.clamp(x, 0, 6) / 6.0
        return self.net(x.permute(0, 3, 1, 2))


@pytest.mark.parametrize("op", ["crop", "pad", "clip"])
def test_a_crop_pad_or_clip_before_the_transpose_is_still_nhwc(x, op):
    """Cropping, padding or clipping the NHWC images before the transpose hid it (the model
    was read as NCHW, silently): saliency equals the channels-first model's with the same
    operation, transposed."""
    net = small_cnn()
    example = torch.randn(2, 32, 32, 3)
    nhwc = ox.adapters.torch.export(_Before(net, op), example, exporter="legacy")
    assert nhwc.layout == "NHWC"

    class First(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = _Before(net, op)

        def forward(self, v):
            return self.inner(v.permute(0, 2, 3, 1))

    nchw = ox.adapters.torch.export(First(), example.permute(0, 3, 1, 2), exporter="legacy")
    expected = ox.Saliency(nchw).attribute(x, target=1)
    assert max_rel_err(ox.Saliency(nhwc).attribute(_nhwc(x), target=1), _nhwc(expected)) < 1e-5


def test_an_input_that_looks_channels_last_without_a_transpose_to_show_it_warns():
    """A graph that makes its images channels-first some other way (here a transpose to
    (N, C, W, H)) is read as NCHW; its (N, 32, 32, 3) input says that may be wrong, and the
    warning names the fix. Naming the layout silences it."""

    class Swapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_cnn()

        def forward(self, v):
            return self.net(v.permute(0, 3, 2, 1))

    proto = _export_proto(Swapped(), torch.randn(2, 32, 32, 3))
    with pytest.warns(UserWarning, match="layout='NHWC'"):
        assert ox.load(proto).layout == "NCHW"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ox.load(proto, layout="NHWC").layout == "NHWC"
