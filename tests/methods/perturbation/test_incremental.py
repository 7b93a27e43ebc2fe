"""Incremental occlusion / feature ablation (Krypton, Nakandala et al. SIGMOD 2019):
``incremental=True`` must give the full passes' attributions up to float rounding.

Tolerance: float reassociation only (different convolution shapes), so every comparison
is max |Δ| ≤ 1e-5 × max |model output| (the drops are differences of outputs).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
import torch
import torchvision
from helpers import randomize_batchnorm
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox
from onnxplain.backends.callable_backend import CallableBackend
from onnxplain.core import incremental
from onnxplain.core.incremental import Axis
from onnxplain.methods.perturbation._incremental import label_boxes, mask_boxes

TOL = 1e-5
LOG = "onnxplain.core.incremental"


def _array(a) -> np.ndarray:
    a = np.asarray(a)
    return a if a.dtype.kind == "i" else a.astype(np.float32)


def _proto(nodes, inits, size=16, channels=3, classes=4, name="net", opset=17):
    rng = np.random.default_rng(0)
    arrays = {
        k: (rng.standard_normal(v) * 0.5).astype(np.float32) if isinstance(v, tuple) else v
        for k, v in inits.items()
    }
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(_array(a), k) for k, a in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return ox.load(model)


def _head(last: str, channels: int, classes: int = 4) -> tuple[list, dict]:
    """GAP → Flatten → Gemm after ``last`` (channels wide)."""
    nodes = [
        helper.make_node("GlobalAveragePool", [last], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    return nodes, {"fc_w": (classes, channels), "fc_b": (classes,)}


def _two_layer(size=16):
    """Conv 3×3 stride 2 pad 1 → Relu → MaxPool 2×2 stride 2 → Conv 3×3 pad 1 → GAP → FC."""
    nodes = [
        helper.make_node(
            "Conv", ["input", "w1", "b1"], ["c1"], name="conv1", strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
    ]
    tail, inits = _head("r2", 6)
    return _proto(nodes + tail, {"w1": (5, 3, 3, 3), "b1": (5,), "w2": (6, 5, 3, 3), **inits}, size=size)


def _assert_same(method, x, caplog=None, **kwargs):
    """Incremental == full passes (and, given ``caplog``, the incremental path really ran)."""
    full = method.attribute(x, show_progress=False, incremental=False, **kwargs)
    if caplog is not None:
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger=LOG):
            inc = method.attribute(x, show_progress=False, incremental=True, **kwargs)
        assert _used(caplog)
    else:
        inc = method.attribute(x, show_progress=False, incremental=True, **kwargs)
    scale = float(np.abs(method.model.predict(x)).max())
    assert inc.shape == full.shape
    assert np.abs(inc - full).max() <= TOL * scale, (np.abs(inc - full).max(), scale)
    return full, inc


@pytest.fixture
def always(monkeypatch):
    """Incremental evaluation even where the planner thinks it would not pay (tiny nets)."""
    monkeypatch.setattr(incremental, "GAIN", 1e9)
    monkeypatch.setattr(incremental, "STAGE_OVERHEAD", 0.0)


def _used(caplog) -> bool:
    return any("incremental: cuts" in r.getMessage() for r in caplog.records)


# -- geometry ------------------------------------------------------------------------------
def test_axis_affected_positions_and_cover_by_hand():
    axis = Axis(stride=4, offset=-3, size=10)  # position j reads [4j − 3, 4j + 7)
    # box [8, 12): j = 1 reads [1, 11), j = 2 reads [5, 15), j = 3 reads [9, 19); j = 0 [−3, 7) no
    assert tuple(map(int, axis.affected(8, 12, 16))) == (1, 4)
    a, b = axis.cover(1, 4, 64)
    assert (int(a), int(b)) == (0, 19)  # 1 rounded down to the stride
    assert tuple(map(int, axis.affected(0, 1, 16))) == (0, 1)
    assert tuple(map(int, axis.affected(63, 64, 16))) == (15, 16)


def test_geometry_of_a_hand_computed_two_layer_net():
    model = _two_layer()
    found = incremental.analyse(model, (16, 16))
    # conv1: S = 2, O = −1, R = 3; pool: S = 4, O = −1, R = 3 + 1·2 = 5;
    # conv2 (3×3, pad 1): S = 4, O = −1 − 1·4 = −5, R = 5 + 2·4 = 13
    assert found.geometry["c1"] == incremental.Geometry((0, 1, 2, 3), Axis(2, -1, 3), Axis(2, -1, 3))
    assert found.geometry["p1"].h == Axis(4, -1, 5)
    assert found.geometry["r2"].h == Axis(4, -5, 13)
    assert "gap" not in found.geometry  # global pooling ends the head
    assert [c.name for c in found.candidates] == ["r1", "p1", "r2"]


def test_crops_are_exact_at_borders_and_inside_on_the_two_layer_net():
    """Every box's crop reproduces the full pass at the positions it changes."""
    model = _two_layer(size=20)
    found = incremental.analyse(model, (20, 20))
    cand = next(c for c in found.candidates if c.name == "r2")
    stage = incremental._stage(found, model.input_name, cand)
    sub = incremental.sub_model(model, model.input_name, "r2")
    be = sub.backend("onnxruntime", num_threads=1)
    x = np.random.default_rng(0).standard_normal((1, 3, 20, 20)).astype(np.float32)
    boxes = np.array([[0, 3, 0, 3], [17, 20, 5, 9], [6, 11, 13, 20], [9, 10, 9, 10], [0, 20, 0, 20]])
    pos, crop = stage.windows(boxes)
    for i, (h0, h1, w0, w1) in enumerate(boxes):
        xp = x.copy()
        xp[..., h0:h1, w0:w1] = 7.0
        full = be.forward(xp, outputs=["r2"])["r2"]
        part = be.forward(xp[..., crop[i, 0] : crop[i, 1], crop[i, 2] : crop[i, 3]], outputs=["r2"])["r2"]
        dh, dw = crop[i, 0] // 4, crop[i, 2] // 4
        want = full[..., pos[i, 0] : pos[i, 1], pos[i, 2] : pos[i, 3]]
        got = part[..., pos[i, 0] - dh : pos[i, 1] - dh, pos[i, 2] - dw : pos[i, 3] - dw]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        # and outside the affected positions nothing changed
        base = be.forward(x, outputs=["r2"])["r2"].copy()
        base[..., pos[i, 0] : pos[i, 1], pos[i, 2] : pos[i, 3]] = want
        np.testing.assert_allclose(base, full, rtol=0, atol=1e-5)


def test_boxes_of_masks_and_labels():
    m = np.zeros((1, 1, 8, 8), dtype=bool)
    m[..., 2:4, 5:8] = True
    assert mask_boxes(m, (8, 8)).tolist() == [2, 4, 5, 8]
    assert mask_boxes(np.zeros((1, 3, 1, 1), dtype=bool) | True, (8, 8)).tolist() == [0, 8, 0, 8]
    labels = np.array([[0, 0, 1], [2, 2, 1]])[None, None]
    assert label_boxes(labels, (2, 3)).tolist() == [[0, 1, 0, 2], [0, 2, 2, 3], [1, 2, 0, 2]]


# -- equality with full passes ----------------------------------------------------------------
def test_two_layer_net_windows_at_borders_and_uneven_strides(always, caplog):
    model = _two_layer(size=20)
    x = np.random.default_rng(1).standard_normal((2, 3, 20, 20)).astype(np.float32)
    occ = ox.Occlusion(model, backend="onnxruntime", num_threads=1)
    with caplog.at_level(logging.DEBUG, logger=LOG):
        _assert_same(occ, x, sliding_window_shapes=(3, 3, 3), strides=(3, 3, 3), target=1)
    assert _used(caplog)
    _assert_same(
        occ, x, sliding_window_shapes=(3, 5, 4), strides=(3, 4, 3), target=[0, 2], perturbations_per_eval=5
    )
    _assert_same(occ, x, sliding_window_shapes=(1, 3, 3), strides=(1, 2, 2), baselines=0.5)


@pytest.fixture(scope="module")
def shapes():
    return ox.examples.shapes_model()


def test_bundled_model_occlusion_and_random_infill(shapes, caplog):
    x, _, _ = ox.examples.shapes_dataset(2, seed=3)
    occ = ox.Occlusion(shapes)
    with caplog.at_level(logging.DEBUG, logger=LOG):
        _assert_same(occ, x, sliding_window_shapes=(3, 10, 10), strides=(3, 7, 7))
    assert _used(caplog)
    _assert_same(
        occ,
        x,
        sliding_window_shapes=(3, 12, 12),
        strides=(3, 8, 8),
        infill=ox.infill.UniformNoise(),
        seed=5,
        perturbations_per_eval=7,
    )
    _assert_same(
        occ, x[:1], sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8), infill=ox.infill.GaussianBlur(2.0)
    )


def test_bundled_model_feature_ablation_with_segments(shapes, always, caplog):
    x, _, _ = ox.examples.shapes_dataset(2, seed=4)
    cells = (np.arange(64)[:, None] // 8) * 8 + np.arange(64)[None, :] // 8  # 8×8 cells
    segments = np.stack([cells, np.random.default_rng(0).permutation(64)[cells]])  # one per example
    fa = ox.FeatureAblation(shapes)
    with caplog.at_level(logging.DEBUG, logger=LOG):
        _assert_same(fa, x, feature_mask=segments, baselines=0.2)
    assert _used(caplog)


def test_concat_inception_like_module(always, caplog):
    """Two branches (1×1 conv; 3×3 conv after a 3×3 max-pool) concatenated on channels."""
    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["stem"], name="stem", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["stem"], ["s"], name="stem_relu"),
        helper.make_node("Conv", ["s", "wa"], ["a"], name="branch_a"),
        helper.make_node(
            "MaxPool", ["s"], ["mp"], name="branch_b_pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Conv", ["mp", "wb"], ["b"], name="branch_b", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["a", "b"], ["cat"], name="concat", axis=1),
        helper.make_node("Relu", ["cat"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
    ]
    tail, inits = _head("r2", 6)
    model = _proto(
        nodes + tail,
        {"w0": (4, 3, 3, 3), "wa": (3, 4, 1, 1), "wb": (5, 4, 3, 3), "w2": (6, 8, 3, 3), **inits},
        size=24,
    )
    found = incremental.analyse(model, (24, 24))
    # branch a: Axis(2, −1, 3); branch b: pool O = −1 − 2, R = 3 + 4, conv O = −3 − 2, R = 7 + 4
    assert "cat" in found.geometry and found.geometry["cat"].h == Axis(2, -5, 11)  # their hull
    x = np.random.default_rng(2).standard_normal((2, 3, 24, 24)).astype(np.float32)
    _assert_same(ox.Occlusion(model), x, caplog, sliding_window_shapes=(3, 4, 4), strides=(3, 3, 3))


def test_squeeze_excitation_ends_the_head(always, caplog):
    """x · sigmoid(FC(GAP(x))): the gate is global, so no cut lies after it."""
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["se_gap"], name="se_gap"),
        helper.make_node("Conv", ["se_gap", "se_w"], ["se_fc"], name="se_fc"),
        helper.make_node("Sigmoid", ["se_fc"], ["gate"], name="se_sigmoid"),
        helper.make_node("Mul", ["r2", "gate"], ["gated"], name="se_mul"),
        helper.make_node("Conv", ["gated", "w3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
    ]
    tail, inits = _head("r3", 6)
    model = _proto(
        nodes + tail,
        {"w1": (4, 3, 3, 3), "w2": (5, 4, 3, 3), "se_w": (5, 5, 1, 1), "w3": (6, 5, 3, 3), **inits},
        size=32,
    )
    found = incremental.analyse(model, (32, 32))
    assert not {"gated", "c3", "r3"} & set(found.geometry)
    assert [c.name for c in found.candidates] == ["r1", "r2"]
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    _assert_same(ox.Occlusion(model), x, caplog, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4))


def test_normalisation_and_channels_last_transposes_inside_the_graph(always, caplog):
    """(x − mean) / std on a channels-last copy (as Keras exports), then back to NCHW: the
    canonical graph normalises channels first (the transposes sunk and cancelled)."""
    nodes = [
        helper.make_node("Transpose", ["input"], ["nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Sub", ["nhwc", "mean"], ["centred"], name="sub_mean"),
        helper.make_node("Div", ["centred", "std"], ["normed"], name="div_std"),
        helper.make_node("Transpose", ["normed"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1"], ["c1"], name="conv1", pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "AveragePool", ["r1"], ["p1"], name="pool1", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1
        ),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], dilations=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
    ]
    tail, inits = _head("r2", 6)
    inits.update(
        {
            "mean": np.array([0.4, 0.5, 0.6]),
            "std": np.array([0.2, 0.25, 0.3]),
            "w1": (5, 3, 5, 5),
            "w2": (6, 5, 3, 3),
        }
    )
    model = _proto(nodes + tail, inits, size=23)
    assert not any(n.op_type == "Transpose" for n in model.ir.graph)
    found = incremental.analyse(model, (23, 23))
    assert found.geometry["normed__nchw"].axes == (0, 1, 2, 3)
    # pool: S = 2, O = −2, R = 5 + 2 = 7; dilated conv: R = 7 + 2·2·2 = 15, O = −2 − 2 = −4
    assert found.geometry["r2"].h == Axis(2, -4, 15)
    x = np.random.default_rng(4).random((2, 3, 23, 23)).astype(np.float32)
    _assert_same(ox.Occlusion(model), x, caplog, sliding_window_shapes=(3, 3, 3), strides=(3, 2, 2))


def test_same_auto_pad_and_pad_nodes_keep_the_full_grid(always, caplog):
    """``auto_pad=SAME_*`` pads depend on the input size: stages get the explicit pads of the
    full size. An explicit constant ``Pad`` shifts the grid by its leading pad."""
    nodes = [
        helper.make_node(
            "Conv", ["input", "w1"], ["c1"], name="conv1", strides=[2, 2], auto_pad="SAME_UPPER"
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Pad", ["r1", "pads"], ["padded"], name="pad", mode="constant"),
        helper.make_node("Conv", ["padded", "w2"], ["c2"], name="conv2"),
        helper.make_node(
            "MaxPool",
            ["c2"],
            ["p2"],
            name="pool2",
            kernel_shape=[3, 3],
            strides=[2, 2],
            auto_pad="SAME_LOWER",
        ),
        helper.make_node("Relu", ["p2"], ["r2"], name="relu2"),
    ]
    tail, inits = _head("r2", 6)
    pads = np.array([0, 0, 1, 2, 0, 0, 2, 1], dtype=np.int64)
    model = _proto(nodes + tail, {"w1": (5, 3, 4, 4), "w2": (6, 5, 3, 3), "pads": pads, **inits}, size=23)
    found = incremental.analyse(model, (23, 23))
    # conv1 at 23, k 4, s 2: total pad (12 − 1)·2 + 4 − 23 = 3, SAME_UPPER: 1 before → O = −1, R = 4
    assert found.geometry["r1"].h == Axis(2, -1, 4)
    # Pad 1 before (H), 2 before (W); conv2 3×3: R = 4 + 2·2 = 8
    assert found.geometry["c2"].h == Axis(2, -3, 8) and found.geometry["c2"].w == Axis(2, -5, 8)
    assert "r2" in found.geometry
    stage = incremental.sub_model(model, model.input_name, "r2", shapes=found.shapes).proto()
    convs = {
        n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in stage.graph.node
    }
    assert "auto_pad" not in convs["conv1"] and convs["conv1"]["pads"] == [1, 1, 2, 2]
    assert convs["pool2"]["pads"] == [1, 1, 1, 1]  # SAME_LOWER at 13: total (7 − 1)·2 + 3 − 13 = 2
    x = np.random.default_rng(8).standard_normal((2, 3, 23, 23)).astype(np.float32)
    _assert_same(ox.Occlusion(model), x, caplog, sliding_window_shapes=(3, 3, 3), strides=(3, 2, 2))


# -- torchvision networks ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    net = randomize_batchnorm(torchvision.models.resnet18(weights=None, num_classes=10).eval())
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    return ox.adapters.torch.export(net, x, exporter="legacy"), x


@pytest.fixture(scope="module")
def mobilenet_v2():
    torch.manual_seed(0)
    net = randomize_batchnorm(torchvision.models.mobilenet_v2(weights=None, num_classes=10).eval())
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    return ox.adapters.torch.export(net, x, exporter="legacy"), x


class _ConvNeXtLike(torch.nn.Module):
    """A ConvNeXt block as torchvision writes it: depthwise conv, then channels-last
    LayerNorm and pointwise Linear layers between permutes; its dynamic-batch export also
    reads the batch size from the input (Shape(input) → a path around every cut)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 8, 2, stride=2)
        self.dw = torch.nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.norm = torch.nn.LayerNorm(8)
        self.up, self.down = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        f = self.stem(x)
        y = self.dw(f).permute(0, 2, 3, 1)
        y = self.down(torch.nn.functional.gelu(self.up(self.norm(y)))).permute(0, 3, 1, 2)
        g = (f + y).mean((2, 3))
        return self.fc(g) + x.new_zeros(x.shape[0], 4)


def test_convnext_like_block_with_layernorm_linear_and_a_batch_size_path(always, caplog):
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    model = ox.adapters.torch.export(_ConvNeXtLike().eval(), x)
    assert any(n.op_type == "Shape" for n in model.ir.graph)
    assert {"LayerNormalization", "MatMul"} <= {n.op_type for n in model.ir.graph}
    _assert_same(ox.Occlusion(model), x, caplog, target=[1, 2], sliding_window_shapes=(3, 6, 6),
                 strides=(3, 4, 4))
    plan = incremental.plan(model, (32, 32), np.array([[0, 6, 0, 6]]))
    assert plan is not None  # the cuts reach through the LayerNorm and the Linear layers
    recomputed = {n.op_type for st in plan.stages for n in st.model.ir.graph}
    assert {"LayerNormalization", "MatMul"} <= recomputed


def test_resnet18_plan_cuts_inside_the_network(resnet18):
    """At 224×224 with 28×28 windows (the benchmark's setting) the planner cuts deep in
    the network, through several stages, at an estimated cost well below a full pass."""
    model, _ = resnet18
    starts = range(0, 197, 14)
    boxes = np.array([(a, a + 28, b, b + 28) for a in starts for b in starts])
    plan = incremental.plan(model, (224, 224), boxes)
    assert plan is not None and plan.tensor != model.input_name
    assert plan.geometry.h.stride >= 4 and len(plan.stages) >= 2
    assert plan.cost < 0.7 * plan.full_cost


def test_resnet18_matches(resnet18, always, caplog):
    model, x = resnet18
    _assert_same(ox.Occlusion(model), x, caplog, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8), target=3)


def test_mobilenet_v2_matches(mobilenet_v2, always, caplog):
    model, x = mobilenet_v2
    _assert_same(ox.Occlusion(model), x[:1], caplog, sliding_window_shapes=(3, 8, 8), strides=(3, 6, 6))


# -- fallbacks --------------------------------------------------------------------------------
def test_global_op_first_gives_no_plan_and_full_passes(caplog):
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w"], ["logits"], name="fc", transB=1),
    ]
    model = _proto(nodes, {"fc_w": (4, 3)})
    assert incremental.analyse(model, (16, 16)).candidates == []
    assert incremental.plan(model, (16, 16), np.array([[0, 4, 0, 4]])) is None
    x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)
    full, inc = _assert_same(ox.Occlusion(model), x, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4))
    np.testing.assert_array_equal(full, inc)


def test_callable_backend_and_whole_image_boxes_fall_back_to_full_passes(caplog):
    model = _two_layer()
    be = model.backend("onnxruntime", num_threads=1)
    callable_be = CallableBackend(lambda a: be.predict(a), model=model)
    x = np.random.default_rng(6).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with caplog.at_level(logging.DEBUG):
        full, inc = _assert_same(
            ox.Occlusion(callable_be), x, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4)
        )
    np.testing.assert_array_equal(full, inc)
    assert any("not registered" in r.getMessage() for r in caplog.records)
    assert incremental.plan(model, (16, 16), np.array([[0, 16, 0, 16]])) is None


def test_non_image_inputs_fall_back():
    nodes = [helper.make_node("Gemm", ["input", "fc_w"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes,
        "tabular",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(2, 6), "fc_w")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    model = ox.load(proto)
    x = np.random.default_rng(7).standard_normal((2, 6)).astype(np.float32)
    occ = ox.Occlusion(model)
    full = occ.attribute(x, sliding_window_shapes=(2,), strides=(1,), show_progress=False)
    inc = occ.attribute(x, sliding_window_shapes=(2,), strides=(1,), show_progress=False, incremental=True)
    np.testing.assert_array_equal(full, inc)


def test_per_pixel_features_whole_image_groups_and_inner_targets(always, caplog):
    """Every scalar its own feature, and channel groups (whole-image boxes: the crop is the
    whole image), give the same results; a target inside the head falls back to full passes."""
    model = _two_layer()
    x = np.random.default_rng(9).standard_normal((1, 3, 16, 16)).astype(np.float32)
    fa = ox.FeatureAblation(model)
    _assert_same(fa, x, caplog, target=2)
    _assert_same(fa, x, feature_mask=np.arange(3).reshape(3, 1, 1), target=2)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        _assert_same(
            ox.Occlusion(model),
            x,
            sliding_window_shapes=(3, 4, 4),
            strides=(3, 4, 4),
            target=ox.Channel("r1", 1),
        )
    assert any("not after the cut" in r.getMessage() for r in caplog.records)


def test_incremental_must_be_a_bool(shapes):
    x = np.zeros((1, 3, 64, 64), dtype=np.float32)
    with pytest.raises(ox.InputValidationError, match="incremental"):
        ox.Occlusion(shapes).attribute(
            x, sliding_window_shapes=(3, 32, 32), strides=(3, 32, 32), incremental="yes"
        )
    with pytest.raises(ox.InputValidationError, match="incremental"):
        ox.FeatureAblation(shapes).attribute(x, feature_mask=np.zeros((64, 64), dtype=int), incremental=1)


def test_torch_backend_and_rows_per_call_bounded_by_batch_size(always, caplog, monkeypatch):
    """The stages and the tail run on the method's kind of backend (here torch), and no
    backend call gets more than ``batch_size`` rows."""
    model = _two_layer(size=20)
    x = np.random.default_rng(10).standard_normal((2, 3, 20, 20)).astype(np.float32)
    _assert_same(
        ox.Occlusion(model, backend="torch"), x, caplog, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4)
    )
    from onnxplain.backends.onnxruntime_backend import OnnxRuntimeBackend

    rows: list[int] = []
    forward = OnnxRuntimeBackend.forward

    def counted(self, a, outputs=None):
        rows.append(len(a))
        return forward(self, a, outputs)

    monkeypatch.setattr(OnnxRuntimeBackend, "forward", counted)
    _assert_same(
        ox.Occlusion(model),
        x,
        caplog,
        sliding_window_shapes=(3, 4, 4),
        strides=(3, 2, 2),
        perturbations_per_eval=4,
        batch_size=5,
    )
    assert max(rows) <= 5 and len(rows) > 20
