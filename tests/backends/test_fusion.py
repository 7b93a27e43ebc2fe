"""The torch backend's plain module: activations and linear layers written out as several
nodes run as one call, shape arithmetic runs once per input shape, and every result is the
node-by-node module's (onnxplain.backends.torch_fusion)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox
from onnxplain.backends import torch_fusion
from onnxplain.backends.torch_fusion import CachedValue


def _export(net: torch.nn.Module, shape: tuple[int, ...], dynamo: bool = False, opset: int | None = None
            ) -> ox.Model:
    """``net`` exported by torch's dynamo exporter (its default opset) or its legacy one
    (opset 17 unless given), with a dynamic batch."""
    return ox.adapters.torch.export(net, torch.randn(*shape), exporter="dynamo" if dynamo else "legacy",
                                    opset=None if dynamo else opset or 17)


def _same_as_unfused(model: ox.Model, x: np.ndarray, target: int = 1) -> None:
    """The plain module's outputs and input gradients are the node-by-node module's (float32
    rounding: the fused kernels round differently), and ONNX Runtime's outputs."""
    backend = model.backend("torch", device="cpu")
    assert backend._fused is not None
    fused_out = backend.predict(x)
    fused_grad = ox.Saliency(backend).attribute(x, target=target, abs=False)
    plain, backend._fused = backend._fused, None
    try:
        out = backend.predict(x)
        grad = ox.Saliency(backend).attribute(x, target=target, abs=False)
    finally:
        backend._fused = plain
    np.testing.assert_allclose(fused_out, out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused_out, model.backend("onnxruntime").predict(x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fused_grad, grad, rtol=1e-4, atol=1e-6 * np.abs(grad).max())
    assert np.abs(grad).max() > 0


class _Mlp(torch.nn.Module):
    """Linear, activation, linear on a sequence (N, 6, 8): what a transformer's MLP exports to."""

    def __init__(self, act: torch.nn.Module) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act, self.fc2 = torch.nn.Linear(8, 16), act, torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x))).mean(1)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize(("act", "function"), [
    (torch.nn.GELU(), "gelu"),
    (torch.nn.GELU(approximate="tanh"), "gelu_tanh"),
    (torch.nn.SiLU(), "silu"),
    (torch.nn.Mish(), "mish"),
], ids=["gelu", "gelu_tanh", "silu", "mish"])
def test_each_exporters_written_out_activation_is_found_and_fused_with_the_same_results(act, function,
                                                                                        dynamo):
    model = _export(_Mlp(act), (2, 6, 8), dynamo)
    found = torch_fusion.find(model.proto().graph)
    one_node = function == "mish" and any(n.op_type == "Mish" for n in model.proto().graph.node)
    assert [f.function for f in found] == ["linear", "linear"] if one_node else ["linear", function, "linear"]
    _same_as_unfused(model, np.random.default_rng(0).standard_normal((3, 6, 8)).astype(np.float32))


def _chain_model(nodes: list, consts: dict[str, np.ndarray]) -> ox.Model:
    """x (N, 5) -> the chain -> "a" -> MatMul with a (5, 3) weight -> y (N, 3)."""
    w = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    graph = helper.make_graph(
        [*nodes, helper.make_node("MatMul", ["a", "w"], ["y"])], "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k)
                     for k, v in {**consts, "w": w}.items()])
    return ox.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _gelu_nodes(extra_reader: bool = False) -> list:
    """0.5 · x · (1 + erf(x · (1/√2))), the factors in another order than torch's."""
    nodes = [helper.make_node("Mul", ["x", "r2"], ["s"]), helper.make_node("Erf", ["s"], ["e"]),
             helper.make_node("Add", ["one", "e"], ["p"]), helper.make_node("Mul", ["x", "half"], ["h"]),
             helper.make_node("Mul", ["p", "h"], ["g"])]
    if extra_reader:  # the erf is read outside the chain too
        nodes.append(helper.make_node("Add", ["g", "e"], ["a"]))
    else:
        nodes.append(helper.make_node("Identity", ["g"], ["a"]))
    return nodes


GELU_CONSTS = {"r2": 1 / math.sqrt(2), "one": 1.0, "half": 0.5}


def test_a_gelu_written_in_any_order_is_found_by_what_it_computes():
    model = _chain_model(_gelu_nodes(), GELU_CONSTS)
    (fusion,) = torch_fusion.find(model.proto().graph)
    assert fusion.function == "gelu"
    _same_as_unfused(model, np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32), target=0)


@pytest.mark.parametrize("case", ["other constant", "read elsewhere", "quick gelu"])
def test_a_chain_that_computes_something_else_or_is_read_elsewhere_is_left_alone(case):
    if case == "quick gelu":  # x · σ(1.702 x): not SiLU
        nodes = [helper.make_node("Mul", ["x", "k"], ["s"]), helper.make_node("Sigmoid", ["s"], ["e"]),
                 helper.make_node("Mul", ["x", "e"], ["a"])]
        model = _chain_model(nodes, {"k": 1.702})
    else:
        consts = {**GELU_CONSTS, "half": 0.6} if case == "other constant" else GELU_CONSTS
        model = _chain_model(_gelu_nodes(extra_reader=case == "read elsewhere"), consts)
    assert torch_fusion.find(model.proto().graph) == []


def _sequence_linear(bias_shape: tuple[int, ...], product_read_twice: bool = False) -> ox.Model:
    """x (N, 4, 6) MatMul w (6, 5) + b -> mean over the sequence -> y (N, 5)."""
    rng = np.random.default_rng(3)
    consts = {"w": rng.standard_normal((6, 5)), "b": rng.standard_normal(bias_shape), "axes": np.array([1])}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["z"])]
    if product_read_twice:
        nodes += [helper.make_node("Add", ["z", "m"], ["z2"]),
                  helper.make_node("ReduceMean", ["z2", "axes"], ["y"], keepdims=0)]
    else:
        nodes.append(helper.make_node("ReduceMean", ["z", "axes"], ["y"], keepdims=0))
    graph = helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        initializer=[numpy_helper.from_array(v.astype(np.int64 if k == "axes" else np.float32), k)
                     for k, v in consts.items()])
    return ox.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


@pytest.mark.parametrize(("bias_shape", "read_twice", "fused"), [
    ((5,), False, True), ((1, 1, 5), False, True), ((4, 5), False, False), ((5,), True, False),
], ids=["vector", "broadcast", "per-position", "product-read-twice"])
def test_matmul_then_bias_becomes_one_linear_call_only_when_it_is_a_linear_layer(bias_shape, read_twice,
                                                                                 fused):
    model = _sequence_linear(bias_shape, read_twice)
    found = torch_fusion.find(model.proto().graph)
    assert [f.function for f in found] == (["linear"] if fused else [])
    if fused:
        _same_as_unfused(model, np.random.default_rng(0).standard_normal((3, 4, 6)).astype(np.float32))


class _Tokens(torch.nn.Module):
    """Conv patches -> tokens by a reshape the legacy exporter computes from the input's
    shape -> attention (whose scale the exporter computes from the shape too) -> mean."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x)
        t = t.reshape(t.shape[0], t.shape[1], -1).transpose(1, 2)
        t = torch.nn.functional.scaled_dot_product_attention(t, t, t)
        return self.head(t.mean(1))


@pytest.fixture(scope="module")
def tokens_model() -> ox.Model:
    return _export(_Tokens(), (2, 3, 16, 16))


def test_shape_arithmetic_runs_once_per_input_shape_and_its_values_serve_gradient_passes(tokens_model):
    """A forward pass (inference mode) fills the cache; a gradient pass then reads the
    cached attention scale, which autograd saves for its backward: it must not be an
    inference tensor. Each batch size gets its own entry; a reshape's shape is on the host."""
    backend = tokens_model.backend("torch", device="cpu")
    graph = tokens_model.proto().graph
    values = torch_fusion.shape_arithmetic(graph)
    assert any(n.op_type == "Shape" for n in graph.node) and values
    assert any(v.numbers for v in values) and not all(v.numbers for v in values)
    rng = np.random.default_rng(0)
    for n in (1, 3, 5):
        _same_as_unfused(tokens_model, rng.standard_normal((n, 3, 16, 16)).astype(np.float32), target=2)
    cached = [m for m in backend._fused.modules() if isinstance(m, CachedValue)]
    assert len(cached) == len(values)
    assert all({key[0][0] for key in m._cache} >= {1, 3, 5} for m in cached)  # batch sizes
    for m in cached:
        for value in m._cache.values():
            assert not value.is_inference()
    called = set()
    hooks = [m.register_forward_hook(lambda mod, a, o: called.add(type(mod).__name__))
             for m in backend._fused.modules() if m is not backend._fused]
    try:
        backend._fused(torch.zeros(3, 3, 16, 16))
    finally:
        for h in hooks:
            h.remove()
    assert "OnnxShape" not in called and "CachedValue" in called


def test_a_pass_that_hooks_a_fused_node_runs_every_node():
    """Capturing a tensor inside a fused chain (the erf), a hook of the user's on a node's
    module, and a backward rule on a chain node each get the node-by-node module."""
    model = _chain_model(_gelu_nodes(), GELU_CONSTS)
    backend = model.backend("torch", device="cpu")
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    inner = backend.forward(x, outputs=["e"])["e"]
    expected = np.vectorize(math.erf)(x.astype(np.float64) / math.sqrt(2))
    np.testing.assert_allclose(inner, expected, rtol=1e-5, atol=1e-6)
    erf_node = next(n.name for n in model.proto().graph.node if n.op_type == "Erf")
    seen = []
    handle = backend.node_module(erf_node).register_forward_hook(lambda *a: seen.append(1))
    try:
        backend.predict(x)
    finally:
        handle.remove()
    assert seen == [1]
    mul_node = next(n.name for n in model.proto().graph.node if n.output[0] == "g")
    zero = {mul_node: lambda ctx: tuple(torch.zeros_like(a) for a in ctx.inputs)}
    assert np.abs(ox.Saliency(backend).attribute(x, target=0, abs=False)).max() > 0
    with backend.node_rules(zero):
        blocked = ox.Saliency(backend).attribute(x, target=0, abs=False)
    np.testing.assert_array_equal(blocked, 0.0)


def test_the_cached_shape_values_stay_within_their_budget(monkeypatch, tokens_model):
    """A value the budget cannot hold is computed on every call, with the same result."""
    monkeypatch.setattr(torch_fusion, "CACHE_BYTES", 0)
    model = ox.load(tokens_model.serialized())
    backend = model.backend("torch", device="cpu")
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    _same_as_unfused(model, x, target=0)
    assert all(not m._cache for m in backend._fused.modules() if isinstance(m, CachedValue))


def test_shape_arithmetic_never_takes_random_draws():
    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["s"], name="s"),
         helper.make_node("RandomNormalLike", ["s"], ["r"], dtype=TensorProto.FLOAT, name="r"),
         helper.make_node("Add", ["x", "r"], ["y"])], "random",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    proto = onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    values = torch_fusion.shape_arithmetic(proto.graph)
    assert [v.name for v in values] == ["s"]  # the shape itself, read by the draw
    assert all("r" not in v.nodes for v in values)


def test_a_plain_module_that_fails_the_conversion_check_is_dropped_for_the_node_by_node_one(monkeypatch,
                                                                                           caplog):
    """The plain module is an optimisation: one that computes something else than ONNX
    Runtime (here: a GELU chain replaced by SiLU) or cannot be built is never used, and the
    model keeps its gradient methods."""
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    monkeypatch.setitem(torch_fusion._FUNCTIONS, "gelu", torch.nn.functional.silu)
    model = _chain_model(_gelu_nodes(), GELU_CONSTS)
    with caplog.at_level("WARNING"):
        backend = model.backend("torch", device="cpu")
    assert backend._fused is None and "failed its check" in caplog.text
    expected = model.backend("onnxruntime").predict(x)
    np.testing.assert_allclose(backend.predict(x), expected, rtol=1e-5, atol=1e-6)

    def broken(*args, **kwargs):
        raise RuntimeError("no")

    monkeypatch.setattr(torch_fusion, "build", broken)
    model = _chain_model(_gelu_nodes(), GELU_CONSTS)
    backend = model.backend("torch", device="cpu")
    assert backend._fused is None
    assert np.abs(ox.Saliency(backend).attribute(x, target=0)).max() > 0


class _Normed(torch.nn.Module):
    def __init__(self, affine: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.norm = torch.nn.Linear(8, 6), torch.nn.LayerNorm(6, elementwise_affine=affine)
        if affine:
            with torch.no_grad():
                self.norm.weight.uniform_(0.5, 1.5)
                self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x)).mean(1)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_a_layer_norm_written_out_before_opset_17_becomes_one_call(affine):
    """torch's legacy exporter below opset 17 writes LayerNorm as ReduceMean, Sub, Pow,
    ReduceMean, Add, Sqrt, Div (then Mul by γ, Add of β)."""
    model = _export(_Normed(affine), (2, 4, 8), opset=14)
    found = [f for f in torch_fusion.find(model.proto().graph) if f.function == "layer_norm"]
    assert len(found) == 1 and len(found[0].nodes) == (9 if affine else 7)
    _same_as_unfused(model, np.random.default_rng(0).standard_normal((3, 4, 8)).astype(np.float32))


def test_a_normalisation_over_another_axis_is_left_alone():
    """Mean and variance over axis 1 of (N, 4, 6): not torch's layer norm over the last axis."""
    steps = [("ReduceMean", ["x"], "mu"), ("Sub", ["x", "mu"], "d"), ("Mul", ["d", "d"], "d2"),
             ("ReduceMean", ["d2"], "var"), ("Add", ["var", "eps"], "ve"), ("Sqrt", ["ve"], "s"),
             ("Div", ["d", "s"], "y")]
    nodes = [helper.make_node(op, ins, [out], name=out, **({"axes": [1]} if op == "ReduceMean" else {}))
             for op, ins, out in steps]
    graph = helper.make_graph(
        nodes, "norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6])],
        initializer=[numpy_helper.from_array(np.array(1e-5, np.float32), "eps")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert torch_fusion.find(proto.graph) == []
    last = onnx.helper.make_attribute("axes", [-1])
    for n in proto.graph.node:
        if n.op_type == "ReduceMean":
            n.attribute[0].CopyFrom(last)
    assert [f.function for f in torch_fusion.find(proto.graph)] == ["layer_norm"]  # the Mul(d, d) form
