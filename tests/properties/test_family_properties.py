"""Property-based tests over every public method family: perturbation (FeatureAblation,
RISE, MeaningfulPerturbation, ExtremalPerturbation), surrogate (Lime, KernelShap,
ShapleyValueSampling), CAM (every class, any layer), layer methods, gradient methods and
NoiseTunnel.

For any combination of inputs, targets, masks and settings a method either returns a
finite result of the documented shape, or raises one of our own ``OnnxplainError``
subclasses; a foreign exception (numpy, torch, onnxruntime, pydantic) fails the test.
Where the combination is valid by the documentation, an error fails the test too.
Known invariants are checked on the way:

- FeatureAblation: each group's attribution is the output drop when that group takes the
  baseline; with one group it is f(x) − f(baseline) everywhere;
- RISE with p = 1 keeps every pixel: the map is f(x) everywhere;
- KernelShap and ShapleyValueSampling are efficient: Σ_j φ_j = f(x) − f(baseline);
- Lime and the SHAP estimators give one value per interpretable feature;
- CAM maps are ≥ 0 after the ReLU, in [0, 1] when normalised, input-sized when upsampled;
- LayerGradientXActivation at the logits is the target's logit (the gradient is one-hot);
- NoiseTunnel with stdevs = 0 is the wrapped method; smoothgrad_sq and vargrad are ≥ 0;
- MeaningfulPerturbation with no iteration returns the untouched mask.

CI runs the bounded number of examples each property's ``@examples(n)`` gives; set
``HYPOTHESIS_PROFILE=stress`` for ``STRESS_EXAMPLES`` per property. Bugs these properties
found and that wait for a fix are pinned by strict xfails at the end of the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onnxplain as ox

STRESS = os.environ.get("HYPOTHESIS_PROFILE") == "stress"
STRESS_EXAMPLES = 300


def examples(ci: int) -> settings:
    """``ci`` examples in CI, ``STRESS_EXAMPLES`` under ``HYPOTHESIS_PROFILE=stress``."""
    return settings(
        max_examples=STRESS_EXAMPLES if STRESS else ci,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


CLASSES, CHANNELS = 3, 4
MODEL = ox.load(ox.examples.tiny_cnn(channels=CHANNELS, classes=CLASSES))
FEATURE_MAPS = ["conv1", "relu1", "conv2", "features"]  # (N, 4, H, W), H and W of the input
CAM_CLASSES = [
    ox.CAM,
    ox.GradCAM,
    ox.GradCAMPlusPlus,
    ox.XGradCAM,
    ox.HiResCAM,
    ox.LayerCAM,
    ox.EigenCAM,
    ox.ScoreCAM,
    ox.AblationCAM,
]


def _images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def _call(fn: Callable[[], Any]) -> tuple[Any, ox.OnnxplainError | None]:
    """``fn()``'s result, or the OnnxplainError it raised. Any other exception propagates
    and fails the property: a raw numpy/torch/onnxruntime error is a bug."""
    try:
        return fn(), None
    except ox.OnnxplainError as exc:
        return None, exc


# -- targets -------------------------------------------------------------------------------
class_targets = st.one_of(
    st.none(), st.integers(-2, CLASSES + 1), st.lists(st.integers(-1, CLASSES), min_size=1, max_size=3)
)
# Indices one past each end: out-of-range and negative ones are refused with our error
# (see also test_out_of_range_internal_targets_are_our_error below).
internal_targets = st.one_of(
    st.builds(ox.Channel, st.sampled_from(FEATURE_MAPS + ["pooled", "nope"]), st.integers(-1, CHANNELS)),
    st.builds(ox.Neuron, st.sampled_from(["features", "logits", "nope"]), st.integers(-1, CLASSES)),
    st.builds(
        ox.Neuron,
        st.sampled_from(["features", "logits"]),
        st.tuples(st.integers(-1, CHANNELS), st.integers(-1, 7), st.just(0)),
    ),
)
any_target = st.one_of(class_targets, internal_targets)


def valid_target(target: Any, n: int, size: int) -> bool:
    """Whether ``target`` is valid for n examples of size × size by the documentation."""
    if target is None:
        return True
    if isinstance(target, int):
        return 0 <= target < CLASSES
    if isinstance(target, list):
        return len(target) == n and all(0 <= t < CLASSES for t in target)
    if target.layer == "nope":
        return False
    if isinstance(target, ox.Channel):
        return target.layer in FEATURE_MAPS + ["pooled"] and 0 <= target.channel < CHANNELS
    shape = (CHANNELS, size, size) if target.layer == "features" else (CLASSES,)
    if isinstance(target.index, int):
        return 0 <= target.index < int(np.prod(shape))
    return len(target.index) == len(shape) and all(0 <= i < d for i, d in zip(target.index, shape))


def target_scores(x: np.ndarray, target: Any) -> np.ndarray:
    """The score each example's target takes, computed here from forward passes."""
    n = len(x)
    if isinstance(target, (ox.Channel, ox.Neuron)):
        layer = target.layer
        value = MODEL.backend("onnxruntime").forward(x, outputs=[layer])[layer]
        if isinstance(target, ox.Channel):
            return value[:, target.channel].reshape(n, -1).mean(1)
        index = (
            target.index
            if isinstance(target.index, tuple)
            else np.unravel_index(target.index, value.shape[1:])
        )
        return value[(slice(None), *index)]
    logits = MODEL.predict(x)
    if target is None:
        return logits.max(1)
    classes = np.broadcast_to(np.asarray(target), (n,))
    return logits[np.arange(n), classes]


def _resolved_classes(x: np.ndarray, target: Any) -> Any:
    """``target`` with None replaced by the classes predicted for ``x`` (fixed for
    comparisons on perturbed inputs)."""
    return MODEL.predict(x).argmax(1).tolist() if target is None else target


# -- masks ---------------------------------------------------------------------------------
MASK_KINDS = ["HW", "CHW", "1CHW", "11HW", "NCHW", "NHW", "bad shape", "float"]


def make_mask(kind: str, n: int, size: int, labels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = {
        "HW": (size, size),
        "CHW": (3, size, size),
        "1CHW": (1, 3, size, size),
        "11HW": (1, 1, size, size),
        "NCHW": (n, 3, size, size),
        "NHW": (n, size, size),
        "bad shape": (size + 1, size),
        "float": (size, size),
    }[kind]
    mask = rng.integers(-3, -3 + labels, shape)
    return mask.astype(np.float32) if kind == "float" else mask


def as_read(mask: np.ndarray, n: int) -> np.ndarray:
    """``mask`` as every mask method reads it (onnxplain.methods._feature_mask): a 3-D mask
    whose first dim is N (or 1) is one (H, W) mask per example, even when N == C; other
    masks gain leading dims (numpy broadcasting)."""
    if mask.ndim == 3 and mask.shape[0] in (1, n):
        return mask[:, None]
    return mask.reshape((1,) * (4 - mask.ndim) + mask.shape)


def _groups_constant(attr: np.ndarray, mask: np.ndarray) -> bool:
    """Every group of ``mask`` (broadcast to ``attr``) holds one value per example."""
    full = np.broadcast_to(mask, attr.shape)
    for i in range(len(attr)):
        for f in np.unique(full[i]):
            values = attr[i][full[i] == f]
            if values.max() != values.min():
                return False
    return True


# -- perturbation --------------------------------------------------------------------------
@examples(20)
@given(
    n=st.integers(1, 3),
    size=st.integers(3, 8),
    seed=st.integers(0, 2**16),
    kind=st.sampled_from(MASK_KINDS),
    labels=st.integers(1, 6),
    target=any_target,
    baseline=st.floats(-2, 2, width=32),
    per_eval=st.one_of(st.none(), st.integers(0, 5)),
)
def test_feature_ablation_any_mask(n, size, seed, kind, labels, target, baseline, per_eval):
    x = _images(n, size, seed)
    mask = make_mask(kind, n, size, labels, seed)
    attr, err = _call(
        lambda: ox.FeatureAblation(MODEL).attribute(
            x,
            baselines=baseline,
            target=target,
            feature_mask=mask,
            perturbations_per_eval=per_eval,
            show_progress=False,
        )
    )
    valid = (
        kind not in ("bad shape", "float")
        and valid_target(target, n, size)
        and (per_eval is None or per_eval >= 1)
    )
    if err is not None:
        assert not valid, f"a valid combination was refused: {err}"
        return
    assert valid, "an invalid combination was accepted"
    assert attr.shape == x.shape and np.isfinite(attr).all()
    full = np.broadcast_to(as_read(mask, n), x.shape)
    assert _groups_constant(attr, full)
    # the attribution of one group is the drop of the target when that group is removed
    group = full[0].flat[0]
    removed = np.where(full == group, np.float32(baseline), x)
    classes = _resolved_classes(x, target)
    drop = target_scores(x, classes) - target_scores(removed, classes)
    scale = max(1.0, float(np.abs(drop).max()))
    for i in range(n):
        if (full[i] == group).any():
            np.testing.assert_allclose(attr[i][full[i] == group], drop[i], atol=1e-5 * scale)


@examples(10)
@given(
    n=st.integers(1, 3),
    size=st.integers(2, 8),
    seed=st.integers(0, 2**16),
    label=st.integers(-5, 5),
    baseline=st.floats(-2, 2, width=32),
    target=st.one_of(st.none(), st.integers(0, CLASSES - 1)),
)
def test_feature_ablation_with_one_feature_is_the_output_difference(n, size, seed, label, baseline, target):
    x = _images(n, size, seed)
    attr = ox.FeatureAblation(MODEL).attribute(
        x, baselines=baseline, target=target, feature_mask=np.full((size, size), label), show_progress=False
    )
    classes = _resolved_classes(x, target)
    diff = target_scores(x, classes) - target_scores(np.full_like(x, baseline), classes)
    np.testing.assert_allclose(
        attr,
        np.broadcast_to(diff[:, None, None, None], x.shape),
        atol=1e-5 * max(1.0, float(np.abs(diff).max())),
    )


@examples(20)
@given(
    n=st.integers(1, 2),
    size=st.integers(2, 9),
    seed=st.integers(0, 2**16),
    n_masks=st.integers(-1, 12),
    s=st.one_of(st.integers(-1, 10), st.tuples(st.integers(0, 10), st.integers(0, 10))),
    p=st.one_of(st.sampled_from([0.0, 1.0, -0.5, 1.5]), st.floats(0.01, 1)),
    batch=st.one_of(st.none(), st.integers(0, 7)),
    target=any_target,
)
def test_rise_any_settings(n, size, seed, n_masks, s, p, batch, target):
    x = _images(n, size, seed)
    out, err = _call(
        lambda: ox.RISE(MODEL).attribute(
            x, target=target, n_masks=n_masks, s=s, p=p, batch_size=batch, seed=seed, show_progress=False
        )
    )
    grid = (s, s) if isinstance(s, int) else s
    valid = (
        n_masks >= 1
        and all(1 <= g <= size for g in grid)
        and 0 < p <= 1
        and (batch is None or batch >= 1)
        and valid_target(target, n, size)
    )
    if err is not None:
        assert not valid, f"a valid combination was refused: {err}"
        return
    assert valid, "an invalid combination was accepted"
    assert out.shape == (n, size, size) and out.dtype == np.float32 and np.isfinite(out).all()


@examples(10)
@given(
    n=st.integers(1, 2),
    size=st.integers(2, 9),
    seed=st.integers(0, 2**16),
    n_masks=st.integers(1, 10),
    s=st.integers(1, 2),
    target=class_targets.filter(lambda t: t is None or isinstance(t, int)),
)
def test_rise_keeping_every_cell_is_the_score_everywhere(n, size, seed, n_masks, s, target):
    x = _images(n, size, seed)
    target = None if target is None else target % CLASSES
    out = ox.RISE(MODEL).attribute(
        x, target=target, n_masks=n_masks, s=s, p=1.0, seed=seed, show_progress=False
    )
    score = target_scores(x, _resolved_classes(x, target))
    np.testing.assert_allclose(
        out,
        np.broadcast_to(score[:, None, None], out.shape),
        rtol=1e-5,
        atol=1e-5 * max(1.0, float(np.abs(score).max())),
    )


@examples(12)
@given(
    n=st.integers(1, 2),
    size=st.integers(2, 9),
    seed=st.integers(0, 2**16),
    max_iter=st.integers(-1, 2),
    mask_scale=st.integers(0, 6),
    variant=st.sampled_from(["delete", "preserve", "keep"]),
    jitter=st.integers(-1, 3),
    tv_beta=st.floats(0.5, 3),
    learning_rate=st.floats(-0.1, 0.5),
    fill=st.sampled_from(["blur", "zero", "noise"]),
    target=any_target,
)
def test_meaningful_perturbation_cheap_settings(
    n, size, seed, max_iter, mask_scale, variant, jitter, tv_beta, learning_rate, fill, target
):
    x = _images(n, size, seed)
    kw = (
        {"baselines": 0.0}
        if fill == "zero"
        else {"infill": ox.infill.GaussianNoise(0.5)}
        if fill == "noise"
        else {}
    )
    out, err = _call(
        lambda: ox.MeaningfulPerturbation(MODEL).attribute(
            x,
            target=target,
            variant=variant,
            max_iter=max_iter,
            mask_scale=mask_scale,
            jitter=jitter,
            tv_beta=tv_beta,
            learning_rate=learning_rate,
            seed=seed,
            show_progress=False,
            **kw,
        )
    )
    valid = (
        max_iter >= 0
        and mask_scale >= 1
        and variant != "keep"
        and jitter >= 0
        and tv_beta >= 1
        and learning_rate > 0
        and valid_target(target, n, size)
    )
    if err is not None:
        assert not valid, f"a valid combination was refused: {err}"
        return
    assert valid, "an invalid combination was accepted"
    assert out.shape == (n, size, size) and np.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    if max_iter == 0:  # the mask starts at 1 (the unperturbed input)
        np.testing.assert_allclose(out, 0.0 if variant == "delete" else 1.0, atol=1e-6)


@examples(10)
@given(
    n=st.integers(1, 2),
    size=st.integers(3, 10),
    seed=st.integers(0, 2**16),
    areas=st.one_of(st.floats(-0.2, 1.2), st.lists(st.floats(0.05, 0.95), min_size=1, max_size=3)),
    variant=st.sampled_from(["preserve", "delete", "dual"]),
    perturbation=st.sampled_from(["blur", "fade"]),
    max_iter=st.integers(0, 2),
    num_levels=st.integers(1, 4),
    step=st.integers(0, 4),
    sigma=st.floats(0.5, 4),
    jitter=st.booleans(),
    target=any_target,
)
def test_extremal_perturbation_cheap_settings(
    n, size, seed, areas, variant, perturbation, max_iter, num_levels, step, sigma, jitter, target
):
    x = _images(n, size, seed)  # sigma < step included: see test_extremal_perturbation_with_sigma_below_step
    out, err = _call(
        lambda: ox.ExtremalPerturbation(MODEL).attribute(
            x,
            target=target,
            areas=areas,
            variant=variant,
            perturbation=perturbation,
            max_iter=max_iter,
            num_levels=num_levels,
            step=step,
            sigma=sigma,
            max_blur=2.0,
            jitter=jitter,
            seed=seed,
            show_progress=False,
        )
    )
    single = isinstance(areas, float)
    area_list = [areas] if single else areas
    valid = (
        all(0 < a < 1 for a in area_list)
        and max_iter >= 1
        and num_levels >= 2
        and step >= 1
        and valid_target(target, n, size)
    )
    if err is not None:
        assert not valid, f"a valid combination was refused: {err}"
        return
    assert valid, "an invalid combination was accepted"
    assert out.shape == ((n, size, size) if single else (n, len(area_list), size, size))
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


# -- surrogates ----------------------------------------------------------------------------
SURROGATE_MASKS = ["HW", "NHW", "CHW", "1CHW", "11HW", "NCHW", "bad shape", "float"]


@examples(15)
@given(
    n=st.integers(1, 3),
    size=st.integers(2, 7),
    seed=st.integers(0, 2**16),
    kind=st.sampled_from(SURROGATE_MASKS),
    labels=st.integers(1, 5),
    n_samples=st.integers(0, 20),
    model=st.sampled_from(["lasso", "ridge", "linear", "forest"]),
    alpha=st.floats(-0.1, 1),
    kernel_width=st.floats(-0.5, 5),
    space=st.sampled_from(["input", "interpretable"]),
    target=any_target,
)
def test_lime_any_mask_and_settings(
    n, size, seed, kind, labels, n_samples, model, alpha, kernel_width, space, target
):
    x = _images(n, size, seed)
    mask = make_mask(kind, n, size, labels, seed)
    out, err = _call(
        lambda: ox.Lime(MODEL).attribute(
            x,
            target=target,
            feature_mask=mask,
            n_samples=n_samples,
            interpretable_model=model,
            alpha=alpha,
            kernel_width=kernel_width,
            distance_space=space,
            seed=seed,
            show_progress=False,
        )
    )
    valid = (
        kind not in ("bad shape", "float")
        and n_samples >= 1
        and model != "forest"
        and alpha >= 0
        and kernel_width > 0
        and 2 * kernel_width * kernel_width > 0  # 2σ² must not underflow: refused up front
        and valid_target(target, n, size)
    )
    if err is not None:
        # an otherwise valid call may find every proximity weight 0 (documented refusal)
        assert not valid or "proximity weight" in str(err), f"a valid combination was refused: {err}"
        return
    assert valid, "an invalid combination was accepted"
    assert out.shape == x.shape and np.isfinite(out).all()
    assert _groups_constant(out, np.broadcast_to(as_read(mask, n), x.shape))


@examples(15)
@given(
    n=st.integers(1, 3),
    size=st.integers(2, 7),
    seed=st.integers(0, 2**16),
    kind=st.sampled_from(SURROGATE_MASKS),
    labels=st.integers(1, 6),
    n_samples=st.one_of(st.none(), st.integers(0, 30)),
    exact=st.sampled_from([None, True, False]),
    baseline=st.floats(-2, 2, width=32),
    target=any_target,
)
def test_kernel_shap_is_efficient_for_any_mask(
    n, size, seed, kind, labels, n_samples, exact, baseline, target
):
    x = _images(n, size, seed)
    mask = make_mask(kind, n, size, labels, seed)
    out, err = _call(
        lambda: ox.KernelShap(MODEL).attribute(
            x,
            baselines=baseline,
            target=target,
            feature_mask=mask,
            n_samples=n_samples,
            exact=exact,
            return_input_shape=False,
            seed=seed,
            show_progress=False,
        )
    )
    valid = (
        kind not in ("bad shape", "float")
        and (n_samples is None or n_samples >= 1)
        and valid_target(target, n, size)
    )
    if err is not None:
        assert not valid, f"a valid combination was refused: {err}"
        return
    assert valid, "an invalid combination was accepted"
    assert out.shape == (n, len(np.unique(mask))) and np.isfinite(out).all()
    classes = _resolved_classes(x, target)
    gap = target_scores(x, classes) - target_scores(np.full_like(x, baseline), classes)
    np.testing.assert_allclose(out.sum(1), gap, atol=1e-4 * max(1.0, float(np.abs(gap).max())))


@examples(15)
@given(
    n=st.integers(1, 3),
    size=st.integers(2, 7),
    seed=st.integers(0, 2**16),
    kind=st.sampled_from(SURROGATE_MASKS),
    labels=st.integers(1, 6),
    n_samples=st.integers(-1, 6),
    antithetic=st.booleans(),
    baseline=st.floats(-2, 2, width=32),
    target=any_target,
    batch=st.one_of(st.none(), st.integers(0, 9)),
)
def test_shapley_value_sampling_is_efficient_for_any_mask(
    n, size, seed, kind, labels, n_samples, antithetic, baseline, target, batch
):
    x = _images(n, size, seed)
    mask = make_mask(kind, n, size, labels, seed)
    out, err = _call(
        lambda: ox.ShapleyValueSampling(MODEL).attribute(
            x,
            baselines=baseline,
            target=target,
            feature_mask=mask,
            n_samples=n_samples,
            antithetic=antithetic,
            batch_size=batch,
            return_input_shape=False,
            seed=seed,
            show_progress=False,
        )
    )
    valid = (
        kind not in ("bad shape", "float")
        and n_samples >= 1
        and (batch is None or batch >= 1)
        and valid_target(target, n, size)
    )
    if err is not None:
        assert not valid, f"a valid combination was refused: {err}"
        return
    assert valid, "an invalid combination was accepted"
    assert out.shape == (n, len(np.unique(mask))) and np.isfinite(out).all()
    classes = _resolved_classes(x, target)
    gap = target_scores(x, classes) - target_scores(np.full_like(x, baseline), classes)
    np.testing.assert_allclose(out.sum(1), gap, atol=1e-4 * max(1.0, float(np.abs(gap).max())))


# -- CAM -----------------------------------------------------------------------------------
@examples(30)
@given(
    cls=st.sampled_from(CAM_CLASSES),
    layer=st.sampled_from(FEATURE_MAPS + ["pooled", "auto", "flat", "nope"]),
    n=st.integers(1, 3),
    size=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    target=any_target,
    relu=st.booleans(),
    upsample=st.booleans(),
    normalize=st.booleans(),
)
def test_cam_family_any_layer_and_target(cls, layer, n, size, seed, target, relu, upsample, normalize):
    x = _images(n, size, seed)
    cam, err = _call(lambda: cls(MODEL, layer=layer))
    if err is not None:  # 2-D tensors and unknown names; CAM needs the GAP → FC head
        assert layer in ("flat", "nope") or (cls is ox.CAM and layer not in ("features", "auto")), err
        return
    assert layer not in ("flat", "nope"), "a tensor that is no feature map was accepted"
    out, err = _call(
        lambda: cam.attribute(
            x,
            target=target,
            relu_attributions=relu,
            upsample=upsample,
            normalize=normalize,
            show_progress=False,
        )
    )
    # CAM weighs channels by the classifier's weights, ScoreCAM (by default) softmaxes the
    # classes, AblationCAM re-runs the layers after `layer` to the output: all three explain
    # output classes only, and say so (a Neuron of the output tensor is a class: either way)
    internal = isinstance(target, (ox.Channel, ox.Neuron))
    class_only = cls in (ox.CAM, ox.ScoreCAM, ox.AblationCAM)
    valid = valid_target(target, n, size) and not (internal and class_only)
    either = (
        class_only
        and isinstance(target, ox.Neuron)
        and target.layer == "logits"
        and valid_target(target, n, size)
    )
    if err is not None:
        assert not valid or either, f"a valid combination was refused: {err}"
        return
    assert valid or either, "an invalid target was accepted"
    spatial = 1 if layer == "pooled" else size
    assert out.shape == ((n, size, size) if upsample else (n, spatial, spatial))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    if relu:
        assert out.min() >= 0
    if normalize:
        assert out.min() >= 0 and out.max() <= 1 + 1e-6


# -- layer and gradient methods --------------------------------------------------------------
LAYER_SHAPES = {
    **{name: lambda n, s: (n, CHANNELS, s, s) for name in FEATURE_MAPS},
    "pooled": lambda n, s: (n, CHANNELS, 1, 1),
    "flat": lambda n, s: (n, CHANNELS),
    "logits": lambda n, s: (n, CLASSES),
}


@examples(25)
@given(
    cls=st.sampled_from([ox.LayerActivation, ox.LayerGradientXActivation, ox.LayerIntegratedGradients]),
    layer=st.sampled_from([*LAYER_SHAPES, "auto", "input", "nope"]),
    n=st.integers(1, 3),
    size=st.integers(1, 7),
    seed=st.integers(0, 2**16),
    target=any_target,
    n_steps=st.integers(0, 4),
)
def test_layer_methods_any_layer_and_target(cls, layer, n, size, seed, target, n_steps):
    x = _images(n, size, seed)
    method, err = _call(lambda: cls(MODEL, layer))
    if err is not None:
        assert layer in ("input", "nope"), err
        return
    assert layer not in ("input", "nope"), "the model input or an unknown tensor was accepted as a layer"
    kwargs = {} if cls is ox.LayerActivation else {"target": target}
    if cls is ox.LayerIntegratedGradients:
        kwargs.update(n_steps=n_steps, show_progress=False)
    out, err = _call(lambda: method.attribute(x, **kwargs))
    valid = (cls is ox.LayerActivation or valid_target(target, n, size)) and (
        cls is not ox.LayerIntegratedGradients or n_steps >= 1
    )
    if err is not None:
        assert not valid, f"a valid combination was refused: {err}"
        return
    assert valid, "an invalid combination was accepted"
    assert out.shape == LAYER_SHAPES["features" if layer == "auto" else layer](n, size)
    assert np.isfinite(out).all()
    internal = isinstance(target, (ox.Channel, ox.Neuron))
    if cls is ox.LayerGradientXActivation and layer == "logits" and not internal:  # ∂logit_c/∂logits: one-hot
        np.testing.assert_allclose(out.sum(1), target_scores(x, target), rtol=1e-5, atol=1e-6)


@examples(20)
@given(
    cls=st.sampled_from(["Deconvolution", "RectGrad", "GuidedGradCAM", "IntegratedGradients", "SmoothGrad"]),
    n=st.integers(1, 3),
    size=st.integers(1, 7),
    seed=st.integers(0, 2**16),
    target=any_target,
)
def test_every_gradient_method_any_target(cls, n, size, seed, target):
    x = _images(n, size, seed)
    extra = {
        "IntegratedGradients": {"n_steps": 3, "show_progress": False},
        "SmoothGrad": {"nt_samples": 2, "seed": seed, "show_progress": False},
    }.get(cls, {})
    out, err = _call(lambda: getattr(ox, cls)(MODEL).attribute(x, target=target, **extra))
    if err is not None:
        assert not valid_target(target, n, size), f"a valid target was refused: {err}"
        return
    assert valid_target(target, n, size), "an invalid target was accepted"
    assert out.shape == x.shape and np.isfinite(out).all()


# -- NoiseTunnel -----------------------------------------------------------------------------
INNER = {
    "Saliency": (lambda: ox.Saliency(MODEL), {}),
    "InputXGradient": (lambda: ox.InputXGradient(MODEL), {}),
    "IntegratedGradients": (lambda: ox.IntegratedGradients(MODEL), {"n_steps": 2}),
    "GuidedBackprop": (lambda: ox.GuidedBackprop(MODEL), {}),
    "GradCAM": (lambda: ox.GradCAM(MODEL), {}),
    "Occlusion": (lambda: ox.Occlusion(MODEL), {"sliding_window_shapes": (3, 2, 2)}),
    "FeatureAblation": (lambda: ox.FeatureAblation(MODEL), {}),
}


@examples(20)
@given(
    inner=st.sampled_from(sorted(INNER)),
    nt_type=st.sampled_from(["smoothgrad", "smoothgrad_sq", "vargrad", "x"]),
    nt_samples=st.integers(-1, 4),
    batch=st.one_of(st.none(), st.integers(0, 5)),
    stdevs=st.one_of(st.just(0.0), st.floats(-0.5, 2)),
    n=st.integers(1, 3),
    size=st.integers(2, 6),
    seed=st.integers(0, 2**16),
    target=any_target,
)
def test_noise_tunnel_any_method_and_settings(
    inner, nt_type, nt_samples, batch, stdevs, n, size, seed, target
):
    x = _images(n, size, seed)
    make, kwargs = INNER[inner]
    tunnel = ox.NoiseTunnel(make())

    def run():
        return tunnel.attribute(
            x,
            nt_type=nt_type,
            nt_samples=nt_samples,
            nt_samples_batch_size=batch,
            stdevs=stdevs,
            target=target,
            seed=seed,
            show_progress=False,
            **kwargs,
        )

    out, err = _call(run)
    valid = (
        nt_type != "x"
        and nt_samples >= 1
        and (batch is None or batch >= 1)
        and stdevs >= 0
        and valid_target(target, n, size)
    )
    if err is not None:
        assert not valid, f"a valid combination was refused: {err}"
        return
    assert valid, "an invalid combination was accepted"
    assert np.isfinite(out).all() and out.shape[0] == n
    assert np.array_equal(out, run()), "the same seed gave a different result"
    if nt_type == "smoothgrad_sq":
        assert out.min() >= 0
    if nt_type == "vargrad":
        assert out.min() >= -1e-6 * max(1.0, float(np.abs(out).max()))
    if stdevs == 0 and nt_type == "smoothgrad":  # no noise: the wrapped method itself
        plain = make().attribute(
            x, target=_resolved_classes(x, target) if target is None else target, **kwargs
        )
        np.testing.assert_allclose(out, plain, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(plain).max())))


# -- determinism under a seed --------------------------------------------------------------------
SEEDED = {
    "RISE": lambda x, s: ox.RISE(MODEL).attribute(x, target=0, n_masks=6, s=2, seed=s, show_progress=False),
    "RISE noise fill": lambda x, s: ox.RISE(MODEL).attribute(
        x, target=0, n_masks=6, s=2, infill=ox.infill.GaussianNoise(1.0), seed=s, show_progress=False
    ),
    "Lime": lambda x, s: ox.Lime(MODEL).attribute(
        x,
        target=0,
        feature_mask=np.arange(4).reshape(2, 2).repeat(x.shape[2] // 2, 0).repeat(x.shape[3] // 2, 1),
        n_samples=12,
        seed=s,
        show_progress=False,
    ),
    "KernelShap": lambda x, s: ox.KernelShap(MODEL).attribute(
        x,
        target=0,
        feature_mask=np.arange(x.shape[2] * x.shape[3]).reshape(x.shape[2:]),
        n_samples=10,
        seed=s,
        show_progress=False,
    ),
    "ShapleyValueSampling": lambda x, s: ox.ShapleyValueSampling(MODEL).attribute(
        x,
        target=0,
        feature_mask=np.arange(x.shape[2] * x.shape[3]).reshape(x.shape[2:]) % 5,
        n_samples=3,
        seed=s,
        show_progress=False,
    ),
    "FeatureAblation noise fill": lambda x, s: ox.FeatureAblation(MODEL).attribute(
        x, target=0, infill=ox.infill.GaussianNoise(1.0), seed=s, show_progress=False
    ),
    "SmoothGrad": lambda x, s: ox.SmoothGrad(MODEL).attribute(
        x, target=0, nt_samples=3, seed=s, show_progress=False
    ),
    "MeaningfulPerturbation": lambda x, s: ox.MeaningfulPerturbation(MODEL).attribute(
        x, target=0, max_iter=2, mask_scale=2, seed=s, show_progress=False
    ),
    "ExtremalPerturbation": lambda x, s: ox.ExtremalPerturbation(MODEL).attribute(
        x, target=0, max_iter=2, step=2, sigma=2.0, max_blur=2.0, seed=s, show_progress=False
    ),
    "ExtremalPerturbation noise fill": lambda x, s: ox.ExtremalPerturbation(MODEL).attribute(
        x,
        target=0,
        max_iter=2,
        step=2,
        sigma=2.0,
        infill=ox.infill.GaussianNoise(1.0),
        seed=s,
        show_progress=False,
    ),
}


@examples(15)
@given(
    method=st.sampled_from(sorted(SEEDED)),
    n=st.integers(1, 2),
    size=st.sampled_from([4, 6]),
    seed=st.integers(0, 2**32 - 1),
    data=st.integers(0, 2**16),
)
def test_every_seeded_method_repeats_itself_under_a_seed(method, n, size, seed, data):
    x = _images(n, size, data)
    first = SEEDED[method](x, seed)
    assert np.isfinite(first).all()
    assert np.array_equal(first, SEEDED[method](x.copy(), seed))


@pytest.mark.parametrize("method", sorted(set(SEEDED) - {"ExtremalPerturbation"}))
def test_seed_is_used(method):
    """Different seeds give different results: the seed reaches the random draws.
    (ExtremalPerturbation with its blur pyramid draws nothing; its seed serves random fills.)"""
    x = _images(2, 6, 0)
    assert not np.array_equal(SEEDED[method](x, 1), SEEDED[method](x, 2))


BAD_INTERNAL_TARGETS = [
    ox.Channel("conv1", CHANNELS),
    ox.Neuron("logits", CLASSES),
    ox.Neuron("features", 10**6),
    ox.Neuron("features", (0, 99, 0)),
    ox.Neuron("logits", (0, 0, 0)),
    ox.Neuron("features", (0, -1, 0)),  # negative entries do not wrap around (unlike Captum)
    ox.Neuron("logits", (-1,)),
    ox.Neuron("features", ()),
]


def _attribute_on(backend: str, x: np.ndarray, target: Any) -> np.ndarray:
    if backend == "onnxruntime":
        occlusion = ox.Occlusion(MODEL, backend="onnxruntime")
        return occlusion.attribute(x, target=target, sliding_window_shapes=(3, 2, 2), show_progress=False)
    return ox.Saliency(MODEL).attribute(x, target=target)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
@pytest.mark.parametrize("target", BAD_INTERNAL_TARGETS, ids=repr)
def test_out_of_range_internal_targets_are_our_error(target, backend):
    """Refused alike on both backends, with the argument and the accepted range named."""
    x = _images(1, 4, 0)
    with pytest.raises(ox.InputValidationError, match=r"Neuron|Channel|target") as info:
        _attribute_on(backend, x, target)
    message = str(info.value)
    assert ">= 0" in message or "non-empty" in message or "0.." in message


def test_out_of_range_message_names_the_tensor_shape_and_range():
    x = _images(1, 4, 0)
    with pytest.raises(ox.InputValidationError, match=r"'features' of shape \(N, 4, 4, 4\).*0\.\.3, 0\.\.3"):
        ox.Saliency(MODEL).attribute(x, target=ox.Neuron("features", (0, 99, 0)))
    # declared dims: checked before any evaluation, H and W symbolic ("?") in this model
    with pytest.raises(
        ox.InputValidationError, match=r"'conv1' of shape \(N, 4, \?, \?\) has channels 0\.\.3"
    ):
        _attribute_on("onnxruntime", x, ox.Channel("conv1", 4))


def test_feature_ablation_reads_a_segmentation_batch_like_the_surrogates():
    """onnxplain.segmentation returns (N, H, W); with N == C == 3 it is still one mask per
    example (the shared rule of onnxplain.methods._feature_mask), never a (C, H, W) mask."""
    x = _images(3, 8, 0)
    mask = np.stack([np.arange(64).reshape(8, 8) // (16 * (i + 1)) for i in range(3)])  # one per example
    kw = {"target": 0, "show_progress": False}
    per_example = ox.FeatureAblation(MODEL).attribute(x, feature_mask=mask[:, None], **kw)
    np.testing.assert_allclose(ox.FeatureAblation(MODEL).attribute(x, feature_mask=mask, **kw), per_example)


@pytest.mark.parametrize("name", ["FeatureAblation", "Lime", "KernelShap", "ShapleyValueSampling"])
def test_every_mask_method_reads_an_ambiguous_3d_mask_per_example(name):
    """(N, H, W) with N == C: each method gives the same result for ``mask`` as for the
    explicit ``mask[:, None]`` (N, 1, H, W), and for the explicit (1, C, H, W) reading a
    different one; the groups of each example's own mask are constant."""
    x = _images(3, 4, 1)
    mask = np.stack([np.arange(16).reshape(4, 4) // (4 * (i + 1)) for i in range(3)])
    kw: dict[str, Any] = {"target": 0, "show_progress": False}
    if name != "FeatureAblation":
        kw.update(n_samples=12 if name != "ShapleyValueSampling" else 2, seed=3)
    method = getattr(ox, name)(MODEL)
    out = method.attribute(x, feature_mask=mask, **kw)
    np.testing.assert_array_equal(out, method.attribute(x, feature_mask=mask[:, None], **kw))
    assert not np.array_equal(out, method.attribute(x, feature_mask=mask[None], **kw))
    assert _groups_constant(out, mask[:, None])


@pytest.mark.parametrize("perturbation", ["fade", "blur"])
@pytest.mark.parametrize(("size", "step", "sigma"), [(3, 2, 1.0), (3, 3, 0.5), (8, 7, 1.0), (5, 5, 7.0)])
def test_extremal_perturbation_with_sigma_below_step(perturbation, size, step, sigma):
    """Found by the stress profile: TorchRay's mask grid ended short of the input when σ is
    small next to ``step`` (or the size is not a multiple of it), a raw ValueError. The grid
    is now extended past the bottom/right edge: such settings work."""
    x = _images(1, size, 0)
    out = ox.ExtremalPerturbation(MODEL).attribute(
        x,
        target=0,
        perturbation=perturbation,
        max_iter=2,
        step=step,
        sigma=sigma,
        max_blur=2.0,
        show_progress=False,
    )
    assert out.shape == (1, size, size) and np.isfinite(out).all()
    assert ((out >= 0) & (out <= 1)).all()
