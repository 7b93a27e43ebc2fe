"""The Keras 3 adapter exports a channels-last CNN; its explanations equal those of the same
network built in PyTorch (channels-first) with the Keras weights copied over."""

import os

import numpy as np
import pytest

# Keras picks its backend at import: torch needs no TensorFlow (an explicit setting wins).
# The variable is removed again afterwards: with it set, a later `import tensorflow` in a
# subprocess loads Keras' torch backend after TensorFlow, and that segfaults (triton).
_SET_BACKEND = "KERAS_BACKEND" not in os.environ
os.environ.setdefault("KERAS_BACKEND", "torch")
try:
    keras = pytest.importorskip("keras")
finally:
    if _SET_BACKEND:
        del os.environ["KERAS_BACKEND"]
import torch  # noqa: E402
from helpers import max_rel_err  # noqa: E402
from torch import nn  # noqa: E402

import onnxplain as ox  # noqa: E402

SIZE = 32
#: Both sides compute in float32, with different convolution orders: parity to 1e-4 of the
#: largest value of each map.
TOL = 1e-4


def keras_cnn() -> "keras.Model":
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(12, 3, padding="same")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(5)(x)
    return keras.Model(inputs, outputs)


class TorchTwin(nn.Module):
    """The same network in NCHW; Flatten follows Keras' (H, W, C) order."""

    def __init__(self, net: "keras.Model") -> None:
        super().__init__()
        conv1, conv2, dense = (layer for layer in net.layers if layer.weights)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 16 * 12, 5)
        with torch.no_grad():
            for mine, theirs in ((self.conv1, conv1), (self.conv2, conv2)):
                kernel, bias = (keras.ops.convert_to_numpy(w) for w in theirs.weights)
                mine.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1)))  # HWIO -> OIHW
                mine.bias.copy_(torch.from_numpy(bias))
            kernel, bias = (keras.ops.convert_to_numpy(w) for w in dense.weights)
            self.fc.weight.copy_(torch.from_numpy(kernel.T))
            self.fc.bias.copy_(torch.from_numpy(bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.permute(0, 2, 3, 1).flatten(1))  # NHWC flatten order


def last_relu(model: ox.Model) -> str:
    return [node.outputs[0].name for node in model.ir.graph if node.op_type == "Relu"][-1]


def nchw(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 3, 1, 2)


@pytest.fixture(scope="module")
def pair():
    net = keras_cnn()
    x = np.random.default_rng(0).random((2, SIZE, SIZE, 3), dtype=np.float32)
    model = ox.adapters.keras.export(net, x)
    twin = TorchTwin(net).eval()
    reference = ox.adapters.torch.export(twin, torch.from_numpy(nchw(x).copy()), exporter="legacy")
    return net, twin, model, reference, x


def test_export_keeps_the_channels_last_input_and_matches_keras_and_its_torch_twin(pair):
    net, twin, model, _, x = pair
    # The user's layout is kept (the graph may compute channels first inside).
    assert getattr(model, "user_input_shape", model.inputs[0].shape)[1:] == (SIZE, SIZE, 3)
    assert model.fixed_batch is None
    assert "keras" in model.source
    x5 = np.random.default_rng(1).random((5, SIZE, SIZE, 3), dtype=np.float32)
    expected = keras.ops.convert_to_numpy(net(x5))
    np.testing.assert_allclose(model.predict(x5), expected, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(twin(torch.from_numpy(nchw(x5).copy())).numpy(), expected, atol=1e-5)


def test_saliency_equals_the_torch_twins(pair):
    _, _, model, reference, x = pair
    ours = ox.Saliency(model).attribute(x, target=1, abs=False)
    ref = ox.Saliency(reference).attribute(nchw(x), target=1, abs=False)
    assert ours.shape == x.shape
    assert max_rel_err(nchw(ours), ref) < TOL


def test_occlusion_equals_the_torch_twins(pair):
    _, _, model, reference, x = pair
    ours = ox.Occlusion(model).attribute(
        x, target=2, sliding_window_shapes=(8, 8, 3), strides=(4, 4, 3), show_progress=False
    )
    ref = ox.Occlusion(reference).attribute(
        nchw(x), target=2, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), show_progress=False
    )
    assert max_rel_err(nchw(ours), ref) < TOL


def test_incremental_occlusion_of_the_channels_last_export_equals_full_passes(pair, monkeypatch, caplog):
    import logging

    from onnxplain.core import incremental

    monkeypatch.setattr(incremental, "GAIN", 1e9)  # take the incremental path on this small net
    monkeypatch.setattr(incremental, "STAGE_OVERHEAD", 0.0)
    _, _, model, _, x = pair
    occ = ox.Occlusion(model)
    kwargs = dict(target=[2, 4], sliding_window_shapes=(6, 6, 3), strides=(4, 4, 3), show_progress=False)
    full = occ.attribute(x, **kwargs)
    with caplog.at_level(logging.DEBUG, logger="onnxplain.core.incremental"):
        fast = occ.attribute(x, incremental=True, **kwargs)
    assert any("incremental: cuts" in r.getMessage() for r in caplog.records)
    # float rounding only: 1e-5 of the largest output
    assert np.abs(fast - full).max() <= 1e-5 * np.abs(model.predict(x)).max()


def test_grad_cam_equals_the_torch_twins(pair):
    _, _, model, reference, x = pair
    ours = ox.GradCAM(model, layer=last_relu(model)).attribute(x, target=3)
    ref = ox.GradCAM(reference, layer=last_relu(reference)).attribute(nchw(x), target=3)
    assert ours.shape == ref.shape == (2, SIZE, SIZE)
    assert max_rel_err(ours, ref) < TOL


def test_a_model_that_is_not_keras_is_refused():
    with pytest.raises(ox.InputValidationError, match="keras.Model"):
        ox.adapters.keras.export(lambda x: x, np.zeros((1, 4, 4, 3), np.float32))


def test_a_bad_example_is_refused(pair):
    net = pair[0]
    with pytest.raises(ox.InputValidationError, match="example"):
        ox.adapters.keras.export(net, np.zeros(3, np.float32))


def keras_se_cnn() -> "keras.Model":
    """Conv → squeeze-and-excitation (GlobalAveragePooling2D → Reshape → 1×1 Conv → ReLU →
    1×1 Conv → sigmoid → Multiply) → GAP → Dense, as Keras' EfficientNet builds it."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    s = keras.layers.GlobalAveragePooling2D()(x)
    s = keras.layers.Reshape((1, 1, 8))(s)
    s = keras.layers.Conv2D(4, 1, activation="relu")(s)
    s = keras.layers.Conv2D(8, 1, activation="sigmoid", name="se_gate")(s)
    x = keras.layers.Multiply()([x, s])
    outputs = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def test_a_keras_se_block_and_gap_head_are_found_in_the_torch_backends_export():
    """Keras' torch backend casts every result to float32 again and pools the SE block
    channels last; the gate, the GAP → Dense head and LRP's gates are found all the same."""
    net = keras_se_cnn()
    x = np.random.default_rng(4).random((2, SIZE, SIZE, 3), dtype=np.float32)
    model = ox.adapters.keras.export(net, x)
    (gate,) = model.attention_gates()
    want = keras.ops.convert_to_numpy(keras.Model(net.inputs, net.get_layer("se_gate").output)(x))
    maps = ox.AttentionMaps(model).attribute(x, upsample=False)
    np.testing.assert_allclose(maps[gate.name], want[:, 0, 0, :], atol=1e-6)
    head = model.classifier_head()
    assert head is not None and head.weight.shape == (5, 8)
    cam = ox.CAM(model).attribute(x, target=1, relu_attributions=False, upsample=False)
    grad = ox.GradCAM(model).attribute(x, target=1, relu_attributions=False, upsample=False)
    assert max_rel_err(cam, grad * SIZE * SIZE) < TOL
    assert np.isfinite(ox.lrp.LRP(model).attribute(x, target=1)).all()


def test_a_keras_model_that_takes_uint8_images_takes_them_and_floats():
    """Rescaling inside the model, the input uint8 (as Keras serving models take images): the
    export's input becomes float32, channels last stays, and gradients run."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((SIZE, SIZE, 3), dtype="uint8")
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    net = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    x = np.random.default_rng(5).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    model = ox.adapters.keras.export(net, x)
    assert model.converted_from == "uint8" and model.layout == "NHWC"
    want = keras.ops.convert_to_numpy(net(x))
    assert max_rel_err(model.predict(x), want) < TOL
    cam = ox.CAM(model).attribute(x, target=1, relu_attributions=False, upsample=False)
    grad = ox.GradCAM(model).attribute(x, target=1, relu_attributions=False, upsample=False)
    assert max_rel_err(cam, grad * (SIZE - 2) ** 2) < TOL


def test_a_keras_model_that_takes_images_without_a_channel_axis_takes_them():
    """``Input((H, W))`` then ``Reshape((H, W, 1))``, as Keras' MNIST examples write it: the
    layout is NHW, arrays go in and come out (N, H, W), and an occluded patch changes the
    score by what Keras computes."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((SIZE, SIZE))
    image = keras.layers.Reshape((SIZE, SIZE, 1))(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(image)
    net = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    x = np.random.default_rng(6).random((2, SIZE, SIZE), dtype=np.float32)
    model = ox.adapters.keras.export(net, x)
    assert model.layout == "NHW" and model.user_input_shape[1:] == (SIZE, SIZE)
    want = keras.ops.convert_to_numpy(net(x))
    assert max_rel_err(model.predict(x), want) < TOL
    occlusion = ox.Occlusion(model).attribute(x, target=1, sliding_window_shapes=(8, 8), strides=(8, 8))
    hidden = x.copy()
    hidden[:, :8, :8] = 0
    by_hand = want[:, 1] - keras.ops.convert_to_numpy(net(hidden))[:, 1]
    assert occlusion.shape == x.shape
    np.testing.assert_allclose(occlusion[:, 0, 0], by_hand, rtol=1e-4, atol=1e-6)
    cam = ox.GradCAM(model).attribute(x, target=1)
    assert cam.shape == x.shape and np.isfinite(cam).all()


def test_a_keras_model_on_flattened_images_takes_the_images():
    """``Input((H·W·C,))`` then ``Reshape((H, W, C))``: the images it flattens are what the
    model takes, channels last; predictions and an occluded patch's score change are
    Keras's on the flattened arrays."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((SIZE * SIZE * 3,))
    image = keras.layers.Reshape((SIZE, SIZE, 3))(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(image)
    net = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    flat = np.random.default_rng(7).random((2, SIZE * SIZE * 3), dtype=np.float32)
    model = ox.adapters.keras.export(net, flat)
    assert model.layout == "NHWC" and model.user_input_shape[1:] == (SIZE, SIZE, 3)
    x = flat.reshape(2, SIZE, SIZE, 3)
    want = keras.ops.convert_to_numpy(net(flat))
    assert max_rel_err(model.predict(x), want) < TOL
    occlusion = ox.Occlusion(model).attribute(x, target=1, sliding_window_shapes=(8, 8, 3), strides=(8, 8, 3))
    hidden = x.copy()
    hidden[:, :8, 8:16] = 0
    by_hand = want[:, 1] - keras.ops.convert_to_numpy(net(hidden.reshape(2, -1)))[:, 1]
    np.testing.assert_allclose(occlusion[:, 0, 8, 0], by_hand, rtol=1e-4, atol=1e-6)
    assert ox.GradCAM(model).attribute(x, target=1).shape == x.shape[:3]


def test_a_model_with_augmentation_layers_inside_is_exported_in_inference_mode():
    """Keras' tutorials put RandomFlip/RandomRotation in the model; Keras' export calls it
    without training=False and fails on their random ops, so the adapter exports it in
    inference mode (where they pass images through): predictions are ``model.predict``'s
    and an occluded patch changes the score as in Keras."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.RandomRotation(0.1)(x)
    x = keras.layers.Rescaling(1 / 255)(x)
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3, activation="relu")(x))
    x = keras.layers.Dropout(0.5)(keras.layers.GlobalAveragePooling2D()(x))
    net = keras.Model(inputs, keras.layers.Dense(3)(x))
    images = np.random.default_rng(8).random((2, SIZE, SIZE, 3), dtype=np.float32) * 255
    model = ox.adapters.keras.export(net, images)
    want = net.predict(images, verbose=0)
    assert max_rel_err(model.predict(images), want) < TOL
    occlusion = ox.Occlusion(model).attribute(images, target=2, sliding_window_shapes=(16, 16, 3),
                                              strides=(16, 16, 3))
    hidden = images.copy()
    hidden[:, 16:, :16] = 0
    by_hand = want[:, 2] - net.predict(hidden, verbose=0)[:, 2]
    np.testing.assert_allclose(occlusion[:, 16, 0, 0], by_hand, rtol=1e-4, atol=1e-5)


def test_a_model_that_crops_before_its_first_convolution_is_channels_last():
    """CenterCrop (a Slice) before the first convolution hid the transpose the layout is read
    from: the adapter names Keras' image_data_format, and an occluded patch (given in
    (H, W, C)) changes the score as in Keras."""
    keras.utils.set_random_seed(6)
    inputs = keras.Input((SIZE + 8, SIZE + 4, 3))
    x = keras.layers.CenterCrop(SIZE, SIZE)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(x))
    net = keras.Model(inputs, keras.layers.Dense(3)(x))
    images = np.random.default_rng(9).random((2, SIZE + 8, SIZE + 4, 3), dtype=np.float32)
    model = ox.adapters.keras.export(net, images)
    assert model.layout == "NHWC"
    occlusion = ox.Occlusion(model).attribute(images, target=2, sliding_window_shapes=(8, 8, 3),
                                              strides=(8, 8, 3))
    hidden = images.copy()
    hidden[:, 8:16, 8:16] = 0
    by_hand = net.predict(images, verbose=0)[:, 2] - net.predict(hidden, verbose=0)[:, 2]
    np.testing.assert_allclose(occlusion[:, 8, 8, 0], by_hand, rtol=1e-4, atol=1e-5)


def test_a_mixed_precision_model_is_computed_in_float32_and_explained_as_its_float32_twin():
    """Keras' mixed_float16 computes in float16 with float32 weights: the export (float16
    operations) loads computed in float32, so the check allows float16's rounding, and its
    saliency is the one of the same network and weights built in float32, within float16's
    rounding of what the export holds in float16 (1e-3; 1.3e-4 measured)."""

    def build() -> "keras.Model":
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.Conv2D(6, 3, activation="relu")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(3, dtype="float32")(x))

    keras.utils.set_random_seed(7)
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        mixed = build()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    twin = build()
    twin.set_weights(mixed.get_weights())
    images = np.random.default_rng(10).random((2, SIZE, SIZE, 3), dtype=np.float32)
    model = ox.adapters.keras.export(mixed, images)
    assert model.converted_from == "float16"
    expected = ox.Saliency(ox.adapters.keras.export(twin, images)).attribute(images, target=1)
    assert max_rel_err(ox.Saliency(model).attribute(images, target=1), expected) < 1e-3
