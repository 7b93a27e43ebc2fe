"""The modified-backward family: GuidedBackprop, Deconvolution, RectGrad, and the named
backward rules behind them, checked on hand-sized networks against direct numpy
implementations of the papers' rules."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from captum.attr import NeuronDeconvolution, NeuronGuidedBackprop
from helpers import max_rel_err
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox
from onnxplain.backends import INPUT
from onnxplain.backends.base import BackwardRule
from onnxplain.methods.gradient import (
    Deconvolution,
    GuidedBackprop,
    InputXGradient,
    RectGrad,
    Saliency,
)
from onnxplain.methods.gradient._modified import rectifier_nodes

ALPHA = 0.1  # LeakyRelu slope of the hand network


def _mlp(sizes: list[int], activations: list[tuple], seed: int = 0) -> tuple[onnx.ModelProto, list]:
    """Gemm layers of ``sizes`` with ``activations[i]`` after Gemm i: ("Relu",),
    ("LeakyRelu", alpha) or ("Clip", lo, hi). Returns the model and its (W, b) pairs."""
    rng = np.random.default_rng(seed)
    nodes, inits, params, prev = [], [], [], "input"
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)
        b = (rng.standard_normal(n_out) * 0.3).astype(np.float32)
        params.append((w, b))
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "logits" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out], name=f"fc{i}", transB=1))
        prev = out
        if i < len(activations):
            kind, *args = activations[i]
            if kind == "Clip":
                inits += [numpy_helper.from_array(np.array(args[0], np.float32), f"lo{i}"),
                          numpy_helper.from_array(np.array(args[1], np.float32), f"hi{i}")]
                nodes.append(helper.make_node("Clip", [prev, f"lo{i}", f"hi{i}"], [f"a{i}"], name=f"act{i}"))
            elif kind == "LeakyRelu":
                nodes.append(helper.make_node("LeakyRelu", [prev], [f"a{i}"], name=f"act{i}", alpha=args[0]))
            else:
                nodes.append(helper.make_node("Relu", [prev], [f"a{i}"], name=f"act{i}"))
            prev = f"a{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", sizes[-1]])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, params


def _backprop(x, params, activations, target, rule):
    """Direct numpy backward pass with ``rule(z, a, g, kind) -> gradient at z`` at each activation."""
    zs, acts, h = [], [], x.astype(np.float64)
    for i, (w, b) in enumerate(params):
        z = h @ w.T.astype(np.float64) + b
        if i == len(params) - 1:
            break
        kind, *args = activations[i]
        if kind == "Relu":
            a = np.maximum(z, 0)
        elif kind == "LeakyRelu":
            a = np.where(z > 0, z, args[0] * z)
        else:
            a = np.clip(z, args[0], args[1])
        zs.append(z)
        acts.append(a)
        h = a
    g = np.tile(params[-1][0][target].astype(np.float64), (len(x), 1))
    for i in range(len(params) - 2, -1, -1):
        g = rule(zs[i], acts[i], g, activations[i]) @ params[i][0].astype(np.float64)
    return g


def _derivative(z, kind):
    name, *args = kind
    if name == "Relu":
        return (z > 0).astype(np.float64)
    if name == "LeakyRelu":
        return np.where(z > 0, 1.0, args[0])
    return ((z > args[0]) & (z < args[1])).astype(np.float64)


# -- rectifiers, guided backprop, deconvnet ----------------------------------------------

ACTS = [("Clip", 0.0, 6.0), ("LeakyRelu", ALPHA), ("Clip", -1.0, 1.0), ("Relu",)]
SIZES = [6, 16, 12, 10, 8, 3]


@pytest.fixture(scope="module")
def hand():
    proto, params = _mlp(SIZES, ACTS)
    x = np.random.default_rng(1).standard_normal((4, SIZES[0])).astype(np.float32) * 2
    return ox.load(proto), params, x


def test_rectifiers_are_relu_leaky_relu_and_clip_from_zero(hand):
    model, _, _ = hand
    assert rectifier_nodes(model) == ["act0", "act1", "act3"]  # not the Clip(-1, 1) at act2


def test_guided_backprop_is_the_papers_rule_at_every_rectifier(hand):
    model, params, x = hand

    def guided(z, a, g, kind):
        d = _derivative(z, kind)
        return np.maximum(d * g, 0) if kind[0] != "Clip" or kind[1] == 0 else d * g

    ours = GuidedBackprop(model).attribute(x, target=2)
    np.testing.assert_allclose(ours, _backprop(x, params, ACTS, 2, guided), rtol=1e-5, atol=1e-6)


def test_deconvolution_ignores_the_forward_switch(hand):
    model, params, x = hand

    def deconv(z, a, g, kind):
        return np.maximum(g, 0) if kind[0] != "Clip" or kind[1] == 0 else _derivative(z, kind) * g

    ours = Deconvolution(model).attribute(x, target=[0, 1, 2, 0])
    ref = np.concatenate([_backprop(x[i:i + 1], params, ACTS, t, deconv) for i, t in enumerate([0, 1, 2, 0])])
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_rules_by_name_through_the_backend_interface(hand):
    model, _, x = hand
    be = model.backend("torch")
    objective = ox.core.resolve_target(1, len(x), model.output_name, 3)
    nodes = rectifier_nodes(model)
    plain = be.gradients(x, objective).gradients[INPUT]
    same = be.gradients(x, objective, rules={n: "gradient" for n in nodes}).gradients[INPUT]
    np.testing.assert_array_equal(plain, same)
    guided = be.gradients(x, objective, rules={n: BackwardRule("guided") for n in nodes}).gradients[INPUT]
    np.testing.assert_allclose(guided, GuidedBackprop(model).attribute(x, target=1), atol=1e-7)
    with pytest.raises(ox.InputValidationError, match="unknown backward rule 'lrp'"):
        be.gradients(x, objective, rules={nodes[0]: "lrp"})
    with pytest.raises(ox.InputValidationError, match="q must be"):
        be.gradients(x, objective, rules={nodes[0]: BackwardRule("rectgrad", {"q": 101})})
    with pytest.raises(ox.InputValidationError, match="no node named"):
        be.gradients(x, objective, rules={"nope": "guided"})
    assert all(not m._forward_hooks and not m._backward_hooks for m in be.module.modules())


def test_the_rule_applies_at_the_targets_own_relu_as_in_captum(small_torch, small_model, images):
    """A neuron of a ReLU output whose pre-activation is negative: the deconvnet still
    passes its seed (relu(grad_output)), guided backprop does not."""
    layer = small_model.find_layer().name  # relu2's output
    pre = {}
    handle = small_torch.conv2.register_forward_hook(lambda m, i, o: pre.__setitem__("z", o.detach()))
    with torch.no_grad():
        small_torch(torch.from_numpy(images))
    handle.remove()
    c, h, w = np.argwhere((pre["z"][0] < 0).numpy())[0]  # dead for example 0
    neuron = (int(c), int(h), int(w))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_d = NeuronDeconvolution(small_torch, small_torch.relu2).attribute(
            torch.from_numpy(images).requires_grad_(), neuron_selector=neuron).detach().numpy()
        ref_g = NeuronGuidedBackprop(small_torch, small_torch.relu2).attribute(
            torch.from_numpy(images).requires_grad_(), neuron_selector=neuron).detach().numpy()
    ours_d = Deconvolution(small_model).attribute(images, target=ox.Neuron(layer, neuron))
    ours_g = GuidedBackprop(small_model).attribute(images, target=ox.Neuron(layer, neuron))
    assert np.abs(ref_d[0]).max() > 0 and np.abs(ref_g[0]).max() == 0
    assert max_rel_err(ours_d, ref_d) < 1e-5
    assert max_rel_err(ours_g, ref_g) < 1e-5


def test_a_model_without_rectifiers_warns_and_gives_the_gradient():
    proto, _ = _mlp([4, 5, 2], [("Clip", -1.0, 1.0)])
    model = ox.load(proto)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    with pytest.warns(UserWarning, match="no Relu"):
        method = GuidedBackprop(model)
    np.testing.assert_array_equal(method.attribute(x, target=0),
                                  Saliency(model).attribute(x, target=0, abs=False))


# -- RectGrad ----------------------------------------------------------------------------

RELU_SIZES = [16, 24, 20, 16, 3]
RELUS = [("Relu",)] * 3


@pytest.fixture(scope="module")
def relu_mlp():
    proto, params = _mlp(RELU_SIZES, RELUS, seed=6)
    x = np.random.default_rng(4).standard_normal((5, RELU_SIZES[0])).astype(np.float32)
    return ox.load(proto), params, x


def _rectgrad_reference(x, params, target, q, paper: bool):
    """RectGrad by hand. ``paper``: the authors' rule ``where(a·g > τ, g, 0)``; otherwise
    ours, ``where(a·g ≥ τ, f'(z)·g, 0)`` (the two agree whenever τ > 0)."""
    taus = []

    def rule(z, a, g, kind):
        importance = a * g
        tau = np.percentile(importance, q, axis=1, keepdims=True)  # per example
        taus.append(tau)
        if paper:
            return np.where(importance > tau, g, 0.0)
        return np.where(importance >= tau, (z > 0) * g, 0.0)

    return x * _backprop(x, params, RELUS, target, rule), min(float(t.min()) for t in taus)


@pytest.mark.parametrize("q", [98.0, 95.0, 90.0, 85.0])
def test_rectgrad_is_the_papers_rule_on_a_hand_sized_network(relu_mlp, q):
    """Kim et al.: R(l) = 1[a ⊙ g > τ] ⊙ g at every ReLU, τ the q-th percentile of a ⊙ g
    per example (the authors' code: ``where(thresh < a·g, g, 0)``); attribution x ⊙ R(0)."""
    model, params, x = relu_mlp
    ref, tau = _rectgrad_reference(x, params, 1, q, paper=True)
    assert tau > 0  # at these q every threshold of this network is positive
    np.testing.assert_allclose(RectGrad(model).attribute(x, target=1, q=q), ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("q", [0.0, 30.0, 50.0, 70.0, 98.0])
def test_rectgrad_keeps_the_relu_derivative_when_the_threshold_is_not_positive(relu_mlp, q):
    model, params, x = relu_mlp
    ref, _ = _rectgrad_reference(x, params, 2, q, paper=False)
    np.testing.assert_allclose(RectGrad(model).attribute(x, target=2, q=q), ref, rtol=1e-5, atol=1e-7)


def test_rectgrad_with_q_zero_is_the_plain_gradient(relu_mlp, small_model, images, resnet_pair,
                                                    resnet_images):
    model, _, x = relu_mlp
    np.testing.assert_allclose(RectGrad(model, multiply_by_inputs=False).attribute(x, target=2, q=0),
                               Saliency(model).attribute(x, target=2, abs=False), rtol=1e-6, atol=1e-7)
    for m, xs in ((small_model, images), (resnet_pair[1], resnet_images)):
        ours = RectGrad(m).attribute(xs, target=[1, 3], q=0)
        assert max_rel_err(ours, InputXGradient(m).attribute(xs, target=[1, 3])) < 1e-6


def test_rectgrad_on_resnet18_moves_away_from_the_gradient_as_q_grows(resnet_pair, resnet_images):
    model = resnet_pair[1]
    method = RectGrad(model, multiply_by_inputs=False)
    plain = Saliency(model).attribute(resnet_images, target=0, abs=False)
    errs = [max_rel_err(method.attribute(resnet_images, target=0, q=q), plain) for q in (0, 50, 98)]
    assert errs[0] < 1e-6 < 0.1 < errs[1] and errs[2] > 0.1


def test_rectgrad_refuses_a_bad_percentile(relu_mlp):
    model, _, x = relu_mlp
    with pytest.raises(ox.InputValidationError, match="RectGrad: q"):
        RectGrad(model).attribute(x, target=0, q=120)
