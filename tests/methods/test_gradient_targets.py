"""Every method of the gradient family and the layer view: every target kind, clear errors
for bad input and unconvertible models, and integrated gradients' completeness on a
trained network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import SmallCNN, unconvertible_cnn

import onnxplain as ox
from onnxplain.methods.gradient import (
    Deconvolution,
    GuidedBackprop,
    GuidedGradCAM,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    RectGrad,
    Saliency,
    SmoothGrad,
)
from onnxplain.methods.layer import (
    LayerActivation,
    LayerGradientXActivation,
    LayerIntegratedGradients,
)


def _layer(model):
    return model.find_layer().name


# name -> (build(model), attribute keyword arguments)
METHODS = {
    "Saliency": (Saliency, {}),
    "InputXGradient": (InputXGradient, {}),
    "IntegratedGradients": (IntegratedGradients, {"n_steps": 4}),
    "GuidedBackprop": (GuidedBackprop, {}),
    "Deconvolution": (Deconvolution, {}),
    "RectGrad": (RectGrad, {"q": 90}),
    "SmoothGrad": (SmoothGrad, {"nt_samples": 2, "seed": 0}),
    "NoiseTunnel": (lambda m: NoiseTunnel(IntegratedGradients(m)),
                    {"nt_samples": 2, "seed": 0, "n_steps": 3}),
    "GuidedGradCAM": (GuidedGradCAM, {}),
    "LayerGradientXActivation": (lambda m: LayerGradientXActivation(m, _layer(m)), {}),
    "LayerIntegratedGradients": (lambda m: LayerIntegratedGradients(m, _layer(m)), {"n_steps": 4}),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_target_kind(name, small_model, images):
    build, kwargs = METHODS[name]
    method = build(small_model)
    predicted = small_model.predict(images).argmax(1)
    by_default = method.attribute(images, **kwargs)
    np.testing.assert_array_equal(by_default, method.attribute(images, target=list(predicted), **kwargs))
    np.testing.assert_array_equal(method.attribute(images, target=3, **kwargs),
                                  method.attribute(images, target=np.array([3, 3]), **kwargs))
    layer = small_model.find_layer().name
    acts = small_model.backend("onnxruntime").forward(images, outputs=[layer])[layer]
    alive = np.flatnonzero((acts > 0).all(0))  # units active for both examples
    neurons = [ox.Neuron(layer, int(alive[0])), ox.Neuron(layer, tuple(int(i) for i in np.unravel_index(
        alive[-1], acts.shape[1:])))]
    shape = by_default.shape
    for target in (*neurons, ox.Channel(layer, int(acts.mean((0, 2, 3)).argmax()))):
        out = method.attribute(images, target=target, **kwargs)
        assert out.shape == shape and np.isfinite(out).all() and np.abs(out).max() > 0, target
    with pytest.raises(ox.InputValidationError, match="out of range"):
        method.attribute(images, target=5, **kwargs)
    with pytest.raises(ox.InputValidationError, match="2 examples"):
        method.attribute(images, target=[0, 1, 2], **kwargs)


@pytest.mark.parametrize("name", list(METHODS))
def test_bad_inputs_are_clear_errors(name, small_model, images):
    build, kwargs = METHODS[name]
    method = build(small_model)
    with pytest.raises(ox.InputValidationError, match="expects"):
        method.attribute(images[:, :, :16], target=0, **kwargs)
    with pytest.raises(ox.InputValidationError, match="floating-point"):
        method.attribute(images.astype(np.int64), target=0, **kwargs)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, x: IntegratedGradients(m).attribute(x, target=0, n_steps=0), "n_steps"),
        (lambda m, x: IntegratedGradients(m).attribute(x, target=0, internal_batch_size=0),
         "internal_batch_size"),
        (lambda m, x: LayerIntegratedGradients(m, _layer(m)).attribute(x, target=0, method="simpson"),
         "method"),
        (lambda m, x: RectGrad(m).attribute(x, target=0, q=-1), "q"),
        (lambda m, x: GuidedGradCAM(m).attribute(x, target=0, interpolate_mode="area"), "interpolate_mode"),
        (lambda m, x: IntegratedGradients(m).attribute(x, target=0, baselines=np.zeros((3, 3, 3))),
         "baselines"),
    ],
)
def test_bad_parameters_name_the_field(small_model, images, call, match):
    with pytest.raises(ox.InputValidationError, match=match):
        call(small_model, images)


BUILDERS = {
    **{name: build for name, (build, _) in METHODS.items()},
    "NoiseTunnel(Saliency)": lambda m: NoiseTunnel(Saliency(m)),
    "LayerGradientXActivation": lambda m: LayerGradientXActivation(m, "c"),
    "LayerIntegratedGradients": lambda m: LayerIntegratedGradients(m, "c"),
    "GuidedGradCAM": lambda m: GuidedGradCAM(m, layer="c"),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_an_unconvertible_operator_is_named_by_every_method(name):
    model = ox.load(unconvertible_cnn())
    with pytest.raises(ox.UnsupportedOperatorError, match="Shrink") as info:
        BUILDERS[name](model)
    assert info.value.operators == ["Shrink-9"]


def test_layer_activation_needs_no_gradients_so_it_runs_on_an_unconvertible_model():
    model = ox.load(unconvertible_cnn())
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    assert LayerActivation(model, "s").attribute(x).shape == (2, 4, 16, 16)


# -- completeness on a trained network -----------------------------------------------------


def _quadrant_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class k in 0..3: a bright blob in quadrant k; class 4: none. Plus noise."""
    y = rng.integers(0, 5, n)
    x = rng.standard_normal((n, 3, 16, 16)).astype(np.float32) * 0.3
    for i, k in enumerate(y):
        if k < 4:
            r, c = divmod(int(k), 2)
            x[i, :, 8 * r + 2:8 * r + 6, 8 * c + 2:8 * c + 6] += 2.0
    return x, y


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = SmallCNN()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):  # ~1 s on 2 cores
        x, y = _quadrant_data(32, rng)
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    x, y = _quadrant_data(64, np.random.default_rng(1))
    with torch.no_grad():
        accuracy = (net(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert accuracy > 0.9
    return ox.adapters.torch.export(net, torch.from_numpy(x[:2]), exporter="legacy"), x[:6], y[:6]


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_is_complete_on_a_trained_cnn(trained, method):
    model, x, y = trained
    _, delta = IntegratedGradients(model).attribute(
        x, target=y, n_steps=200, method=method, return_convergence_delta=True)
    gap = model.predict(x)[np.arange(len(y)), y] - model.predict(np.zeros_like(x))[np.arange(len(y)), y]
    assert (np.abs(delta) < 1e-2 * np.abs(gap)).all(), (delta, gap)
