"""torchvision CNNs, exported by both torch exporters, run on both backends.

Logits must equal the torch module's: max |Δ| ≤ 1e-4 × max |logit| (seeded random
weights, 64×64 inputs). Stock onnx2torch converts none of these exports.

The legacy exporter exports the architectures as torchvision builds them. The dynamo
exporter's time grows with the graph (densenet121 takes 30 s here), so it exports the deep
ones with fewer blocks per stage (DenseNet two layers per block, MobileNetV2 and
EfficientNet one residual block or more): the same layers, joined the same way. googlenet's dynamo export is
``test_gradient_captum_parity``'s, checked there against Captum.
"""

import numpy as np
import pytest
import torch
import torchvision

import onnxplain as ox

ARCHS = ["resnet18", "mobilenet_v2", "densenet121", "efficientnet_b0", "squeezenet1_0",
         "googlenet", "convnext_tiny"]
HEAVY = {"densenet121", "convnext_tiny", "efficientnet_b0"}
SHALLOW = {"mobilenet_v2", "densenet121", "efficientnet_b0", "convnext_tiny"}
CASES = [(arch, "legacy") for arch in ARCHS] + [(arch, "dynamo") for arch in ARCHS if arch != "googlenet"]

_cache: dict = {}


def _network(arch: str, shallow: bool) -> torch.nn.Module:
    """torchvision's ``arch``; ``shallow``: with fewer blocks per stage."""
    models = torchvision.models
    if not shallow:
        kwargs = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
        return getattr(models, arch)(weights=None, **kwargs)
    if arch == "densenet121":
        return models.DenseNet(block_config=(2, 2, 2, 2))
    if arch == "mobilenet_v2":  # t, c, n, s as torchvision's table, one residual block kept
        setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 1, 2], [6, 64, 1, 2], [6, 96, 1, 1],
                   [6, 160, 1, 2], [6, 320, 1, 1]]
        return models.MobileNetV2(inverted_residual_setting=setting)
    if arch == "efficientnet_b0":
        from torchvision.models.efficientnet import _efficientnet_conf

        # half the depth: stages of two blocks keep their residual joins
        setting, last = _efficientnet_conf("efficientnet_b0", width_mult=1.0, depth_mult=0.5)
        return models.EfficientNet(setting, dropout=0.2, last_channel=last)
    from torchvision.models.convnext import CNBlockConfig as Stage

    return models.ConvNeXt([Stage(96, 192, 1), Stage(192, 384, 1), Stage(384, 768, 1), Stage(768, None, 1)])


def _export(arch: str, exporter: str):
    key = (arch, exporter)
    if key not in _cache:
        torch.manual_seed(0)
        net = _network(arch, shallow=exporter == "dynamo" and arch in SHALLOW).eval()
        x = torch.randn(2, 3, 64, 64)
        _cache[key] = (net, ox.adapters.torch.export(net, x, exporter=exporter))
    return _cache[key]


@pytest.mark.parametrize(
    "arch, exporter",
    [pytest.param(a, e, marks=pytest.mark.slow) if a in HEAVY and e == "legacy" else (a, e)
     for a, e in CASES],
)
def test_both_backends_reproduce_the_torch_module(arch, exporter):
    net, model = _export(arch, exporter)
    x = np.random.default_rng(3).standard_normal((3, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    scale = np.abs(expected).max()
    for backend in ("onnxruntime", "torch"):
        got = model.backend(backend).predict(x)
        assert np.abs(got - expected).max() <= 1e-4 * scale, backend
    # and the gradient path works end to end on every architecture
    sal = ox.Saliency(model).attribute(x[:1], target=0)
    assert sal.shape == (1, 3, 64, 64) and np.isfinite(sal).all() and sal.any()
    assert model.find_layer("auto").shape[2:] == (2, 2) or arch == "squeezenet1_0"


class _Fold(torch.nn.Module):
    """unfold → scale → fold (ONNX ``Col2Im``), as VOLO's outlook attention folds its windows."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        cols = torch.nn.functional.unfold(self.conv(x), 3, padding=1, stride=2)
        folded = torch.nn.functional.fold(cols * 0.5, (16, 16), 3, padding=1, stride=2)
        return self.fc(torch.relu(folded).mean((2, 3)))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_col2im_converts_to_fold_and_its_gradient_is_captums(exporter):
    from captum.attr import Saliency

    net, x = _Fold().eval(), torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    model = ox.adapters.torch.export(net, x, exporter=exporter)
    assert "Col2Im" in {n.op_type for n in model.ir.graph}
    ref = Saliency(net).attribute(x.clone().requires_grad_(True), target=1, abs=False).numpy()
    ours = ox.Saliency(model).attribute(x.numpy(), target=1, abs=False)
    np.testing.assert_allclose(ours, ref, atol=1e-6 * np.abs(ref).max())


class _RowLSTM(torch.nn.Module):
    """Conv, then each row of the map read as a sequence by an LSTM (Sequencer, ReNet)."""

    def __init__(self, bidirectional: bool, batch_first: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.lstm = torch.nn.LSTM(6, 5, bidirectional=bidirectional, batch_first=batch_first)
        self.fc = torch.nn.Linear(10 if bidirectional else 5, 4)

    def forward(self, x):
        f = self.conv(x)
        n, c, h, w = f.shape
        rows = f.permute(0, 2, 3, 1).reshape(n * h, w, c)
        y, _ = self.lstm(rows if self.lstm.batch_first else rows.transpose(0, 1))
        y = y if self.lstm.batch_first else y.transpose(0, 1)
        return self.fc(y.mean(1).reshape(n, h, -1).mean(1))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize(("bidirectional", "batch_first"), [(False, False), (True, True)])
def test_lstm_converts_to_torch_lstm_and_its_gradient_is_captums(exporter, bidirectional, batch_first):
    from captum.attr import Saliency

    net = _RowLSTM(bidirectional, batch_first).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    model = ox.adapters.torch.export(net, x, exporter=exporter)
    assert "LSTM" in {n.op_type for n in model.ir.graph}
    ref = Saliency(net).attribute(x.clone().requires_grad_(True), target=1, abs=False).numpy()
    ours = ox.Saliency(model).attribute(x.numpy(), target=1, abs=False)
    np.testing.assert_allclose(ours, ref, atol=1e-6 * np.abs(ref).max())


def test_a_reverse_lstm_with_initial_states_computes_what_onnx_runtime_does():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    seq, batch, inputs, hidden = 5, 3, 4, 6
    consts = {"W": rng.standard_normal((1, 4 * hidden, inputs)),
              "R": rng.standard_normal((1, 4 * hidden, hidden)), "B": rng.standard_normal((1, 8 * hidden)),
              "h0": rng.standard_normal((1, batch, hidden)), "c0": rng.standard_normal((1, batch, hidden))}
    x_shape = [seq, batch, inputs]
    node = helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["y", "y_h"], hidden_size=hidden,
                            direction="reverse")
    graph = helper.make_graph(
        [node], "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [seq, 1, batch, hidden]),
         helper.make_tensor_value_info("y_h", TensorProto.FLOAT, list(consts["h0"].shape))],
        initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    proto.ir_version = 8
    model = ox.load(proto)
    x = rng.standard_normal(x_shape).astype(np.float32)
    names = ["y", "y_h"]
    ort = model.backend("onnxruntime").forward(x, outputs=names)
    ours = model.backend("torch", verify=False).forward(x, outputs=names)
    for name in names:
        np.testing.assert_allclose(ours[name], ort[name], rtol=1e-5, atol=1e-5)


class _ReshapedNorm(torch.nn.Module):
    """A LayerNorm over a dim the legacy exporter leaves unknown: the map reshaped to
    (N, 4, -1) with N read from the tensor (timm's SAM ViT windows)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.norm = torch.nn.LayerNorm(16)
        torch.nn.init.normal_(self.norm.weight)
        self.fc = torch.nn.Linear(16, 3)

    def forward(self, x):
        f = self.conv(x)
        return self.fc(self.norm(f.reshape(f.shape[0], 4, -1)).mean(1))


def test_a_layer_norm_over_a_dim_the_export_leaves_unknown_converts_and_its_gradient_is_captums():
    from captum.attr import Saliency

    net, x = _ReshapedNorm().eval(), torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    model = ox.adapters.torch.export(net, x, exporter="legacy")
    norm = next(n for n in model.ir.graph if n.op_type == "LayerNormalization")
    assert not isinstance(norm.inputs[0].shape[-1], int)  # the case at hand: onnx2torch built LayerNorm([0])
    ref = Saliency(net).attribute(x.clone().requires_grad_(True), target=1, abs=False).numpy()
    ours = ox.Saliency(model).attribute(x.numpy(), target=1, abs=False)
    np.testing.assert_allclose(ours, ref, atol=1e-6 * np.abs(ref).max())


class _SpatialTransformer(torch.nn.Module):
    """A spatial transformer network (Jaderberg et al., 2015): a localisation net predicts an
    affine map, affine_grid and grid_sample resample the image, a CNN classifies it."""

    def __init__(self, mode: str, padding: str, align_corners: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        nn = torch.nn
        self.loc = nn.Sequential(nn.Conv2d(3, 4, 5), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, 6))
        with torch.no_grad():  # near the identity map
            self.loc[-1].weight.mul_(0.1)
            self.loc[-1].bias.copy_(torch.tensor([1.0, 0.1, 0.0, -0.1, 1.0, 0.0]))
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(8, 5))
        self.mode, self.padding, self.align_corners = mode, padding, align_corners

    def forward(self, x):
        theta = self.loc(x).view(-1, 2, 3)
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=self.align_corners)
        return self.net(torch.nn.functional.grid_sample(x, grid, mode=self.mode, padding_mode=self.padding,
                                                        align_corners=self.align_corners))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize(("mode", "padding", "align_corners"), [
    ("bilinear", "zeros", False), ("nearest", "border", True), ("bicubic", "reflection", False),
])
def test_a_spatial_transformer_converts_and_its_gradient_is_captums(exporter, mode, padding, align_corners):
    """GridSample (opset 16's and 20's) and AffineGrid (the legacy exporter writes it) run on
    the torch backend: saliency equals Captum's on the module (1e-4)."""
    from captum.attr import Saliency

    module = _SpatialTransformer(mode, padding, align_corners).eval()
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    model = ox.adapters.torch.export(module, x, exporter=exporter)
    expected = Saliency(module).attribute(x.clone().requires_grad_(), target=1).numpy()
    ours = ox.Saliency(model).attribute(x.numpy(), target=1)
    assert np.abs(ours - expected).max() <= 1e-4 * np.abs(expected).max()


class _Normed(torch.nn.Module):
    """Conv → GroupNorm or RMSNorm (over the channels, as a channels-last transformer block
    normalises) → GAP → Linear."""

    def __init__(self, norm: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.norm = torch.nn.GroupNorm(4, 8) if norm == "group" else torch.nn.RMSNorm(8)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
        self.fc = torch.nn.Linear(8, 5)
        self.kind = norm

    def forward(self, x):
        h = self.conv(x)
        h = self.norm(h) if self.kind == "group" else self.norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(torch.relu(h).mean((2, 3)))


@pytest.mark.parametrize(("norm", "opset"), [("group", 21), ("rms", 23)])
def test_group_and_rms_normalization_of_new_opsets_convert_and_their_gradient_is_captums(norm, opset):
    """The dynamo exporter writes GroupNormalization from opset 21 and RMSNormalization from
    opset 23, which onnx2torch does not know: saliency equals Captum's (1e-4)."""
    from captum.attr import Saliency

    module = _Normed(norm).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    model = ox.adapters.torch.export(module, x, exporter="dynamo", opset=opset)
    wanted = "GroupNormalization" if norm == "group" else "RMSNormalization"
    assert wanted in {n.op_type for n in model.ir.graph}
    expected = Saliency(module).attribute(x.clone().requires_grad_(), target=1).numpy()
    ours = ox.Saliency(model).attribute(x.numpy(), target=1)
    assert np.abs(ours - expected).max() <= 1e-4 * np.abs(expected).max()



def test_lrp_holds_group_and_rms_normalization_linear_as_it_does_layer_norm():
    """The LN rule on a GroupNormalization (opset 21) gives the map it gives on the same
    GroupNorm exported as InstanceNormalization of the grouped tensor (opset 20); on an
    RMSNormalization, whose held-linear form is x·γ/rms, it passes relevance unchanged, as
    the Pass rule mapped to it does (1e-4)."""
    module = _Normed("group").eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    maps = [ox.LRP(ox.adapters.torch.export(module, x, exporter="dynamo", opset=opset)).attribute(
        x.numpy(), target=1) for opset in (21, 20)]
    assert np.abs(maps[0] - maps[1]).max() <= 1e-4 * np.abs(maps[1]).max()
    rms = ox.adapters.torch.export(_Normed("rms").eval(), x, exporter="dynamo", opset=23)
    ours = ox.LRP(rms).attribute(x.numpy(), target=1)
    passed = ox.lrp.EpsilonPlusFlat(rules=[(ox.lrp.Select(op_type="RMSNormalization"), ox.lrp.Pass())])
    expected = ox.LRP(rms, composite=passed).attribute(x.numpy(), target=1)
    assert np.abs(ours - expected).max() <= 1e-4 * np.abs(expected).max()


def test_lrp_through_a_spatial_transformer_holds_the_grid_constant():
    """GridSample gets the proportional rule on the image with the grid held constant. A
    transformer fixed at the identity map (nearest, align_corners: it takes each pixel, so
    the resampling is the identity) then has the LRP map of the network after it: no
    relevance leaks into the localisation net (1e-5, with the proportional rule's
    stabiliser made negligible: at its default, 1e-6, it moves a pixel near 0 by ~1 %)."""
    module = _SpatialTransformer("nearest", "border", True).eval()
    with torch.no_grad():
        module.loc[-1].weight.zero_()
        module.loc[-1].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(5))
    composite = ox.lrp.EpsilonPlusFlat(stabilizer=1e-12)
    ours, plain = (ox.LRP(ox.adapters.torch.export(m, x, exporter="dynamo"), composite=composite).attribute(
        x.numpy(), target=1) for m in (module, module.net))
    assert np.abs(ours - plain).max() <= 1e-5 * np.abs(plain).max()


def _graph_model(nodes, consts: dict, outputs: int, opset: int) -> ox.Model:
    """A model of ``nodes`` from x (N, 3, 8, 8) to y (N, ``outputs``), ``consts`` its initializers."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "graph", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", outputs])],
        initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return ox.load(proto)


def _check_against_runtime(model: ox.Model, target: int, at: tuple[int, ...] | None = None) -> np.ndarray:
    """The torch backend's output is ONNX Runtime's, and its input gradient of ``target`` the
    central difference of ONNX Runtime's outputs, at the gradient's largest entry (and at
    ``at``): exact up to float32 rounding, as these graphs are linear in x. The gradient."""
    x = np.random.default_rng(2).standard_normal((3, 3, 8, 8)).astype(np.float32)
    runtime = model.backend("onnxruntime")
    np.testing.assert_allclose(model.backend("torch").predict(x), runtime.predict(x), rtol=1e-5, atol=1e-5)
    grads = ox.Saliency(model.backend("torch")).attribute(x, target=target, abs=False)
    for where in (np.unravel_index(np.abs(grads).argmax(), grads.shape), at):
        if where is None:
            continue
        bump = np.zeros_like(x)
        bump[where] = 1e-2
        up, down = (runtime.predict(x + s * bump)[where[0], target] for s in (1, -1))
        assert abs((up - down) / 2e-2 - grads[where]) < 1e-2 * max(1.0, abs(grads[where]))
    assert np.abs(grads).max() > 0.1
    return grads


@pytest.mark.parametrize("opset", [13, 21])
def test_a_constant_reshape_holds_its_shape_and_a_computed_one_still_converts(opset):
    """A Reshape to a constant shape (0: the input's size, -1: the rest) becomes a module with
    the shape as Python ints, read from no tensor per call (on a GPU, onnx2torch's reads it
    element by element, a sync each); a shape the graph computes keeps onnx2torch's module.
    Both compute what ONNX Runtime does, gradients included."""
    from onnx import helper

    from onnxplain.backends.torch_converters import ConstantReshape

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["f"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["f", "const_shape"], ["flat"], name="const_reshape"),  # (N, 4·8·8)
        helper.make_node("Shape", ["f"], ["f_shape"]),
        helper.make_node("Gather", ["f_shape", "first"], ["lead"], axis=0),  # (N,)
        helper.make_node("Concat", ["lead", "rest"], ["computed"], axis=0),
        helper.make_node("Reshape", ["f", "computed"], ["rows"], name="computed_reshape"),  # (N, 16, 16)
        helper.make_node("ReduceMean", ["rows"], ["pooled"], axes=[2], keepdims=0)
        if opset < 18 else helper.make_node("ReduceMean", ["rows", "axis2"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["flat", "head"], ["logits_a"]),
        helper.make_node("MatMul", ["pooled", "head2"], ["logits_b"]),
        helper.make_node("Add", ["logits_a", "logits_b"], ["y"]),
    ]
    consts = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
              "const_shape": np.array([0, -1], np.int64), "rest": np.array([16, -1], np.int64),
              "first": np.array([0], np.int64),
              "axis2": np.array([2], np.int64), "head": rng.standard_normal((256, 5)).astype(np.float32),
              "head2": rng.standard_normal((16, 5)).astype(np.float32)}
    model = _graph_model(nodes, consts, 5, opset)
    backend = model.backend("torch")
    assert isinstance(backend.node_module("const_reshape"), ConstantReshape)
    assert backend.node_module("const_reshape").shape == (0, -1)
    assert not isinstance(backend.node_module("computed_reshape"), ConstantReshape)
    _check_against_runtime(model, target=2)


def test_a_constant_reshape_with_allowzero_keeps_zero_sized_axes():
    from onnxplain.backends.torch_converters import ConstantReshape

    x = torch.zeros(2, 0, 3)
    assert ConstantReshape((0, 3, 2), allowzero=True)(x).shape == (0, 3, 2)
    assert ConstantReshape((0, 3, 0), allowzero=False)(torch.zeros(2, 3, 4)).shape == (2, 3, 4)


def test_constant_slices_and_squeezes_hold_their_arguments_and_compute_what_onnx_runtime_does():
    """Slice with constant starts/ends/axes/steps (a negative step, an end at INT64's bounds,
    a negative axis, steps of 2) and Squeeze with constant axes become modules holding them
    as Python values; a Slice whose start the graph computes keeps onnx2torch's module."""
    from onnx import helper

    from onnxplain.backends.torch_converters import ConstantSlice

    big, small = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    consts = {
        "w": np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32),
        "s1": np.array([1, -2], np.int64), "e1": np.array([big, small], np.int64),
        "a1": np.array([2, 3], np.int64), "p1": np.array([1, -1], np.int64),  # (N, 4, 7, 7), W reversed
        "s2": np.array([0], np.int64), "e2": np.array([6], np.int64), "a2": np.array([-1], np.int64),
        "p2": np.array([2], np.int64),  # (N, 4, 7, 3)
        "one": np.array([1], np.int64), "big": np.array([big], np.int64), "sq": np.array([3], np.int64),
        "head": np.random.default_rng(1).standard_normal((4 * 7, 5)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["f"], pads=[1, 1, 1, 1]),  # (N, 4, 8, 8)
        helper.make_node("Slice", ["f", "s1", "e1", "a1", "p1"], ["g"], name="slice_a"),
        helper.make_node("Slice", ["g", "s2", "e2", "a2", "p2"], ["h"], name="slice_b"),
        helper.make_node("Shape", ["h"], ["h_shape"]),
        helper.make_node("Slice", ["h_shape", "one", "big"], ["tail"]),  # computed from a shape
        helper.make_node("ReduceMin", ["tail"], ["least"], keepdims=1),  # 3
        helper.make_node("Sub", ["least", "one"], ["two"]),  # 2: a start the graph computes
        helper.make_node("Slice", ["h", "two", "big", "sq"], ["k"], name="slice_computed"),  # (N, 4, 7, 1)
        helper.make_node("Squeeze", ["k", "sq"], ["m"], name="squeeze_const"),  # (N, 4, 7)
        helper.make_node("Flatten", ["m"], ["flat"]),
        helper.make_node("MatMul", ["flat", "head"], ["y"]),
    ]
    model = _graph_model(nodes, consts, 5, 17)
    backend = model.backend("torch")
    kinds = {n.name: type(backend.node_module(n.name)).__name__ for n in model.ir.graph}
    assert kinds["slice_a"] == kinds["slice_b"] == ConstantSlice.__name__
    assert kinds["squeeze_const"] == "ConstantSqueeze"
    assert kinds["slice_computed"] == "ComputedSlice"
    grads = _check_against_runtime(model, target=4, at=(0, 1, 5, 6))
    assert grads[0, 1, 5, 6] == 0  # outside what the slices keep


@pytest.mark.parametrize("opset", [13, 18])
def test_constant_pads_and_split_sizes_are_held_and_compute_what_onnx_runtime_does(opset):
    """Pad with constant pads and fill (constant and reflect modes) and Split with constant
    sizes become modules holding them as Python values; the output and its gradient are
    ONNX Runtime's."""
    from onnx import helper

    consts = {
        "w": np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32),
        "pads": np.array([0, 0, 1, 2, 0, 0, 1, 0], np.int64), "fill": np.array(0.5, np.float32),
        "pads2": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "sizes": np.array([3, 7], np.int64),
        "zero": np.array([0], np.int64), "three": np.array([3], np.int64), "two": np.array([2], np.int64),
        "head": np.random.default_rng(1).standard_normal((4 * 3 * 20, 5)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["f"]),  # (N, 4, 6, 6)
        helper.make_node("Pad", ["f", "pads", "fill"], ["g"], name="pad_const"),  # (N, 4, 8, 8)
        helper.make_node("Pad", ["g", "pads2"], ["h"], mode="reflect", name="pad_reflect"),  # (N, 4, 10, 10)
        helper.make_node("Split", ["h", "sizes"], ["top", "rest"], axis=2, name="split_const"),  # 3, 7 rows
        helper.make_node("Slice", ["rest", "zero", "three", "two"], ["rest3"]),  # (N, 4, 3, 10)
        helper.make_node("Concat", ["top", "rest3"], ["joined"], axis=3),  # (N, 4, 3, 20)
        helper.make_node("Flatten", ["joined"], ["flat"]),
        helper.make_node("MatMul", ["flat", "head"], ["y"]),
    ]
    model = _graph_model(nodes, consts, 5, opset)
    backend = model.backend("torch")
    kinds = {n.name: type(backend.node_module(n.name)).__name__ for n in model.ir.graph}
    assert kinds["pad_const"] == kinds["pad_reflect"] == "OnnxPadStatic"
    assert kinds["split_const"] == "OnnxSplit"
    _check_against_runtime(model, target=1)


@pytest.mark.parametrize("opset", [11, 13])
def test_several_negative_axes_squeeze_and_unsqueeze_where_onnx_says(opset):
    """Unsqueeze at axes (-1, -3) of a (N, 4) tensor gives (N, 4, 1) then (N, 1, 4, 1) in ONNX's
    reading (axes of the output); Squeeze of (-1, -3) takes them out again. onnx2torch's
    modules sort the raw numbers and insert or squeeze one by one: wrong shapes here."""
    from onnx import helper

    from onnxplain.backends.torch_converters import ConstantSqueeze, ConstantUnsqueeze

    consts = {"w": np.random.default_rng(0).standard_normal((3 * 8 * 8, 4)).astype(np.float32),
              "bias": np.random.default_rng(1).standard_normal((1, 5, 4, 1)).astype(np.float32)}
    axes = {"axes": [-1, -3]} if opset < 13 else {}
    if opset >= 13:
        consts["ax"] = np.array([-1, -3], np.int64)
    ax_input = ["ax"] if opset >= 13 else []
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["f"]),  # (N, 4)
        helper.make_node("Unsqueeze", ["f", *ax_input], ["u"], name="unsqueeze", **axes),  # (N, 1, 4, 1)
        helper.make_node("Add", ["u", "bias"], ["v"]),  # (N, 5, 4, 1): the shape must be right to broadcast
        helper.make_node("ReduceMean", ["v"], ["m"], axes=[1], keepdims=1),  # (N, 1, 4, 1)
        helper.make_node("Squeeze", ["m", *ax_input], ["y"], name="squeeze", **axes),  # (N, 4)
    ]
    model = _graph_model(nodes, consts, 4, opset)
    backend = model.backend("torch")
    assert isinstance(backend.node_module("unsqueeze"), ConstantUnsqueeze)
    assert isinstance(backend.node_module("squeeze"), ConstantSqueeze)
    x = np.random.default_rng(2).standard_normal((3, 3, 8, 8)).astype(np.float32)
    ours = backend.predict(x)
    assert ours.shape == (3, 4)
    np.testing.assert_allclose(ours, model.backend("onnxruntime").predict(x), rtol=1e-5, atol=1e-5)
