"""The numpy chain rule of the mask-optimisation methods, checked by finite differences.

Meaningful and extremal perturbation get ∂f/∂x from the backend and carry it to the mask
parameters through numpy operations with hand-written adjoints; each is checked here
against central differences (in float64 where the operation allows it) and, for the
optimisers, against torch.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from perturbation_models import region_linear_model, torch_threads

import onnxplain as ox
from onnxplain.infill import GaussianBlur
from onnxplain.methods._resize import resize_bilinear
from onnxplain.methods.perturbation import ExtremalPerturbation, MeaningfulPerturbation, _ops
from onnxplain.methods.perturbation.base import Filler
from onnxplain.methods.perturbation.extremal_perturbation import (
    BlurPyramid,
    SmoothMask,
    _Blend,
    area_loss,
    area_reference,
)
from onnxplain.methods.perturbation.meaningful_perturbation import _MPParams


def directional_fd(f, x, direction, eps):
    """(f(x + εd) − f(x − εd)) / 2ε."""
    return (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)


@pytest.fixture(scope="module")
def linear_model():
    """logits linear in the input: finite differences are exact up to rounding."""
    weights = np.array([[4.0, 3.0, 2.0, 1.0], [-1.0, 2.0, 0.5, 3.0]])
    return ox.load(region_linear_model(weights, size=16))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


# -- linear maps ----------------------------------------------------------------------------


@pytest.mark.parametrize("n_in, n_out", [(4, 16), (7, 32), (28, 224), (16, 5)])
def test_interp_matrix_is_torch_bilinear_resize(n_in, n_out):
    rng = np.random.default_rng(0)
    m = rng.random((2, n_in, n_in))
    ours = _ops.separable(m, _ops.interp_matrix(n_in, n_out), _ops.interp_matrix(n_in, n_out))
    ref = F.interpolate(torch.from_numpy(m)[:, None], size=(n_out, n_out), mode="bilinear",
                        align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    np.testing.assert_allclose(ours, resize_bilinear(m, (n_out, n_out)), atol=1e-12)


@pytest.mark.parametrize("ay, ax", [
    (_ops.interp_matrix(5, 17), _ops.interp_matrix(6, 13)),
    (_ops.interp_matrix(9, 4), np.random.default_rng(0).standard_normal((3, 8))),
])
def test_separable_adjoint_is_the_transpose(ay, ax):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, ay.shape[1], ax.shape[1]))
    g = rng.standard_normal((3, 2, ay.shape[0], ax.shape[0]))
    lhs = (_ops.separable(x, ay, ax) * g).sum()
    rhs = (x * _ops.separable_adjoint(g, ay, ax)).sum()
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_translate_shifts_each_row_and_repeats_the_edge():
    v = np.broadcast_to(np.arange(5.0), (2, 1, 5, 5))
    out = _ops.translate(v, [[0, 2], [1, -1]])
    np.testing.assert_array_equal(out[0, 0, 3], [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(out[1, 0, 3], [1, 2, 3, 4, 4])
    np.testing.assert_array_equal(_ops.translate(v.transpose(0, 1, 3, 2), [[2, 0], [0, 0]])[0, 0, :, 3],
                                  [0, 0, 0, 1, 2])


# -- regularisers -----------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [1.5, 2.0, 3.0])
def test_total_variation_gradient_matches_finite_differences(beta):
    rng = np.random.default_rng(2)
    m = rng.random((2, 1, 6, 7))
    value, grad = _ops.total_variation(m, beta)
    by_hand = (np.abs(np.diff(m, axis=2)) ** beta).sum() + (np.abs(np.diff(m, axis=3)) ** beta).sum()
    assert value.sum() == pytest.approx(by_hand)
    d = rng.standard_normal(m.shape)
    fd = directional_fd(lambda z: _ops.total_variation(z, beta)[0].sum(), m, d, 1e-6)
    assert (grad * d).sum() == pytest.approx(fd, rel=1e-6)


def test_area_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    full = rng.random((2, 9, 11))
    ref = area_reference([0.1, 0.3], 99)
    _, grad = area_loss(full, ref, 300.0)
    d = rng.standard_normal(full.shape)
    fd = directional_fd(lambda z: area_loss(z, ref, 300.0)[0].sum(), full, d, 1e-7)
    assert (grad * d).sum() == pytest.approx(fd, rel=1e-5)


# -- the smooth mask and the pyramid ----------------------------------------------------------


@pytest.mark.parametrize("step, sigma", [(3, 6.0), (4, 5.0), (2, 3.0)])
def test_smooth_mask_adjoint_matches_finite_differences(step, sigma):
    rng = np.random.default_rng(4)
    gen = SmoothMask((20, 23), step, sigma, dtype=np.float64)
    params = rng.uniform(0.2, 0.9, (2, 1, *gen.shape_in))  # inside (0, 1): no clamp kinks
    upstream = rng.standard_normal((2, *gen.shape_out))
    grad = gen.backward(params, upstream)
    d = rng.standard_normal(params.shape)
    fd = directional_fd(lambda p: (gen.generate(p) * upstream).sum(), params, d, 1e-6)
    assert (grad * d).sum() == pytest.approx(fd, rel=1e-6)


def test_smooth_mask_bounds_memory_by_chunks():
    gen = SmoothMask((30, 30), 3, 6.0, max_elements=1, dtype=np.float64)
    whole = SmoothMask((30, 30), 3, 6.0, dtype=np.float64)
    assert gen.chunk == 1
    params = np.random.default_rng(5).random((3, 1, *gen.shape_in))
    upstream = np.random.default_rng(6).standard_normal((3, *gen.shape_out))
    np.testing.assert_allclose(gen.generate(params), whole.generate(params), atol=1e-15)
    np.testing.assert_allclose(gen.backward(params, upstream), whole.backward(params, upstream), atol=1e-12)


def test_blur_pyramid_derivative_matches_finite_differences():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 2, 12, 12))
    pyr = BlurPyramid(x, 5, 3.0)
    # stay away from the bin edges k/(L−1), where the interpolation has kinks
    mask = (rng.integers(0, 4, (1, 12, 12)) + rng.uniform(0.2, 0.8, (1, 12, 12))) / 4
    out, d = pyr.apply(np.array([0]), mask)
    up = rng.standard_normal(out.shape)
    dirn = rng.standard_normal(mask.shape)
    fd = directional_fd(lambda m: (pyr.apply(np.array([0]), m)[0] * up).sum(), mask, dirn, 1e-6)
    assert ((up * d).sum(axis=1) * dirn).sum() == pytest.approx(fd, rel=1e-6)


# -- the whole chain, through the model ---------------------------------------------------------


@pytest.mark.parametrize("variant, shift", [("delete", [[0, 0], [0, 0]]), ("delete", [[2, 1], [0, 3]]),
                                            ("preserve", [[3, 0], [1, 1]])])
def test_meaningful_perturbation_gradient_matches_finite_differences(linear_model, variant, shift):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    mp = MeaningfulPerturbation(linear_model)
    p = _MPParams(variant=variant, l1_coeff=0.05, tv_coeff=0.5, tv_beta=3.0, mask_scale=4, max_iter=1,
                  learning_rate=0.1, jitter=4)
    up = (_ops.interp_matrix(4, 16), _ops.interp_matrix(4, 16))
    rows = np.arange(2)
    objective = mp._objective(x, [0, 1])
    filler = Filler(GaussianBlur(2.0), x, np.random.default_rng(0))
    m = rng.uniform(0.2, 0.8, (2, 1, 4, 4))

    def loss(z):
        return mp._loss_and_gradient(x, rows, objective, filler, z, up, p, shift)[0].sum()

    _, grad = mp._loss_and_gradient(x, rows, objective, filler, m, up, p, shift)
    d = rng.standard_normal(m.shape)
    # the model runs in float32: a large step keeps rounding small, and is exact on the
    # (linear) model term; the cubic TV term's error is O(ε²)
    assert (grad * d).sum() == pytest.approx(directional_fd(loss, m, d, 1e-3), rel=1e-3)


@pytest.mark.parametrize("variant", ["preserve", "delete", "dual"])
def test_extremal_perturbation_gradient_matches_finite_differences(linear_model, variant):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    ep = ExtremalPerturbation(linear_model)
    gen = SmoothMask((16, 16), 3, 5.0, dtype=np.float64)
    reference = area_reference([0.1, 0.25], int(np.prod(gen.shape_out)))
    perturb = _Blend(x, Filler(GaussianBlur(2.0), x, np.random.default_rng(0)))
    params = rng.uniform(0.2, 0.9, (2, 1, *gen.shape_in))
    owner = np.array([0, 0])
    objective = ep._objective(x, 0)

    def run(z):
        return ep._loss_and_gradient(z, owner, objective, perturb, gen, reference, 300.0, variant, True)

    _, grad, _ = run(params)
    d = rng.standard_normal(params.shape)
    fd = directional_fd(lambda z: run(z)[0].sum(), params, d, 1e-5)
    assert (grad * d).sum() == pytest.approx(fd, rel=1e-3)


# -- optimisers -------------------------------------------------------------------------------


def test_adam_and_sgd_step_like_torch():
    rng = np.random.default_rng(10)
    start = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(4)]
    for ours, make in [
        (_ops.Adam(0.1), lambda p: torch.optim.Adam([p], lr=0.1)),
        (_ops.SGD(0.01, momentum=0.9, dampening=0.9), lambda p: torch.optim.SGD([p], lr=0.01, momentum=0.9,
                                                                                dampening=0.9)),
    ]:
        param = torch.tensor(start, requires_grad=True)
        opt = make(param)
        value = start.copy()
        for g in grads:
            param.grad = torch.tensor(g)
            opt.step()
            value = ours.step(value, g)
        np.testing.assert_allclose(value, param.detach().numpy(), rtol=1e-12)
