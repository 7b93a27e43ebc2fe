"""The CAM family's own claims: CAM's head from the IR, forward-only variants on ONNX
Runtime, Score-CAM's definitions, the identities between variants, options and errors."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from helpers import max_rel_err
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox
from onnxplain.methods._resize import resize_bilinear
from onnxplain.methods.cam import (
    CAM,
    AblationCAM,
    CAMBase,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)

TOL = 1e-5

FORWARD_ONLY = [CAM, ScoreCAM, AblationCAM, EigenCAM]
GRADIENT = [GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM]


def _tiny(nodes, initializers, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _gap_matmul(scale: float = 1.0, softmax: bool = False, gemm: bool = False):
    """Conv → Relu → ReduceMean(H, W) → MatMul → Add (→ Softmax): a GAP head without Gemm;
    ``gemm=True``: Gemm(transB=0, alpha=2, beta=0.5) instead of MatMul → Add."""
    rng = np.random.default_rng(0)
    init = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "fc": scale * rng.standard_normal((4, 3)).astype(np.float32),
            "b": rng.standard_normal(3).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("ReduceMean", ["r"], ["g"], name="gap", axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["g", "fc"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "b"], ["z" if softmax else "logits"], name="bias"),
    ]
    if gemm:
        nodes[3:] = [helper.make_node("Gemm", ["g", "fc", "b"], ["logits"], name="fc", alpha=2.0, beta=0.5)]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["logits"], name="softmax", axis=1))
    return ox.load(_tiny(nodes, init)), init


@pytest.fixture(scope="module")
def matmul_head_model():
    return _gap_matmul()


@pytest.fixture(scope="module")
def headless_model():
    """Conv → Relu → Flatten → Gemm: a classifier without global pooling."""
    rng = np.random.default_rng(0)
    init = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "fc": rng.standard_normal((3, 4 * 8 * 8)).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], name="fc", transB=1),
    ]
    return ox.load(_tiny(nodes, init))


# -- CAM and the classifier head ---------------------------------------------------------
def test_classifier_head_is_found_in_both_exporters_output(small_torch, small_model, resnet_pair):
    head = small_model.classifier_head()  # dynamo: ReduceMean → Reshape → Gemm
    assert head.feature_map == small_model.find_layer("auto").name
    np.testing.assert_allclose(head.weight, small_torch.fc.weight.detach().numpy(), atol=1e-7)
    np.testing.assert_allclose(head.bias, small_torch.fc.bias.detach().numpy(), atol=1e-7)
    net, model = resnet_pair  # legacy: GlobalAveragePool → Flatten → Gemm
    head = model.classifier_head()
    assert head.weight.shape == (1000, 512) and head.logits == model.output_name
    np.testing.assert_allclose(head.weight, net.fc.weight.detach().numpy(), atol=1e-7)


def test_classifier_head_reads_a_matmul_add_head(matmul_head_model):
    model, init = matmul_head_model
    head = model.classifier_head()
    assert head.feature_map == "r" and head.linear == "fc" and head.logits == "logits"
    np.testing.assert_array_equal(head.weight, init["fc"].T)
    np.testing.assert_array_equal(head.bias, init["b"])


def test_classifier_head_applies_gemm_alpha_beta_and_trans_b(images):
    model, init = _gap_matmul(gemm=True)
    head = model.classifier_head()
    np.testing.assert_allclose(head.weight, 2 * init["fc"].T)
    np.testing.assert_allclose(head.bias, 0.5 * init["b"])
    x = images[:, :, :8, :8]
    cam = CAM(model).attribute(x, target=[1, 2], relu_attributions=False, upsample=False)
    grad = GradCAM(model).attribute(x, target=[1, 2], relu_attributions=False, upsample=False)
    assert max_rel_err(cam, grad * 64) < TOL


@pytest.mark.parametrize("which", ["small", "resnet18", "matmul"])
def test_cam_equals_gradcam_times_hw_on_a_gap_fc_network(which, small_model, images, resnet_pair,
                                                          resnet_images, matmul_head_model):
    model, x = {"small": (small_model, images), "resnet18": (resnet_pair[1], resnet_images),
                "matmul": (matmul_head_model[0], images[:, :, :8, :8])}[which]
    cam = CAM(model).attribute(x, target=[1, 2], relu_attributions=False, upsample=False)
    grad = GradCAM(model).attribute(x, target=[1, 2], relu_attributions=False, upsample=False)
    assert max_rel_err(cam, grad * cam.shape[1] * cam.shape[2]) < TOL


def _ablation_weights_equal_rerunning_the_tail(model, x: np.ndarray, targets: list[int],
                                               layer: str = "auto") -> AblationCAM:
    """Assert that AblationCAM's channel weights at ``layer`` equal the relative drops of the
    score when the tail is re-run on each copy of the map with one channel zeroed (1e-4);
    returns the method."""
    method = AblationCAM(model, layer=layer)
    acts = model.backend("onnxruntime").forward(x, outputs=[method.layer.name])[method.layer.name]
    y = model.predict(x)[np.arange(len(x)), targets].astype(np.float64)
    k = acts.shape[1]
    want = []
    for i, c in enumerate(targets):
        copies = np.repeat(acts[i:i + 1], k, axis=0)
        copies[np.arange(k), np.arange(k)] = 0
        want.append((y[i] - method.tail.predict(copies)[:, c]) / y[i])
    captured = {}
    real = method.channel_weights
    method.channel_weights = lambda data: captured.setdefault("w", real(data))
    method.attribute(x, target=targets, show_progress=False)
    assert max_rel_err(captured["w"], np.stack(want)) < 1e-4
    return method


def _body() -> torch.nn.Module:
    """Two conv-ReLU layers, the second strided: 5 maps of 8×8 from 16×16 inputs (seed first)."""
    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(6, 5, 3, stride=2, padding=1), torch.nn.ReLU())


class _ConvHead(torch.nn.Module):
    """GAP (kept dims) → 1×1 Conv → Flatten, as DLA and DPN (timm) write their classifier;
    ``padded``: the 1×1 Conv pads its 1×1 input, so it is no longer a linear head."""

    def __init__(self, padded: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = _body()
        self.fc = torch.nn.Conv2d(5, 4, 1, padding=1 if padded else 0)

    def forward(self, x):
        z = self.fc(F.adaptive_avg_pool2d(self.body(x), 1))
        return z.flatten(1) if z.shape[-1] == 1 else z.mean((2, 3))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_a_1x1_conv_classifier_on_the_pooled_map_is_a_cam_head(exporter, images):
    net = _ConvHead().eval()
    x = images[:, :, :16, :16]
    model = ox.adapters.torch.export(net, torch.from_numpy(x), exporter=exporter)
    head = model.classifier_head()
    assert head is not None and head.logits == model.output_name
    np.testing.assert_allclose(head.weight, net.fc.weight.detach().numpy()[:, :, 0, 0], atol=1e-7)
    np.testing.assert_allclose(head.bias, net.fc.bias.detach().numpy(), atol=1e-7)
    cam = CAM(model).attribute(x, target=[1, 2], relu_attributions=False, upsample=False)
    grad = GradCAM(model).attribute(x, target=[1, 2], relu_attributions=False, upsample=False)
    assert cam.shape == (2, 8, 8) and max_rel_err(cam, grad * 64) < TOL
    # AblationCAM's weights in closed form, y − W_ck · GAP(A^k), equal re-running the tail
    assert "_features_backend" not in vars(_ablation_weights_equal_rerunning_the_tail(model, x, [1, 2]))
    # padded, the 1×1 Conv is no linear head of the first pooling; the scores are then the
    # average of its (N, 4, 3, 3) output: a head whose weights are the identity (SqueezeNet's)
    padded = ox.adapters.torch.export(_ConvHead(padded=True).eval(), torch.from_numpy(x), exporter=exporter)
    head = padded.classifier_head()
    assert head.linear == "" and head.bias is None and padded.tensor_shape(head.feature_map)[1:] == (4, 3, 3)
    np.testing.assert_array_equal(head.weight, np.eye(4))
    cam = CAM(padded).attribute(x, target=[1, 2], relu_attributions=False, upsample=False)
    grad = GradCAM(padded).attribute(x, target=[1, 2], relu_attributions=False, upsample=False)
    assert cam.shape == (2, 3, 3) and max_rel_err(cam, grad * 9) < TOL


class _Heads(torch.nn.Module):
    """A small CNN whose pooled features go through the head ``kind``: ``"two"``, two
    BatchNorm1d → Linear heads averaged, as LeViT's, EfficientFormer's and SwiftFormer's
    distillation heads; ``"mlp"``, Linear → Hardswish → Linear, as MobileNetV3's;
    ``"sigmoid"``, a multi-label Linear → Sigmoid; ``"temperature"``, a Linear divided by 2."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.body = _body()
        self.norms = torch.nn.ModuleList(torch.nn.BatchNorm1d(5) for _ in range(2))
        for norm in self.norms:  # statistics and scales of their own, so that the two differ
            for t in (norm.weight, norm.bias, norm.running_mean):
                t.data.normal_()
            norm.running_var.data.uniform_(0.5, 2)
        self.fc = torch.nn.ModuleList(torch.nn.Linear(5, 4) for _ in range(2))

    def forward(self, x):
        f = self.body(x).mean((2, 3))
        if self.kind == "two":
            return (self.fc[0](self.norms[0](f)) + self.fc[1](self.norms[1](f))) / 2
        if self.kind == "mlp":
            return self.fc[1](F.hardswish(torch.nn.functional.linear(f, torch.eye(5) * 2)))
        z = self.fc[0](f)
        return torch.sigmoid(z) if self.kind == "sigmoid" else z / 2

    def head(self) -> tuple[np.ndarray, np.ndarray]:
        """The class scores' (W, b) in the pooled features, computed from the parameters."""
        def linear(i, norm):
            w, b = self.fc[i].weight.detach().double(), self.fc[i].bias.detach().double()
            if not norm:
                return w, b
            n = self.norms[i]
            scale = n.weight.detach().double() / torch.sqrt(n.running_var.double() + n.eps)
            return w * scale, b + w @ (n.bias.detach().double() - n.running_mean.double() * scale)
        if self.kind == "two":
            (w0, b0), (w1, b1) = linear(0, True), linear(1, True)
            return ((w0 + w1) / 2).numpy(), ((b0 + b1) / 2).numpy()
        w, b = linear(0, False)
        return ((w / 2).numpy(), (b / 2).numpy()) if self.kind == "temperature" else (w.numpy(), b.numpy())


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("kind", ["two", "sigmoid", "temperature"])
def test_heads_affine_in_the_pooled_features_are_cam_heads(kind, exporter, images):
    # whatever affine maps lie between the pooling and the scores, CAM's weights are the
    # scores' linear part, computed here from the module's parameters
    net = _Heads(kind).eval()
    x = images[:, :, :16, :16]
    model = ox.adapters.torch.export(net, torch.from_numpy(x), exporter=exporter)
    head = model.classifier_head()
    want_w, want_b = net.head()
    assert head is not None and head.weight.shape == (4, 5)
    assert max_rel_err(head.weight, want_w) < 1e-6 and max_rel_err(head.bias, want_b) < 1e-6
    assert head.logits == (model.output_name if kind != "sigmoid" else model.ir.graph[-1].inputs[0].name)
    cam = CAM(model).attribute(x, target=[1, 2], relu_attributions=False, upsample=False)
    # Grad-CAM of the scores before the sigmoid: the sigmoid's slope only scales Grad-CAM
    grad = GradCAM(model, use_logits=False).attribute(x, target=[1, 2], relu_attributions=False,
                                                      upsample=False)
    if kind == "sigmoid":
        p = net(torch.from_numpy(x)).detach().numpy()[[0, 1], [1, 2]]
        grad = grad / (p * (1 - p))[:, None, None]
    assert cam.shape == (2, 8, 8) and max_rel_err(cam, grad * 64) < TOL
    if kind == "two":  # AblationCAM's closed form uses the summed head
        assert "_features_backend" not in vars(_ablation_weights_equal_rerunning_the_tail(model, x, [1, 2]))


class _Binary(torch.nn.Module):
    """A binary classifier's one score: Linear(5, 1) → Sigmoid, then (N,) by ``squeeze(1)``
    or by ``[:, 0]``; ``"index_first"``: ``[:, 0]``, then the Sigmoid; ``"logit"``: ``[:, 0]``
    and no Sigmoid (a model trained with BCEWithLogitsLoss)."""

    def __init__(self, select: str) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.select = select
        self.body = _body()
        self.fc = torch.nn.Linear(5, 1)

    def forward(self, x):
        z = self.fc(self.body(x).mean((2, 3)))
        if self.select in ("index_first", "logit"):
            z = z[:, 0]
            return z if self.select == "logit" else torch.sigmoid(z)
        p = torch.sigmoid(z)
        return p.squeeze(1) if self.select == "squeeze" else p[:, 0]


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("select", ["squeeze", "index", "index_first", "logit"])
def test_a_binary_classifiers_squeezed_sigmoid_score_has_a_cam_head(select, exporter, images):
    net = _Binary(select).eval()
    x = images[:, :, :16, :16]
    model = ox.adapters.torch.export(net, torch.from_numpy(x), exporter=exporter)
    assert len(model.output_spec.shape) == 1
    head = model.classifier_head()
    assert head is not None and max_rel_err(head.weight, net.fc.weight.detach().numpy()) < 1e-6
    cam = CAM(model).attribute(x, target=0, relu_attributions=False, upsample=False)
    grad = GradCAM(model, use_logits=False).attribute(x, target=0, relu_attributions=False, upsample=False)
    p = net(torch.from_numpy(x)).detach().numpy()  # the sigmoid's slope only scales Grad-CAM
    slope = np.ones_like(p) if select == "logit" else p * (1 - p)
    assert cam.shape == (2, 8, 8) and max_rel_err(cam, grad / slope[:, None, None] * 64) < TOL


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_a_head_non_linear_in_the_pooled_features_is_no_cam_head(exporter, images):
    # MobileNetV3's GAP → Linear → Hardswish → Linear: the scores are no weighted sum of the
    # pooled maps, so CAM is refused (its first linear layer's rows are no class weights)
    x = images[:, :, :16, :16]
    model = ox.adapters.torch.export(_Heads("mlp").eval(), torch.from_numpy(x), exporter=exporter)
    assert model.classifier_head() is None
    with pytest.raises(ox.InputValidationError, match="use GradCAM"):
        CAM(model).attribute(x, target=1)
    assert np.isfinite(AblationCAM(model).attribute(x, target=1, show_progress=False)).all()


class _PoolHead(torch.nn.Module):
    """An ``AvgPool2d`` then Flatten → Linear: with a kernel as large as the 8×8 map or
    larger in ceil mode (Hugging Face's EfficientNet: ``AvgPool2d(1280, ceil_mode=True)``),
    a global average pooling; with a smaller kernel, not."""

    def __init__(self, pool: torch.nn.AvgPool2d, channels: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = _body()
        self.pool, self.fc = pool, torch.nn.Linear(channels, 4)

    def forward(self, x):
        return self.fc(self.pool(self.body(x)).flatten(1))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("pool", [
    {"kernel_size": 8},
    {"kernel_size": 1280, "ceil_mode": True},
    {"kernel_size": 10, "stride": 3, "ceil_mode": True, "count_include_pad": False},
], ids=["exact", "ceil", "ceil-no-pad-count"])
def test_an_average_pool_over_the_whole_map_is_a_cam_head(pool, exporter, images):
    net = _PoolHead(torch.nn.AvgPool2d(**pool)).eval()
    x = images[:, :, :16, :16]
    model = ox.adapters.torch.export(net, torch.from_numpy(x), exporter=exporter)  # checked
    ops = {n.op_type for n in model.ir.graph}
    assert "GlobalAveragePool" in ops and "AveragePool" not in ops
    cam = CAM(model).attribute(x, target=[1, 2], relu_attributions=False, upsample=False)
    grad = GradCAM(model).attribute(x, target=[1, 2], relu_attributions=False, upsample=False)
    assert cam.shape == (2, 8, 8) and max_rel_err(cam, grad * 64) < TOL
    smaller = _PoolHead(torch.nn.AvgPool2d(4), channels=20).eval()
    partial = ox.adapters.torch.export(smaller, torch.from_numpy(x), exporter=exporter)
    assert "AveragePool" in {n.op_type for n in partial.ir.graph} and partial.classifier_head() is None


class _AffineHead(torch.nn.Module):
    """GAP → Flatten → BatchNorm1d → (x − 0.5) / 2 → Linear: an affine map per feature
    between the pooling and the classifier (LeViT's and EfficientViT's BN-Linear heads)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = _body()
        self.bn = torch.nn.BatchNorm1d(5)
        with torch.no_grad():
            self.bn.running_mean.normal_(0, 0.5)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.normal_(0, 0.5)
        self.fc = torch.nn.Linear(5, 4)

    def forward(self, x):
        return self.fc((self.bn(self.body(x).mean((2, 3))) - 0.5) / 2)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_an_affine_map_between_pooling_and_classifier_is_folded_into_the_head(exporter, images):
    net = _AffineHead().eval()
    x = images[:, :, :16, :16]
    model = ox.adapters.torch.export(net, torch.from_numpy(x), exporter=exporter)
    assert "BatchNormalization" in {n.op_type for n in model.ir.graph}
    head = model.classifier_head()
    pooled = net.body(torch.from_numpy(x)).mean((2, 3))
    # the head's formula W · GAP(A) + b reproduces the logits
    np.testing.assert_allclose(pooled.detach().numpy() @ head.weight.T + head.bias, model.predict(x),
                               rtol=1e-5, atol=1e-5)
    cam = CAM(model).attribute(x, target=[1, 2], relu_attributions=False, upsample=False)
    grad = GradCAM(model).attribute(x, target=[1, 2], relu_attributions=False, upsample=False)
    assert max_rel_err(cam, grad * 64) < TOL
    _ablation_weights_equal_rerunning_the_tail(model, x, [1, 2])  # closed form with the folded W


def test_cam_without_a_gap_fc_head_says_so_and_suggests_gradcam(headless_model):
    assert headless_model.classifier_head() is None
    with pytest.raises(ox.InputValidationError, match="weighted sum.*GradCAM"):
        CAM(headless_model)


def test_cam_is_defined_only_at_the_pooled_layer(resnet_pair):
    model = resnet_pair[1]
    other = [s for s in model.layers() if s.shape[1] == 256][-1].name
    with pytest.raises(ox.InputValidationError, match="input of the global pooling"):
        CAM(model, layer=other)
    assert CAM(model, layer=model.find_layer("auto").name).layer == model.find_layer("auto")


@pytest.mark.parametrize("method", FORWARD_ONLY + GRADIENT, ids=lambda m: m.__name__)
def test_forward_only_variants_run_on_onnxruntime_and_gradient_variants_on_torch(method, small_model):
    expected = "onnxruntime" if method in FORWARD_ONLY else "torch"
    assert method(small_model).backend.name == expected


@pytest.mark.parametrize("method", FORWARD_ONLY + GRADIENT, ids=lambda m: m.__name__)
def test_every_variant_gives_one_map_per_example_at_the_input_size(method, small_model, images):
    cam = method(small_model).attribute(images, target=None)
    assert cam.shape == (2, 32, 32) and cam.dtype == np.float32
    assert np.isfinite(cam).all() and (cam >= 0).all()


# -- Score-CAM ---------------------------------------------------------------------------
def _authors_scorecam(net, layer, x, cls):
    """haofanwang/Score-CAM cam/scorecam.py, one example, before its final min-max."""
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(a=o))
    with torch.no_grad():
        net(x)
        handle.remove()
        a = seen["a"]
        total = torch.zeros(1, 1, *x.shape[2:])
        for k in range(a.shape[1]):
            up = F.interpolate(a[:, k:k + 1], size=x.shape[2:], mode="bilinear", align_corners=False)
            if up.max() == up.min():
                continue
            mask = (up - up.min()) / (up.max() - up.min())
            total += F.softmax(net(x * mask), dim=1)[0, cls] * up
    return F.relu(total)[0, 0].numpy()


def test_scorecam_default_is_the_authors_definition(small_torch, small_model, images):
    ours = ScoreCAM(small_model).attribute(images, target=[1, 4])
    for n, cls in enumerate([1, 4]):
        ref = _authors_scorecam(small_torch, small_torch.relu2, torch.from_numpy(images[n:n + 1]), cls)
        assert max_rel_err(ours[n], ref) < TOL


@pytest.mark.parametrize("weighting", ["probability", "score", "channel_softmax"])
def test_scorecam_on_onnxruntime_equals_scorecam_on_torch(weighting, small_model, images):
    ort = ScoreCAM(small_model, backend="onnxruntime", weighting=weighting)
    pt = ScoreCAM(small_model, backend="torch", weighting=weighting)
    assert ort.backend.name == "onnxruntime" and pt.backend.name == "torch"
    a = ort.attribute(images, target=[0, 3], relu_attributions=False, upsample=False)
    b = pt.attribute(images, target=[0, 3], relu_attributions=False, upsample=False)
    assert max_rel_err(a, b) < TOL


@pytest.mark.parametrize("method", [ScoreCAM, AblationCAM], ids=lambda m: m.__name__)
def test_channel_batching_changes_nothing(method, small_model, images):
    small = method(small_model, batch_size=3).attribute(images, target=2, relu_attributions=False)
    large = method(small_model, batch_size=64).attribute(images, target=2, relu_attributions=False)
    np.testing.assert_allclose(small, large, rtol=1e-6, atol=1e-7)


def test_scorecam_probability_needs_an_output_class(small_model, images):
    unit = ox.Channel(small_model.find_layer().name, 0)
    with pytest.raises(ox.InputValidationError, match="weighting='score'"):
        ScoreCAM(small_model).attribute(images, target=unit)
    assert ScoreCAM(small_model, weighting="score").attribute(images, target=unit).shape == (2, 32, 32)


def test_scorecam_does_not_softmax_a_model_that_ends_in_softmax(matmul_head_model, images):
    x = images[:, :, :8, :8]
    logits_model, probs_model = matmul_head_model[0], _gap_matmul(softmax=True)[0]
    a = ScoreCAM(logits_model).attribute(x, target=[0, 2])
    b = ScoreCAM(probs_model).attribute(x, target=[0, 2])
    assert max_rel_err(b, a) < TOL


def test_align_corners_upsampling_equals_torch_upsampling_bilinear2d(rng):
    maps = rng.standard_normal((3, 2, 5)).astype(np.float32)
    ref = torch.nn.UpsamplingBilinear2d(size=(7, 16))(torch.from_numpy(maps)[:, None])[:, 0].numpy()
    np.testing.assert_allclose(resize_bilinear(maps, (7, 16), align_corners=True), ref, atol=1e-6)


@pytest.mark.parametrize("size", [(224, 160), (3, 4), (5, 2)])
def test_bilinear_upsampling_equals_torch_interpolate_and_is_contiguous(rng, size):
    maps = rng.standard_normal((4, 7, 5)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(maps)[:, None], size=size, mode="bilinear", align_corners=False)
    got = resize_bilinear(maps, size)
    assert got.flags["C_CONTIGUOUS"] and got.dtype == np.float32
    # torch computes the interpolation weights in float32, we round them from float64: a few ulp
    np.testing.assert_allclose(got, ref[:, 0].numpy(), rtol=1e-5, atol=1e-6)


# -- Ablation-CAM ------------------------------------------------------------------------
def test_ablationcam_weights_are_the_relative_drops_of_the_score(small_model, images):
    method = AblationCAM(small_model)
    name = method.layer.name
    acts = small_model.backend("onnxruntime").forward(images[:1], outputs=[name])[name]
    y = small_model.predict(images[:1])[0, 2]
    weights = []
    for k in range(acts.shape[1]):
        ablated = acts.copy()
        ablated[:, k] = 0
        weights.append((y - method.tail.predict(ablated)[0, 2]) / y)
    expected = np.einsum("k,khw->hw", np.array(weights), acts[0])
    got = method.attribute(images[:1], target=2, relu_attributions=False, upsample=False)[0]
    assert max_rel_err(got, expected) < TOL


@pytest.mark.parametrize("layer", ["auto", "/layer3/layer3.1/relu_1/Relu_output_0"])
def test_ablationcam_on_a_linear_head_equals_rerunning_every_ablated_copy(resnet_pair, layer):
    """With a class of the GAP → linear head as target, the ablated scores are evaluated
    in closed form at the pooled map (y − W_ck · GAP(A^k)) and through the layers up to the
    pooled features elsewhere; both equal the whole tail re-run on each ablated copy."""
    x = np.random.default_rng(4).standard_normal((2, 3, 64, 64)).astype(np.float32)
    method = _ablation_weights_equal_rerunning_the_tail(resnet_pair[1], x, [3, 7], layer)
    assert method._head is not None  # the head was found and used
    assert (layer == "auto") == ("_features_backend" not in vars(method))  # closed form: no pass


# -- identities of the gradient variants -------------------------------------------------
def test_gradcam_plus_plus_default_is_exp_score_times_the_pytorch_grad_cam_scale(small_model, images):
    paper = GradCAMPlusPlus(small_model).attribute(images, target=[1, 2], relu_attributions=False)
    plain = GradCAMPlusPlus(small_model, exponential=False).attribute(images, target=[1, 2],
                                                                      relu_attributions=False)
    scores = small_model.predict(images)[[0, 1], [1, 2]]
    assert max_rel_err(paper, plain * np.exp(scores)[:, None, None]) < TOL


def test_gradcam_plus_plus_refuses_scores_whose_exponential_leaves_float32(images):
    model = _gap_matmul(scale=1e3)[0]
    x = images[:, :, :8, :8]
    assert np.abs(model.predict(x)[:, 0]).max() > 87
    with pytest.raises(ox.InputValidationError, match="exponential=False"):
        GradCAMPlusPlus(model).attribute(x, target=0)
    assert np.isfinite(GradCAMPlusPlus(model, exponential=False).attribute(x, target=0)).all()


def test_hirescam_sums_to_the_logit_minus_the_bias_on_a_gap_fc_network(small_model, images):
    raw = HiResCAM(small_model).attribute(images, target=[0, 4], relu_attributions=False, upsample=False)
    logits = small_model.predict(images)[[0, 1], [0, 4]]
    bias = small_model.classifier_head().bias[[0, 4]]
    np.testing.assert_allclose(raw.sum(axis=(1, 2)), logits - bias, rtol=1e-4, atol=1e-5)


def test_eigencam_map_correlates_positively_with_the_channel_sum(resnet_pair, resnet_images):
    model = resnet_pair[1]
    raw = EigenCAM(model).attribute(resnet_images, relu_attributions=False, upsample=False)
    name = model.find_layer().name
    acts = model.backend("onnxruntime").forward(resnet_images, outputs=[name])[name].sum(axis=1)
    for m, s in zip(raw, acts):
        assert np.dot(m.ravel() - m.mean(), s.ravel() - s.mean()) > 0


def test_a_variant_is_one_channel_weights_function(small_model, images):
    class SumCAM(CAMBase):
        requires = EigenCAM.requires

        def channel_weights(self, data):
            return np.ones(data.activations.shape[:2])

    name = small_model.find_layer().name
    acts = small_model.backend("onnxruntime").forward(images, outputs=[name])[name]
    np.testing.assert_allclose(SumCAM(small_model).attribute(images, upsample=False),
                               acts.sum(axis=1), rtol=1e-5)


# -- options and errors ------------------------------------------------------------------
def test_normalize_scales_each_map_to_the_unit_interval(small_model, images):
    cam = GradCAM(small_model).attribute(images, target=1, normalize=True)
    assert np.allclose(cam.reshape(2, -1).min(1), 0) and np.allclose(cam.reshape(2, -1).max(1), 1)


@pytest.mark.parametrize(
    "make, match",
    [(lambda m: ScoreCAM(m, batch_size=0), "batch_size"),
     (lambda m: ScoreCAM(m, weighting="softmax"), "weighting"),
     (lambda m: AblationCAM(m, batch_size=-2), "batch_size"),
     (lambda m: GradCAMPlusPlus(m, exponential="yes"), "exponential"),
     (lambda m: GradCAM(m, layer=3), "layer"),
     (lambda m: GradCAM(m).attribute(np.zeros((1, 3, 32, 32), np.float32), normalize="yes"), "normalize"),
     (lambda m: EigenCAM(m).attribute(np.zeros((1, 3, 32, 32), np.float32), upsample=None), "upsample"),
     (lambda m: LayerCAM(m).attribute(np.zeros((1, 3, 32), np.float32)), "shape")],
)
def test_bad_arguments_raise_input_validation_error_naming_them(make, match, small_model):
    with pytest.raises(ox.InputValidationError, match=match):
        make(small_model)


class _ChannelsLastHead(torch.nn.Module):
    """Conv → permute to (N, H, W, C) → LayerNorm over C → mean over (H, W) → Linear, with
    no transpose back: timm's Sequencer and channels-last ConvNeXt-style heads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(6, 5, 3, stride=2, padding=1))
        self.norm, self.fc = torch.nn.LayerNorm(5), torch.nn.Linear(5, 4)

    def forward(self, x):
        return self.fc(self.norm(self.body(x).permute(0, 2, 3, 1)).mean((1, 2)))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_a_channels_last_map_pooled_by_the_head_is_read_channels_first(exporter, images):
    net = _ChannelsLastHead().eval()
    x = images[:, :, :16, :16]
    model = ox.adapters.torch.export(net, torch.from_numpy(x), exporter=exporter)  # checked
    head = model.classifier_head()
    assert head is not None and head.feature_map.endswith("__nchw")
    auto = model.find_layer("auto")
    assert auto.name == head.feature_map and auto.shape[1:] == (5, 8, 8)
    cam = CAM(model).attribute(x, target=[1, 2], relu_attributions=False, upsample=False)
    grad = GradCAM(model).attribute(x, target=[1, 2], relu_attributions=False, upsample=False)
    assert cam.shape == (2, 8, 8) and max_rel_err(cam, grad * 64) < TOL
