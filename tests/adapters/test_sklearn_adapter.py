"""The scikit-learn adapter turns a pipeline on flattened images into an image Model whose
forward-only explanations equal those computed with the pipeline itself."""

import itertools
import math

import numpy as np
import pytest

pytest.importorskip("skl2onnx")
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import onnxplain as ox  # noqa: E402

SHAPE = (3, 8, 8)
#: The pipeline computes in float64, the export in float32.
TOL = 1e-4


@pytest.fixture(scope="module")
def data():
    images, labels, _ = ox.examples.shapes_dataset(60, seed=11)
    small = np.ascontiguousarray(images[:, :, ::8, ::8])  # (60, 3, 8, 8)
    return small, labels


@pytest.fixture(scope="module")
def logistic(data):
    x, y = data
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(x.reshape(len(x), -1), y)
    return pipe, ox.adapters.sklearn.export(pipe, SHAPE, x[:8])


def proba(pipe, images):
    return pipe.predict_proba(images.reshape(len(images), -1))


def test_the_model_takes_images_and_outputs_only_the_probabilities(data, logistic):
    x, _ = data
    pipe, model = logistic
    assert model.inputs[0].shape[1:] == SHAPE
    assert [o.name for o in model.outputs] == ["probabilities"]  # no label, no ZipMap
    np.testing.assert_allclose(model.predict(x[10:20]), proba(pipe, x[10:20]), atol=1e-5)


def test_occlusion_equals_occluding_the_pipelines_input_by_hand(data, logistic):
    x, _ = data
    pipe, model = logistic
    images, target = x[:2], 1
    ours = ox.Occlusion(model).attribute(
        images, target=target, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4), show_progress=False
    )
    ref = np.zeros_like(images)
    full = proba(pipe, images)[:, target]
    for i, j in itertools.product(range(0, 8, 4), range(0, 8, 4)):
        occluded = images.copy()
        occluded[:, :, i : i + 4, j : j + 4] = 0
        ref[:, :, i : i + 4, j : j + 4] = (full - proba(pipe, occluded)[:, target])[:, None, None, None]
    np.testing.assert_allclose(ours, ref, atol=TOL)


def test_exact_kernel_shap_equals_the_shapley_values_of_the_pipeline(data, logistic):
    x, _ = data
    pipe, model = logistic
    image, target = x[:1], 2
    mask = np.zeros((8, 8), np.int64)  # four quadrants: 4 players, 16 coalitions by hand
    mask[:4, 4:], mask[4:, :4], mask[4:, 4:] = 1, 2, 3
    ours = ox.KernelShap(model).attribute(
        image, target=target, baselines=0.0, feature_mask=mask, exact=True, show_progress=False
    )

    def value(players):
        keep = np.isin(mask, list(players))
        return proba(pipe, image * keep)[0, target]

    m = 4
    for player in range(m):
        others = [p for p in range(m) if p != player]
        phi = sum(
            math.factorial(len(s))
            * math.factorial(m - len(s) - 1)
            / math.factorial(m)
            * (value((*s, player)) - value(s))
            for k in range(m)
            for s in itertools.combinations(others, k)
        )
        np.testing.assert_allclose(ours[0][:, mask == player], phi, atol=TOL)


def test_lime_and_rise_run_on_the_forward_only_model(data, logistic):
    x, _ = data
    _, model = logistic
    lime = ox.Lime(model).attribute(x[:1], target=0, n_samples=64, seed=0, show_progress=False)
    rise = ox.RISE(model).attribute(x[:1], target=0, n_masks=64, s=2, seed=0, show_progress=False)
    assert lime.shape == x[:1].shape and np.isfinite(lime).all() and np.abs(lime).max() > 0
    assert rise.shape[-2:] == SHAPE[1:] and np.isfinite(rise).all() and np.abs(rise).max() > 0


def test_gradients_through_ml_operators_raise_a_capability_error(data, logistic):
    _, model = logistic  # Scaler, LinearClassifier, Normalizer: ai.onnx.ml, no gradients
    with pytest.raises(ox.BackendCapabilityError, match="Scaler"):
        ox.Saliency(model).attribute(data[0][:1], target=0)


def test_saliency_of_a_plain_mlp_equals_the_analytic_gradient_of_its_logit(data):
    x, y = data
    mlp = MLPClassifier((16,), max_iter=60, random_state=0).fit(x.reshape(len(x), -1), y)
    model = ox.adapters.sklearn.export(mlp, SHAPE, x[:8])  # MatMul/Add/Relu/Softmax only
    images, target = x[:2], 3
    ours = ox.Saliency(model).attribute(images, target=target, abs=False)
    # The graph ends in Softmax, so gradient methods explain the pre-softmax logit
    # z_t = W2[:, t]ᵀ relu(W1ᵀ x + b1) + b2_t:  d z_t / d x = W1 (1[h > 0] ⊙ W2[:, t]).
    (w1, w2), (b1, _) = mlp.coefs_, mlp.intercepts_
    h = images.reshape(2, -1).astype(np.float64) @ w1 + b1
    ref = ((h > 0) * w2[:, target]) @ w1.T
    np.testing.assert_allclose(ours.reshape(2, -1), ref, atol=TOL * np.abs(ref).max())


def test_channels_last_images_flattened_for_fitting_take_channels_last_arrays(data):
    """Images flattened as (H, W, C): with layout="NHWC" the model takes them channels last,
    and a window over pixels (and every channel) occludes exactly those pixels' features."""
    x, y = data
    hwc = np.ascontiguousarray(np.moveaxis(x, 1, -1))  # (60, 8, 8, 3)
    pipe = LogisticRegression(max_iter=300).fit(hwc.reshape(len(hwc), -1), y)
    model = ox.adapters.sklearn.export(pipe, (8, 8, 3), hwc[:4], layout="NHWC")
    assert model.layout == "NHWC" and model.user_input_shape[1:] == (8, 8, 3)
    np.testing.assert_allclose(model.predict(hwc[:5]), proba(pipe, hwc[:5]), atol=1e-5)
    window = {"sliding_window_shapes": (4, 4, 3), "strides": (4, 4, 3)}
    ours = ox.Occlusion(model).attribute(hwc[:2], target=1, **window)
    hidden = hwc[:2].copy()
    hidden[:, 4:, :4] = 0
    change = proba(pipe, hwc[:2])[:, 1] - proba(pipe, hidden)[:, 1]
    np.testing.assert_allclose(ours[:, 4, 0, 0], change, atol=TOL)
    cam = ox.RISE(model).attribute(hwc[:1], target=1, n_masks=64, show_progress=False)
    assert cam.shape == (1, 8, 8)


def test_one_channel_images_flattened_for_fitting_take_h_w_arrays(data):
    x, y = data
    grey = np.ascontiguousarray(x.mean(1))  # (60, 8, 8)
    pipe = LogisticRegression(max_iter=300).fit(grey.reshape(len(grey), -1), y)
    model = ox.adapters.sklearn.export(pipe, (8, 8), grey[:4])
    assert model.layout == "NHW" and model.user_input_shape[1:] == (8, 8)
    np.testing.assert_allclose(model.predict(grey[:5]), proba(pipe, grey[:5]), atol=1e-5)


def test_bad_arguments_are_named(data, logistic):
    x, _ = data
    pipe, _ = logistic
    with pytest.raises(ox.InputValidationError, match="image_shape"):
        ox.adapters.sklearn.export(pipe, (3, 0, 8), x[:2])
    with pytest.raises(ox.InputValidationError, match="example"):
        ox.adapters.sklearn.export(pipe, SHAPE, x[:2, :, :4])
    with pytest.raises(ox.InputValidationError, match="192 features"):
        ox.adapters.sklearn.export(pipe, (3, 4, 4), x[:2, :, :4, :4])
    with pytest.raises(ox.InputValidationError, match="output"):
        ox.adapters.sklearn.export(pipe, SHAPE, x[:2], output="scores")
    with pytest.raises(ox.InputValidationError, match="layout='NHW' does not fit"):
        ox.adapters.sklearn.export(pipe, SHAPE, x[:2], layout="NHW")
