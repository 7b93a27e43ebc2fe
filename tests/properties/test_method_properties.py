"""Property-based tests: any valid argument combination gives a finite, input-shaped result
or our own InputValidationError — never a crash or a foreign exception.

CI runs a bounded number of examples; for the stress variant set
``HYPOTHESIS_PROFILE=stress`` (500 examples per property).
"""

import contextlib
import inspect
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onnxplain as ox
from onnxplain.cli.methods import available

settings.register_profile("ci", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("stress", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

MODEL = ox.load(ox.examples.tiny_cnn(classes=3))


def _images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


targets = st.one_of(st.none(), st.integers(-2, 4), st.lists(st.integers(-1, 3), min_size=1, max_size=3))


@given(n=st.integers(1, 3), size=st.integers(4, 12), seed=st.integers(0, 2**16),
       window=st.tuples(st.integers(1, 4), st.integers(1, 13), st.integers(1, 13)),
       stride=st.tuples(st.integers(1, 4), st.integers(1, 13), st.integers(1, 13)),
       target=targets)
def test_occlusion_any_window_and_stride(n, size, seed, window, stride, target):
    x = _images(n, size, seed)
    try:
        out = ox.Occlusion(MODEL).attribute(x, sliding_window_shapes=window, strides=stride,
                                            target=target, show_progress=False)
    except ox.InputValidationError:
        return
    assert out.shape == x.shape and np.isfinite(out).all()


@given(n=st.integers(1, 3), size=st.integers(3, 10), seed=st.integers(0, 2**16), target=targets,
       method=st.sampled_from([ox.Saliency, ox.InputXGradient, ox.GuidedBackprop, ox.GradCAM]))
def test_gradient_methods_any_target(n, size, seed, target, method):
    x = _images(n, size, seed)
    try:
        out = method(MODEL).attribute(x, target=target)
    except ox.InputValidationError:
        valid = target is None or (isinstance(target, int) and 0 <= target < 3) or (
            isinstance(target, list) and len(target) == n and all(0 <= t < 3 for t in target))
        assert not valid, "a valid target was refused"
        return
    assert out.shape[0] == n and np.isfinite(out).all()


@given(n_steps=st.integers(-2, 12), batch=st.one_of(st.none(), st.integers(-1, 9)),
       method=st.sampled_from(["gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                               "riemann_trapezoid", "simpson"]))
def test_integrated_gradients_any_settings(n_steps, batch, method):
    x = _images(2, 6, 0)
    try:
        out = ox.IntegratedGradients(MODEL).attribute(x, target=0, n_steps=n_steps, method=method,
                                                      internal_batch_size=batch, show_progress=False)
    except ox.InputValidationError:
        assert n_steps < 1 or (batch is not None and batch < 1) or method == "simpson" or (
            method == "riemann_trapezoid" and n_steps < 2)
        return
    assert out.shape == x.shape and np.isfinite(out).all()


@given(shape=st.lists(st.integers(0, 5), min_size=0, max_size=5),
       dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.bool_]),
       poison=st.sampled_from([None, np.nan, np.inf]))
def test_bad_inputs_are_our_error(shape, dtype, poison):
    x = np.ones(shape, dtype=dtype)
    if poison is not None and x.size and np.issubdtype(x.dtype, np.floating):
        x.flat[0] = poison
    try:
        with pytest.warns(UserWarning) if dtype is np.float64 and len(shape) == 4 and all(
                shape) and shape[1] == 3 and poison is None else contextlib.nullcontext():
            out = MODEL.predict(x)
    except ox.InputValidationError:
        return
    assert out.shape == (shape[0], 3)



@pytest.mark.parametrize("shape", [(1, 3, 0, 0), (2, 0, 6, 6), (1, 3, 6, 0)])
def test_inputs_with_an_empty_axis_are_our_error(shape):
    """An image with no pixels (or no channels) is refused before it reaches the runtime."""
    with pytest.raises(ox.InputValidationError, match="every axis longer than 0"):
        MODEL.predict(np.ones(shape, np.float32))


_BAD_VALUES = (-1, 1.5, "x", float("nan"), (1, 2), [])


@pytest.mark.parametrize("name", sorted(n for n, m in available().items() if not m.entry.slow))
def test_every_bad_attribute_argument_raises_our_own_error(name):
    """Each argument of ``attribute`` given a negative, fractional, text, NaN, tuple or empty
    value: the call succeeds or raises an OnnxplainError, never numpy's or Python's (a
    negative seed, text baselines, a float window, a number of gates used to leak them)."""
    method = available()[name]
    model, x = MODEL, _images(2, 16, 0)
    if name == "attention-maps":  # needs a gate: the bundled model has a squeeze-and-excitation block
        model, x = ox.examples.shapes_model(), ox.examples.shapes_dataset(2).images
    obj = method.cls(model, **method.init_kwargs(x.shape, "NCHW"))
    base = method.attribute_kwargs(x.shape, "NCHW")
    base.update({k: v for k, v in dict(n_steps=2, nt_samples=2, n_masks=8, n_samples=8, iterations=2,
                                       max_iter=2).items() if k in base})
    params = inspect.signature(obj.attribute).parameters
    for p in params.values():
        if p.name in ("inputs", "show_progress") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        for bad in _BAD_VALUES:
            kwargs = {**base, p.name: bad}
            if p.name != "target" and "target" in params:
                kwargs.setdefault("target", 1)
            with contextlib.suppress(ox.OnnxplainError):
                obj.attribute(x, **kwargs)
