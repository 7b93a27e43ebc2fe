"""Constant subgraphs folded at load: a network that standardises its convolution weights
in every pass (NF-ResNet's ``ScaledStdConv2d``) explained like one with plain weights."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from helpers import max_rel_err, zennit_relevance
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox
from onnxplain.core import constant_fold
from onnxplain.methods import lrp


class _StdConv(torch.nn.Conv2d):
    """A convolution whose kernel is standardised per output channel in forward, times a
    learned gain (Brock et al. 2021, as timm's ``ScaledStdConv2d``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gain = torch.nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)

    def standardised(self) -> torch.Tensor:
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                         momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return w * self.gain / self.weight[0].numel() ** 0.5

    def forward(self, x):
        return F.conv2d(x, self.standardised(), self.bias, self.stride, self.padding)


def _net(standardised: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    conv = _StdConv if standardised else torch.nn.Conv2d
    return torch.nn.Sequential(
        conv(3, 8, 3, padding=1), torch.nn.ReLU(), conv(8, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()


def _baked(net: torch.nn.Module) -> torch.nn.Module:
    """The same network with the standardised kernels written into plain convolutions."""
    plain = _net(standardised=False)
    with torch.no_grad():
        for a, b in zip(net, plain):
            if isinstance(a, _StdConv):
                b.weight.copy_(a.standardised())
                b.bias.copy_(a.bias)
            elif isinstance(a, torch.nn.Linear):
                b.load_state_dict(a.state_dict())
    return plain


@pytest.fixture(scope="module", params=["dynamo", "legacy"])
def standardised(request, images):
    net = _net(standardised=True)
    x = torch.from_numpy(images[:, :, :16, :16])
    return net, ox.adapters.torch.export(net, x, exporter=request.param)


def test_the_computed_kernels_become_initializers(standardised):
    net, model = standardised
    convs = [n for n in model.ir.graph if n.op_type == "Conv"]
    assert len(convs) == 2 and all(c.inputs[1].const_value is not None for c in convs)
    assert not any(n.op_type == "BatchNormalization" for n in model.ir.graph)  # only the kernels' used it
    np.testing.assert_allclose(convs[0].inputs[1].const_value.numpy(), net[0].standardised().detach().numpy(),
                               atol=1e-6)


def test_predictions_and_gradients_are_the_modules(standardised, images):
    net, model = standardised
    x = images[:, :, :16, :16]
    np.testing.assert_allclose(model.predict(x), net(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
    from captum.attr import Saliency

    ref = Saliency(net).attribute(torch.from_numpy(x).requires_grad_(True), target=2, abs=False).numpy()
    assert max_rel_err(ox.Saliency(model).attribute(x, target=2, abs=False), ref) < 1e-4


def test_lrp_is_zennits_on_the_network_with_the_kernels_baked_in(standardised, images):
    pytest.importorskip("zennit")
    from zennit.composites import EpsilonPlusFlat

    net, model = standardised
    x = images[:, :, :16, :16]
    ref = zennit_relevance(EpsilonPlusFlat(), _baked(net), x, target=2, classes=4)
    ours = lrp.LRP(model, lrp.EpsilonPlusFlat()).attribute(x, target=2)
    assert np.abs(ref).max() > 0 and max_rel_err(ours, ref) < 1e-4


def _graph(nodes, inits, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape) for o, shape in outputs.items()],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_what_is_never_folded(images, monkeypatch):
    """Random draws, quantization (a quantized model runs its integer weights), a constant
    graph output, and a result over MAX_ELEMENTS are left in the graph; the rest folds."""
    w = np.arange(16, dtype=np.float32).reshape(4, 4) / 10
    nodes = [
        helper.make_node("Transpose", ["w"], ["wt"]),  # folds
        helper.make_node("MatMul", ["x", "wt"], ["y0"]),
        helper.make_node("RandomUniform", [], ["r"], shape=[4], seed=1.0),  # drawn at run time
        helper.make_node("Add", ["y0", "r"], ["y1"]),
        helper.make_node("QuantizeLinear", ["w", "s"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s"], ["dq"]),  # a quantized weight
        helper.make_node("MatMul", ["y1", "dq"], ["y2"]),
        helper.make_node("Expand", ["one", "big"], ["e"]),  # (5, 1, 4): over the limit
        helper.make_node("Add", ["y2", "e"], ["y3"]),
        helper.make_node("ReduceMean", ["y3"], ["y"], axes=[0], keepdims=0),
        helper.make_node("Neg", ["w"], ["constant_out"]),  # a graph output
    ]
    inits = {"w": w, "s": np.float32(0.1), "one": np.ones(1, np.float32),
             "big": np.array([5, 1, 4], np.int64)}
    monkeypatch.setattr(constant_fold, "MAX_ELEMENTS", 16)
    model = ox.load(_graph(nodes, inits, outputs={"y": ["batch", 4], "constant_out": [4, 4]}))
    assert model.quantized  # its torch and LRP graph folds the rounding of w; ONNX Runtime runs it
    ops = [n.op_type for n in model.runtime_ir.graph]
    assert "Transpose" not in ops
    assert {"RandomUniform", "QuantizeLinear", "DequantizeLinear", "Expand", "Neg"} <= set(ops)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    y = model.backend("onnxruntime").forward(x, outputs=["y0"])["y0"]
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-6)
    assert model.backend("onnxruntime").forward(x)["y"].shape == (3, 4)


# -- If with a constant condition ----------------------------------------------------------
def _branch(name: str, nodes: list, output: str) -> onnx.GraphProto:
    out = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
    return helper.make_graph(nodes, name, [], [out])


def _conditional(flag: bool, nested: bool | None) -> onnx.ModelProto:
    """Conv → If(flag: ReLU | Sigmoid) → mean → MatMul; ``nested`` (not None): the ReLU
    branch holds another If(nested: the conv output itself | Tanh) after its ReLU."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "fc"),
             numpy_helper.from_array(np.array(flag), "flag"),
             numpy_helper.from_array(np.array([bool(nested)]), "inner")]
    relu = [helper.make_node("Relu", ["c"], ["relu"])]
    if nested is not None:
        keep = _branch("inner_then", [helper.make_node("Identity", ["c"], ["kept"])], "kept")
        tanh = _branch("inner_else", [helper.make_node("Tanh", ["relu"], ["t"])], "t")
        relu.append(helper.make_node("If", ["inner"], ["then_out"], then_branch=keep, else_branch=tanh))
    then = _branch("then", relu, "relu" if nested is None else "then_out")
    other = _branch("else", [helper.make_node("Sigmoid", ["c"], ["sig"])], "sig")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("If", ["flag"], ["r"], then_branch=then, else_branch=other),
             helper.make_node("ReduceMean", ["r"], ["g"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["g", "fc"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])
    graph = helper.make_graph(nodes, "conditional", [x], [y], inits)
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 13)])


def _straight(activation: str) -> onnx.ModelProto:
    """The same network with the branch taken written in."""
    proto = _conditional(True, None)
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend([nodes[0], helper.make_node(activation, ["c"], ["r"]), *nodes[2:]])
    return proto


@pytest.mark.parametrize(("flag", "nested", "taken"), [(True, None, "Relu"), (False, None, "Sigmoid"),
                                                        (True, False, "Tanh"), (True, True, "Identity")])
def test_an_if_with_a_constant_condition_is_the_branch_it_takes(flag, nested, taken):
    """The If is gone (nested ones too), predictions are ONNX Runtime's on the file, and
    gradients and LRP equal those of the network with the branch written in; a branch that
    returns an outer value (the inner then: the conv output) gives it through an Identity,
    and the ReLU only the branch not taken read is gone."""
    import onnxruntime as ort

    proto = _conditional(flag, nested)
    onnx.checker.check_model(proto, full_check=True)
    model = ox.load(proto)
    straight = _straight(taken)
    if nested is False:  # ReLU, then the inner If's else branch: Tanh of it
        straight.graph.node.insert(1, helper.make_node("Relu", ["c"], ["relu"]))
        straight.graph.node[2].input[0] = "relu"
    straight = ox.load(straight)
    ops = [n.op_type for n in model.ir.graph]
    assert "If" not in ops and ("Relu" in ops) == (taken in ("Relu", "Tanh"))
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    native = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(model.predict(x), native.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
    for method in (ox.Saliency, ox.GradCAM, ox.LRP):
        ours, theirs = (method(m).attribute(x, target=2) for m in (model, straight))
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7, err_msg=method.__name__)
