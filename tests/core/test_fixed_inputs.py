"""Models that take more than the image: ``load(..., fixed_inputs=...)`` holds the other
inputs at given values, and methods equal Captum on the module with those values as
``additional_forward_args``."""

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, Occlusion, Saliency

import onnxplain as ox

SIZE = 12
META = 0.7


class WithSideInput(torch.nn.Module):
    """(image, meta (N, 2)) → conv-ReLU → global average, concatenated with meta → linear;
    ``channels_last`` takes (N, H, W, C) images and permutes them."""

    def __init__(self, channels_last: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.channels_last = channels_last
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        return self.fc(torch.cat([torch.relu(self.conv(x)).mean((2, 3)), meta], 1))


def _export(net, path, image_shape, dynamic=True, exporter="legacy"):
    example = (torch.rand(2, *image_shape), torch.rand(2, 2))
    if exporter == "dynamo":
        batch = torch.export.Dim("n")
        torch.onnx.export(net, example, path, dynamo=True, input_names=["x", "meta"],
                          dynamic_shapes=({0: batch}, {0: batch}) if dynamic else None)
    else:
        axes = {"x": {0: "n"}, "meta": {0: "n"}} if dynamic else None
        torch.onnx.export(net, example, path, dynamo=False, input_names=["x", "meta"], dynamic_axes=axes)
    return path


def _meta(n: int) -> torch.Tensor:
    return torch.tensor([[META, -META]]).repeat(n, 1)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).random((3, 3, SIZE, SIZE), dtype=np.float32)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_methods_equal_captum_with_the_side_input_as_additional_forward_args(exporter, images, tmp_path):
    net = WithSideInput().eval()
    path = _export(net, tmp_path / "side.onnx", (3, SIZE, SIZE), exporter=exporter)
    refusal = r"2 inputs \('x' \(.*, 3, 12, 12\) float32, 'meta' .*fixed_inputs=\{name: value\}"
    with pytest.raises(ox.ModelLoadError, match=refusal):
        ox.load(path)
    model = ox.load(path, fixed_inputs={"meta": [META, -META]})
    assert [s.name for s in model.inputs] == ["x"]
    x, meta = torch.from_numpy(images), _meta(len(images))
    with torch.no_grad():
        want = net(x, meta).numpy()
    for backend in ("onnxruntime", "torch"):
        np.testing.assert_allclose(model.backend(backend).predict(images), want, rtol=1e-5, atol=1e-6)
    window = {"sliding_window_shapes": (3, 4, 4), "strides": (3, 4, 4)}
    for ours, theirs, kwargs in (
        (ox.Saliency(model), Saliency(net), {"abs": False}),
        (ox.IntegratedGradients(model), IntegratedGradients(net), {"n_steps": 16}),
        (ox.Occlusion(model), Occlusion(net), window),
    ):
        got = ours.attribute(images, target=2, **kwargs)
        ref = theirs.attribute(x, target=2, additional_forward_args=(meta,), **kwargs).detach().numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6, err_msg=type(ours).__name__)
    cam = ox.GradCAM(model).attribute(images, target=2)
    assert cam.shape == (3, SIZE, SIZE) and np.isfinite(cam).all()


def test_one_examples_value_may_carry_a_batch_axis_of_one_or_be_a_tensor(images, tmp_path):
    net = WithSideInput().eval()
    path = _export(net, tmp_path / "side.onnx", (3, SIZE, SIZE))
    with torch.no_grad():
        want = net(torch.from_numpy(images), _meta(3)).numpy()
    for value in ([[META, -META]], np.array([META, -META], np.float64), torch.tensor([META, -META])):
        model = ox.load(path, fixed_inputs={"meta": value})
        np.testing.assert_allclose(model.predict(images), want, rtol=1e-5, atol=1e-6)


def test_a_channels_last_image_with_a_side_input_keeps_its_layout(images, tmp_path):
    net = WithSideInput(channels_last=True).eval()
    path = _export(net, tmp_path / "nhwc.onnx", (SIZE, SIZE, 3))
    model = ox.load(path, fixed_inputs={"meta": [META, -META]})
    nhwc = np.ascontiguousarray(np.moveaxis(images, 1, -1))
    assert model.layout == "NHWC"
    with torch.no_grad():
        want = net(torch.from_numpy(nhwc), _meta(3)).numpy()
    np.testing.assert_allclose(model.predict(nhwc), want, rtol=1e-5, atol=1e-6)
    got = ox.Saliency(model).attribute(nhwc, target=0, abs=False)
    ref = Saliency(net).attribute(torch.from_numpy(nhwc), target=0, abs=False,
                                  additional_forward_args=(_meta(3),)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


def test_a_model_exported_for_one_image_is_made_dynamic_with_its_side_input(images, tmp_path):
    net = WithSideInput().eval()
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(net, (torch.rand(1, 3, SIZE, SIZE), torch.rand(1, 2)), path, dynamo=False,
                      input_names=["x", "meta"])
    model = ox.load(path, fixed_inputs={"meta": [META, -META]})
    assert model.batch_note is None  # the batch was made dynamic, not looped
    with torch.no_grad():
        want = net(torch.from_numpy(images), _meta(3)).numpy()
    np.testing.assert_allclose(model.predict(images), want, rtol=1e-5, atol=1e-6)


class Flags(torch.nn.Module):
    """(image, temperature (scalar), class id (N,) int64): logits / temperature + an
    embedding of the id."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.embed = torch.nn.Embedding(5, 4)

    def forward(self, x, temperature, ident):
        return torch.relu(self.conv(x)).mean((2, 3)) / temperature + self.embed(ident)


def test_inputs_without_a_batch_axis_and_integer_inputs_take_their_values(images, tmp_path):
    net = Flags().eval()
    path = tmp_path / "flags.onnx"
    torch.onnx.export(net, (torch.rand(2, 3, SIZE, SIZE), torch.tensor(2.0), torch.tensor([1, 3])), path,
                      dynamo=False, input_names=["x", "temperature", "ident"],
                      dynamic_axes={"x": {0: "n"}, "ident": {0: "n"}})
    model = ox.load(path, fixed_inputs={"temperature": 2.5, "ident": 3})
    with torch.no_grad():
        want = net(torch.from_numpy(images), torch.tensor(2.5), torch.tensor([3, 3, 3])).numpy()
    np.testing.assert_allclose(model.predict(images), want, rtol=1e-5, atol=1e-6)
    flat = ox.load(path, fixed_inputs={"temperature": [2.5], "ident": [3]})  # as a command line gives them
    np.testing.assert_allclose(flat.predict(images), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ox.InputValidationError, match="does not fit the input's type int64"):
        ox.load(path, fixed_inputs={"temperature": 2.5, "ident": 0.5})
    with pytest.raises(ox.InputValidationError, match=r"fixed_inputs\['temperature'\] has shape \(2,\)"):
        ox.load(path, fixed_inputs={"temperature": [1.0, 2.0], "ident": 3})
    with pytest.raises(ox.InputValidationError, match="leaves \\['x', 'ident'\\]"):
        ox.load(path, fixed_inputs={"temperature": 2.5})
    with pytest.raises(ox.InputValidationError, match="\\['colour'\\], which the model does not take"):
        ox.load(path, fixed_inputs={"temperature": 2.5, "ident": 3, "colour": 1})
    with pytest.raises(ox.InputValidationError, match="NaN or Inf"):
        ox.load(path, fixed_inputs={"temperature": float("nan"), "ident": 3})


def test_a_batched_side_input_takes_one_examples_value(tmp_path):
    path = _export(WithSideInput().eval(), tmp_path / "side.onnx", (3, SIZE, SIZE))
    with pytest.raises(ox.InputValidationError, match="give one example's value"):
        ox.load(path, fixed_inputs={"meta": np.zeros((3, 2))})
    with pytest.raises(ox.InputValidationError, match="give one example's value"):
        ox.load(path, fixed_inputs={"meta": [1.0, 2.0, 3.0]})


def test_the_saved_model_takes_the_image_alone(images, tmp_path):
    net = WithSideInput().eval()
    path = _export(net, tmp_path / "side.onnx", (3, SIZE, SIZE))
    model = ox.load(path, fixed_inputs={"meta": [META, -META]})
    again = ox.load(model.save(tmp_path / "saved.onnx"))
    assert [s.name for s in again.inputs] == ["x"]
    np.testing.assert_allclose(again.predict(images), model.predict(images), rtol=1e-6, atol=1e-7)


def test_a_side_input_named_apart_from_the_batch_takes_one_examples_value(images, tmp_path):
    """Exporters may name each input's batch axis apart (tf2onnx: unk__N): a value without
    that axis (or with it as 1) is one example's, repeated for every image."""
    net = WithSideInput().eval()
    path = tmp_path / "apart.onnx"
    torch.onnx.export(net, (torch.rand(2, 3, SIZE, SIZE), torch.rand(2, 2)), path, dynamo=False,
                      input_names=["x", "meta"], dynamic_axes={"x": {0: "unk__1"}, "meta": {0: "unk__2"}})
    with torch.no_grad():
        want = net(torch.from_numpy(images), _meta(3)).numpy()
    for value in ([META, -META], [[META, -META]]):
        model = ox.load(path, fixed_inputs={"meta": value})
        np.testing.assert_allclose(model.predict(images), want, rtol=1e-5, atol=1e-6)


def test_clip_explains_each_image_against_the_texts_held_fixed(images, tmp_path):
    """Zero-shot CLIP: the tokenised texts (T, L) are an input on an axis of their own, taken
    as they are; the model gives (N, T) image-text logits, and Saliency of one text's logit
    equals Captum's with the texts as additional_forward_args."""
    transformers = pytest.importorskip("transformers")
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = transformers.CLIPTextConfig(vocab_size=50, max_position_embeddings=16, bos_token_id=0,
                                       eos_token_id=1, pad_token_id=1, **small)
    vision = transformers.CLIPVisionConfig(image_size=SIZE, patch_size=4, **small)
    config = transformers.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                     projection_dim=16)
    torch.manual_seed(0)

    class ImageText(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = transformers.CLIPModel(config).eval()

        def forward(self, pixel_values, input_ids):
            return self.clip(pixel_values=pixel_values, input_ids=input_ids).logits_per_image

    net = ImageText().eval()
    ids = torch.randint(2, 50, (3, 7), generator=torch.Generator().manual_seed(1))
    path = tmp_path / "clip.onnx"
    torch.onnx.export(net, (torch.rand(2, 3, SIZE, SIZE), ids), path, dynamo=False, opset_version=17,
                      input_names=["pixel_values", "input_ids"], output_names=["logits_per_image"],
                      dynamic_axes={"pixel_values": {0: "images"}, "input_ids": {0: "texts"}})
    model = ox.load(path, fixed_inputs={"input_ids": ids.numpy()})
    x = torch.from_numpy(images)
    with torch.no_grad():
        want = net(x, ids).numpy()
    assert want.shape == (3, 3)
    np.testing.assert_allclose(model.predict(images), want, rtol=1e-4, atol=1e-5)
    ours = ox.Saliency(model).attribute(images, target=2, abs=False)
    ref = Saliency(net).attribute(x, target=2, abs=False, additional_forward_args=(ids,)).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())
