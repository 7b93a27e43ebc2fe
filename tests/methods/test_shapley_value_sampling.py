"""Shapley value sampling: exact on linear models, efficient for every draw, unbiased, and
converging to the exact Shapley values (exact Kernel SHAP) on an MLP."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import max_rel_err
from test_kernel_shap import linear_proto, linear_weights, mlp_proto

import onnxplain as ox
import onnxplain.segmentation as seg
from onnxplain.methods.surrogate import KernelShap, ShapleyValueSampling


@pytest.fixture(scope="module")
def mlp():
    return ox.load(mlp_proto(features=6))


@pytest.fixture(scope="module")
def tabular():
    rng = np.random.default_rng(7)
    return rng.standard_normal((3, 6)).astype(np.float32), rng.standard_normal((4, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def exact(mlp, tabular):
    x, background = tabular
    return KernelShap(mlp).attribute(x, target=1, background=background, exact=True)


def test_shapley_value_sampling_on_a_linear_model_is_w_times_x_minus_baseline():
    proto = linear_proto()
    model, w = ox.load(proto), linear_weights(proto)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    for n_samples in (1, 7):  # every permutation gives the exact values on a linear model
        phi = ShapleyValueSampling(model).attribute(x, baselines=b, target=2, n_samples=n_samples)
        assert max_rel_err(phi, w[:, 2] * (x - b)) < 1e-6


def test_every_estimate_is_efficient(mlp, tabular, exact):
    x, background = tabular
    phi = ShapleyValueSampling(mlp).attribute(x, target=1, background=background, n_samples=3)
    np.testing.assert_allclose(phi.sum(1), exact.sum(1), atol=1e-6)


def test_shapley_value_sampling_converges_to_the_exact_shapley_values(mlp, tabular, exact):
    x, background = tabular
    svs = ShapleyValueSampling(mlp)
    errors = [max_rel_err(svs.attribute(x, target=1, background=background, n_samples=n), exact)
              for n in (4, 64, 1024)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.02


def test_shapley_value_sampling_is_unbiased(mlp, tabular, exact):
    x, background = tabular
    draws = np.stack([
        ShapleyValueSampling(mlp).attribute(x, target=1, background=background, n_samples=2,
                                            antithetic=False, seed=s)
        for s in range(200)
    ])
    spread = draws.std(0) / np.sqrt(len(draws))
    assert (np.abs(draws.mean(0) - exact) < 4 * spread + 1e-6).all()


def test_antithetic_permutations_are_a_permutation_and_its_reverse():
    ranks = ShapleyValueSampling._ranks(5, 6, True, np.random.default_rng(0))
    np.testing.assert_array_equal(np.sort(ranks, 1), np.tile(np.arange(5), (6, 1)))
    np.testing.assert_array_equal(ranks[3:], 4 - ranks[:3])


def test_shapley_value_sampling_on_images_with_superpixels_batches_examples():
    model = ox.load(ox.examples.tiny_cnn(channels=4, classes=3))
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    seen = []
    backend = ox.backends.CallableBackend(lambda b: (seen.append(len(b)), model.predict(b))[1],
                                          model=model, max_batch_size=10_000)
    mask = seg.grid(x, 8)  # 4 features
    phi = ShapleyValueSampling(backend).attribute(x, target=0, feature_mask=mask, n_samples=10,
                                                  batch_size=16)
    assert phi.shape == x.shape and max(seen) <= 16
    assert sum(seen) == 3 * 2 + 3 * 10 * 3  # end points once, then M − 1 per permutation
    full = model.predict(x)[:, 0] - model.predict(np.zeros_like(x))[:, 0]
    # each φ_j is copied to the 64 pixels of its 8 × 8 cell, so a channel sums to 64 (f(x) − f(0))
    np.testing.assert_allclose(phi[:, 0].sum((1, 2)), 64 * full, rtol=1e-4)


def test_shapley_value_sampling_refuses_bad_arguments(mlp, tabular):
    x, background = tabular
    with pytest.raises(ox.InputValidationError, match="n_samples"):
        ShapleyValueSampling(mlp).attribute(x, target=0, n_samples=0)
    with pytest.raises(ox.InputValidationError, match="background"):
        ShapleyValueSampling(mlp).attribute(x, target=0, background=background[:, :3])
