"""Our metrics against Quantus and Captum on the same model, attributions and settings."""

import sys

import numpy as np
import pytest
import torch
import torchvision  # noqa: F401  (torch's lazy imports must come before TensorFlow's, or both crash)

from onnxplain import metrics


def _import_quantus():
    """Quantus imports TensorFlow when it is installed (15 s, and a crash next to torch
    here); hide TensorFlow while Quantus loads, without hiding it from other tests."""
    if "tensorflow" in sys.modules:
        return pytest.importorskip("quantus")
    sys.modules["tensorflow"] = None
    try:
        return pytest.importorskip("quantus")
    finally:
        del sys.modules["tensorflow"]


quantus = _import_quantus()
pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(autouse=True)
def _quantus_without_tensorflow(monkeypatch):
    """Quantus checks for TensorFlow on every call too."""
    if "tensorflow" not in sys.modules:
        monkeypatch.setitem(sys.modules, "tensorflow", None)


def _attr(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_deletion_curve_equals_quantus_pixel_flipping(gray):
    net, model, x, y = gray
    a = _attr(x.shape)
    ours = metrics.deletion(model, x, a, target=y, step=8, substrate=0.0, softmax=False, show_progress=False)
    ref = quantus.PixelFlipping(
        features_in_step=8, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True
    )
    curves = np.array(
        ref(model=net, x_batch=x, y_batch=y, a_batch=a, channel_first=True, softmax=False, device="cpu")
    )
    # Quantus's curve starts after the first step; ours also holds the unperturbed input.
    np.testing.assert_allclose(ours.curves[:, 1:], curves, atol=1e-5)
    # Quantus's per-sample AUC is np.trapz(curve, dx=1) (np.trapz is gone in numpy 2.4, so
    # Quantus's return_auc_per_sample fails here); ours is the area over [0, 1] with the start.
    n_steps = curves.shape[1]
    quantus_auc = np.trapezoid(curves, dx=1, axis=1)
    start = ours.curves[:, 0]
    np.testing.assert_allclose(ours.scores * n_steps, quantus_auc + (start + curves[:, 0]) / 2, rtol=1e-5)
    # ours: the same curve from 0 to 1 on the x-axis (Petsiuk et al.'s normalisation)
    np.testing.assert_allclose(ours.scores, np.trapezoid(ours.curves, ours.steps, axis=1), rtol=1e-9)


def test_deletion_with_softmax_equals_quantus(gray):
    net, model, x, y = gray
    a = _attr(x.shape, 1)
    ours = metrics.deletion(model, x, a, target=y, step=32, substrate=0.0, softmax=True, show_progress=False)
    ref = quantus.PixelFlipping(
        features_in_step=32, perturb_baseline=0.0, normalise=False, abs=False, disable_warnings=True
    )
    curves = np.array(
        ref(model=net, x_batch=x, y_batch=y, a_batch=a, channel_first=True, softmax=True, device="cpu")
    )
    np.testing.assert_allclose(ours.curves[:, 1:], curves, atol=1e-6)


def test_aopc_curve_equals_quantus_region_perturbation(gray):
    net, model, x, y = gray
    a = _attr(x.shape, 2)
    for order in ("morf", "lerf"):
        ours = metrics.pixel_flipping(
            model, x, a, target=y, order=order, patch_size=4, substrate=0.0, show_progress=False
        )
        ref = quantus.RegionPerturbation(
            patch_size=4,
            regions_evaluation=16,
            order=order,
            perturb_baseline=0.0,
            normalise=False,
            abs=False,
            disable_warnings=True,
        )
        curves = np.array(
            ref(model=net, x_batch=x, y_batch=y, a_batch=a, channel_first=True, softmax=False, device="cpu")
        )
        np.testing.assert_allclose(ours.curves[:, 1:], curves, atol=1e-5)
        np.testing.assert_allclose(ours.scores, curves.sum(axis=1) / 17, atol=1e-5)  # AOPC, k = 0..16


def test_noisy_linear_imputation_equals_quantus():
    from quantus.functions.perturb_func import noisy_linear_imputation

    rng = np.random.default_rng(4)
    image = rng.random((3, 12, 10))
    removed = rng.choice(120, size=50, replace=False)
    ours = metrics.noisy_linear_imputation(image, removed, noise=0.0)
    ref = noisy_linear_imputation(image, removed, noise=0.0)
    np.testing.assert_allclose(ours, ref, atol=1e-10)
    # each imputed pixel is the weighted mean of its neighbours (interior pixel check)
    full = metrics.noisy_linear_imputation(image, np.array([5 * 10 + 5]), noise=0.0)
    w = np.array([[1, 2, 1], [2, 0, 2], [1, 2, 1]]) / 12
    np.testing.assert_allclose(full[:, 5, 5], (image[:, 4:7, 4:7] * w).sum(axis=(1, 2)), atol=1e-12)


def test_road_accuracy_equals_quantus_without_noise(gray):
    net, model, x, y = gray
    a = _attr(x.shape, 3)
    pct = [10, 30, 50, 70, 90]
    ours = metrics.road(model, x, a, target=y, percentages=pct, noise=0.0, show_progress=False)
    ref = quantus.ROAD(
        percentages=pct, noise=0.0, normalise=False, abs=False, disable_warnings=True, return_aggregate=False
    )
    acc = ref(model=net, x_batch=x, y_batch=y, a_batch=a, channel_first=True, device="cpu")
    np.testing.assert_allclose(ours.details["accuracy"], [acc[p] for p in pct])


def _gaussian_noise_as_ours(x, n, std, seed):
    return np.concatenate(
        [
            (np.random.default_rng([seed, i]).standard_normal((n, *x.shape[1:])) * std).astype(np.float32)
            for i in range(len(x))
        ]
    )


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_equals_captum(gray, normalize):
    from captum.metrics import infidelity

    net, model, x, y = gray
    a = _attr(x.shape, 5) * 0.1
    n = 10
    ours = metrics.infidelity(
        model,
        x,
        a,
        target=y,
        n_perturb_samples=n,
        normalize=normalize,
        seed=7,
        batch_size=4,
        show_progress=False,
    )
    noise = torch.from_numpy(_gaussian_noise_as_ours(x, n, 0.1, 7))

    def perturb(inputs):
        return noise, inputs - noise

    ref = infidelity(
        net,
        perturb,
        torch.from_numpy(x),
        torch.from_numpy(a),
        target=torch.from_numpy(y),
        n_perturb_samples=n,
        normalize=normalize,
    ).numpy()
    np.testing.assert_allclose(ours.scores, ref, rtol=1e-4)


def test_sensitivity_max_equals_captum(gray):
    from captum.attr import Saliency
    from captum.metrics import sensitivity_max

    import onnxplain as ox

    net, model, x, y = gray
    n, r = 6, 0.05
    ours = metrics.sensitivity_max(
        ox.Saliency(model),
        x,
        target=y,
        perturb_radius=r,
        n_perturb_samples=n,
        seed=3,
        batch_size=4,
        show_progress=False,
    )
    noise = torch.from_numpy(
        np.concatenate(
            [
                np.random.default_rng([3, i]).uniform(-r, r, (n, *x.shape[1:])).astype(np.float32)
                for i in range(len(x))
            ]
        )
    )

    def perturb(inputs, radius):
        return inputs + noise

    ref = sensitivity_max(
        Saliency(net).attribute,
        torch.from_numpy(x),
        perturb_func=perturb,
        perturb_radius=r,
        n_perturb_samples=n,
        target=torch.from_numpy(y),
    ).numpy()
    np.testing.assert_allclose(ours.scores, ref, rtol=1e-3)


def test_sparseness_entropy_and_pointing_game_equal_quantus(gray):
    net, model, x, y = gray
    a = np.abs(_attr(x.shape, 6))
    ours = metrics.sparseness(a).scores
    ref = quantus.Sparseness(normalise=False, abs=True, disable_warnings=True)(
        model=net, x_batch=x, y_batch=y, a_batch=a, channel_first=True, device="cpu"
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    ours = metrics.entropy(a).scores
    ref = quantus.Complexity(normalise=False, abs=True, disable_warnings=True)(
        model=net, x_batch=x, y_batch=y, a_batch=a, channel_first=True, device="cpu"
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    s = np.zeros((3, 1, 16, 16), dtype=bool)
    s[0, 0, :8, :8] = s[1, 0, 8:, 8:] = s[2, 0, :, :4] = True
    ours = metrics.pointing_game(a, masks=s[:, 0]).scores
    ref = quantus.PointingGame(disable_warnings=True, normalise=False, abs=False)(
        model=net, x_batch=x, y_batch=y, a_batch=a, s_batch=s.astype(float), channel_first=True, device="cpu"
    )
    np.testing.assert_allclose(ours, np.asarray(ref, dtype=float))
