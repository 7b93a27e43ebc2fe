"""Gradient methods against Captum on the original torch module, same input and target."""

import numpy as np
import pytest
import torch
from captum.attr import InputXGradient as CInputXGradient
from captum.attr import IntegratedGradients as CIntegratedGradients
from captum.attr import NeuronGradient
from captum.attr import Saliency as CSaliency
from helpers import max_rel_err

import onnxplain as ox

TOL = 1e-4  # max |ours − Captum| / max |Captum|; measured ~1e-6 (float32 sums in another order)


@pytest.fixture(params=["small", "resnet18"])
def pair(request, small_torch, small_model, images, resnet_pair, resnet_images):
    if request.param == "small":
        return small_torch, small_model, images
    net, model = resnet_pair
    return net, model, resnet_images


def test_saliency_equals_captum(pair):
    net, model, x = pair
    target = [1, 3]
    ours = ox.Saliency(model).attribute(x, target=target)
    ref = CSaliency(net).attribute(torch.from_numpy(x).requires_grad_(), target=target).numpy()
    assert max_rel_err(ours, ref) < TOL


def test_signed_saliency_is_the_raw_gradient(small_torch, small_model, images):
    ours = ox.Saliency(small_model).attribute(images, target=2, abs=False)
    ref = CSaliency(small_torch).attribute(torch.from_numpy(images), target=2, abs=False).numpy()
    assert max_rel_err(ours, ref) < TOL
    assert (ours < 0).any()


def test_input_x_gradient_equals_captum(pair):
    net, model, x = pair
    ours = ox.InputXGradient(model).attribute(x, target=0)
    ref = CInputXGradient(net).attribute(torch.from_numpy(x), target=0).detach().numpy()
    assert max_rel_err(ours, ref) < TOL


@pytest.mark.parametrize(
    "method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]
)
def test_integrated_gradients_equals_captum_for_every_rule(small_torch, small_model, images, method):
    base = np.full_like(images, 0.1)
    ours, delta = ox.IntegratedGradients(small_model).attribute(
        images, target=[4, 2], baselines=base, n_steps=16, method=method,
        internal_batch_size=7, return_convergence_delta=True,
    )
    ref, ref_delta = CIntegratedGradients(small_torch).attribute(
        torch.from_numpy(images), target=[4, 2], baselines=torch.from_numpy(base), n_steps=16,
        method=method, return_convergence_delta=True,
    )
    ref = ref.detach().numpy()
    if method == "riemann_trapezoid":
        # Captum's trapezoid weights sum to (n-1)/n; ours are the trapezoid rule (sum 1)
        ours = ours * 15 / 16
        assert max_rel_err(ours, ref) < TOL
        return
    assert max_rel_err(ours, ref) < TOL
    np.testing.assert_allclose(delta, ref_delta.numpy(), atol=1e-4)


def test_trapezoid_rule_is_complete_where_captums_falls_short(small_model, images):
    _, delta = ox.IntegratedGradients(small_model).attribute(
        images, target=1, n_steps=200, method="riemann_trapezoid", return_convergence_delta=True
    )
    gap = small_model.predict(images)[:, 1] - small_model.predict(np.zeros_like(images))[:, 1]
    assert np.abs(delta).max() < 1e-2 * np.abs(gap).max()


def test_integrated_gradients_on_resnet18_equals_captum(resnet_pair, resnet_images):
    net, model = resnet_pair
    ours = ox.IntegratedGradients(model).attribute(resnet_images, target=7, n_steps=8)
    ref = CIntegratedGradients(net).attribute(torch.from_numpy(resnet_images), target=7, n_steps=8)
    assert max_rel_err(ours, ref.detach().numpy()) < TOL


def test_integrated_gradients_is_complete_on_a_small_net(small_model, images):
    _, delta = ox.IntegratedGradients(small_model).attribute(
        images, target=1, n_steps=64, return_convergence_delta=True
    )
    scores = small_model.predict(images)[:, 1] - small_model.predict(np.zeros_like(images))[:, 1]
    assert np.abs(delta).max() < 1e-2 * np.abs(scores).max()


def test_integrated_gradients_memory_does_not_depend_on_steps(small_model, images):
    seen = []
    be = small_model.backend("torch")
    original = be._run  # each pass of the converted module

    def spy(xb):
        seen.append(len(xb))
        return original(xb)

    be._run = spy
    try:
        ox.IntegratedGradients(small_model).attribute(images, target=0, n_steps=100, internal_batch_size=16)
    finally:
        del be._run
    assert max(seen) <= 16 and sum(seen) == 200


def test_neuron_target_equals_captum_neuron_gradient(small_torch, small_model, images):
    layer = small_model.find_layer().name  # the output of relu2, before global pooling
    ours = ox.Saliency(small_model).attribute(images, target=ox.Neuron(layer, (3, 5, 6)), abs=False)
    ref = NeuronGradient(small_torch, small_torch.relu2).attribute(
        torch.from_numpy(images), neuron_selector=(3, 5, 6)
    ).numpy()
    assert max_rel_err(ours, ref) < TOL


def test_predicted_class_is_the_default_target(small_model, images):
    predicted = small_model.predict(images).argmax(1)
    a = ox.Saliency(small_model).attribute(images)
    b = ox.Saliency(small_model).attribute(images, target=list(predicted))
    np.testing.assert_array_equal(a, b)
