"""RISE: the paper's masks and estimator, determinism, bounded memory, known regions."""

import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from perturbation_models import quadrant_masks, region_linear_model

import onnxplain as ox
import onnxplain.infill as infill
from onnxplain.methods.perturbation import RISE
from onnxplain.methods.perturbation.rise import RISEMasks

WEIGHTS = np.array([[1.0, 4.0, 2.0, 3.0], [3.0, 1.0, 4.0, 2.0]])  # per class, per quadrant


@pytest.fixture(scope="module")
def linear():
    """A model whose logit c is Σ_r WEIGHTS[c, r] · mean of quadrant r, and positive images."""
    model = ox.load(region_linear_model(WEIGHTS, size=32))
    x = np.abs(np.random.default_rng(3).normal(1.0, 0.2, (2, 3, 32, 32))).astype(np.float32)
    return model, x


def test_masks_are_shifted_bilinear_upsamplings_of_random_grids():
    masks = RISEMasks((32, 30), (4, 5), 0.5, seed=0)
    m = masks.next(3)
    # the same draws, by the paper's recipe: grid → bilinear to (s+1)·C → crop at the shift
    cells, shifts = np.random.SeedSequence(0).spawn(2)
    grid = (np.random.default_rng(cells).random((3, 4, 5)) < 0.5).astype(np.float32)
    shift = np.floor(np.random.default_rng(shifts).random((3, 2)) * (8, 6)).astype(int)
    up = F.interpolate(torch.from_numpy(grid)[:, None], size=(5 * 8, 6 * 6), mode="bilinear",
                       align_corners=False)[:, 0].numpy()
    for i, (dy, dx) in enumerate(shift):
        np.testing.assert_allclose(m[i], up[i, dy:dy + 32, dx:dx + 30], atol=1e-6)
    assert m.min() >= 0 and m.max() <= 1


def test_masks_keep_a_fraction_p_of_the_input():
    m = RISEMasks((32, 32), (7, 7), 0.3, seed=1).next(2000)
    assert m.mean() == pytest.approx(0.3, abs=0.01)


def test_masks_do_not_depend_on_the_chunk_size():
    a = RISEMasks((16, 16), (4, 4), 0.5, seed=2)
    b = RISEMasks((16, 16), (4, 4), 0.5, seed=2)
    np.testing.assert_array_equal(np.concatenate([a.next(5), a.next(7)]), b.next(12))


def test_rise_is_the_papers_estimator(small_model, images):
    n, p = 300, 0.4
    ours = RISE(small_model).attribute(images, target=[1, 3], n_masks=n, s=4, p=p, seed=7,
                                       show_progress=False)
    masks = RISEMasks((32, 32), (4, 4), p, seed=7).next(n)
    for i, c in enumerate([1, 3]):
        scores = small_model.predict(images[i] * masks[:, None])[:, c].astype(np.float64)
        ref = np.einsum("k,khw->hw", scores, masks) / (n * p)  # Σ f(x ⊙ M_i) M_i / (N·p)
        np.testing.assert_allclose(ours[i], ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def test_rise_recovers_the_order_of_known_region_weights(linear):
    model, x = linear
    sal = RISE(model).attribute(x, target=[0, 1], n_masks=2000, s=4, seed=0, show_progress=False)
    quads = quadrant_masks(32).astype(bool)
    for i, c in enumerate([0, 1]):
        per_region = np.array([sal[i][q].mean() for q in quads])
        np.testing.assert_array_equal(np.argsort(per_region), np.argsort(WEIGHTS[c]))


def test_rise_is_deterministic_under_a_seed(small_model, images):
    kwargs = dict(target=2, n_masks=200, s=5, show_progress=False)
    a = RISE(small_model).attribute(images, seed=11, **kwargs)
    b = RISE(small_model).attribute(images, seed=11, **kwargs)
    c = RISE(small_model).attribute(images, seed=12, **kwargs)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_rise_batch_size_does_not_change_the_result(small_model, images):
    kwargs = dict(target=0, n_masks=150, s=4, seed=3, show_progress=False)
    a = RISE(small_model).attribute(images, batch_size=7, **kwargs)
    b = RISE(small_model).attribute(images, batch_size=64, **kwargs)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_rise_bounds_the_batch_sent_to_the_model(small_model, images):
    be = ox.backends.CallableBackend(lambda b: small_model.predict(b), max_batch_size=64)
    sizes = []
    inner = be.fn
    be.fn = lambda b: (sizes.append(len(b)), inner(b))[1]
    RISE(be).attribute(images, target=0, n_masks=100, s=4, batch_size=16, show_progress=False)
    assert max(sizes) <= 16


def _peak_bytes(model, x, n_masks):
    tracemalloc.start()
    tracemalloc.reset_peak()
    RISE(model).attribute(x, target=0, n_masks=n_masks, s=4, batch_size=32, show_progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_rise_peak_memory_does_not_grow_with_the_number_of_masks(linear):
    model, x = linear
    x = x[:1, :, :16, :16].copy()
    model = ox.load(region_linear_model(WEIGHTS, size=16))
    RISE(model).attribute(x, target=0, n_masks=32, s=4, show_progress=False)  # warm the session
    small, large = _peak_bytes(model, x, 1000), _peak_bytes(model, x, 8000)
    assert large <= 1.1 * small + 64 * 1024, (small, large)


def test_rise_runs_on_onnxruntime_and_agrees_with_torch(small_model, images):
    assert RISE(small_model).backend.name == "onnxruntime"
    kwargs = dict(target=1, n_masks=100, s=4, seed=0, show_progress=False)
    a = RISE(small_model, backend="onnxruntime").attribute(images, **kwargs)
    b = RISE(small_model, backend="torch").attribute(images, **kwargs)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(a).max())


def test_rise_explains_internal_units_and_the_predicted_class(small_model, images):
    layer = small_model.find_layer().name
    kwargs = dict(n_masks=64, s=4, seed=0, show_progress=False)
    for target in (ox.Channel(layer, 3), ox.Neuron(layer, (1, 2, 2))):
        assert RISE(small_model).attribute(images, target=target, **kwargs).shape == (2, 32, 32)
    predicted = small_model.predict(images).argmax(1)
    np.testing.assert_allclose(RISE(small_model).attribute(images, target=None, **kwargs),
                               RISE(small_model).attribute(images, target=predicted.tolist(), **kwargs))


def test_rise_infills(small_model, images):
    kwargs = dict(target=1, n_masks=64, s=4, seed=0, show_progress=False)
    zeros = RISE(small_model).attribute(images, **kwargs)
    np.testing.assert_allclose(RISE(small_model).attribute(images, infill=infill.Zeros(), **kwargs), zeros)
    np.testing.assert_allclose(RISE(small_model).attribute(images, baselines=0.0, **kwargs), zeros)
    gray = RISE(small_model).attribute(images, infill=infill.Gray(0.5), **kwargs)
    np.testing.assert_allclose(RISE(small_model).attribute(images, baselines=0.5, **kwargs), gray, rtol=1e-6)
    noisy = RISE(small_model).attribute(images, infill=infill.UniformNoise(), **kwargs)
    assert np.isfinite(noisy).all() and not np.allclose(noisy, zeros)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_masks=0), "n_masks"),
        (dict(p=0.0), "p"),
        (dict(p=1.5), "p"),
        (dict(s=0), "s"),
        (dict(s=40), "exceed"),
        (dict(batch_size=0), "batch_size"),
        (dict(baselines=0.0, infill=infill.Zeros()), "baselines"),
        (dict(infill=0.5), "infill"),
        (dict(target=99), "out of range"),
    ],
)
def test_rise_refuses_bad_arguments(small_model, images, kwargs, match):
    with pytest.raises(ox.InputValidationError, match=match):
        RISE(small_model).attribute(images, **{"target": 0, "n_masks": 8, **kwargs})
