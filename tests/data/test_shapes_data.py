"""The procedurally generated shapes data set: deterministic, labelled, with true masks."""

import numpy as np
import pytest

import onnxplain as ox
from onnxplain.data import shapes


@pytest.fixture(scope="module")
def batch():
    return shapes.generate(60, seed=11)


def test_generate_returns_float_images_int_labels_bool_masks(batch):
    assert batch.images.shape == (60, 3, 64, 64) and batch.images.dtype == np.float32
    assert batch.labels.shape == (60,) and batch.labels.dtype == np.int64
    assert batch.masks.shape == (60, 64, 64) and batch.masks.dtype == bool
    assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
    assert set(batch.labels.tolist()) == set(range(len(shapes.CLASSES)))


def test_image_i_depends_only_on_seed_and_i(batch):
    head = shapes.generate(7, seed=11)
    np.testing.assert_array_equal(head.images, batch.images[:7])
    np.testing.assert_array_equal(head.labels, batch.labels[:7])
    np.testing.assert_array_equal(head.masks, batch.masks[:7])
    other = shapes.generate(7, seed=12)
    assert not np.array_equal(other.images, head.images)


def test_every_mask_is_one_object_of_plausible_size(batch):
    areas = batch.masks.sum(axis=(1, 2))
    # radius 9..16 px: a star (area 1.6 r²) is the smallest, a circle (π r²) the largest
    assert areas.min() >= 1.6 * 9**2 * 0.85
    assert areas.max() <= np.pi * 16**2 * 1.1
    for m in batch.masks:  # the object lies inside the image, clear of the border
        assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())


def test_the_object_stands_out_from_what_surrounds_it(batch):
    lum = np.tensordot(np.array([0.299, 0.587, 0.114]), batch.images, axes=(0, 1))  # (N, H, W)
    for image, mask in zip(lum, batch.masks):
        pad = np.pad(mask, 3)
        ring = np.zeros_like(mask)
        for dy in range(-3, 4):
            for dx in range(-3, 4):
                ring |= pad[3 + dy:3 + dy + 64, 3 + dx:3 + dx + 64]
        ring &= ~mask
        assert abs(image[mask].mean() - image[ring].mean()) > 0.1


def test_clutter_can_be_left_out():
    plain = shapes.generate(3, seed=4, clutter=False)
    assert plain.images.shape == (3, 3, 64, 64)


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"n": 2, "seed": -1}, {"n": 2, "size": 8}, {"n": 2.5}])
def test_bad_arguments_are_input_validation_errors(kwargs):
    with pytest.raises(ox.InputValidationError):
        shapes.generate(**kwargs)


def test_examples_shapes_dataset_unpacks_to_images_labels_masks():
    images, labels, masks = ox.examples.shapes_dataset(4, seed=9)
    assert images.shape == (4, 3, 64, 64) and labels.shape == (4,) and masks.shape == (4, 64, 64)
