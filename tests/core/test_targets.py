"""Targets are resolved in one place; every kind and every mistake."""

import numpy as np
import pytest

import onnxplain as ox
from onnxplain.core import resolve_target


def test_int_list_and_predicted_targets():
    out = np.array([[0.1, 2.0, 0.3], [5.0, 0.0, 1.0]])
    assert resolve_target(2, 2, "y", 3).index[:, 0].tolist() == [2, 2]
    assert resolve_target([0, 1], 2, "y", 3).index[:, 0].tolist() == [0, 1]
    assert resolve_target(np.array([1, 2]), 2, "y", 3).index[:, 0].tolist() == [1, 2]
    assert resolve_target(None, 2, "y", 3, predict=lambda: out).index[:, 0].tolist() == [1, 0]


def test_scores_select_from_numpy_like_from_torch():
    import torch

    values = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    neuron = resolve_target(ox.Neuron("f", (1, 0, 1)), 2, "y", None)
    channel = resolve_target(ox.Channel("f", 2), 2, "y", None)
    flat = resolve_target(ox.Neuron("f", 5), 2, "y", None)
    for obj, expected in [(neuron, values[:, 1, 0, 1]), (channel, values[:, 2].mean((1, 2))),
                          (flat, values.reshape(2, -1)[:, 5])]:
        np.testing.assert_array_equal(obj.scores(values), expected)
        np.testing.assert_array_equal(obj.scores(torch.from_numpy(values)).numpy(), expected)


@pytest.mark.parametrize("target, match", [
    (3, "out of range"), (-1, "out of range"), ([0, 1, 2], "3 classes but there are 2"),
    ("cat", "target must be"), (1.5, "target must be"), (True, "target must be"),
])
def test_bad_targets_are_clear_errors(target, match):
    with pytest.raises(ox.InputValidationError, match=match):
        resolve_target(target, 2, "y", 3)


def test_channel_target_maximises_a_feature_map(small_model, images):
    layer = small_model.find_layer().name
    grads = ox.Saliency(small_model).attribute(images, target=ox.Channel(layer, 4), abs=False)
    assert grads.shape == images.shape and np.abs(grads).sum() > 0
    occ = ox.Occlusion(small_model).attribute(images, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8),
                                              target=ox.Channel(layer, 4))
    assert occ.shape == images.shape


@pytest.mark.parametrize("index", [(0, -1, 0), (-1,), (), (0, 1.5), (True, 0)])
def test_neuron_tuples_never_wrap_around(index):
    """Negative entries are refused (Captum's neuron_selector would wrap them), as an
    int index and Channel already are; so are empty and non-integer tuples."""
    with pytest.raises(ox.InputValidationError, match="Neuron index"):
        resolve_target(ox.Neuron("f", index), 2, "y", 3)


def test_indices_are_checked_against_the_tensor_shape_on_numpy_and_torch():
    import torch

    values = np.zeros((2, 4, 5, 6), np.float32)
    cases = [
        (ox.Channel("f", 4), "has channels 0..3"),
        (ox.Neuron("f", 120), "flattened index 0..119"),
        (ox.Neuron("f", (0, 5, 0)), r"\(0..3, 0..4, 0..5\)"),
        (ox.Neuron("f", (0, 0)), "tuple of 3 indices"),
    ]
    for target, match in cases:
        objective = resolve_target(target, 2, "y", None)
        for v in (values, torch.from_numpy(values)):
            with pytest.raises(ox.InputValidationError, match=match):
                objective.scores(v)
        # before any evaluation, on the declared dims; symbolic ones ("H") are left unchecked
        with pytest.raises(ox.InputValidationError, match="'f' of shape"):
            objective.check_shape(("N", 4, 5, 6))
    resolve_target(ox.Neuron("f", (0, 99, 0)), 2, "y", None).check_shape(("N", 4, "H", "W"))
    with pytest.raises(ox.InputValidationError, match=r"\(N, 4, \?, \?\) has channels 0..3"):
        resolve_target(ox.Channel("f", 7), 2, "y", None).check_shape(("N", 4, "H", "W"))


@pytest.mark.parametrize("kind, index", [("index", [[7]]), ("index", [[2, 1, 3]]), ("channel", [[2]])])
def test_one_index_for_the_whole_batch_selects_what_per_example_indices_select(kind, index):
    """A target shared by every example is read by basic indexing (no index arrays, none sent
    to a GPU); the scores are those of the per-example path, and a numpy result is no view."""
    import torch

    from onnxplain.core.targets import Objective

    values = np.random.default_rng(0).standard_normal((3, 4, 5, 6))
    shared = Objective("y", kind, np.repeat(np.asarray(index), 3, axis=0))
    last = [[1] * len(index[0])]  # another index for the last example
    mixed = Objective("y", kind, np.concatenate([np.repeat(np.asarray(index), 2, axis=0), last]))
    assert shared._shared_index is not None and mixed._shared_index is None
    per_example = mixed.scores(values)
    got = shared.scores(values)
    np.testing.assert_array_equal(got[:2], per_example[:2])
    assert got[2] != per_example[2]
    got[:] = 0
    assert np.abs(shared.scores(values)).min() > 0  # values untouched
    torch_scores = shared.scores(torch.from_numpy(values))
    np.testing.assert_allclose(torch_scores.numpy(), shared.scores(values), rtol=1e-12)  # the means' rounding
