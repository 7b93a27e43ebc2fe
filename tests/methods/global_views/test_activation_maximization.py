"""ActivationMaximization on the bundled model, and the exactness of the chain rule through
its parameterisations, transformations and regularisers (adjoint and finite-difference
checks)."""

from __future__ import annotations

import numpy as np
import pytest

import onnxplain as ox
from onnxplain.core.errors import InputValidationError
from onnxplain.methods.global_views import ActivationMaximization
from onnxplain.methods.global_views._image import (
    AffineWarp,
    FourierImage,
    l2_penalty,
    total_variation,
)

CLASSES = [0, 1, 2, 3, 4]
STEPS = 48


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def shapes():
    return ox.examples.shapes_model()


@pytest.fixture(scope="module")
def am(shapes):
    return ActivationMaximization(shapes)


@pytest.fixture(scope="module")
def pixel_run(am):
    return am.optimize(CLASSES, n_steps=STEPS, parameterization="pixel", show_progress=False)


def _target_probability(shapes, images):
    return softmax(shapes.predict(images))[np.arange(len(CLASSES)), CLASSES]


def test_every_class_is_reached_with_high_confidence_fourier_with_transforms(shapes, am):
    result = am.optimize(
        CLASSES,
        n_steps=STEPS,
        lr=0.1,
        jitter=2,
        scale=(0.95, 1.05),
        rotate=5,
        blur_every=8,
        show_progress=False,
    )
    p = _target_probability(shapes, result.images)
    assert p.min() > 0.98, p  # measured: 0.994 … 1.0
    assert result.objective.shape == (STEPS, 5)
    assert np.all(result.objective[-1] > result.objective[0])
    assert result.images.min() >= 0 and result.images.max() <= 1  # the card's range [0, 1]


def test_every_class_is_reached_with_high_confidence_pixels(shapes, pixel_run):
    p = _target_probability(shapes, pixel_run.images)
    assert p.min() > 0.99, p
    np.testing.assert_allclose(
        pixel_run.scores, shapes.predict(pixel_run.images)[np.arange(5), CLASSES], rtol=1e-4
    )


def test_total_variation_term_lowers_total_variation(am, pixel_run):
    smooth = am.optimize(CLASSES, n_steps=STEPS, parameterization="pixel", tv=300.0, show_progress=False)
    u0, u1 = pixel_run.images, smooth.images  # range [0, 1]: u = x
    assert total_variation(u1)[0].mean() < 0.5 * total_variation(u0)[0].mean()


def test_l2_decay_lowers_the_norm(am, pixel_run):
    decayed = am.optimize(CLASSES, n_steps=STEPS, parameterization="pixel", l2=300.0, show_progress=False)
    assert l2_penalty(decayed.images)[0].mean() < 0.5 * l2_penalty(pixel_run.images)[0].mean()


def test_channel_objective_rises_and_runs_are_seeded(shapes, am):
    target = ox.Channel("/block3/block3.2/Relu_output_0", 2)
    a = am.optimize(target, n_starts=3, n_steps=6, show_progress=False, seed=4, batch_size=2)
    b = am.optimize(target, n_starts=3, n_steps=6, show_progress=False, seed=4, batch_size=3)
    np.testing.assert_allclose(a.images, b.images, atol=1e-6)  # image i depends on seed and i only
    assert np.all(a.objective[-1] > a.objective[0])
    c = am.optimize(target, n_starts=1, n_steps=2, show_progress=False, seed=5)
    assert not np.allclose(c.images[0], a.images[0])


def test_bad_arguments_are_refused(am):
    with pytest.raises(InputValidationError, match="target"):
        am.optimize(None, show_progress=False)
    with pytest.raises(InputValidationError, match="parameterization"):
        am.optimize(0, parameterization="dct", show_progress=False)
    with pytest.raises(InputValidationError, match="scale"):
        am.optimize(0, scale=(1.2, 0.8), show_progress=False)
    with pytest.raises(InputValidationError, match="out of range"):
        am.optimize(7, n_steps=1, show_progress=False)


# -- the chain rule, piece by piece (no model) --------------------------------------------
@pytest.mark.parametrize("width", [16, 15])
def test_fourier_backward_is_the_adjoint_of_its_linear_part(width):
    rng = np.random.default_rng(0)
    param = FourierImage([np.random.default_rng(1)], (3, 12, width), init_std=0.3)
    g = rng.standard_normal((1, 3, 12, width))
    # directional derivative of <g, u(Z)> along a random direction equals <grad, direction>
    grad = param.backward(g) if param.image() is not None else None
    d_re, d_im = rng.standard_normal(param.re.shape), rng.standard_normal(param.im.shape)
    eps = 1e-6
    base = (g * param.image()).sum()
    param.re += eps * d_re
    param.im += eps * d_im
    moved = (g * param.image()).sum()
    numeric = (moved - base) / eps
    analytic = (grad[0] * d_re).sum() + (grad[1] * d_im).sum()
    assert abs(numeric - analytic) < 1e-4 * max(1.0, abs(analytic))


def test_affine_warp_adjoint_satisfies_the_dot_product_test():
    rng = np.random.default_rng(0)
    warp = AffineWarp(
        (20, 24),
        shift=np.array([[1.0, -2.0], [0.0, 3.0]]),
        scale=np.array([1.07, 0.93]),
        angle=np.array([0.1, -0.05]),
    )
    x, y = rng.standard_normal((2, 3, 20, 24)), rng.standard_normal((2, 3, 20, 24))
    assert abs((warp(x) * y).sum() - (x * warp.adjoint(y)).sum()) < 1e-9
    shift = AffineWarp((8, 8), np.array([[2.0, 1.0]]), np.array([1.0]), np.array([0.0]))
    z = rng.standard_normal((1, 1, 8, 8))
    np.testing.assert_allclose(shift(z)[0, 0, 2:, 1:], z[0, 0, :-2, :-1])  # a pure pixel shift


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_regulariser_gradients_match_finite_differences(beta):
    rng = np.random.default_rng(0)
    u = rng.random((2, 3, 6, 7))
    d = rng.standard_normal(u.shape)
    for fn in (lambda v: total_variation(v, beta), l2_penalty):
        value, grad = fn(u)
        eps = 1e-6
        numeric = (fn(u + eps * d)[0].sum() - fn(u - eps * d)[0].sum()) / (2 * eps)
        assert abs(numeric - (grad * d).sum()) < 1e-5 * max(1.0, abs(numeric))
