"""The layer view: LayerActivation, LayerGradientXActivation, LayerIntegratedGradients
against Captum on the small CNN, and the backend's ``overrides`` they rest on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerActivation as CLayerActivation
from captum.attr import LayerGradientXActivation as CLayerGradientXActivation
from captum.attr import LayerIntegratedGradients as CLayerIntegratedGradients
from helpers import max_rel_err

import onnxplain as ox
from onnxplain.backends import INPUT
from onnxplain.methods.layer import (
    LayerActivation,
    LayerGradientXActivation,
    LayerIntegratedGradients,
)

TOL = 1e-5  # max |ours − Captum| / max |Captum|; measured ≤ 3e-7 (no BatchNorm here)


@pytest.fixture(scope="module")
def layers(small_model):
    """The ONNX tensors of relu1's and relu2's outputs (pool input, GAP input)."""
    relus = [n for n in small_model.ir.graph if n.op_type == "Relu"]
    return relus[0].outputs[0].name, relus[1].outputs[0].name


def test_layer_activation_equals_captum_and_runs_forward_only(small_torch, small_model, images, layers):
    method = LayerActivation(small_model, layers[0])
    assert method.backend.name == "onnxruntime"
    ref = CLayerActivation(small_torch, small_torch.relu1).attribute(torch.from_numpy(images))
    assert max_rel_err(method.attribute(images), ref.numpy()) < TOL


@pytest.mark.parametrize("multiply", [True, False])
def test_layer_gradient_x_activation_equals_captum(small_torch, small_model, images, layers, multiply):
    ours = LayerGradientXActivation(small_model, layers[1], multiply_by_inputs=multiply).attribute(
        images, target=[3, 0])
    ref = CLayerGradientXActivation(small_torch, small_torch.relu2, multiply_by_inputs=multiply).attribute(
        torch.from_numpy(images), target=[3, 0])
    assert max_rel_err(ours, ref.detach().numpy()) < TOL


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_middle"])
@pytest.mark.parametrize("which", [0, 1])
def test_layer_integrated_gradients_equals_captum(small_torch, small_model, images, layers, method, which):
    module = (small_torch.relu1, small_torch.relu2)[which]
    base = np.full_like(images, 0.3)
    ours, delta = LayerIntegratedGradients(small_model, layers[which]).attribute(
        images, target=[2, 4], baselines=base, n_steps=7, method=method, internal_batch_size=5,
        return_convergence_delta=True)
    ref, ref_delta = CLayerIntegratedGradients(small_torch, module).attribute(
        torch.from_numpy(images), baselines=torch.from_numpy(base), target=[2, 4], n_steps=7,
        method=method, return_convergence_delta=True)
    assert max_rel_err(ours, ref.detach().numpy()) < TOL
    np.testing.assert_allclose(delta, ref_delta.numpy(), atol=1e-5 * np.abs(ours).sum())


def test_layer_integrated_gradients_is_complete_through_a_cut(small_model, images, layers):
    _, delta = LayerIntegratedGradients(small_model, layers[1]).attribute(
        images, target=1, n_steps=128, return_convergence_delta=True)
    gap = small_model.predict(images)[:, 1] - small_model.predict(np.zeros_like(images))[:, 1]
    assert np.abs(delta).max() < 1e-2 * np.abs(gap).max()


def test_layer_methods_take_every_target_kind(small_model, images, layers):
    predicted = small_model.predict(images).argmax(1)
    lig = LayerIntegratedGradients(small_model, layers[0])
    a = lig.attribute(images, n_steps=4)
    np.testing.assert_array_equal(a, lig.attribute(images, target=list(predicted), n_steps=4))
    lgxa = LayerGradientXActivation(small_model, layers[0])
    for target in (2, ox.Neuron(layers[1], (1, 3, 3)), ox.Channel(layers[1], 5)):
        for out in (lig.attribute(images, target=target, n_steps=4), lgxa.attribute(images, target=target)):
            assert out.shape == (2, 8, 32, 32) and np.isfinite(out).all() and out.any()


def test_layer_memory_is_bounded_by_internal_batch_size(small_model, images, layers):
    be = small_model.backend("torch")
    original, seen = be.gradients, []

    def spy(x, *args, **kwargs):
        seen.append(len(x))
        return original(x, *args, **kwargs)

    be.gradients = spy
    try:
        LayerIntegratedGradients(small_model, layers[1]).attribute(
            images, target=0, n_steps=50, internal_batch_size=16)
    finally:
        del be.gradients
    assert max(seen) <= 16 and sum(seen) == 100


def test_layer_methods_refuse_unknown_layers_and_the_input(small_model):
    with pytest.raises(ox.LayerNotFoundError, match="no layer"):
        LayerIntegratedGradients(small_model, "nope")
    with pytest.raises(ox.InputValidationError, match="model input"):
        LayerGradientXActivation(small_model, small_model.input_name)


# -- the backend capability: overrides ---------------------------------------------------


def test_overriding_a_tensor_with_its_own_value_changes_nothing(small_model, images, layers):
    be = small_model.backend("torch")
    objective = ox.core.resolve_target([1, 2], 2, small_model.output_name, 5)
    plain = be.gradients(images, objective, wrt=[INPUT, layers[1]])
    value = plain.activations[layers[1]]
    same = be.gradients(images, objective, wrt=[layers[1]], overrides={layers[1]: value.astype(np.float64)})
    np.testing.assert_allclose(same.gradients[layers[1]], plain.gradients[layers[1]], atol=1e-7)
    np.testing.assert_allclose(same.scores, plain.scores, atol=1e-6)


def test_overrides_replace_the_value_downstream(small_model, images, layers):
    """Doubling relu2's output doubles the logits minus the bias; the input path is cut."""
    be = small_model.backend("torch")
    objective = ox.core.resolve_target(3, 2, small_model.output_name, 5)
    value = be.forward(images, outputs=[layers[1]])[layers[1]]
    base = be.gradients(images, objective, overrides={layers[1]: np.zeros_like(value)}).scores
    doubled = be.gradients(images, objective, wrt=[INPUT, layers[1]], overrides={layers[1]: 2 * value})
    np.testing.assert_allclose(doubled.scores - base, 2 * (be.predict(images)[:, 3] - base), rtol=1e-5)
    assert not doubled.gradients[INPUT].any()
    np.testing.assert_array_equal(doubled.activations[layers[1]], 2 * value)


def test_overrides_are_checked_and_their_hooks_removed(small_model, images, layers):
    be = small_model.backend("torch")
    objective = ox.core.resolve_target(0, 2, small_model.output_name, 5)
    with pytest.raises(ox.InputValidationError, match="one value per example"):
        be.gradients(images, objective, overrides={layers[0]: np.zeros((1, 8, 32, 32), np.float32)})
    with pytest.raises(ox.InputValidationError, match="has shape"):
        be.gradients(images, objective, overrides={layers[0]: np.zeros((2, 8, 16, 16), np.float32)})
    assert all(not m._forward_hooks for m in be.module.modules())
