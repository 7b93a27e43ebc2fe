"""DeconvnetTopK: the top-k patches are exactly those of highest activation (checked
against a direct numpy computation over all activations), crops lie under the receptive
field computed from the graph, and projections equal ox.Deconvolution of that neuron."""

from __future__ import annotations

import numpy as np
import pytest

import onnxplain as ox
from onnxplain.backends.base import INPUT
from onnxplain.core.errors import InputValidationError
from onnxplain.core.targets import Objective
from onnxplain.methods.global_views import DeconvnetTopK
from onnxplain.methods.global_views._receptive_field import receptive_field

LAYER = "/block2/block2.2/Relu_output_0"  # conv3x3 → maxpool2 → conv3x3: (N, 32, 32, 32)


@pytest.fixture(scope="module")
def shapes():
    return ox.examples.shapes_model()


@pytest.fixture(scope="module")
def images():
    return ox.examples.shapes_dataset(20, seed=7).images


@pytest.fixture(scope="module")
def activations(shapes, images):
    return shapes.backend("onnxruntime").forward(images, outputs=[LAYER])[LAYER].astype(np.float64)


def test_receptive_fields_by_hand(shapes):
    # conv3 pad1: (J, A, R) = (1, −1, 3); maxpool2: (2, −1, 4); conv3 pad1: (2, −3, 8)
    field = receptive_field(shapes, LAYER)
    assert (field.jump, field.start, field.size, field.exact) == ((2, 2), (-3, -3), (8, 8), True)
    # after block3 (conv3) and block4 (dilated conv3, pad 2): (4, −15, 34); the SE branch,
    # broadcast over space, does not widen the field of its output
    for layer in ("/block4/block4.2/Relu_output_0", "/se/Mul_output_0"):
        f = receptive_field(shapes, layer)
        assert (f.jump, f.start, f.size, f.exact) == ((4, 4), (-15, -15), (34, 34), True)


@pytest.mark.parametrize("channel", [3, 17])
def test_top_images_are_those_with_the_highest_maximum(shapes, images, activations, channel):
    top = DeconvnetTopK(shapes).attribute(images, ox.Channel(LAYER, channel), k=5, batch_size=6)
    maps = activations[:, channel].reshape(len(images), -1)
    best = maps.max(1)
    order = sorted(range(len(images)), key=lambda i: (-best[i], i))[:5]
    assert top.image_indices.tolist() == order
    np.testing.assert_allclose(top.values, best[order], rtol=1e-6)
    flat = top.positions[:, 0] * 32 + top.positions[:, 1]
    assert flat.tolist() == [int(maps[i].argmax()) for i in order]
    assert np.all(np.diff(top.values) <= 0)


def test_per_position_ranking_matches_a_full_sort(shapes, images, activations):
    top = DeconvnetTopK(shapes).attribute(images, ox.Channel(LAYER, 5), k=12, per_image=False, batch_size=8)
    a = activations[:, 5]
    entries = sorted(
        ((-a[i, r, c], i, r, c) for i in range(a.shape[0]) for r in range(32) for c in range(32)),
    )[:12]
    got = list(zip(top.image_indices.tolist(), top.positions[:, 0].tolist(), top.positions[:, 1].tolist()))
    assert got == [(i, r, c) for _, i, r, c in entries]
    np.testing.assert_allclose(top.values, [-v for v, *_ in entries], rtol=1e-6)


def test_crops_projections_and_gradient_support(shapes, images):
    top = DeconvnetTopK(shapes).attribute(images, ox.Channel(LAYER, 3), k=3)
    deconv = ox.Deconvolution(shapes)
    saliency = ox.Saliency(shapes)
    for j in range(3):
        i, (r, c) = top.image_indices[j], top.positions[j]
        t, left, b, right = top.boxes[j]
        assert (t, left, b, right) == (2 * r - 3, 2 * c - 3, 2 * r + 5, 2 * c + 5)
        x = images[i : i + 1]
        # the crop is the image under the box (zero outside the image)
        padded = np.pad(x[0], ((0, 0), (8, 8), (8, 8)))
        np.testing.assert_array_equal(top.crops[j], padded[:, t + 8 : b + 8, left + 8 : right + 8])
        # the projection is the deconvnet backward pass of that single activation
        neuron = ox.Neuron(LAYER, (3, int(r), int(c)))
        np.testing.assert_allclose(top.projections[j], deconv.attribute(x, target=neuron)[0], atol=1e-6)
        # every pixel the unit depends on lies in the receptive field
        grad = saliency.attribute(x, target=neuron)[0].sum(0)
        rows, cols = np.nonzero(grad)
        assert rows.size and rows.min() >= max(t, 0) and rows.max() < b
        assert cols.min() >= max(left, 0) and cols.max() < right
        assert np.abs(top.projections[j]).sum() > 0


def test_projection_uses_the_deconvnet_rule_not_the_gradient(shapes, images):
    top = DeconvnetTopK(shapes).attribute(images, ox.Channel(LAYER, 3), k=1)
    i, (r, c) = top.image_indices[0], top.positions[0]
    objective = Objective(LAYER, "index", np.array([[3, r, c]]))
    plain = shapes.backend("torch").gradients(images[i : i + 1], objective, wrt=[INPUT]).gradients[INPUT]
    assert not np.allclose(plain[0], top.projections[0])


def test_target_must_be_a_channel_of_a_feature_map(shapes, images):
    method = DeconvnetTopK(shapes)
    with pytest.raises(InputValidationError, match="Channel"):
        method.attribute(images, 3)
    with pytest.raises(InputValidationError, match="out of range"):
        method.attribute(images, ox.Channel(LAYER, 99))
    with pytest.raises(InputValidationError, match="4-D"):
        method.attribute(images, ox.Channel("logits", 0))
