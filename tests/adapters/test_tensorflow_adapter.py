"""The TensorFlow adapter converts a tf.function and a SavedModel (channels-last) with
tf2onnx; the explanations equal the ones TensorFlow computes itself."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
from helpers import ConvLayerNormNHWC, max_rel_err, occluded_by_hand_nhwc  # noqa: E402

import onnxplain as ox  # noqa: E402

SIZE = 16
#: float32 on both sides, different operation orders: 1e-4 of each map's largest value.
TOL = 1e-4


class TfCNN(tf.Module):
    """Conv-ReLU-MaxPool-Conv-ReLU-GAP-Dense on NHWC images, weights in tf.Variables."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(0)
        self.w1 = tf.Variable(rng.standard_normal((3, 3, 3, 8)).astype(np.float32) * 0.4)
        self.w2 = tf.Variable(rng.standard_normal((3, 3, 8, 12)).astype(np.float32) * 0.2)
        self.b2 = tf.Variable(rng.standard_normal(12).astype(np.float32) * 0.1)
        self.fc = tf.Variable(rng.standard_normal((12, 5)).astype(np.float32) * 0.5)

    def features(self, x):
        h = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(x, self.w1, 1, "SAME")), 2, 2, "VALID")
        return tf.nn.relu(tf.nn.conv2d(h, self.w2, 1, "SAME") + self.b2)

    def head(self, a):
        return tf.reduce_mean(a, axis=(1, 2)) @ self.fc

    @tf.function(input_signature=[tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32)])
    def __call__(self, x):
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def pair():
    net = TfCNN()
    x = np.random.default_rng(1).random((2, SIZE, SIZE, 3), dtype=np.float32)
    return net, ox.adapters.tensorflow.export(net.__call__, x), x


def test_a_tf_function_exports_with_its_layout_and_a_dynamic_batch(pair):
    net, model, _ = pair
    assert getattr(model, "user_input_shape", model.inputs[0].shape)[1:] == (SIZE, SIZE, 3)
    x5 = np.random.default_rng(2).random((5, SIZE, SIZE, 3), dtype=np.float32)
    np.testing.assert_allclose(model.predict(x5), net(x5).numpy(), atol=1e-5)


def test_a_saved_model_directory_exports_its_serving_signature(pair, tmp_path):
    net, _, x = pair
    tf.saved_model.save(net, str(tmp_path / "saved"), signatures=net.__call__.get_concrete_function())
    model = ox.adapters.tensorflow.export(tmp_path / "saved", x)
    assert "serving_default" in model.source
    np.testing.assert_allclose(model.predict(x), net(x).numpy(), atol=1e-5)
    with pytest.raises(ox.InputValidationError, match="signature must be one of"):
        ox.adapters.tensorflow.export(tmp_path / "saved", x, signature="predict")


def test_saliency_equals_the_gradient_tape(pair):
    net, model, x = pair
    ours = ox.Saliency(model).attribute(x, target=1, abs=False)
    v = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(v)
        score = tf.reduce_sum(net(v)[:, 1])
    ref = tape.gradient(score, v).numpy()
    assert max_rel_err(ours, ref) < TOL


def test_occlusion_equals_occluding_by_hand(pair):
    net, model, x = pair
    ours = ox.Occlusion(model).attribute(
        x, target=4, sliding_window_shapes=(8, 8, 3), strides=(8, 8, 3), show_progress=False
    )
    assert max_rel_err(ours, occluded_by_hand_nhwc(lambda images: net(images).numpy(), x, 4)) < TOL


def test_grad_cam_equals_grad_cam_computed_with_the_gradient_tape(pair):
    net, model, x = pair
    layer = [n.outputs[0].name for n in model.ir.graph if n.op_type == "Relu"][-1]
    ours = ox.GradCAM(model, layer=layer).attribute(x, target=2, upsample=False)
    a = net.features(tf.constant(x))
    with tf.GradientTape() as tape:
        tape.watch(a)
        score = tf.reduce_sum(net.head(a)[:, 2])
    grads = tape.gradient(score, a)
    ref = np.maximum(tf.reduce_sum(tf.reduce_mean(grads, axis=(1, 2), keepdims=True) * a, -1).numpy(), 0)
    assert ours.shape == ref.shape
    assert max_rel_err(ours, ref) < TOL


def test_constants_the_function_captures_become_initializers(pair):
    """tf2onnx turns the eager constants a function captures (Keras' Normalization layer
    holds its mean and variance so: EfficientNet, ConvNeXt) into graph inputs; the adapter
    gives them their values."""
    net, _, x = pair
    rng = np.random.default_rng(3)
    mean = tf.constant(rng.random(3).astype(np.float32))
    std = tf.constant(rng.uniform(0.5, 1.5, 3).astype(np.float32))
    model = ox.adapters.tensorflow.export(lambda images: net((images - mean) / std), x)
    assert len(model.inputs) == 1
    np.testing.assert_allclose(model.predict(x), net((x - mean) / std).numpy(), atol=1e-5)


def test_a_dict_output_needs_a_name(pair):
    net, _, x = pair
    both = tf.function(lambda v: {"logits": net(v), "twice": 2 * net(v)})
    with pytest.raises(ox.InputValidationError, match="output=NAME"):
        ox.adapters.tensorflow.export(both, x)
    model = ox.adapters.tensorflow.export(both, x, output="twice")
    np.testing.assert_allclose(model.predict(x), 2 * net(x).numpy(), atol=1e-5)


@pytest.mark.slow
class GroupedGelu(tf.Module):
    """A grouped convolution computed in an XLA-compiled function, as Keras 3 computes
    ``Conv2D(groups=...)`` on CPU (ConvNeXt), then TensorFlow's exact GELU (``Erfc``): the
    two things tf2onnx cannot convert as they are."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(3)
        self.w = tf.Variable(rng.standard_normal((3, 3, 2, 8)).astype(np.float32) * 0.4)  # 4 groups
        self.fc = tf.Variable(rng.standard_normal((8, 5)).astype(np.float32) * 0.5)

    @tf.function(input_signature=[tf.TensorSpec((None, SIZE, SIZE, 8), tf.float32)])
    def __call__(self, x):
        @tf.function(jit_compile=True)
        def grouped():
            return tf.nn.conv2d(x, self.w, 1, "SAME")

        return tf.reduce_mean(tf.nn.gelu(grouped(), approximate=False), axis=(1, 2)) @ self.fc


def test_xla_compiled_functions_and_exact_gelu_are_converted():
    net = GroupedGelu()
    x = np.random.default_rng(4).random((2, SIZE, SIZE, 8), dtype=np.float32)
    model = ox.adapters.tensorflow.export(net.__call__, x)  # checked against TensorFlow (XLA) at 1e-4
    assert {n.op_type for n in model.ir.graph} >= {"Conv", "Erf"}
    np.testing.assert_allclose(model.predict(x), net(x).numpy(), rtol=1e-5, atol=1e-6)
    v = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(v)
        score = tf.reduce_sum(net(v)[:, 2])
    ours = ox.Saliency(model).attribute(x, target=2, abs=False)
    assert max_rel_err(ours, tape.gradient(score, v).numpy()) < TOL


def test_a_gradient_method_after_importing_tensorflow_first_does_not_crash():
    # Loading torch's triton after tensorflow segfaults; the adapter keeps triton out.
    script = """
import tensorflow as tf
import numpy as np
import onnxplain as ox
w = tf.Variable(np.ones((3, 2), np.float32))
f = tf.function(lambda x: tf.reduce_mean(x, axis=(1, 2)) @ w)
model = ox.adapters.tensorflow.export(f, np.ones((1, 4, 4, 3), np.float32))
print(ox.Saliency(model).attribute(np.ones((1, 4, 4, 3), np.float32), target=1).shape)
"""
    # (KERAS_BACKEND=torch alone makes `import tensorflow` segfault: TensorFlow imports
    # Keras, whose torch backend loads triton; that is Keras', not ours.)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(1, 4, 4, 3)" in done.stdout


class KerasLayerNorm(tf.Module):
    """Conv-ReLU, then LayerNorm over the channels as Keras computes it on TensorFlow
    (``x·γ/σ + (β − μ·γ/σ)``; tf2onnx writes its Rsqrt as Sqrt then Reciprocal), then a
    global average and a dense layer."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(5)
        self.w = tf.Variable(rng.standard_normal((3, 3, 3, 6)).astype(np.float32) * 0.5)
        self.gamma = tf.Variable(rng.uniform(0.5, 1.5, 6).astype(np.float32))
        self.beta = tf.Variable(rng.standard_normal(6).astype(np.float32) * 0.1)
        self.fc = tf.Variable(rng.standard_normal((6, 4)).astype(np.float32) * 0.5)

    @tf.function(input_signature=[tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32)])
    def __call__(self, x):
        h = tf.nn.relu(tf.nn.conv2d(x, self.w, 1, "VALID"))
        mean, variance = tf.nn.moments(h, axes=[-1], keepdims=True)
        inv = tf.math.rsqrt(variance + 1e-6) * self.gamma
        return tf.reduce_mean(h * inv + (-mean * inv + self.beta), axis=(1, 2)) @ self.fc


def test_lrp_through_a_layer_norm_written_as_keras_writes_it_is_the_ln_rule():
    """LRP of the decomposed LayerNorm (1/σ a gate, the broadcast mean its signal) equals
    LRP of the same network with a LayerNormalization node (the ε LN-rule), exported by torch."""
    import torch

    net = KerasLayerNorm()
    x = np.random.default_rng(6).random((2, SIZE, SIZE, 3), dtype=np.float32)
    model = ox.adapters.tensorflow.export(net.__call__, x)
    assert "LayerNormalization" not in {n.op_type for n in model.ir.graph}

    twin = ConvLayerNormNHWC(*(v.numpy() for v in (net.w, net.gamma, net.beta, net.fc))).eval()
    fused = ox.adapters.torch.export(twin, torch.from_numpy(x), exporter="legacy", opset=17)
    assert "LayerNormalization" in {n.op_type for n in fused.ir.graph}
    np.testing.assert_allclose(model.predict(x), fused.predict(x), rtol=1e-5, atol=1e-6)
    ours, reference = (ox.LRP(m).attribute(x, target=1) for m in (model, fused))
    assert max_rel_err(ours, reference) < 1e-4


@pytest.mark.parametrize(("kernel", "antialias"), itertools.product(
    ["lanczos1", "lanczos3", "lanczos5", "gaussian", "box", "triangle", "keyscubic", "mitchellcubic"],
    [True, False],
))
def test_scale_and_translate_weights_are_tensorflows(kernel, antialias):
    """The matrices that stand for ScaleAndTranslate equal TensorFlow's op, downsampling,
    upsampling and translated (1e-5)."""
    from onnxplain.adapters._tf_resize import scale_and_translate_weights

    x = np.random.default_rng(0).standard_normal((2, 13, 11, 3)).astype(np.float32)
    for (oh, ow), shift in [((5, 7), (0.0, 0.0)), ((20, 30), (0.0, 0.0)), ((6, 17), (0.3, -1.2))]:
        scale = (oh / 13, ow / 11)
        expected = tf.raw_ops.ScaleAndTranslate(images=x, size=[oh, ow], scale=scale, translation=shift,
                                                kernel_type=kernel, antialias=antialias).numpy()
        ah = scale_and_translate_weights(kernel, 13, oh, scale[0], shift[0], antialias)
        aw = scale_and_translate_weights(kernel, 11, ow, scale[1], shift[1], antialias)
        assert max_rel_err(np.einsum("nhwc,oh,pw->nopc", x, ah, aw), expected) < 1e-5


def test_resize_area_weights_are_tensorflows():
    from onnxplain.adapters._tf_resize import area_weights

    x = np.random.default_rng(0).standard_normal((2, 13, 11, 3)).astype(np.float32)
    for (oh, ow), corners in itertools.product([(5, 7), (20, 30), (13, 4), (1, 1)], [False, True]):
        expected = tf.raw_ops.ResizeArea(images=x, size=[oh, ow], align_corners=corners).numpy()
        ours = np.einsum("nhwc,oh,pw->nopc", x, area_weights(13, oh, corners), area_weights(11, ow, corners))
        assert max_rel_err(ours, expected) < 1e-5


@pytest.mark.parametrize(("method", "antialias"), [("lanczos3", True), ("bilinear", True), ("area", False)])
def test_a_model_that_resizes_as_tf2onnx_cannot_is_exported_and_explained(pair, method, antialias):
    """tf.image.resize antialiased or with a Lanczos kernel (ScaleAndTranslate, which tf2onnx
    leaves unconverted) or by area (ResizeArea, which it mistranslates) before the CNN: the
    export predicts as TensorFlow, is read as NHWC, and saliency is the gradient tape's
    (TensorFlow has no gradient for ResizeArea: there the tape differentiates the same
    network after the area matrices, which equal the op, as the test above shows)."""
    from onnxplain.adapters._tf_resize import area_weights

    net, _, _ = pair

    @tf.function(input_signature=[tf.TensorSpec((None, 28, 23, 3), tf.float32)])
    def resized(x):
        return net.head(net.features(tf.image.resize(x, (SIZE, SIZE), method=method, antialias=antialias)))

    x = np.random.default_rng(3).random((2, 28, 23, 3), dtype=np.float32)
    model = ox.adapters.tensorflow.export(resized, x)
    assert model.layout == "NHWC"
    assert not {n.op_type for n in model.proto().graph.node} & {"ScaleAndTranslate", "ResizeArea"}
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        if method == "area":
            small = tf.einsum("nhwc,oh,pw->nopc", xt, area_weights(28, SIZE, False).astype(np.float32),
                              area_weights(23, SIZE, False).astype(np.float32))
            score = net.head(net.features(small))[:, 1]
        else:
            score = resized(xt)[:, 1]
    expected = np.abs(tape.gradient(score, xt).numpy())
    assert max_rel_err(ox.Saliency(model).attribute(x, target=1), expected) < TOL


def test_an_integer_tflite_model_converted_by_tf2onnx_is_read_channels_last(tmp_path):
    """TFLite's full-integer quantization, converted with ``tf2onnx.convert.from_tflite``:
    Quantize → Dequantize before the transpose to NCHW. Read as NHWC: CAMs are (N, H, W),
    and occlusion windows are given in (H, W, C), as occluding by hand shows."""
    import tf2onnx

    from onnxplain.adapters.tensorflow import _patch_tf2onnx_for_numpy2

    rng = np.random.default_rng(5)
    net = TfCNN()  # no Keras: another test may have loaded Keras 3 on the torch backend
    x = rng.random((4, SIZE, SIZE, 3), dtype=np.float32)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([net.__call__.get_concrete_function()], net)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[i:i + 1]] for i in range(4))
    path = tmp_path / "int8.tflite"
    path.write_bytes(converter.convert())
    _patch_tf2onnx_for_numpy2()
    proto, _ = tf2onnx.convert.from_tflite(str(path))
    model = ox.load(proto)
    assert model.layout == "NHWC" and model.quantized
    assert ox.GradCAM(model).attribute(x, target=1).shape == (4, SIZE, SIZE)
    ours = ox.Occlusion(model).attribute(x, target=1, sliding_window_shapes=(8, 8, 3), strides=(8, 8, 3))
    assert max_rel_err(ours, occluded_by_hand_nhwc(model.predict, x, 1)) < 1e-5


def test_a_model_without_convolutions_takes_nhwc_images_tensorflow_s_convention(recwarn):
    """4 × 4 patches → a dense layer → ReLU → mean → dense: no convolution, so no transpose
    shows the layout; the adapter takes TensorFlow's channels-last images (load alone would
    read them as NCHW and warn), and occlusion windows are (h, w, c)."""
    rng = np.random.default_rng(0)
    w1 = tf.constant(rng.standard_normal((48, 16)).astype(np.float32) * 0.3)
    w2 = tf.constant(rng.standard_normal((16, 5)).astype(np.float32) * 0.3)

    @tf.function(input_signature=[tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32)])
    def fn(x):
        grid = tf.transpose(tf.reshape(x, (-1, 4, 4, 4, 4, 3)), (0, 1, 3, 2, 4, 5))
        patches = tf.reshape(grid, (-1, 16, 48))
        return tf.reduce_mean(tf.nn.relu(patches @ w1), axis=1) @ w2

    x = rng.standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)
    model = ox.adapters.tensorflow.export(fn, x)
    assert model.layout == "NHWC"
    assert not [w for w in recwarn if "channels-last" in str(w.message)]
    ours = ox.Occlusion(model).attribute(x, target=2, sliding_window_shapes=(8, 8, 3), strides=(8, 8, 3),
                                         show_progress=False)
    assert max_rel_err(ours, occluded_by_hand_nhwc(lambda images: fn(images).numpy(), x, 2)) < TOL
