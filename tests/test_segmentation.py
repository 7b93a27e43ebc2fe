"""Segmentations into superpixels: (N, H, W) int labels 0..K−1 that follow the image."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import onnxplain as ox
import onnxplain.segmentation as seg


@pytest.fixture(scope="module")
def quadrants():
    """Two 32×32 RGB images, four flat-coloured quadrants each (plus slight noise),
    normalised around zero as a model would see them."""
    colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)
    img = np.zeros((3, 32, 32), np.float32)
    for q, (r, c) in enumerate([(0, 0), (0, 16), (16, 0), (16, 16)]):
        img[:, r:r + 16, c:c + 16] = colours[q][:, None, None]
    noise = np.random.default_rng(0).normal(0, 0.01, (2, 3, 32, 32)).astype(np.float32)
    return (np.stack([img, img[:, ::-1]]) + noise - 0.5) / 0.25


def quadrant_of(h: int, w: int) -> np.ndarray:
    rows, cols = np.indices((h, w))
    return (rows >= h // 2) * 2 + (cols >= w // 2)


def test_grid_numbers_cells_row_by_row_and_clips_the_far_edges():
    labels = seg.grid((1, 3, 5, 7), cell_size=(2, 3))
    assert labels.shape == (1, 5, 7) and labels.dtype == np.int64
    assert labels[0, 0].tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert labels[0, :, 0].tolist() == [0, 0, 3, 3, 6]
    assert labels.max() == 8


@pytest.mark.parametrize(
    "segment",
    [lambda x: seg.slic(x, n_segments=4, compactness=10),
     lambda x: seg.quickshift(x, kernel_size=3, max_dist=20),
     lambda x: seg.felzenszwalb(x, scale=100, min_size=20)],
    ids=["slic", "quickshift", "felzenszwalb"],
)
def test_superpixels_are_contiguous_labels_that_follow_colour_edges(quadrants, segment):
    labels = segment(quadrants)
    assert labels.shape == (2, 32, 32) and labels.dtype == np.int64
    quadrant = quadrant_of(32, 32)
    for image in labels:
        assert np.array_equal(np.unique(image), np.arange(image.max() + 1))
        assert image.max() + 1 >= 4
        for label in np.unique(image):  # no superpixel crosses a colour edge
            assert len(np.unique(quadrant[image == label])) == 1


def test_superpixels_work_on_grayscale_and_four_channel_images():
    x = np.random.default_rng(0).random((1, 1, 16, 16)).astype(np.float32)
    assert seg.slic(x, n_segments=4).shape == (1, 16, 16)
    assert seg.felzenszwalb(np.repeat(x, 4, axis=1)).shape == (1, 16, 16)


def test_a_missing_scikit_image_names_the_extra(monkeypatch, quadrants):
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)
    with pytest.raises(ImportError, match=r"onnxplain\[segmentation\]"):
        seg.slic(quadrants)
    assert seg.grid(quadrants, 8).shape == (2, 32, 32)  # grid needs nothing


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x: seg.slic(x[0]), r"\(N, C, H, W\)"),
        (lambda x: seg.slic(x, n_segments=0), "n_segments"),
        (lambda x: seg.quickshift(x, ratio=2.0), "ratio"),
        (lambda x: seg.felzenszwalb(x, min_size=0), "min_size"),
        (lambda x: seg.grid(x, cell_size=0), "cell_size"),
        (lambda x: seg.grid(x[0]), r"\(N, C, H, W\)"),
        (lambda x: seg.slic(np.full_like(x, np.nan)), "NaN"),
    ],
)
def test_segmentation_refuses_bad_arguments(quadrants, call, match):
    with pytest.raises(ox.InputValidationError, match=match):
        call(quadrants)
