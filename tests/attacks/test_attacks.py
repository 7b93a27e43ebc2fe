"""FGSM, PGD and the explanation attacks on the bundled shapes model (held-out images)."""

import numpy as np
import pytest

import onnxplain as ox
from onnxplain import attacks


@pytest.fixture(scope="module")
def shapes():
    return ox.examples.shapes_model(), ox.examples.shapes_dataset(16, seed=23)


def test_fgsm_flips_predictions_and_pgd_is_stronger(shapes):
    model, data = shapes
    x = data.images
    rates = {}
    for eps in (0.01, 0.03, 0.05):
        f = attacks.fgsm(model, x, eps)
        p = attacks.pgd(model, x, eps, n_steps=10)
        rates[eps] = (f.flip_rate, p.flip_rate)
        assert f.details["linf"].max() <= eps + 1e-6 and p.details["linf"].max() <= eps + 1e-6
        assert f.adversarial.min() >= 0 and f.adversarial.max() <= 1
        assert p.flip_rate >= f.flip_rate
    # measured on these 16 images (all correctly classified), flip rate at eps 0.01 / 0.03 / 0.05:
    # FGSM 0.19 / 0.69 / 0.81, PGD (10 steps) 0.25 / 1.00 / 1.00
    assert rates[0.03][0] >= 0.5, rates
    assert rates[0.05][1] == 1.0, rates
    assert rates[0.01][0] <= rates[0.03][0] <= rates[0.05][0], rates


def test_pgd_l2_targeted_and_seeded(shapes):
    model, data = shapes
    x = data.images[:8]
    l2 = attacks.pgd(model, x, 2.0, norm="l2", n_steps=10)
    assert l2.details["l2"].max() <= 2.0 + 1e-4 and l2.flip_rate >= 0.5
    t = attacks.pgd(model, x, 0.06, labels=2, targeted=True, n_steps=20)
    assert t.success_rate >= 0.75 and (t.success == (t.adversarial_prediction == 2)).all()
    a = attacks.pgd(model, x, 0.03, n_steps=3, seed=1)
    b = attacks.pgd(model, x, 0.03, n_steps=3, seed=1)
    np.testing.assert_array_equal(a.adversarial, b.adversarial)
    with pytest.raises(ox.InputValidationError, match="labels"):
        attacks.fgsm(model, x, 0.03, targeted=True)
    with pytest.raises(ox.InputValidationError, match="norm"):
        attacks.pgd(model, x, 0.03, norm="l1")


def test_explanation_stability_of_gradcam_under_fgsm(shapes):
    model, data = shapes
    res = attacks.explanation_stability(model, data.images[:8], eps=0.03)
    flipped = res.details["attack"].original_prediction != res.details["attack"].adversarial_prediction
    assert res.scores.shape == (8,) and np.isfinite(res.scores).all()
    # maps of flipped examples explain another class: they agree less with the original map
    topk = res.details["topk_intersection"]
    assert topk[flipped].mean() < topk[~flipped].mean()
    same = attacks.explanation_stability(model, data.images[:4], eps=0.0)
    np.testing.assert_allclose(same.scores, 1.0)
    np.testing.assert_allclose(same.details["topk_intersection"], 1.0)


def test_topk_manipulation_changes_the_map_but_not_the_prediction(shapes):
    model, data = shapes
    x = data.images[:3]
    res = attacks.topk_manipulation(model, x, eps=8 / 255, n_steps=15)
    np.testing.assert_array_equal(res.details["original_prediction"], res.details["adversarial_prediction"])
    assert res.details["linf"].max() <= 8 / 255 + 1e-6
    # measured: top-k (k = 81 px) intersection 1.0 -> 0.19, 0.10, 0.05 on these images
    assert res.mean < 0.5, res.scores
    sal = ox.Saliency(model).attribute(res.details["adversarial"], target=res.details["original_prediction"])
    before = ox.Saliency(model).attribute(x, target=res.details["original_prediction"])
    overlap = attacks.topk_intersection(np.abs(before).sum(1), np.abs(sal).sum(1), res.details["k"])
    np.testing.assert_allclose(overlap, res.scores)
