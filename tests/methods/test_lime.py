"""LIME: equal to Captum's Lime and to the ``lime`` package's surrogate on the same samples,
exact on linear models, and one call for a batch of images with bounded forward passes."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from helpers import max_rel_err
from onnx import TensorProto, helper, numpy_helper
from test_kernel_shap import linear_proto, linear_weights

import onnxplain as ox
import onnxplain.infill as infill
import onnxplain.segmentation as seg
from onnxplain.methods.surrogate import Lime


def strided_cnn(classes: int = 3, seed: int = 0) -> onnx.ModelProto:
    """Conv(3→4, 4×4, stride 4) → Relu → GlobalAveragePool → Flatten → Gemm: a CNN cheap
    enough for thousands of 64×64 forward passes in a test."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in [("w", (4, 3, 4, 4)), ("fc", (classes, 4)), ("fb", (classes,))]]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], strides=[4, 4]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fb"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "strided_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def cnn():
    return ox.load(ox.examples.tiny_cnn(channels=4, classes=3))


@pytest.fixture(scope="module")
def small_images():
    # scaled so that the outputs vary enough for Captum's lasso to keep most features
    return (4 * np.random.default_rng(1).standard_normal((2, 3, 16, 16))).astype(np.float32)


@pytest.fixture(scope="module")
def samples():
    """300 coalitions of 16 features, the first one all ones (as ``lime`` draws them)."""
    z = (np.random.default_rng(5).random((300, 16)) < 0.5).astype(np.int64)
    z[0] = 1
    return z


def _forward(model):
    return lambda t: torch.from_numpy(model.predict(t.numpy()))


def test_lime_equals_captum_lime_given_the_same_samples(cnn, small_images, samples):
    from captum.attr import Lime as CaptumLime

    mask = seg.grid(small_images, 4)
    ours = Lime(cnn).attribute(small_images, target=1, feature_mask=mask, samples=samples)

    def captum_samples(inputs, **kwargs):
        for row in samples:
            yield torch.from_numpy(row[None].copy())

    for i in range(len(small_images)):
        # Captum's defaults: Lasso(alpha=0.01), exp kernel on the inputs' cosine distance, σ = 1
        explainer = CaptumLime(_forward(cnn), perturb_func=captum_samples)
        ref = explainer.attribute(
            torch.from_numpy(small_images[i:i + 1]), target=1, baselines=0.0,
            feature_mask=torch.from_numpy(mask[i:i + 1, None]), n_samples=len(samples),
            perturbations_per_eval=64,
        ).numpy()
        assert len(np.unique(ref[ref != 0])) >= 8  # most of the 16 features are kept
        # measured 4e-6 (sklearn's default tolerance, float32); 6e-8 with SkLearnLasso(tol=1e-6)
        assert max_rel_err(ours[i:i + 1], ref) < 1e-4


def test_lime_surrogate_equals_the_lime_package_fit_on_the_same_samples(cnn, small_images, samples):
    from lime.lime_base import LimeBase
    from sklearn.metrics import pairwise_distances

    mask = seg.grid(small_images, 4)
    # lime_image's settings: ridge (alpha=1), cosine distance between z and all-ones, σ = 0.25
    coef, fit = Lime(cnn).attribute(
        small_images, target=2, feature_mask=mask, samples=samples, return_input_shape=False,
        distance_space="interpretable", kernel_width=0.25, interpretable_model="ridge", alpha=1.0,
        return_surrogate=True,
    )
    for i in range(len(small_images)):
        keep = samples[:, mask[i]].astype(bool)[:, None]
        labels = cnn.predict(np.where(keep, small_images[i], 0).astype(np.float32))
        distances = pairwise_distances(samples, samples[:1], metric="cosine").ravel()
        base = LimeBase(lambda d: np.sqrt(np.exp(-(d**2) / 0.25**2)), random_state=0)
        intercept, local_exp, score, _ = base.explain_instance_with_data(
            samples, labels, distances, 2, 16, feature_selection="none")
        ref = np.zeros(16)
        for j, c in local_exp:
            ref[j] = c
        assert max_rel_err(coef[i], ref) < 1e-6  # measured 1e-15
        assert abs(fit.intercept[i] - intercept) < 1e-6
        assert abs(fit.r2[i] - score) < 1e-6


def test_lime_recovers_a_linear_model_with_r2_one():
    proto = linear_proto()
    model, w = ox.load(proto), linear_weights(proto)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    background = rng.standard_normal((7, 6)).astype(np.float32)
    coef, fit = Lime(model).attribute(x, target=0, background=background, n_samples=50,
                                      interpretable_model="linear", return_surrogate=True)
    # v(z) = Σ_j z_j w_j (x_j − mean(background)_j) + const is linear in z
    np.testing.assert_allclose(coef, w[:, 0] * (x - background.mean(0)), atol=1e-5)
    np.testing.assert_allclose(fit.r2, 1.0, atol=1e-9)


def test_one_call_explains_eight_images_with_forward_passes_bounded_by_batch_size():
    model = ox.load(strided_cnn())
    seen = []

    def spy(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return model.predict(batch)

    backend = ox.backends.CallableBackend(spy, model=model, max_batch_size=100_000)
    x = np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)
    mask = seg.grid(x, 8)
    coef, fit = Lime(backend).attribute(x, target=None, feature_mask=mask, n_samples=1000,
                                        batch_size=64, return_surrogate=True)
    predictions = seen.pop(0)  # target=None: one pass over the 8 images
    assert predictions == 8
    assert max(seen) <= 64
    assert sum(seen) == 8 * 1000
    assert len(seen) == 8000 // 64  # examples share passes (one call per image would need 8 × 16)
    assert coef.shape == x.shape and fit.r2.shape == (8,)
    assert (fit.r2 > 0.5).all()


def test_lime_is_deterministic_under_a_seed(cnn, small_images):
    mask = seg.grid(small_images, 8)
    kwargs = dict(target=0, feature_mask=mask, n_samples=60, infill=infill.UniformNoise(-1, 1))
    a = Lime(cnn).attribute(small_images, seed=3, **kwargs)
    b = Lime(cnn).attribute(small_images, seed=3, **kwargs)
    c = Lime(cnn).attribute(small_images, seed=4, **kwargs)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_lime_columns_follow_the_feature_ids_when_images_have_different_segments(cnn, small_images):
    mask = np.zeros((2, 16, 16), np.int64)
    mask[0, :, 8:] = 5  # image 0: features {0, 5}
    mask[1, 8:] = 7  # image 1: features {0, 7}
    coef, fit = Lime(cnn).attribute(small_images, target=1, feature_mask=mask, n_samples=64,
                                    return_input_shape=False, interpretable_model="linear",
                                    return_surrogate=True)
    assert fit.feature_ids.tolist() == [0, 5, 7]
    assert coef.shape == (2, 3)
    assert coef[0, 2] == 0 and coef[1, 1] == 0  # absent from that image
    spread = Lime(cnn).attribute(small_images, target=1, feature_mask=mask, n_samples=64,
                                 interpretable_model="linear")
    assert spread[0, :, 0, 12] == pytest.approx(coef[0, 1])
    assert spread[1, :, 12, 0] == pytest.approx(coef[1, 2])


def test_lime_with_superpixels_and_a_blurred_fill(cnn, small_images):
    mask = seg.felzenszwalb(small_images, scale=50, min_size=10)
    coef = Lime(cnn).attribute(small_images, target=0, feature_mask=mask, n_samples=100,
                               infill=infill.GaussianBlur(2.0))
    assert coef.shape == small_images.shape and np.isfinite(coef).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kernel_width=0.0), "kernel_width"),
        (dict(interpretable_model="tree"), "interpretable_model"),
        (dict(distance_mode="manhattan"), "distance_mode"),
        (dict(alpha=-1.0), "alpha"),
        (dict(feature_mask=np.zeros((3, 8, 8), int)), "feature_mask"),
        (dict(baselines=0.0, infill=infill.Zeros()), "not both"),
        (dict(perturbations_per_eval=0), "perturbations_per_eval"),
        (dict(distance_mode="euclidean", kernel_width=1e-3), "kernel_width"),
        (dict(kernel_width=1e-200), "kernel_width"),  # 2σ² underflows to 0
        (dict(kernel_width=1e200), "kernel_width"),  # 2σ² overflows
        (dict(kernel_width=float("inf")), "kernel_width"),
    ],
)
def test_lime_refuses_bad_arguments(cnn, small_images, kwargs, match):
    kwargs.setdefault("feature_mask", seg.grid(small_images, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # our error comes first, no numpy warning
        with pytest.raises(ox.InputValidationError, match=match):
            Lime(cnn).attribute(small_images, target=0, n_samples=20, **kwargs)


@pytest.mark.parametrize("model_name", ["lasso", "ridge"])
def test_surrogate_with_more_features_than_samples_equals_scikit_learn_and_stays_fast(model_name):
    """Every pixel its own feature (Captum's default without a feature_mask) gives far more
    features than samples: the lasso sweeps a working set (a Gram matrix of 6144² would
    take 300 MB and each full sweep thousands of updates), ridge solves the n × n dual."""
    from sklearn.linear_model import Lasso, Ridge

    from onnxplain.methods.surrogate._linear import weighted_fit

    rng = np.random.default_rng(0)
    z = (rng.random((48, 6144)) < 0.5).astype(np.float64)
    y = z @ (0.01 * rng.standard_normal(6144)) + 0.01 * rng.standard_normal(48)
    w = np.exp(-rng.random(48))
    if model_name == "lasso":
        ref = Lasso(alpha=0.01, tol=1e-12, max_iter=100_000).fit(z, y, sample_weight=w)
    else:
        ref = Ridge(alpha=1.0).fit(z, y, sample_weight=w)
    beta, b = weighted_fit(z, y, w, model_name, 0.01 if model_name == "lasso" else 1.0)
    # the objective is what both minimise; where many optima tie (more features than
    # samples), the coefficients may differ, the objective may not
    def objective(coef, icpt):
        r = y - icpt - z @ coef
        if model_name == "lasso":
            return 0.5 * (w @ r**2) / w.sum() + 0.01 * np.abs(coef).sum()
        return w @ r**2 + np.sum(coef**2)

    assert objective(beta, b) <= objective(ref.coef_, ref.intercept_) + 1e-9
    if model_name == "ridge":  # strictly convex: one optimum
        np.testing.assert_allclose(beta, ref.coef_, atol=1e-10)


@pytest.mark.parametrize("seed, scale", [(0, 10.0), (1, 10.0), (2, 10.0), (3, 1e8)])
def test_lasso_with_fewer_samples_than_features_reaches_the_certified_optimum(seed, scale):
    """Captum's default of 50 samples over a few hundred superpixels, with logits of size
    10 (or 10⁸, as a randomly initialised Inception gives): coordinate descent needs over
    10⁵ sweeps here (scikit-learn stops at its iteration limit); the homotopy reaches the
    optimum, which the optimality conditions certify: a_jᵀr = α·sign(β_j) on the support
    and |a_jᵀr| ≤ α off it (up to float64 rounding of terms of the responses' size)."""
    from sklearn.linear_model import Lasso

    from onnxplain.methods.surrogate._linear import weighted_fit

    rng = np.random.default_rng(seed)
    z = (rng.random((50, 200)) < 0.5).astype(np.float64)
    y = scale * (z @ (0.3 * rng.standard_normal(200)) + rng.standard_normal(50))
    w = np.exp(-rng.random(50))
    alpha = 0.01
    beta, b = weighted_fit(z, y, w, "lasso", alpha)
    sw = w / w.sum()
    corr = ((z - sw @ z) * sw[:, None]).T @ (y - b - z @ beta)  # ∂ of the smooth part, per feature
    on = beta != 0
    assert 0 < on.sum() < 50
    rounding = 1e-9 * alpha + 1e-13 * np.abs(y).max()
    np.testing.assert_allclose(corr[on], alpha * np.sign(beta[on]), rtol=0, atol=rounding)
    assert np.abs(corr[~on]).max() <= alpha + rounding

    def objective(coef, icpt):
        return 0.5 * (w @ (y - icpt - z @ coef) ** 2) / w.sum() + alpha * np.abs(coef).sum()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn does not converge here
        ref = Lasso(alpha=alpha, tol=1e-12, max_iter=20_000).fit(z, y, sample_weight=w)
    assert objective(beta, b) <= objective(ref.coef_, ref.intercept_) * (1 + 1e-12) + 1e-12


@pytest.mark.parametrize("mode", ["cosine", "euclidean"])
@pytest.mark.parametrize("label_shape", [(1, 8, 8), (3, 8, 8)])
def test_distances_from_feature_sums_equal_the_perturbed_inputs_distances(mode, label_shape):
    """With a fill shared by all samples, Lime's input-space distances come from per-feature
    sums; they equal the distances measured on the blended inputs (zero and non-zero fills,
    channel-shared and per-channel features)."""
    from onnxplain.infill import blend
    from onnxplain.methods.surrogate.base import _distance, _distance_from_sums, _feature_sums

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, label_shape)
    z = rng.random((40, 10)) < 0.5
    z[0] = True  # the input itself: distance 0
    for fill in (np.zeros_like(x), rng.standard_normal(x.shape).astype(np.float32)):
        perturbed = blend(np.broadcast_to(x, (40, *x.shape)), z[:, labels], fill[None])
        want = _distance(np.broadcast_to(x.ravel(), (40, x.size)), np.full(40, np.linalg.norm(x)),
                         perturbed.reshape(40, -1), mode)
        got = _distance_from_sums(z, _feature_sums(x, fill, labels, 10), float(np.linalg.norm(x)), mode)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert abs(got[0]) < 1e-6
