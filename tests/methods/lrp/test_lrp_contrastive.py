"""CLRP and SGLRP are class-discriminative where plain LRP is not (the papers' motivation),
on the bundled trained CNN; and their seeds follow the papers' formulas."""

from __future__ import annotations

import numpy as np
import pytest

import onnxplain as ox
from onnxplain.methods import lrp
from onnxplain.methods.lrp.softmax_gradient_lrp import softmax_gradient


@pytest.fixture(scope="module")
def shapes():
    model = ox.examples.shapes_model()
    images, labels, _ = ox.examples.shapes_dataset(4, seed=11)
    logits = model.predict(images)
    order = np.argsort(-logits, axis=1)
    return model, images, order[:, 0], order[:, 1]


def _correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.sum(1).reshape(len(a), -1)  # channel-summed heat maps
    b = b.sum(1).reshape(len(b), -1)
    return np.array([np.corrcoef(u, v)[0, 1] for u, v in zip(a, b)])


def test_contrastive_maps_differ_between_classes_while_plain_lrp_maps_do_not(shapes):
    # The top-2 classes of each image. Plain LRP (deep Taylor, the rules CLRP and SGLRP
    # use) is compared with the one-hot seed (its map divided by the logit, whose sign
    # would only flip the map): the two classes' maps are nearly the same. CLRP's maps
    # differ; SGLRP's are close to opposite (evidence for one class is evidence against
    # the other). Measured: LRP 0.96-0.996, CLRP 0.50-0.81, SGLRP -1.0-0.02.
    model, images, top1, top2 = shapes
    logits = model.predict(images)
    rows = np.arange(len(images))
    plain = lrp.DeepTaylor(model, low=0.0, high=1.0)
    clrp = lrp.ContrastiveLRP(model, low=0.0, high=1.0)
    sglrp = lrp.SoftmaxGradientLRP(model, low=0.0, high=1.0)

    def one_hot(target):
        return plain.attribute(images, target=target) / logits[rows, target].reshape(-1, 1, 1, 1)

    r_plain = _correlation(one_hot(top1), one_hot(top2))
    r_clrp = _correlation(clrp.attribute(images, target=top1), clrp.attribute(images, target=top2))
    r_sglrp = _correlation(sglrp.attribute(images, target=top1), sglrp.attribute(images, target=top2))
    print(
        f"correlation between the maps of the top-2 classes: LRP {r_plain.round(3)}, "
        f"CLRP {r_clrp.round(3)}, SGLRP {r_sglrp.round(3)}"
    )
    assert r_plain.min() > 0.95
    assert r_clrp.max() < 0.9 and r_clrp.mean() < 0.75
    assert r_sglrp.max() < 0.1


def test_softmax_gradient_seed_is_the_jacobian_of_the_target_probability():
    z = np.array([[1.0, 2.0, -0.5], [0.3, 0.1, 0.2]])
    t = np.array([1, 2])
    y = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    seed = softmax_gradient(z, t)
    for i in range(2):
        expected = -y[i, t[i]] * y[i]
        expected[t[i]] = y[i, t[i]] * (1 - y[i, t[i]])
        np.testing.assert_allclose(seed[i], expected, rtol=1e-12)
    np.testing.assert_allclose(seed.sum(1), 0.0, atol=1e-12)  # softmax sums to 1


def test_sglrp_is_the_target_relevance_minus_the_others(shapes):
    # the rules are linear in the relevance: one pass from the signed seed equals the
    # paper's R_t − Σ_{n≠t} R_n of separately propagated parts (here: n≠t in one pass)
    model, images, top1, _ = shapes
    x = images[:1]
    composite = lrp.DeepTaylorComposite(0.0, 1.0)
    ours = lrp.SoftmaxGradientLRP(model, composite).attribute(x, target=top1[:1])
    z = model.predict(x).astype(np.float64)
    seed = softmax_gradient(z, top1[:1])
    plain = lrp.LRP(model, composite)
    parts = [plain.attribute(x, target=k) / z[0, k] * seed[0, k] for k in range(z.shape[1])]
    np.testing.assert_allclose(ours, np.sum(parts, axis=0), atol=1e-5 * np.abs(ours).max())


def test_clrp_is_nonnegative_and_normalised(shapes):
    model, images, top1, _ = shapes
    maps = lrp.ContrastiveLRP(model, low=0.0, high=1.0).attribute(images, target=top1)
    assert maps.shape == images.shape and (maps >= 0).all()
    assert (maps.reshape(len(maps), -1).sum(1) <= 1.0 + 1e-5).all()


def test_contrastive_methods_need_class_targets(shapes):
    model, images, _, _ = shapes
    with pytest.raises(ox.InputValidationError, match="class"):
        lrp.ContrastiveLRP(model, low=0.0, high=1.0).attribute(
            images, target=ox.Channel(model.layers()[0].name, 0)
        )
