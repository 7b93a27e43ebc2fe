"""LRP composites agree with zennit on the same torch module and input.

zennit runs on the torch module (with its canonizers: SequentialMergeBatchNorm for the
VGG-style net, ResNetCanonizer for resnet18, which merge BatchNorm and turn the residual
sums into modules with the proportional rule); onnxplain runs on the ONNX export of that
module, whose BatchNorms the exporter folded. zennit seeds the backward pass with the
one-hot vector e_c, onnxplain with the logit S_c(x) e_c, so zennit's map is scaled by the
logit before comparing. Tolerance: max |Δ| ≤ 1e-3 · max |R| (measured ≤ 2e-4: float32
rounding through up to 20 layers, and zennit's merged BatchNorm still divides by
√(1 + ε)).
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxplain.methods import lrp

torch = pytest.importorskip("torch")
zennit = pytest.importorskip("zennit")

from lrp_models import vgg_style  # noqa: E402
from zennit import composites as zc  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.torchvision import ResNetCanonizer  # noqa: E402

TARGET = 3
RTOL = 1e-3


def _zennit(net, composite, x: np.ndarray) -> np.ndarray:
    xt = torch.from_numpy(x).requires_grad_(True)
    with composite.context(net) as modified:
        out = modified(xt)
        seed = torch.zeros_like(out)
        seed[:, TARGET] = 1.0
        (relevance,) = torch.autograd.grad(out, xt, seed)
    logit = out[:, TARGET].detach().numpy().reshape(-1, 1, 1, 1)
    return relevance.numpy() * logit


COMPOSITES = {
    "EpsilonPlusFlat": (lambda c: zc.EpsilonPlusFlat(canonizers=c), lambda: lrp.EpsilonPlusFlat()),
    "EpsilonGammaBox": (
        lambda c: zc.EpsilonGammaBox(low=0.0, high=1.0, canonizers=c),
        lambda: lrp.EpsilonGammaBox(low=0.0, high=1.0),
    ),
    "EpsilonAlpha2Beta1": (lambda c: zc.EpsilonAlpha2Beta1(canonizers=c), lambda: lrp.EpsilonAlpha2Beta1()),
}


def _check(net, model, canonizer, name, images):
    theirs_factory, ours_factory = COMPOSITES[name]
    theirs = _zennit(net, theirs_factory([canonizer]), images)
    ours = lrp.LRP(model, ours_factory()).attribute(images, target=TARGET)
    scale = np.abs(theirs).max()
    assert scale > 0
    err = np.abs(ours - theirs).max()
    assert err <= RTOL * scale, f"{name}: max |Δ| {err:.3g} vs max |R| {scale:.3g}"


@pytest.mark.parametrize("name", list(COMPOSITES))
def test_composite_matches_zennit_on_vgg_style_net(vgg, images, name):
    net, model = vgg
    _check(net, model, SequentialMergeBatchNorm(), name, images)


@pytest.mark.parametrize("name", list(COMPOSITES))
def test_composite_matches_zennit_on_resnet18_with_its_canonizer(resnet18, images, name):
    net, model = resnet18
    _check(net, model, ResNetCanonizer(), name, images)


RULES = {
    "Epsilon(0.1)": (lambda zr: zr.Epsilon(0.1), lrp.Epsilon(0.1)),
    "ZPlus": (lambda zr: zr.ZPlus(), lrp.ZPlus()),
    "AlphaBeta(1,0)": (lambda zr: zr.AlphaBeta(1.0, 0.0), lrp.AlphaBeta(1.0, 0.0)),
    "AlphaBeta(3,2)": (lambda zr: zr.AlphaBeta(3.0, 2.0), lrp.AlphaBeta(3.0, 2.0)),
    "Gamma(0.5)": (lambda zr: zr.Gamma(0.5), lrp.Gamma(0.5)),
    "WSquare": (lambda zr: zr.WSquare(), lrp.WSquare()),
    "Flat": (lambda zr: zr.Flat(), lrp.Flat()),
}


@pytest.mark.parametrize("name", list(RULES))
def test_single_rule_on_every_layer_matches_zennit(vgg, images, name):
    # the rule on every Conv and Linear layer (w² and flat only at the first one, as they
    # are meant), pass-through activations, proportional average pooling: as zennit
    from zennit import rules as zr
    from zennit.types import Activation, AvgPool, Convolution

    net, model = vgg
    theirs_rule, ours_rule = RULES[name]
    first_only = name in ("WSquare", "Flat")
    layer_map = [
        (Activation, zr.Pass()),
        (AvgPool, zr.Norm()),
        (torch.nn.Linear, zr.Epsilon()),
        (Convolution, zr.Epsilon() if first_only else theirs_rule(zr)),
    ]
    first_map = [(Convolution, theirs_rule(zr))] if first_only else []
    composite = zc.SpecialFirstLayerMapComposite(
        layer_map, first_map, canonizers=[SequentialMergeBatchNorm()]
    )
    theirs = _zennit(net, composite, images)
    entries = [("Conv", lrp.Epsilon() if first_only else ours_rule), ("Gemm", lrp.Epsilon())]
    if first_only:
        entries.append((lrp.Select(position="first"), ours_rule))
    ours = lrp.LRP(model, lrp.Composite(entries)).attribute(images, target=TARGET)
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= RTOL * scale


class _BatchReadFlatten(torch.nn.Module):
    """``f.reshape(f.shape[0], -1)``: the export reads the batch size with Shape and
    builds the Reshape's target shape from it, integer tensors computed from the input.
    ``from_input``: the batch size read from the input itself, ``x.shape[0]``."""

    def __init__(self, net: torch.nn.Sequential, from_input: bool = False) -> None:
        super().__init__()
        self.features, self.head = net[:9], net[10:]  # around the Flatten
        self.from_input = from_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.head(f.reshape((x if self.from_input else f).shape[0], -1))


@pytest.mark.parametrize("from_input", [False, True])
def test_integer_shape_arithmetic_from_the_input_carries_no_relevance(images, from_input):
    """Shape, Gather, Concat on the batch size (the TorchScript export of the reshape) are
    bookkeeping, not a path relevance takes: they need no rule, and the map equals zennit's
    on the same module. Read from the input, the batch size does not make the classifier a
    first layer (which EpsilonPlusFlat gives the flat rule)."""
    from onnxplain.adapters.torch import export as _export

    torch.manual_seed(0)
    net = _BatchReadFlatten(vgg_style(batch_norm=False), from_input).eval()
    model = _export(net, torch.from_numpy(images), exporter="legacy")
    assert "Shape" in {node.op_type for node in model.ir.graph}
    first = lrp.EpsilonPlusFlat().assign(model).first
    assert {node.op_type for node in model.ir.graph if node.name in first} == {"Conv"}
    composite = zc.EpsilonPlusFlat()
    theirs = _zennit(net, composite, images)
    ours = lrp.LRP(model, lrp.EpsilonPlusFlat()).attribute(images, target=TARGET)
    scale = np.abs(theirs).max()
    assert scale > 0 and np.abs(ours - theirs).max() <= RTOL * scale


def test_adaptive_pooling_written_as_gathers_matches_zennit(images):
    """Adaptive average pooling to a size that does not divide the map (16 → 3: overlapping
    bins) is exported by dynamo as GatherND over index arithmetic and a masked Where, then
    a mean; the gathers route relevance back to the cells they copied, and the map equals
    zennit's, which gives the pooling the proportional rule."""
    from onnxplain.adapters.torch import export as _export

    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
                        nn.Linear(72, 10)).eval()
    model = _export(net, torch.from_numpy(images), exporter="dynamo")
    assert "GatherND" in {node.op_type for node in model.ir.graph}
    theirs = _zennit(net, zc.EpsilonPlusFlat(), images)
    ours = lrp.LRP(model, lrp.EpsilonPlusFlat()).attribute(images, target=TARGET)
    scale = np.abs(theirs).max()
    assert scale > 0 and np.abs(ours - theirs).max() <= RTOL * scale
