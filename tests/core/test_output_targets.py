"""Targets beyond class logits, compiled into the graph: segmentation regions, detection
scores, any tensor by name, user reductions.

The segmentation network (conv encoder, 1×1 classifier, bilinear upsampling to per-pixel
class logits (N, K, H, W)) is explained for a region target; the references run Captum
and pytorch-grad-cam on the torch network with the equivalent wrapped forward
``(net(x)[:, k] * mask).sum((1, 2))``. Error: max |ours − ref| / max |ref|, below TOL.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import pytorch_grad_cam as pgc
import torch
from captum.attr import LayerGradCam, Occlusion, Saliency
from helpers import max_rel_err
from onnx import TensorProto, helper, numpy_helper
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
from torch import nn

import onnxplain as ox
from onnxplain.core.outputs import DetectionScore, OutputTarget, Reduction, SegmentationTarget
from onnxplain.segmentation import grid

TOL = 1e-5
K = 4


class SegNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2, self.relu2 = nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        self.classifier = nn.Conv2d(16, K, 1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        return self.up(self.classifier(a))


class Region(nn.Module):
    """Captum's recipe: a forward that returns the region's class score per example."""

    def __init__(self, net: nn.Module, k: int, mask: np.ndarray, reduce: str = "sum") -> None:
        super().__init__()
        self.net, self.k, self.reduce = net, k, reduce
        self.register_buffer("mask", torch.from_numpy(mask.astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.net(x)[:, self.k]
        if self.reduce == "max":
            return scores.masked_fill(self.mask == 0, -torch.inf).amax((1, 2))
        total = (scores * self.mask).sum((1, 2))
        return total / self.mask.sum() if self.reduce == "mean" else total


@pytest.fixture(scope="module")
def seg():
    net = SegNet().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    model = ox.adapters.torch.export(net, torch.randn(2, 3, 32, 32), exporter="legacy")
    return net, model


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(8).standard_normal((2, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def mask():
    m = np.zeros((32, 32), bool)
    m[8:20, 10:26] = True
    return m


def _layer(model):
    return [s for s in model.layers() if s.op_type == "Relu"][-1].name


def test_saliency_and_occlusion_of_a_region_equal_captums(seg, x, mask):
    net, model = seg
    target = SegmentationTarget(2, mask)
    wrapped = Region(net, 2, mask)
    xt = torch.from_numpy(x)
    ours = ox.Saliency(model).attribute(x, target=target)
    assert max_rel_err(ours, Saliency(wrapped).attribute(xt.clone().requires_grad_()).numpy()) < TOL
    kwargs = dict(sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), baselines=0.0)
    ref = Occlusion(wrapped).attribute(xt, **kwargs).numpy()
    assert max_rel_err(ox.Occlusion(model).attribute(x, target=target, **kwargs), ref) < TOL


def test_gradcam_of_a_region_equals_captum_and_pytorch_grad_cam(seg, x, mask):
    net, model = seg
    target = SegmentationTarget(2, mask)
    method = ox.GradCAM(model, layer=_layer(model))
    ours = method.attribute(x, target=target, upsample=False)
    assert method.last_metadata["targets_compiled"] is True
    assert method.last_metadata["output"] == model.output_name and not method.last_metadata["logits"]
    ref = LayerGradCam(Region(net, 2, mask), net.relu2).attribute(torch.from_numpy(x), relu_attributions=True)
    assert max_rel_err(ours, ref[:, 0].detach().numpy()) < TOL
    # pytorch-grad-cam's SemanticSegmentationTarget, its raw map before ReLU and resizing
    seen = {}

    class Raw(pgc.GradCAM):
        def get_cam_image(self, *args, **kwargs):
            seen["raw"] = super().get_cam_image(*args, **kwargs)
            return seen["raw"]

    trainable = copy.deepcopy(net).requires_grad_(True)  # pytorch-grad-cam needs a graph
    with Raw(model=trainable, target_layers=[trainable.relu2]) as cam:
        cam(
            input_tensor=torch.from_numpy(x),
            targets=[SemanticSegmentationTarget(2, mask.astype(np.float32))] * 2,
        )
    got = method.attribute(x, target=target, upsample=False, relu_attributions=False)
    assert max_rel_err(got, seen["raw"]) < TOL


def test_one_region_target_per_example_and_reductions(seg, x, mask):
    net, model = seg
    xt = torch.from_numpy(x)
    targets = [SegmentationTarget(1, mask), SegmentationTarget(3, ~mask)]
    both = ox.Saliency(model).attribute(x, target=targets)
    for i, t in enumerate(targets):
        alone = ox.Saliency(model).attribute(x[i : i + 1], target=t)
        assert max_rel_err(both[i : i + 1], alone) < TOL
    for reduce in ("mean", "max"):
        ours = ox.Saliency(model).attribute(
            x, target=Reduction(reduce=reduce, mask=np.eye(K)[2][:, None, None] * mask)
        )
        ref = Saliency(Region(net, 2, mask, reduce)).attribute(xt.clone().requires_grad_()).numpy()
        assert max_rel_err(ours, ref) < TOL, reduce


def test_a_user_fragment_is_inlined(seg, x):
    net, model = seg
    fragment = helper.make_graph(
        [
            helper.make_node("Mul", ["t", "t"], ["sq"]),
            helper.make_node("ReduceSum", ["sq", "axes"], ["score"], keepdims=0),
        ],
        "sum_of_squares",
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes")],
    )
    ours = ox.Saliency(model).attribute(x, target=Reduction(fragment=fragment))

    class SumOfSquares(nn.Module):
        def forward(self, t):
            return (net(t) ** 2).sum((1, 2, 3))

    ref = Saliency(SumOfSquares()).attribute(torch.from_numpy(x).requires_grad_()).numpy()
    assert max_rel_err(ours, ref) < TOL
    assert isinstance(fragment, onnx.GraphProto)


def test_detection_scores_and_named_tensors_are_entries_of_a_tensor(seg, x):
    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(1)
            self.conv, self.fc = nn.Conv2d(3, 4, 3, stride=2), nn.Linear(4, 15)

        def forward(self, t):
            return self.fc(torch.relu(self.conv(t)).mean((2, 3))).reshape(-1, 5, 3)  # 5 boxes, 3 classes

    model = ox.adapters.torch.export(Detector().eval(), torch.randn(2, 3, 32, 32), exporter="legacy")
    by_box = ox.Saliency(model).attribute(x, target=DetectionScore(model.output_name, 3, 2))
    flat = ox.Saliency(model).attribute(x, target=ox.Neuron(model.output_name, 3 * 3 + 2))
    assert max_rel_err(by_box, flat) < TOL
    _, segmodel = seg
    layer = _layer(segmodel)
    named = ox.Saliency(segmodel).attribute(x, target=OutputTarget(layer, (5, 3, 4)))
    assert max_rel_err(named, ox.Saliency(segmodel).attribute(x, target=ox.Neuron(layer, (5, 3, 4)))) < TOL
    with pytest.raises(ox.InputValidationError, match="outside"):
        ox.Saliency(segmodel).attribute(x, target=OutputTarget(layer, (99, 0, 0)))


def test_every_method_family_runs_on_a_region_target(seg, x, mask):
    _, model = seg
    target = SegmentationTarget(0, mask)
    layer = _layer(model)
    runs = [
        (ox.IntegratedGradients(model), {"n_steps": 4}),
        (ox.GuidedBackprop(model), {}),
        (ox.GradCAMPlusPlus(model, layer=layer), {}),
        (ox.AblationCAM(model, layer=layer), {}),
        (ox.ScoreCAM(model, layer=layer, weighting="score"), {}),
        (ox.RISE(model), {"n_masks": 16, "s": 4}),
        (ox.Lime(model), {"n_samples": 16, "feature_mask": grid(x, cell_size=8)}),
        (ox.NoiseTunnel(ox.Saliency(model)), {"nt_samples": 2, "seed": 0}),
    ]
    for method, kwargs in runs:
        out = method.attribute(x, target=target, **kwargs)
        assert out.shape[0] == 2 and np.isfinite(out).all(), type(method).__name__
    with pytest.raises(ox.InputValidationError, match="Model"):
        ox.Saliency(model.backend("torch")).attribute(x, target=target)
