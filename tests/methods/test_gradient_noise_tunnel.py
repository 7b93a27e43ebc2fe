"""NoiseTunnel and SmoothGrad: Captum's semantics with the same noise, determinism under a
seed, and memory bounded by the batch settings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients as CIntegratedGradients
from captum.attr import NoiseTunnel as CNoiseTunnel
from helpers import max_rel_err

import onnxplain as ox
from onnxplain.methods.cam import GradCAM
from onnxplain.methods.gradient import (
    Deconvolution,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    RectGrad,
    Saliency,
    SmoothGrad,
)
from onnxplain.methods.layer import LayerActivation


def _captum_noise(seed, x, nt_samples, batch, stdev):
    """Captum's draws after ``torch.manual_seed(seed)``, as (nt_samples, N, ...)."""
    torch.manual_seed(seed)
    parts, done = [], 0
    while done < nt_samples:
        b = min(batch, nt_samples - done)
        std = torch.tensor(stdev).repeat((len(x) * b, *x.shape[1:]))
        draw = torch.normal(0, std).numpy().reshape(len(x), b, *x.shape[1:])
        parts.append(np.swapaxes(draw, 0, 1))
        done += b
    return np.concatenate(parts)


@pytest.fixture
def spy(small_model):
    """Record the batch size of every pass of the small model's torch backend."""
    be = small_model.backend("torch")
    original, seen = be._run, []

    def run(xb):
        seen.append(len(xb))
        return original(xb)

    be._run = run
    yield seen
    del be._run


def test_noise_tunnel_around_integrated_gradients_equals_captum(small_torch, small_model, images):
    """Per-example baselines follow their example; IG's own arguments pass through."""
    base = np.stack([np.full(images.shape[1:], 0.1), np.full(images.shape[1:], -0.2)]).astype(np.float32)
    noise = _captum_noise(3, images, 3, 2, 0.2)
    ours, delta = NoiseTunnel(IntegratedGradients(small_model)).attribute(
        images, nt_type="smoothgrad_sq", nt_samples=3, nt_samples_batch_size=2, stdevs=0.2, noise=noise,
        target=[1, 4], baselines=base, n_steps=5, internal_batch_size=4, return_convergence_delta=True)
    torch.manual_seed(3)
    ref = CNoiseTunnel(CIntegratedGradients(small_torch)).attribute(
        torch.from_numpy(images), nt_type="smoothgrad_sq", nt_samples=3, nt_samples_batch_size=2,
        stdevs=0.2, target=[1, 4], baselines=torch.from_numpy(base), n_steps=5)
    assert max_rel_err(ours, ref.detach().numpy()) < 1e-5
    assert delta.shape == (2, 3)


def test_noise_tunnel_is_deterministic_under_a_seed_and_independent_of_the_batch_size(small_model, images):
    nt = NoiseTunnel(Saliency(small_model))
    a = nt.attribute(images, nt_samples=6, stdevs=0.3, target=2, seed=7, nt_samples_batch_size=1)
    b = nt.attribute(images, nt_samples=6, stdevs=0.3, target=2, seed=7, nt_samples_batch_size=4)
    c = nt.attribute(images, nt_samples=6, stdevs=0.3, target=2, seed=8)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert max_rel_err(a, c) > 1e-3


def test_noise_tunnel_types_follow_their_formulas(small_model, images):
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((4, *images.shape)).astype(np.float32) * 0.5
    sal = Saliency(small_model)
    each = np.stack([sal.attribute(images + noise[s], target=[0, 3], abs=False) for s in range(4)])
    each = each.astype(np.float64)
    nt = NoiseTunnel(sal)

    def run(kind):
        return nt.attribute(images, nt_type=kind, nt_samples=4, noise=noise, target=[0, 3], abs=False)

    np.testing.assert_allclose(run("smoothgrad"), each.mean(0), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(run("smoothgrad_sq"), (each ** 2).mean(0), rtol=1e-5, atol=1e-10)
    np.testing.assert_allclose(run("vargrad"), each.var(0), rtol=1e-4, atol=1e-10)


def test_noise_tunnel_memory_is_bounded_by_the_batch_settings(small_model, images, spy):
    NoiseTunnel(Saliency(small_model)).attribute(
        images, nt_samples=10, nt_samples_batch_size=3, stdevs=0.1, target=0, seed=0)
    assert max(spy) <= 3 * len(images) and sum(spy) == 10 * len(images)
    spy.clear()
    NoiseTunnel(IntegratedGradients(small_model)).attribute(
        images, nt_samples=4, nt_samples_batch_size=2, stdevs=0.1, target=0, seed=0, n_steps=20,
        internal_batch_size=8)
    assert max(spy) <= 8 and sum(spy) == 4 * 20 * len(images)


def test_noise_tunnel_resolves_the_predicted_class_once_on_the_clean_input(small_model, images):
    predicted = small_model.predict(images).argmax(1)
    nt = NoiseTunnel(Saliency(small_model))
    a = nt.attribute(images, nt_samples=3, stdevs=2.0, seed=1)
    b = nt.attribute(images, nt_samples=3, stdevs=2.0, seed=1, target=list(predicted))
    np.testing.assert_array_equal(a, b)


def test_noise_tunnel_wraps_any_method(small_model, images):
    layer = small_model.find_layer().name
    cam = NoiseTunnel(GradCAM(small_model)).attribute(images, nt_samples=2, stdevs=0.1, seed=0, target=1)
    assert cam.shape == (2, 32, 32)
    guided = NoiseTunnel(GuidedBackprop(small_model)).attribute(
        images, nt_samples=2, stdevs=0.1, seed=0, target=ox.Channel(layer, 3))
    assert guided.shape == images.shape and np.isfinite(guided).all()
    acts = NoiseTunnel(LayerActivation(small_model, layer)).attribute(
        images, nt_samples=2, stdevs=0.1, seed=0)
    assert acts.shape == (2, 16, 16, 16)
    with pytest.raises(ox.InputValidationError, match="takes no target"):
        NoiseTunnel(LayerActivation(small_model, layer)).attribute(images, target=0)


def test_smoothgrad_is_the_noise_tunnel_of_the_signed_gradient(small_model, images):
    spread = float(images.max() - images.min())
    ours = SmoothGrad(small_model).attribute(images, target=[2, 1], nt_samples=8, seed=4)
    ref = NoiseTunnel(Saliency(small_model)).attribute(
        images, nt_samples=8, stdevs=0.15 * spread, seed=4, target=[2, 1], abs=False)
    # equal draws; bit for bit on CPU, to the last bits of CUDA's unordered sums on a GPU
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-12)
    assert (ours < 0).any()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"nt_type": "smoothgrad_cubed"}, "nt_type"),
        ({"nt_samples": 0}, "nt_samples"),
        ({"stdevs": -1.0}, "stdevs"),
        ({"nt_samples_batch_size": 0}, "nt_samples_batch_size"),
        ({"nt_samples": 2, "noise": np.zeros((3, 2, 3, 32, 32), np.float32)}, "noise must have shape"),
    ],
)
def test_noise_tunnel_refuses_bad_settings(small_model, images, kwargs, match):
    with pytest.raises(ox.InputValidationError, match=match):
        NoiseTunnel(Saliency(small_model)).attribute(images, target=0, **kwargs)


def test_noise_tunnel_names_arguments_the_wrapped_method_does_not_take(small_model, images):
    with pytest.raises(ox.InputValidationError, match="Saliency.attribute takes no argument"):
        NoiseTunnel(Saliency(small_model)).attribute(images, target=0, internal_batch_size=4)


@pytest.mark.parametrize("show", [False, True])
def test_show_progress_reaches_the_wrapped_method_and_silences_every_bar(
    small_model, images, monkeypatch, show
):
    """One switch for NoiseTunnel's bar and the wrapped method's (Captum forwards it too);
    a wrapped method without a show_progress argument gets none."""
    import functools

    import onnxplain.methods.base as base

    bars: list[bool] = []
    original_tqdm = base.tqdm

    def tqdm(*args, disable=None, **kwargs):
        bars.append(disable)
        return original_tqdm(*args, disable=True, **kwargs)

    monkeypatch.setattr(base, "tqdm", tqdm)
    ig = IntegratedGradients(small_model)
    received: list = []
    original = ig.attribute

    @functools.wraps(original)
    def attribute(*args, **kwargs):
        received.append(kwargs.get("show_progress", "absent"))
        return original(*args, **kwargs)

    ig.attribute = attribute
    out = NoiseTunnel(ig).attribute(images, nt_samples=2, stdevs=0.1, seed=0, target=1, n_steps=2,
                                    show_progress=show)
    assert out.shape == images.shape
    assert received and all(r is show for r in received)
    assert len(bars) > len(received) and all(d is (not show) for d in bars)  # ours and IG's bars
    sal = NoiseTunnel(Saliency(small_model)).attribute(
        images, nt_samples=2, seed=0, target=1, show_progress=show
    )
    assert sal.shape == images.shape


def test_noise_tunnel_needs_a_method_instance(small_model):
    with pytest.raises(ox.InputValidationError, match="wraps an onnxplain method"):
        NoiseTunnel(small_model)


def _generic(method_cls):
    """A subclass that overrides ``attribute`` alone: NoiseTunnel must then call it copy by
    copy instead of asking the backend for the sums."""

    class Generic(method_cls):
        def attribute(self, inputs, target=None, **kwargs):
            return super().attribute(inputs, target, **kwargs)

    return Generic


@pytest.mark.parametrize("method_cls, kwargs", [
    (Saliency, {}), (Saliency, {"abs": False}), (InputXGradient, {}), (GuidedBackprop, {}),
    (Deconvolution, {}), (RectGrad, {"q": 90.0}),
])
@pytest.mark.parametrize("nt_type", ["smoothgrad", "vargrad"])
def test_the_backends_sums_equal_the_wrapped_methods_own_calls(small_model, images, monkeypatch,
                                                               method_cls, kwargs, nt_type):
    """Around a gradient viewed as rules + a pointwise step, the backend sums the copies; the
    result is the one the method's own calls give on the same draws, whatever the batching."""
    asked = []
    be = small_model.backend("torch")
    original = type(be).smoothed_gradients
    monkeypatch.setattr(type(be), "smoothed_gradients", lambda *a, **k: asked.append(1) or original(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # methods that warn on a model without rectifiers
        fast = NoiseTunnel(method_cls(small_model)).attribute(
            images, nt_type=nt_type, nt_samples=5, stdevs=0.2, seed=3, target=[1, 4], nt_samples_batch_size=2,
            **kwargs)
        assert asked == [1]
        slow = NoiseTunnel(_generic(method_cls)(small_model)).attribute(
            images, nt_type=nt_type, nt_samples=5, stdevs=0.2, seed=3, target=[1, 4], nt_samples_batch_size=3,
            **kwargs)
    assert asked == [1]
    assert max_rel_err(fast, slow) < 1e-5 and np.abs(slow).max() > 0


def test_a_method_replaced_on_the_instance_is_called_copy_by_copy(small_model, images):
    sal = Saliency(small_model)
    calls = []
    original = sal.attribute

    def attribute(inputs, target=None, abs=True):
        calls.append(len(inputs))
        return original(inputs, target, abs)

    sal.attribute = attribute
    NoiseTunnel(sal).attribute(images, nt_samples=4, stdevs=0.1, seed=0, target=1, nt_samples_batch_size=2)
    assert calls == [4, 4]
