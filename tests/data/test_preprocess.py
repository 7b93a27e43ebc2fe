"""Preprocess: a validated spec that turns image files into model inputs and back."""

import json

import numpy as np
import pytest
from PIL import Image

import onnxplain as ox
from onnxplain.preprocess import Preprocess, find_spec, read_image


@pytest.fixture(scope="module")
def picture():
    """A 40×60 RGB gradient with a distinct value per pixel position."""
    y, x = np.mgrid[0:40, 0:60]
    return np.stack([x * 4, y * 6, (x + y) * 2], axis=-1).astype(np.uint8)


def test_spec_round_trips_through_json(tmp_path):
    spec = Preprocess(size=(224, 224), resize="center_crop", mean=(0.485, 0.456, 0.406),
                      std=(0.229, 0.224, 0.225), layout="NHWC")
    assert Preprocess.from_json(spec.save(tmp_path / "spec.json")) == spec


def test_a_model_card_with_a_preprocess_entry_is_read_too(tmp_path):
    (tmp_path / "net.json").write_text(json.dumps({"classes": ["a"], "preprocess": {"size": [8, 8]}}))
    (tmp_path / "net.onnx").write_bytes(b"")
    assert find_spec(tmp_path / "net.onnx") == Preprocess(size=(8, 8))
    assert Preprocess.from_json(tmp_path / "net.json").size == (8, 8)
    assert find_spec(tmp_path / "other.onnx") is None


@pytest.mark.parametrize("bad, field", [
    ({"mean": [0.5, 0.5]}, "mean"),
    ({"std": [0.0]}, "std"),
    ({"layout": "CHW"}, "layout"),
    ({"size": [0, 4]}, "size"),
    ({"scale": -1}, "scale"),
    ({"colour": "RGB"}, "colour"),
])
def test_bad_fields_are_input_validation_errors_naming_the_field(bad, field):
    with pytest.raises(ox.InputValidationError, match=field):
        Preprocess.parse(bad)


def test_apply_scales_normalises_and_lays_out(picture):
    spec = Preprocess(mean=(0.5,), std=(0.25,))
    x = spec.apply([picture])
    assert x.shape == (1, 3, 40, 60) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 5, 7], (picture[5, 7] / 255 - 0.5) / 0.25, rtol=1e-6)
    nhwc = Preprocess(mean=(0.5,), std=(0.25,), layout="NHWC").apply([picture])
    np.testing.assert_array_equal(nhwc, x.transpose(0, 2, 3, 1))
    bgr = Preprocess(color="BGR").apply([picture])
    np.testing.assert_allclose(bgr[0, 0], picture[..., 2] / 255, rtol=1e-6)


def test_resize_stretches_or_crops_the_centre(picture):
    assert Preprocess(size=(16, 16)).apply([picture]).shape == (1, 3, 16, 16)
    crop = Preprocess(size=(40, 40), resize="center_crop", interpolation="nearest").apply([picture])
    # the 40×60 picture keeps its height, so the crop is columns 10..49 unchanged
    np.testing.assert_allclose(crop[0].transpose(1, 2, 0), picture[:, 10:50] / 255, rtol=1e-6)


def test_to_display_undoes_apply(picture):
    spec = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), color="BGR")
    np.testing.assert_array_equal(spec.to_display(spec.apply([picture]))[0], picture)
    grey = Preprocess(color="L")
    assert grey.apply([picture]).shape == (1, 1, 40, 60)
    assert grey.to_display(grey.apply([picture])).shape == (1, 40, 60, 3)


def test_read_image_loads_png_and_jpeg_and_refuses_other_files(tmp_path, picture):
    Image.fromarray(picture).save(tmp_path / "a.png")
    Image.fromarray(picture).save(tmp_path / "b.jpg", quality=95)
    assert read_image(tmp_path / "a.png").size == (60, 40)
    assert read_image(tmp_path / "b.jpg").mode == "RGB"
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ox.InputValidationError, match="not an image"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(ox.InputValidationError, match="no image file"):
        read_image(tmp_path / "missing.png")
    x = Preprocess().load([tmp_path / "a.png"])
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), picture / 255, rtol=1e-6)


def test_images_of_different_sizes_need_a_size(picture):
    with pytest.raises(ox.InputValidationError, match="different sizes"):
        Preprocess().apply([picture, picture[:20]])
    assert Preprocess(size=(20, 20)).apply([picture, picture[:20]]).shape == (2, 3, 20, 20)


def test_a_guess_from_the_model_input_shape():
    spec = Preprocess.for_model(ox.load(ox.examples.tiny_cnn()))
    assert spec.size is None and spec.layout == "NCHW" and spec.color == "RGB"
    shapes = Preprocess.for_model(ox.examples.shapes_model())
    assert shapes.size == (64, 64)
