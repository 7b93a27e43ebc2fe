"""Meaningful perturbation on a CNN trained in the test, determinism, in-fills, arguments.

The gradient of its loss is checked by finite differences in test_perturbation_adjoints.py.
"""

import numpy as np
import pytest
from perturbation_models import SQUARE, square_model, torch_threads

import onnxplain as ox
import onnxplain.infill as infill
from onnxplain.methods.perturbation import MeaningfulPerturbation

# λ₁ and λ₂ of the paper are for 224×224 inputs and probabilities; these suit 32×32 logits
SMALL = dict(l1_coeff=5e-3, tv_coeff=0.05, mask_scale=4, show_progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def square():
    return square_model()[1:]


@pytest.mark.slow
def test_deletion_mask_finds_the_square_and_kills_the_score(square):
    model, x, labels, corners = square
    blur = infill.GaussianBlur(10.0)
    deleted = MeaningfulPerturbation(model).attribute(x, target=labels.tolist(), max_iter=300, infill=blur,
                                                      **SMALL)
    assert deleted.shape == (3, 32, 32) and deleted.min() >= 0 and deleted.max() <= 1
    for d, (r, c) in zip(deleted, corners):
        inside = np.zeros_like(d, dtype=bool)
        inside[r:r + SQUARE, c:c + SQUARE] = True
        assert d[inside].mean() > 0.5 and d[inside].mean() > 5 * d[~inside].mean()
    before = model.predict(x)[np.arange(3), labels]
    after = model.predict(blur(x, 1 - deleted[:, None]))[np.arange(3), labels]
    assert (after < before - 1.0).all()


def test_meaningful_perturbation_is_deterministic_under_a_seed(square):
    model, x, labels, _ = square
    kwargs = dict(target=labels.tolist(), max_iter=20, **SMALL)
    a = MeaningfulPerturbation(model).attribute(x, seed=4, **kwargs)
    b = MeaningfulPerturbation(model).attribute(x, seed=4, **kwargs)
    np.testing.assert_array_equal(a, b)
    c = MeaningfulPerturbation(model).attribute(x, seed=4, batch_size=1, **kwargs)
    np.testing.assert_allclose(a, c, atol=1e-5)  # per-example jitter: batching changes nothing


def test_preservation_game_and_other_infills(square):
    model, x, labels, _ = square
    kwargs = dict(target=labels.tolist(), max_iter=5, **SMALL)
    kept = MeaningfulPerturbation(model).attribute(x, variant="preserve", **kwargs)
    assert kept.shape == (3, 32, 32) and (kept >= 0).all() and (kept <= 1).all()
    for fill in (infill.Zeros(), infill.GaussianNoise(0.3), infill.Generative(lambda im, hole: im * 0)):
        out = MeaningfulPerturbation(model).attribute(x, infill=fill, **kwargs)
        assert np.isfinite(out).all()
    same = MeaningfulPerturbation(model).attribute(x, baselines=0.0, **kwargs)
    zeros = MeaningfulPerturbation(model).attribute(x, infill=infill.Zeros(), **kwargs)
    np.testing.assert_allclose(same, zeros)


def test_meaningful_perturbation_needs_gradients(square):
    with pytest.raises(ox.BackendCapabilityError, match="gradients"):
        MeaningfulPerturbation(square[0], backend="onnxruntime")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(variant="dual"), "variant"),
        (dict(l1_coeff=-1.0), "l1_coeff"),
        (dict(tv_beta=0.5), "tv_beta"),
        (dict(mask_scale=0), "mask_scale"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(max_iter=-1), "max_iter"),
        (dict(baselines=0.0, infill=infill.Zeros()), "baselines"),
    ],
)
def test_meaningful_perturbation_refuses_bad_arguments(square, kwargs, match):
    model, x, _, _ = square
    with pytest.raises(ox.InputValidationError, match=match):
        MeaningfulPerturbation(model).attribute(x, target=0, **kwargs)


def test_meaningful_perturbation_explains_an_internal_channel(square):
    model, x, _, _ = square
    layer = model.find_layer().name
    out = MeaningfulPerturbation(model).attribute(x[:1], target=ox.Channel(layer, 2), max_iter=3, **SMALL)
    assert out.shape == (1, 32, 32) and np.isfinite(out).all()
