"""AttentionMaps and model.attention_gates(): SE and CBAM gates found on the graph, with
values equal to the gate activations read by forward hooks on the torch module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import onnxplain as ox
from onnxplain.core.errors import InputValidationError
from onnxplain.methods.global_views import AttentionMaps

#: Gates lie in [0, 1]; the exports fold BatchNorm into Conv, which moves them by ~1e-6.
ATOL = 1e-4


@pytest.fixture(scope="module")
def shapes():
    return ox.examples.shapes_model()


def test_bundled_model_has_one_se_gate_equal_to_its_formula(shapes):
    gates = shapes.attention_gates()
    assert [(g.name, g.kind, g.activation) for g in gates] == [("se", "se", "Sigmoid")]
    gate = gates[0]
    images, _, _ = ox.examples.shapes_dataset(4, seed=21)
    maps = AttentionMaps(shapes).attribute(images)
    assert list(maps) == ["se"] and maps["se"].shape == (4, 48)
    # σ(W₂ · relu(W₁ · GAP(f) + b₁) + b₂) by hand from the initializers and the gated map f
    f = shapes.backend("onnxruntime").forward(images, outputs=[gate.gated])[gate.gated]
    init = shapes.ir.graph.initializers
    w1, b1 = (
        init["se.reduce.weight"].const_value.numpy()[:, :, 0, 0],
        init["se.reduce.bias"].const_value.numpy(),
    )
    w2, b2 = (
        init["se.expand.weight"].const_value.numpy()[:, :, 0, 0],
        init["se.expand.bias"].const_value.numpy(),
    )
    hidden = np.maximum(f.mean((2, 3)) @ w1.T + b1, 0)
    expected = 1 / (1 + np.exp(-(hidden @ w2.T + b2)))
    np.testing.assert_allclose(maps["se"], expected, atol=1e-5)


@pytest.fixture(scope="module")
def mobilenet():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.mobilenet_v3_small(weights=None).eval()


def _hooked(net: nn.Module, kind: type, attr: str, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Outputs of ``module.<attr>`` for every submodule of type ``kind``, by module name."""
    store: dict[str, np.ndarray] = {}
    handles = []
    try:
        for name, module in net.named_modules():
            if isinstance(module, kind):
                sub = getattr(module, attr)
                handles.append(
                    sub.register_forward_hook(
                        lambda m, a, out, name=name: store.__setitem__(name, out.detach().numpy())
                    )
                )
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return store


@pytest.mark.parametrize("exporter", ["legacy", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_mobilenet_v3_small_se_blocks_match_forward_hooks(mobilenet, exporter):
    from torchvision.ops.misc import SqueezeExcitation

    x = torch.from_numpy(np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32))
    model = ox.adapters.torch.export(mobilenet, x, exporter=exporter)
    gates = model.attention_gates()
    expected = _hooked(mobilenet, SqueezeExcitation, "scale_activation", x)
    assert len(expected) == 9
    assert [g.name for g in gates] == list(expected)  # module paths, in order
    assert {(g.kind, g.activation) for g in gates} == {("se", "HardSigmoid")}
    maps = AttentionMaps(model).attribute(x.numpy())
    for name, hooked in expected.items():
        assert maps[name].shape == hooked.shape[:2]
        np.testing.assert_allclose(maps[name], hooked[:, :, 0, 0], atol=ATOL)


# -- CBAM (Woo et al. 2018), written as the authors' reference implementation -----------------
class ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, channels // reduction),
            nn.ReLU(),
            nn.Linear(channels // reduction, channels),
        )
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(nn.functional.adaptive_avg_pool2d(x, 1))
        mx = self.mlp(nn.functional.adaptive_max_pool2d(x, 1))
        scale = self.gate(avg + mx).unsqueeze(2).unsqueeze(3).expand_as(x)
        return x * scale


class SpatialGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
        return x * self.gate(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channel_gate = ChannelGate(channels)
        self.spatial_gate = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial_gate(self.channel_gate(x))


class CBAMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.cbam1 = CBAM(8)
        self.conv2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.cbam2 = CBAM(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cbam2(self.conv2(self.cbam1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("exporter", ["legacy", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_cbam_channel_and_spatial_gates_match_forward_hooks(exporter):
    torch.manual_seed(1)
    net = CBAMNet().eval()
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32))
    model = ox.adapters.torch.export(net, x, exporter=exporter)
    gates = model.attention_gates()
    assert [(g.name, g.kind) for g in gates] == [
        ("cbam1.channel_gate", "cbam_channel"),
        ("cbam1.spatial_gate", "cbam_spatial"),
        ("cbam2.channel_gate", "cbam_channel"),
        ("cbam2.spatial_gate", "cbam_spatial"),
    ]
    channel = _hooked(net, ChannelGate, "gate", x)
    spatial = _hooked(net, SpatialGate, "gate", x)
    am = AttentionMaps(model)
    raw = am.attribute(x.numpy(), upsample=False)
    up = am.attribute(x.numpy())
    for name, hooked in channel.items():
        np.testing.assert_allclose(raw[name], hooked, atol=ATOL)
    for name, hooked in spatial.items():
        np.testing.assert_allclose(raw[name], hooked[:, 0], atol=ATOL)
    assert raw["cbam2.spatial_gate"].shape == (2, 16, 16)
    assert up["cbam2.spatial_gate"].shape == (2, 32, 32)
    assert up["cbam2.spatial_gate"].min() >= 0 and up["cbam2.spatial_gate"].max() <= 1


def test_a_model_without_gates_has_none():
    plain = ox.load(ox.examples.tiny_cnn())
    assert plain.attention_gates() == []
    with pytest.raises(InputValidationError, match="no squeeze-and-excitation"):
        AttentionMaps(plain)


def test_unknown_gate_name_is_refused(shapes):
    images, _, _ = ox.examples.shapes_dataset(1, seed=2)
    with pytest.raises(InputValidationError, match="no gate named"):
        AttentionMaps(shapes).attribute(images, gates=["nope"])


def _handwritten_se_model() -> tuple:
    """Conv → Relu = f; g = relu6(W₂·relu(W₁·mean_{h,w}(f)) + 3) / 6 written out as
    ReduceMean(keepdims=0) → Gemm → Relu → Gemm → Add → Clip → Div → Reshape; f·g → GAP → Gemm."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    arrays = {
        "w": rng.standard_normal((6, 3, 3, 3)),
        "w1": rng.standard_normal((3, 6)),
        "b1": rng.standard_normal(3),
        "w2": rng.standard_normal((6, 3)) * 2,
        "b2": rng.standard_normal(6),
        "fc": rng.standard_normal((2, 6)),
    }
    consts = {
        "axes": np.array([2, 3]),
        "three": np.array(3.0),
        "zero": np.array(0.0),
        "six": np.array(6.0),
        "shape": np.array([-1, 6, 1, 1]),
    }
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items()]
    inits += [
        numpy_helper.from_array(v.astype(np.int64 if v.dtype.kind == "i" else np.float32), k)
        for k, v in consts.items()
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["f"], name="relu"),
        helper.make_node("ReduceMean", ["f", "axes"], ["s"], name="se/squeeze", keepdims=0),
        helper.make_node("Gemm", ["s", "w1", "b1"], ["h"], name="se/fc1", transB=1),
        helper.make_node("Relu", ["h"], ["hr"], name="se/relu"),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["e"], name="se/fc2", transB=1),
        helper.make_node("Add", ["e", "three"], ["e3"], name="se/add"),
        helper.make_node("Clip", ["e3", "zero", "six"], ["e6"], name="se/clip"),
        helper.make_node("Div", ["e6", "six"], ["g"], name="se/div"),
        helper.make_node("Reshape", ["g", "shape"], ["g4"], name="se/reshape"),
        helper.make_node("Mul", ["f", "g4"], ["y"], name="se/mul"),
        helper.make_node("GlobalAveragePool", ["y"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["pf"], name="flatten"),
        helper.make_node("Gemm", ["pf", "fc"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "hard_se",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 8
    return ox.load(proto), arrays


def test_hard_sigmoid_written_out_and_gemm_mlp_are_recognised():
    model, w = _handwritten_se_model()
    gates = model.attention_gates()
    assert [(g.name, g.kind, g.activation, g.gate, g.gated) for g in gates] == [
        ("se/mul", "se", "HardSigmoid", "g", "f")
    ]
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    f = model.backend("onnxruntime").forward(x, outputs=["f"])["f"].astype(np.float64)
    hidden = np.maximum(f.mean((2, 3)) @ w["w1"].T + w["b1"], 0)
    expected = np.clip(hidden @ w["w2"].T + w["b2"] + 3, 0, 6) / 6
    np.testing.assert_allclose(AttentionMaps(model).attribute(x)["se/mul"], expected, atol=1e-5)


class OneLayerGate(nn.Module):
    """VoVNet's effective SE, σ(W · GAP(f)) with a 1×1 Conv and a hard sigmoid; or ECA-Net's
    σ(conv1d(GAP(f))) across the channels (``eca=True``)."""

    def __init__(self, channels: int, eca: bool = False) -> None:
        super().__init__()
        self.eca = eca
        self.fc = nn.Conv1d(1, 1, 3, padding=1, bias=False) if eca else nn.Conv2d(channels, channels, 1)
        self.gate = nn.Sigmoid() if eca else nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean((2, 3), keepdim=True)
        if self.eca:
            y = self.fc(pooled.view(x.shape[0], 1, -1)).view(x.shape[0], -1, 1, 1)
        else:
            y = self.fc(pooled)
        return x * self.gate(y)


@pytest.mark.parametrize("eca", [False, True])
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_one_layer_channel_gates_are_se_gates(exporter, eca):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), OneLayerGate(8, eca), nn.Conv2d(8, 8, 3),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((2, 3, 16, 16)).astype(np.float32))
    model = ox.adapters.torch.export(net, x, exporter=exporter)
    gates = model.attention_gates()
    assert [(g.name, g.kind) for g in gates] == [("2", "se")]
    hooked = _hooked(net, OneLayerGate, "gate", x)["2"]
    np.testing.assert_allclose(AttentionMaps(model).attribute(x.numpy())["2"], hooked[:, :, 0, 0], atol=ATOL)
