"""Composites as data: selectors, override order, positions, validation, gates."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox
from onnxplain.methods import lrp


@pytest.fixture(scope="module")
def tiny():
    return ox.load(ox.examples.tiny_cnn())


def _rules(composite, model):
    return {name: rule for name, rule in composite.assign(model).rules.items()}


def test_rules_that_are_no_pairs_are_refused_in_our_words():
    with pytest.raises(ox.InputValidationError, match="rules must be"):
        lrp.EpsilonPlus(rules=-1)
    with pytest.raises(ox.InputValidationError, match="pairs"):
        lrp.EpsilonPlus(rules=[lrp.Epsilon()])


def test_named_composites_give_zennits_rules(tiny):
    assert _rules(lrp.EpsilonGammaBox(-1.0, 1.0), tiny) == {
        "conv1": lrp.ZBox(-1.0, 1.0),
        "relu1": lrp.Pass(),
        "conv2": lrp.Gamma(0.25),
        "relu2": lrp.Pass(),
        "gap": lrp.Norm(),
        "flatten": lrp.Gradient(),
        "fc": lrp.Epsilon(),
    }
    plus_flat = _rules(lrp.EpsilonPlusFlat(), tiny)
    assert (plus_flat["conv1"], plus_flat["conv2"], plus_flat["fc"]) == (
        lrp.Flat(),
        lrp.ZPlus(),
        lrp.Epsilon(),
    )
    ab_flat = _rules(lrp.EpsilonAlpha2Beta1Flat(), tiny)
    assert (ab_flat["conv1"], ab_flat["conv2"]) == (lrp.Flat(), lrp.AlphaBeta(2, 1))
    assert _rules(lrp.EpsilonPlus(), tiny)["conv1"] == lrp.ZPlus()
    assert _rules(lrp.DeepTaylorComposite(), tiny)["conv1"] == lrp.WSquare()
    assert _rules(lrp.DeepTaylorComposite(0.0, 1.0), tiny)["fc"] == lrp.ZPlus()


def test_later_entries_override_and_selectors_combine(tiny):
    composite = lrp.EpsilonPlus(
        rules=[
            (lrp.Select(name="conv.*"), lrp.Epsilon(0.5)),
            (lrp.Select(op_type="Conv", position="last"), lrp.Gamma(1.0)),  # no Conv is last
            (lrp.Select(position="last"), lrp.LRP0()),
            (lrp.Select(name="conv2", position="first"), lrp.Flat()),  # conv2 is not first
        ]
    )
    rules = _rules(composite, tiny)
    assert rules["conv1"] == rules["conv2"] == lrp.Epsilon(0.5)
    assert rules["fc"] == lrp.Epsilon(0.0)
    assert lrp.Composite({"Conv": lrp.ZPlus(), ("Gemm",): lrp.LRP0()}).assign(tiny).first == {"conv1"}


def test_bad_composites_and_rules_are_refused(tiny):
    for bad in (
        lambda: lrp.Epsilon(-1),
        lambda: lrp.ZBox(1.0, 0.0),
        lambda: lrp.Gamma(float("nan")),
        lambda: lrp.Select(position="middle"),
        lambda: lrp.Select(name="("),
        lambda: lrp.Composite([("Conv", "zplus")]),
        lambda: lrp.Composite([(3, lrp.ZPlus())]),
        lambda: lrp.LRP(tiny, composite="EpsilonPlus"),
        lambda: lrp.DeepTaylor(tiny, low=0.0),
    ):
        with pytest.raises(ox.InputValidationError):
            bad()
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(ox.InputValidationError, match="batch_size"):
        lrp.LRP(tiny).attribute(x, target=0, batch_size=0)
    # a rule that needs weights on a node without them
    with pytest.raises(ox.UnsupportedOperatorError, match="gap"):
        lrp.LRP(tiny, lrp.EpsilonPlus(rules=[("GlobalAveragePool", lrp.ZPlus())]))


def _gated_model(same_shape: bool) -> ox.Model:
    """Conv → Relu → Mul(x, g) with g a second Conv of x (same shape) or its pooled mean."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.5, n)
        for n, s in [("w1", (4, 3, 3, 3)), ("w2", (4, 4, 1, 1)), ("fc", (4, 2))]
    ]
    gate_in = "a" if same_shape else "pooled_a"
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["a"], name="relu"),
        helper.make_node("GlobalAveragePool", ["a"], ["pooled_a"], name="squeeze"),
        helper.make_node("Conv", [gate_in, "w2"], ["g"], name="excite"),
        helper.make_node("Mul", ["a", "g"], ["y"], name="gate"),
        helper.make_node("GlobalAveragePool", ["y"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "fc"], ["logits"], name="dense"),
    ]
    if same_shape:
        nodes.pop(2)
    graph = helper.make_graph(
        nodes,
        "gated",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return ox.load(proto)


def test_gate_is_found_by_broadcast_and_an_ambiguous_mul_gets_the_uniform_rule_or_a_mapped_gate():
    composite = lrp.Composite([(("Conv", "MatMul"), lrp.LRP0())])
    broadcast = _gated_model(same_shape=False)
    assert _rules(composite, broadcast)["gate"] == lrp.Gate(0)
    ambiguous = _gated_model(same_shape=True)  # two same-shaped maps, no squashing: no gate
    assert _rules(composite, ambiguous)["gate"] == lrp.Uniform(composite.stabilizer)
    assert "excite" in _rules(composite, ambiguous)  # half the relevance goes through it
    method = lrp.LRP(
        ambiguous, lrp.Composite([(("Conv", "MatMul"), lrp.LRP0()), ("Mul", lrp.Gate(signal=0))])
    )
    x = np.random.default_rng(2).random((2, 3, 6, 6), dtype=np.float32)
    relevance, delta = method.attribute(x, target=1, return_convergence_delta=True)
    # no biases, LRP-0, nothing to the gate: conserved
    assert np.abs(delta).max() <= 1e-4 * np.abs(relevance.reshape(2, -1).sum(1)).max()
    assert "excite" not in method.rules()  # the gate branch gets no relevance, needs no rule


def test_a_factor_of_unknown_shape_tells_no_gate_by_broadcasting():
    """Broadcasting picks the gate only where every shape is known: a product of two maps,
    one of them with its shape unknown, is still no gate and gets the uniform rule."""
    composite = lrp.Composite([(("Conv", "MatMul"), lrp.LRP0())])
    model = _gated_model(same_shape=True)
    (mul,) = [node for node in model.ir.graph if node.name == "gate"]
    mul.inputs[1].shape = None
    assert _rules(composite, model)["gate"] == lrp.Uniform(composite.stabilizer)


def test_neuron_target_and_batch_semantics(tiny):
    x = np.random.default_rng(3).random((3, 3, 8, 8), dtype=np.float32)
    method = lrp.LRP(tiny, lrp.EpsilonPlus())
    # an internal unit: relevance starts at its activation
    relevance, delta = method.attribute(
        x, target=ox.Neuron("relu1", (1, 4, 4)), return_convergence_delta=True
    )
    assert relevance.shape == x.shape and np.isfinite(delta).all()
    assert set(method.rules("relu1")) == {"conv1", "relu1"}
    # target=None explains the predicted class, per example
    predicted = tiny.predict(x).argmax(1)
    np.testing.assert_allclose(method.attribute(x), method.attribute(x, target=predicted), rtol=1e-6)


def test_softmax_output_is_explained_through_its_logits(tiny):
    proto = ox.examples.tiny_cnn()
    proto.graph.output[0].name = "probs"
    proto.graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1))
    model = ox.load(proto)
    x = np.random.default_rng(4).random((2, 3, 8, 8), dtype=np.float32)
    method = lrp.LRP(model, lrp.EpsilonPlus())
    assert "softmax" not in method.rules()
    relevance = method.attribute(x, target=2)
    assert method.last_metadata["logits"] is True
    np.testing.assert_allclose(relevance, lrp.LRP(tiny, lrp.EpsilonPlus()).attribute(x, target=2), rtol=1e-5)
    # explaining the probability itself needs a rule for Softmax
    with pytest.raises(ox.UnsupportedOperatorError, match="softmax"):
        lrp.LRP(model, lrp.EpsilonPlus(), use_logits=False)


def test_a_backend_can_be_passed_and_its_batchnorm_gets_the_epsilon_rule():
    model = ox.examples.shapes_model()
    images, labels, _ = ox.examples.shapes_dataset(2, seed=3)
    method = lrp.LRP(model.backend("torch"), lrp.EpsilonPlus())
    relevance = method.attribute(images, target=labels)
    assert np.isfinite(relevance).all()
    assert method.rules()["/block1/block1.1/BatchNormalization"] == "Epsilon(epsilon=1e-06)"


def test_a_gate_expanded_to_the_signals_shape_is_found():
    """ECA-Net multiplies the map by its gate expanded to the map's shape (``expand_as``):
    both factors have one shape, and the gate is found through the Expand."""
    import torch

    class ECA(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
            self.eca = torch.nn.Conv1d(1, 1, 3, padding=1, bias=False)
            self.fc = torch.nn.Linear(6, 4)

        def forward(self, x):
            f = torch.relu(self.conv(x))
            g = torch.sigmoid(self.eca(f.mean((2, 3)).unsqueeze(1))).view(x.shape[0], -1, 1, 1)
            return self.fc((f * g.expand_as(f)).mean((2, 3)))

    x = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    model = ox.adapters.torch.export(ECA().eval(), torch.from_numpy(x))
    (mul,) = [n for n in model.ir.graph if n.op_type == "Mul" and len({id(v) for v in n.inputs}) == 2
              and all(v.const_value is None for v in n.inputs)]
    rule = lrp.EpsilonPlus().assign(model).rules[mul.name]
    assert isinstance(rule, lrp.Gate) and mul.inputs[rule.signal].producer().op_type == "Relu"
    assert np.isfinite(lrp.LRP(model).attribute(x, target=1)).all()


@pytest.mark.parametrize("hard_swish", [True, False])
def test_a_clip_is_a_gate_only_when_its_scaled_range_is_within_one(hard_swish):
    """x · relu6(x + 3) / 6 (hard-swish written out) has its gate found; relu6(a) · b, a
    product of two maps (StarNet's star operation), has none and gets the uniform rule."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((4, 3, 3, 3)), "w2": rng.standard_normal((4, 3, 3, 3)),
             "fc": rng.standard_normal((4, 2)), "three": np.array(3.0), "zero": np.array(0.0),
             "six": np.array(6.0), "sixth": np.array(1 / 6)}
    nodes = [helper.make_node("Conv", ["input", "w1"], ["a"], pads=[1, 1, 1, 1])]
    if hard_swish:
        nodes += [helper.make_node("Add", ["a", "three"], ["a3"]),
                  helper.make_node("Clip", ["a3", "zero", "six"], ["r6"]),
                  helper.make_node("Mul", ["r6", "sixth"], ["gate"]),
                  helper.make_node("Mul", ["a", "gate"], ["m"], name="product")]
    else:
        nodes += [helper.make_node("Conv", ["input", "w2"], ["b"], pads=[1, 1, 1, 1]),
                  helper.make_node("Clip", ["a", "zero", "six"], ["r6"]),
                  helper.make_node("Mul", ["r6", "b"], ["m"], name="product")]
    nodes += [helper.make_node("ReduceMean", ["m"], ["pooled"], axes=[2, 3], keepdims=0),
              helper.make_node("MatMul", ["pooled", "fc"], ["logits"])]
    graph = helper.make_graph(
        nodes, "clip_gate", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = ox.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))
    if hard_swish:
        assert lrp.EpsilonPlus().assign(model).rules["product"] == lrp.Gate(0)
    else:
        assert lrp.EpsilonPlus().assign(model).rules["product"] == lrp.Uniform(1e-6)
