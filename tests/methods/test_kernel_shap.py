"""Kernel SHAP: exact on linear models, equal to shap and to the Shapley definition on an
MLP, to Captum given the same samples, and to shap's TreeExplainer on a random forest
exported with skl2onnx and run on ONNX Runtime."""

from __future__ import annotations

import warnings
from itertools import combinations
from math import factorial

import numpy as np
import onnx
import pytest
import torch
from helpers import max_rel_err
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox
import onnxplain.segmentation as seg
from onnxplain.methods.surrogate import KernelShap
from onnxplain.methods.surrogate.kernel_shap import all_coalitions, kernel_samples, shapley_kernel

# -- models the surrogate tests share (imported by test_shapley_value_sampling) -------------


def linear_proto(features: int = 6, classes: int = 3, seed: int = 0) -> onnx.ModelProto:
    """y = x·W + b as one Gemm; returns the model (W, b stored as initializers)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((features, classes)).astype(np.float32)
    b = rng.standard_normal(classes).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def linear_weights(proto: onnx.ModelProto) -> np.ndarray:
    return numpy_helper.to_array(proto.graph.initializer[0]).astype(np.float64)


def mlp_proto(features: int = 8, hidden: int = 16, classes: int = 3, seed: int = 0) -> onnx.ModelProto:
    """Gemm → Tanh → Gemm → Softmax with seeded random weights."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in [("w1", (features, hidden)), ("b1", (hidden,)),
                                 ("w2", (hidden, classes)), ("b2", (classes,))]]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Tanh", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["p"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", classes])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def brute_force_shapley(f, x: np.ndarray, background: np.ndarray) -> np.ndarray:
    """φ_j = Σ_{S ∌ j} |S|!(M−|S|−1)!/M! (v(S ∪ j) − v(S)), v(S) = mean_b f(x_S, b_rest)."""
    m = x.shape[-1]
    keep = ((np.arange(2**m)[:, None] >> np.arange(m)) & 1).astype(bool)  # subset s ↔ bits of s
    out = np.zeros((len(x), m))
    for n, row in enumerate(x):
        rows = np.where(keep[:, None, :], row, background[None])  # (2^m, B, m)
        value = f(rows.reshape(-1, m)).reshape(2**m, -1).mean(1)
        for s in range(2**m):
            size = int(keep[s].sum())
            for j in np.flatnonzero(~keep[s]):
                weight = factorial(size) * factorial(m - size - 1) / factorial(m)
                out[n, j] += weight * (value[s | (1 << j)] - value[s])
    return out


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear():
    proto = linear_proto()
    return ox.load(proto), linear_weights(proto)


@pytest.fixture(scope="module")
def mlp():
    return ox.load(mlp_proto())


@pytest.fixture(scope="module")
def tabular():
    rng = np.random.default_rng(3)
    return rng.standard_normal((3, 8)).astype(np.float32), rng.standard_normal((5, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def cnn():
    return ox.load(ox.examples.tiny_cnn(channels=4, classes=3))


@pytest.fixture(scope="module")
def small_images():
    return np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)


# -- exactness ------------------------------------------------------------------------------


@pytest.mark.parametrize("baseline_kind", ["scalar", "one", "per_example"])
def test_exact_kernel_shap_on_a_linear_model_is_w_times_x_minus_baseline(linear, baseline_kind):
    model, w = linear
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    b = {"scalar": 0.5, "one": rng.standard_normal(6).astype(np.float32),
         "per_example": rng.standard_normal((4, 6)).astype(np.float32)}[baseline_kind]
    phi, fit = KernelShap(model).attribute(x, baselines=b, target=1, exact=True, return_surrogate=True)
    expected = w[:, 1] * (x - np.broadcast_to(b, x.shape))
    assert max_rel_err(phi, expected) < 1e-6
    baseline_out = model.predict(np.broadcast_to(b, x.shape).astype(np.float32))[:, 1]
    np.testing.assert_allclose(fit.intercept, baseline_out, atol=1e-6)
    np.testing.assert_allclose(fit.r2, 1.0, atol=1e-9)
    assert fit.n_samples.tolist() == [2**6 - 2] * 4


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # shap's matplotlib colours
def test_exact_kernel_shap_equals_shap_kernel_explainer_and_the_definition_on_an_mlp(mlp, tabular):
    import shap

    x, background = tabular

    def f(rows: np.ndarray) -> np.ndarray:
        return mlp.predict(np.asarray(rows, np.float32))[:, 1].astype(np.float64)

    phi, fit = KernelShap(mlp).attribute(x, target=1, background=background, return_surrogate=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = shap.KernelExplainer(f, background).shap_values(x, nsamples=2**8, silent=True)
    definition = brute_force_shapley(f, x, background)
    assert np.abs(phi - reference).max() < 1e-5  # measured 5e-9
    assert np.abs(phi - definition).max() < 1e-5
    np.testing.assert_allclose(fit.intercept, f(background).mean(), atol=1e-7)


def test_kernel_shap_enumerates_exactly_when_the_coalitions_fit_in_n_samples(mlp, tabular):
    x, background = tabular
    _, fit = KernelShap(mlp).attribute(x, target=0, background=background, n_samples=254,
                                       return_surrogate=True)
    assert fit.n_samples.tolist() == [254] * 3  # all 2^8 − 2 coalitions
    _, fit = KernelShap(mlp).attribute(x, target=0, background=background, n_samples=100,
                                       return_surrogate=True)
    assert fit.n_samples.tolist() == [100] * 3  # sampled


def test_sampled_kernel_shap_is_efficient_and_approaches_the_exact_values(mlp, tabular):
    x, background = tabular
    exact = KernelShap(mlp).attribute(x, target=2, background=background, exact=True)
    errors = []
    for n in (64, 2048):
        approx = KernelShap(mlp).attribute(x, target=2, background=background, n_samples=n, exact=False)
        # efficiency is enforced: the sum is f(x) − E f(background) whatever the samples
        np.testing.assert_allclose(approx.sum(1), exact.sum(1), atol=1e-5)
        errors.append(max_rel_err(approx, exact))
    assert errors[1] < errors[0]
    assert errors[1] < 0.05


def test_kernel_samples_come_in_complementary_pairs_drawn_from_the_shapley_kernel():
    m = 6
    z = kernel_samples(m, 20000, np.random.default_rng(0))
    half = len(z) // 2
    np.testing.assert_array_equal(z[:half], ~z[half:])
    sizes = np.bincount(z.sum(1), minlength=m + 1)[1:m] / len(z)
    k = np.arange(1, m)
    # P(|z| = k) = Σ_{|z|=k} π(z) / Σ π = C(m, k) π_k / Σ
    expected = np.array([len(list(combinations(range(m), int(s)))) for s in k]) * shapley_kernel(m, k)
    np.testing.assert_allclose(sizes, expected / expected.sum(), atol=0.01)
    assert all_coalitions(3).sum(1).tolist() == [1, 1, 2, 1, 2, 2]


# -- agreement with Captum ------------------------------------------------------------------


def test_kernel_shap_equals_captum_given_the_same_samples(cnn, small_images):
    from captum.attr import KernelShap as CaptumKernelShap

    mask = seg.grid(small_images, 4)  # 16 superpixels per image
    rng = np.random.default_rng(5)
    z = (rng.random((200, 16)) < 0.5).astype(np.int64)
    ours = KernelShap(cnn).attribute(small_images, target=1, feature_mask=mask, samples=z)

    def forward(t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(cnn.predict(t.numpy()))

    def captum_samples(inputs, **kwargs):  # Captum's generator starts with the end points
        yield torch.ones(1, 16, dtype=torch.long)
        yield torch.zeros(1, 16, dtype=torch.long)
        for row in z:
            yield torch.from_numpy(row[None].copy())

    for i in range(len(small_images)):
        explainer = CaptumKernelShap(forward)
        explainer.perturb_func = captum_samples
        ref = explainer.attribute(
            torch.from_numpy(small_images[i:i + 1]), target=1, baselines=0.0,
            feature_mask=torch.from_numpy(mask[i:i + 1, None]), n_samples=len(z) + 2,
            perturbations_per_eval=64,
        ).numpy()
        # Captum approximates the constraints with weight 1e6 and fits in float32
        assert max_rel_err(ours[i:i + 1], ref) < 1e-4  # measured 6e-6


def test_one_call_on_a_batch_equals_one_call_per_example(cnn, small_images):
    mask = seg.grid(small_images, 8)
    z = (np.random.default_rng(0).random((40, 4)) < 0.5).astype(np.int64)
    both = KernelShap(cnn).attribute(small_images, target=[0, 2], feature_mask=mask, samples=z)
    for i, t in enumerate([0, 2]):
        one = KernelShap(cnn).attribute(small_images[i:i + 1], target=t, feature_mask=mask[i:i + 1],
                                        samples=z)
        np.testing.assert_allclose(both[i:i + 1], one, atol=1e-6)


# -- scikit-learn models through skl2onnx ---------------------------------------------------


@pytest.fixture(scope="module")
def forest():
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1)
    return RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(x, y), x


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
@pytest.mark.parametrize("zipmap", [False, True])
def test_random_forest_exported_with_skl2onnx_matches_shap_tree_explainer(forest, zipmap):
    import shap
    from skl2onnx import to_onnx

    clf, data = forest
    options = None if zipmap else {id(clf): {"zipmap": False}}
    proto = to_onnx(clf, data[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    model = ox.load(proto)
    # the label output comes first; the explained output is the (N, 3) probability tensor
    assert model.outputs[0].dtype == np.int64
    assert model.output_name == ("output_probability" if zipmap else "probabilities")
    assert model.num_classes == 3
    x, background = data[:4], data[100:120]
    np.testing.assert_allclose(model.predict(x), clf.predict_proba(x), atol=1e-6)
    phi = KernelShap(model).attribute(x, target=1, background=background)
    explainer = shap.TreeExplainer(clf, data=background, feature_perturbation="interventional")
    reference = np.asarray(explainer.shap_values(x))[..., 1]
    assert np.abs(phi - reference).max() < 1e-6  # measured 6e-8


# -- arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(exact=True, feature_mask=np.arange(3 * 16 * 16).reshape(3, 16, 16) % 25), "exact"),
        (dict(samples=np.ones((5, 3), int)), "samples"),
        (dict(samples=np.full((5, 4), 2)), "0 .feature removed. or 1"),
        (dict(background=np.zeros((2, 3, 16, 16), np.float32), baselines=0.0), "not several"),
        (dict(background=np.zeros((2, 3, 8, 8), np.float32)), "background"),
        (dict(feature_mask=np.zeros((5, 5), int)), "feature_mask"),
        (dict(feature_mask=np.zeros((16, 16))), "integers"),
        (dict(n_samples=0), "n_samples"),
        (dict(batch_size=0), "batch_size"),
        (dict(target=7), "out of range"),
    ],
)
def test_kernel_shap_refuses_bad_arguments(cnn, small_images, kwargs, match):
    kwargs.setdefault("feature_mask", seg.grid(small_images, 8))
    with pytest.raises(ox.InputValidationError, match=match):
        KernelShap(cnn).attribute(small_images, **kwargs)
