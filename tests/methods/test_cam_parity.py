"""Every CAM variant against pytorch-grad-cam on resnet18 and mobilenet_v2.

Same network (seeded random weights, BatchNorm folded in the reference as both exporters
fold it), same layer (pytorch-grad-cam's recommended one, which layer="auto" finds in the
export), same targets, 64×64 inputs. We compare the raw weighted map, before
pytorch-grad-cam's ReLU, OpenCV resize and min-max normalisation (captured by
subclassing, as in test_gradcam.py). Error: max |ours − ref| / max |ref| (helpers.max_rel_err).

Measured (CPU, this suite): gradient variants ≤ 7e-7; Score-CAM ≤ 8e-7; Eigen-CAM ≤ 6e-6
up to the arbitrary sign of a singular vector; Ablation-CAM ≤ 4e-4, set by float32
cancellation in (y − y_k) / y, which the reference computes in float32 (our own ONNX Runtime
and torch backends differ by 5e-5 on it).
"""

import copy

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
import torchvision
from helpers import max_rel_err, randomize_batchnorm
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import onnxplain as ox
from onnxplain.methods.cam import (
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)

TOL = 1e-5  # gradient variants and Score-CAM
TOL_EIGEN = 1e-4
TOL_ABLATION = 2e-3
TARGETS = [3, 9]


def fold_batchnorm_sequential(model: nn.Module) -> nn.Module:
    """Fold each Conv2d directly followed by BatchNorm2d inside an nn.Sequential (every
    pair in torchvision's mobilenet_v2), as the ONNX exporters do."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()
    return model.eval()


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def raw(reference: type) -> type:
    """A pytorch-grad-cam class that keeps its map before ReLU, resizing and scaling."""

    class Raw(reference):
        def get_cam_image(self, *args, **kwargs):
            self.raw = super().get_cam_image(*args, **kwargs)
            return self.raw

    return Raw


@pytest.fixture(scope="module")
def mobilenet_pair():
    """(torch mobilenet_v2 with BatchNorm folded, its ONNX Model), 64×64, legacy exporter."""
    torch.manual_seed(0)
    net = randomize_batchnorm(torchvision.models.mobilenet_v2(weights=None)).eval()
    model = ox.adapters.torch.export(net, torch.randn(2, 3, 64, 64), exporter="legacy")
    return fold_batchnorm_sequential(net), model


@pytest.fixture(scope="module")
def nets(resnet_pair, mobilenet_pair):
    """arch -> (a private copy of the folded torch net, its recommended layer's path, Model)."""
    return {"resnet18": (resnet_pair[0], ("layer4", -1), resnet_pair[1]),
            "mobilenet_v2": (mobilenet_pair[0], ("features", -1), mobilenet_pair[1])}


def _reference(nets, arch, reference, x, targets, wrap_scale=None, batch_size=None, **options):
    """Run pytorch-grad-cam on (a copy of) the torch net at the recommended layer."""
    net, (parent, index), _ = nets[arch]
    net = copy.deepcopy(net)
    layer = getattr(net, parent)[index]
    if wrap_scale is not None:
        # An exact reparametrisation: the layer's output divided by t, then multiplied by
        # t again. pytorch-grad-cam then sees A / t and the gradient t·g; see the test.
        down = Scale(1 / wrap_scale)
        getattr(net, parent)[index] = nn.Sequential(layer, down, Scale(wrap_scale))
        layer = down
    with raw(reference)(model=net, target_layers=[layer], **options) as ref:
        if batch_size is not None:  # batching changes no result, only the speed
            ref.batch_size = batch_size
        ref(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(c) for c in targets])
        return ref.raw


def _ours(method, nets, arch, x, targets, **options):
    model = nets[arch][2]
    return method(model, **options).attribute(x, target=targets, relu_attributions=False, upsample=False)


ARCHS = ["resnet18", "mobilenet_v2"]
# the reference re-runs all of mobilenet_v2 for each of its 1280 channels
ARCHS_SLOW_MOBILENET = ["resnet18", pytest.param("mobilenet_v2", marks=pytest.mark.slow)]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "ours, reference",
    [(GradCAM, pgc.GradCAM), (XGradCAM, pgc.XGradCAM), (LayerCAM, pgc.LayerCAM),
     (HiResCAM, pgc.HiResCAM)],
    ids=["GradCAM", "XGradCAM", "LayerCAM", "HiResCAM"],
)
def test_gradient_cams_equal_pytorch_grad_cam(ours, reference, arch, nets, resnet_images):
    got = _ours(ours, nets, arch, resnet_images, TARGETS)
    ref = _reference(nets, arch, reference, resnet_images, TARGETS)
    assert got.shape == ref.shape == (2, 2, 2)
    assert max_rel_err(got, ref) < TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_gradcam_plus_plus_equals_pytorch_grad_cam_without_its_epsilon(arch, nets, resnet_images):
    """pytorch-grad-cam adds 1e-6 to α's denominator 2g² + ΣA·g³. On these random-weight
    nets g ~ 1e-3, so that epsilon moves its map by 2% (resnet18) and 13% (mobilenet_v2)
    against the paper's formula. Hooking it on A / t (gradient t·g) leaves its map
    unchanged but for the epsilon, which becomes 1e-6 / t²: then the two agree."""
    got = _ours(GradCAMPlusPlus, nets, arch, resnet_images, TARGETS, exponential=False)
    ref = _reference(nets, arch, pgc.GradCAMPlusPlus, resnet_images, TARGETS, wrap_scale=1e4)
    assert max_rel_err(got, ref) < TOL
    as_is = _reference(nets, arch, pgc.GradCAMPlusPlus, resnet_images, TARGETS)
    assert max_rel_err(got, as_is) > 1e-3  # the epsilon's effect is real: see the docstring


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_scorecam_channel_softmax_equals_pytorch_grad_cam(arch, nets, resnet_images):
    x = resnet_images[:1]  # 512 / 1280 masked forward passes per example in the reference
    got = _ours(ScoreCAM, nets, arch, x, TARGETS[:1], weighting="channel_softmax", align_corners=True)
    ref = _reference(nets, arch, pgc.ScoreCAM, x, TARGETS[:1], batch_size=128)
    assert max_rel_err(got, ref) < TOL


@pytest.mark.parametrize("arch", ARCHS_SLOW_MOBILENET)
def test_ablationcam_equals_pytorch_grad_cam(arch, nets, resnet_images):
    x = resnet_images[:1]
    got = _ours(AblationCAM, nets, arch, x, TARGETS[:1], batch_size=128)
    ref = _reference(nets, arch, pgc.AblationCAM, x, TARGETS[:1], batch_size=128)
    assert max_rel_err(got, ref) < TOL_ABLATION


@pytest.mark.parametrize("block", ["layer4.1", "layer3.0"])
def test_ablationcam_inside_a_residual_block_equals_pytorch_grad_cam(block, nets, resnet_images):
    """A layer inside a residual block, which the block's skip connection bypasses: the
    layers after it also take what the skip carries (the block input, or layer3.0's
    downsampled one), computed once per example. pytorch-grad-cam re-runs the whole network
    with the layer's output replaced. Its layer here is a ReLU inserted after the block's
    first ReLU input (ReLU∘ReLU = ReLU: the network is unchanged), so that its ablation is
    the paper's zero (it ablates with min(A) − 10⁷ where min(A) < 0)."""
    net, _, model = nets["resnet18"]
    net = copy.deepcopy(net)
    stage, index = block.split(".")
    unit = getattr(net, stage)[int(index)]
    unit.bn1 = nn.Sequential(unit.bn1, nn.ReLU())
    x = resnet_images[:1]
    ours = AblationCAM(model, layer=f"/{stage}/{block}/relu/Relu_output_0", batch_size=100)
    assert ours.carried  # a skip connection crosses the layer
    got = ours.attribute(x, target=TARGETS[:1], relu_attributions=False, upsample=False)
    with raw(pgc.AblationCAM)(model=net, target_layers=[unit.bn1[1]]) as ref:
        ref.batch_size = 100
        ref(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(TARGETS[0])])
    assert max_rel_err(got, ref.raw) < TOL_ABLATION


@pytest.mark.parametrize("arch", ARCHS)
def test_eigencam_equals_pytorch_grad_cam_up_to_the_singular_vector_sign(arch, nets, resnet_images):
    got = _ours(EigenCAM, nets, arch, resnet_images, TARGETS)
    ref = _reference(nets, arch, pgc.EigenCAM, resnet_images, TARGETS)
    for ours_map, ref_map in zip(got, ref):
        assert min(max_rel_err(ours_map, ref_map), max_rel_err(-ours_map, ref_map)) < TOL_EIGEN


@pytest.mark.parametrize("arch", ARCHS)
def test_auto_layer_is_the_layer_pytorch_grad_cam_recommends(arch, nets, resnet_images):
    """resnet18: layer4[-1]; mobilenet_v2: features[-1] (its ReLU6 output)."""
    net, (parent, index), model = nets[arch]
    seen = {}
    handle = getattr(net, parent)[index].register_forward_hook(lambda m, i, o: seen.update(out=o))
    try:
        with torch.no_grad():
            net(torch.from_numpy(resnet_images))
    finally:
        handle.remove()
    auto = model.find_layer("auto").name
    value = model.backend("onnxruntime").forward(resnet_images, outputs=[auto])[auto]
    assert max_rel_err(value, seen["out"].numpy()) < 1e-5


@pytest.mark.slow
def test_auto_layer_on_densenet121_is_the_relu_after_features():
    """pytorch-grad-cam recommends densenet121's features[-1] (norm5, a BatchNorm) because a
    module hook cannot see the functional F.relu between it and the pooling. "auto" keeps
    the pooling's input, relu(norm5): the tensor the class scores are linear in (so CAM and
    the Grad-CAM = CAM identity hold there). layer= may name norm5's output instead."""
    torch.manual_seed(0)
    net = randomize_batchnorm(torchvision.models.densenet121(weights=None)).eval()
    x = torch.randn(2, 3, 64, 64)
    model = ox.adapters.torch.export(net, x, exporter="legacy")
    seen = {}
    handle = net.features[-1].register_forward_hook(lambda m, i, o: seen.update(out=o.numpy().copy()))
    try:
        with torch.no_grad():
            net(x)
    finally:
        handle.remove()
    auto = model.find_layer("auto")
    value = model.backend("onnxruntime").forward(x.numpy(), outputs=[auto.name])[auto.name]
    assert auto.op_type == "Relu" and (seen["out"] < 0).any()
    assert max_rel_err(value, np.maximum(seen["out"], 0)) < 1e-5
