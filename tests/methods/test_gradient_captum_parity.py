"""The gradient family and the neuron/layer view against Captum on the torch originals.

Two architectures — resnet18 (residual Add, a ReLU module reused in place) and googlenet
(inception Concat, ReLUs called as functions) — each exported by both torch exporters,
64×64 inputs, seeded random weights with non-trivial BatchNorm statistics (googlenet's
measured on a random batch, see ``_calibrate_batchnorm``). Both exporters fold BatchNorm
into the convolutions, so the Captum side runs the same network with BatchNorm folded
(``fold_batchnorm_resnet``, ``_fold_googlenet``) and the exporter's folded weights
(``_adopt_exported_weights`` says why). For googlenet the reference also turns each
functional ReLU into its own ``nn.ReLU`` module, because Captum's guided backprop /
deconvnet hooks only see modules.

Errors are max |ours − Captum| / max |Captum|; the bounds (``TOL``) state what was
measured on this machine (float32, CPU) with a margin.
"""

from __future__ import annotations

import copy
import types
import warnings

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import Deconvolution as CDeconvolution
from captum.attr import GuidedBackprop as CGuidedBackprop
from captum.attr import GuidedGradCam as CGuidedGradCam
from captum.attr import InputXGradient as CInputXGradient
from captum.attr import IntegratedGradients as CIntegratedGradients
from captum.attr import LayerIntegratedGradients as CLayerIntegratedGradients
from captum.attr import NeuronGradient as CNeuronGradient
from captum.attr import NeuronGuidedBackprop as CNeuronGuidedBackprop
from captum.attr import NoiseTunnel as CNoiseTunnel
from captum.attr import Saliency as CSaliency
from helpers import fold_batchnorm_resnet, max_rel_err, randomize_batchnorm
from torch import nn

import onnxplain as ox
from onnxplain.methods.gradient import (
    Deconvolution,
    GuidedBackprop,
    GuidedGradCAM,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from onnxplain.methods.layer import LayerIntegratedGradients

# max |ours − Captum| / max |Captum|. Measured maxima over the four exports (CPU, float32):
# Deconvolution 0 (bit-equal); GuidedBackprop, NeuronGuidedBackprop, GuidedGradCAM
# ≤ 2.1e-7; Saliency, InputXGradient, NeuronGradient (neuron and channel), NoiseTunnel
# ≤ 7.6e-7; IntegratedGradients (5 rules), LayerIntegratedGradients ≤ 5.4e-7.
TOL = 1e-5
ZOO = [
    ("resnet18", "legacy"),
    pytest.param(("resnet18", "dynamo"), marks=pytest.mark.slow),
    ("googlenet", "legacy"),
    pytest.param(("googlenet", "dynamo"), marks=pytest.mark.slow),
]


def _calibrate_batchnorm(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm affine parameters and running statistics measured on a random
    batch: activations stay O(1) through googlenet's 57 convolutions (its own init,
    std 0.01, shrinks them to ~1e-14, where float32 cancellation and denormals dominate)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the statistics of the batch below
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 3, 64, 64, generator=g))
    return net.eval()


def _fold_googlenet(net: nn.Module, relu_modules: bool) -> nn.Module:
    """A copy of googlenet with BatchNorm folded; with ``relu_modules`` each functional ReLU
    becomes its own ``nn.ReLU`` module (what Captum's guided/deconvnet hooks need)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    from torchvision.models.googlenet import BasicConv2d

    def forward(self, x):
        return self.relu(self.conv(x))

    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, BasicConv2d):
            m.conv, m.bn = fuse_conv_bn_eval(m.conv, m.bn), nn.Identity()
            if relu_modules:
                m.relu = nn.ReLU()
                m.forward = types.MethodType(forward, m)
    return net.eval()


def _adopt_exported_weights(net: nn.Module, model: ox.Model) -> nn.Module:
    """Give each (folded) convolution of ``net`` the exporter's folded weights, bit for bit.

    Folding in torch and in the exporter agree to ~1e-7, but on these deep random networks
    that is enough to flip a few MaxPool switches or ReLU signs and move a gradient by up
    to 4e-2 of its maximum (measured on googlenet with noisy inputs; the deconvnet, which
    only MaxPool switches route, moves 9e-3 between Captum on folded and unfolded
    googlenet in float32 and 1e-16 in float64). With the exporter's weights the
    comparison measures the methods, not float32 rounding of the fold.
    """
    exported = [(n.inputs[1].const_value.numpy(), n.inputs[2].const_value.numpy())
                for n in model.ir.graph if n.op_type == "Conv"]  # folded: all have a bias
    for conv in (m for m in net.modules() if isinstance(m, nn.Conv2d)):
        w = conv.weight.detach().numpy()
        same = [(np.abs(ew - w).max(), ew, eb) for ew, eb in exported if ew.shape == w.shape]
        err, ew, eb = min(same, key=lambda t: t[0])
        assert err <= 1e-4 * np.abs(w).max()
        conv.weight.data = torch.from_numpy(ew.copy())
        conv.bias = nn.Parameter(torch.from_numpy(eb.copy()))
    return net


def _onnx_tensor(model: ox.Model, net: nn.Module, module: nn.Module, x: np.ndarray) -> str:
    """The ONNX tensor that holds ``module``'s output, found by value."""
    seen = {}

    def hook(mod, args, out):
        seen["v"] = out.detach().numpy()

    handle = module.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.from_numpy(x))
    handle.remove()
    ref = seen["v"]
    names = [s.name for s in model.layers() if tuple(s.shape[1:]) == ref.shape[1:]]
    values = model.backend("torch").forward(x, outputs=names)
    best = min(names, key=lambda n: np.abs(values[n] - ref).max())
    assert max_rel_err(values[best], ref) < 1e-4
    return best


def _build(arch: str, exporter: str):
    torch.manual_seed(0)
    x = np.random.default_rng(5).standard_normal((2, 3, 64, 64)).astype(np.float32)
    if arch == "resnet18":
        net = randomize_batchnorm(torchvision.models.resnet18(weights=None)).eval()
        model = ox.adapters.torch.export(net, torch.from_numpy(x), exporter=exporter)
        stock = _adopt_exported_weights(fold_batchnorm_resnet(copy.deepcopy(net)), model)
        ref, mid, last = stock, stock.layer3, stock.layer4  # Captum hooks its reused ReLUs
    else:
        net = _calibrate_batchnorm(torchvision.models.googlenet(
            weights=None, aux_logits=False, init_weights=True))
        model = ox.adapters.torch.export(net, torch.from_numpy(x), exporter=exporter)
        stock = _adopt_exported_weights(_fold_googlenet(net, relu_modules=False), model)
        ref = _adopt_exported_weights(_fold_googlenet(net, relu_modules=True), model)
        mid, last = ref.inception4a, ref.inception5b  # 4a ends in a Concat
    names = {"mid": _onnx_tensor(model, ref, mid, x), "last": _onnx_tensor(model, ref, last, x)}
    return types.SimpleNamespace(arch=arch, exporter=exporter, model=model, ref=ref, stock=stock,
                                 mid=mid, last=last, names=names, x=x)


@pytest.fixture(scope="module", params=ZOO, ids=lambda p: "-".join(p))
def zoo(request):
    return _build(*request.param)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.copy()).requires_grad_()


def _check(ours: np.ndarray, ref, kind: str) -> float:
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref
    assert ours.shape == ref.shape
    err = max_rel_err(ours, ref)
    assert err < TOL, f"{kind}: {err:.3g}"
    return err


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns about requires_grad and hooks
        yield


# -- plain gradients ---------------------------------------------------------------------


def test_saliency_and_input_x_gradient_equal_captum(zoo):
    _check(Saliency(zoo.model).attribute(zoo.x, target=[1, 7]),
           CSaliency(zoo.ref).attribute(_t(zoo.x), target=[1, 7]), "gradient")
    _check(InputXGradient(zoo.model).attribute(zoo.x, target=4),
           CInputXGradient(zoo.ref).attribute(_t(zoo.x), target=4), "gradient")


@pytest.mark.parametrize(
    "method", ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]
)
def test_integrated_gradients_equal_captum_for_each_rule(zoo, method):
    base = np.full_like(zoo.x, 0.2)
    ours = IntegratedGradients(zoo.model).attribute(
        zoo.x, target=[3, 9], baselines=base, n_steps=4, method=method, internal_batch_size=3)
    ref = CIntegratedGradients(zoo.ref).attribute(
        _t(zoo.x), target=[3, 9], baselines=torch.from_numpy(base), n_steps=4, method=method)
    if method == "riemann_trapezoid":
        ours = ours * 3 / 4  # Captum's trapezoid weights sum to (n−1)/n, ours to 1
    _check(ours, ref, "integrated")


def test_neuron_and_channel_targets_equal_captum_neuron_gradient(zoo):
    layer = zoo.names["mid"]
    ours = Saliency(zoo.model).attribute(zoo.x, target=ox.Neuron(layer, (5, 1, 2)), abs=False)
    ref = CNeuronGradient(zoo.ref, zoo.mid).attribute(_t(zoo.x), neuron_selector=(5, 1, 2))
    _check(ours, ref, "gradient")
    ours = Saliency(zoo.model).attribute(zoo.x, target=ox.Channel(layer, 11), abs=False)
    ref = CNeuronGradient(zoo.ref, zoo.mid).attribute(
        _t(zoo.x), neuron_selector=lambda out: out[:, 11].mean(dim=(1, 2)))
    _check(ours, ref, "gradient")


# -- modified backward rules -------------------------------------------------------------


def test_guided_backprop_and_deconvolution_equal_captum(zoo):
    _check(GuidedBackprop(zoo.model).attribute(zoo.x, target=[2, 6]),
           CGuidedBackprop(zoo.ref).attribute(_t(zoo.x), target=[2, 6]), "guided")
    _check(Deconvolution(zoo.model).attribute(zoo.x, target=[2, 6]),
           CDeconvolution(zoo.ref).attribute(_t(zoo.x), target=[2, 6]), "deconvnet")


def test_neuron_guided_backprop_equals_captum(zoo):
    layer = zoo.names["mid"]
    ours = GuidedBackprop(zoo.model).attribute(zoo.x, target=ox.Neuron(layer, (7, 2, 1)))
    ref = CNeuronGuidedBackprop(zoo.ref, zoo.mid).attribute(_t(zoo.x), neuron_selector=(7, 2, 1))
    _check(ours, ref, "guided")


def test_guided_grad_cam_equals_captum(zoo):
    ours = GuidedGradCAM(zoo.model, layer=zoo.names["last"]).attribute(zoo.x, target=[0, 5])
    ref = CGuidedGradCam(zoo.ref, zoo.last).attribute(_t(zoo.x), target=[0, 5])
    _check(ours, ref, "guided")
    assert zoo.names["last"] == zoo.model.find_layer("auto").name  # the default layer


def test_every_relu_gets_its_rule_even_reused_inplace_or_functional(zoo):
    """Each ONNX Relu node is its own module: the reused in-place ReLU of the ResNet block
    and GoogLeNet's functional ReLUs each get the guided rule. Captum on the stock module
    agrees for resnet18 (module hooks) but silently falls back to the plain gradient on
    googlenet, whose ReLUs are not modules."""
    ours = GuidedBackprop(zoo.model)
    n_relu = sum(n.op_type == "Relu" for n in zoo.model.ir.graph)
    assert len(ours.nodes) == n_relu == {"resnet18": 17, "googlenet": 57}[zoo.arch]
    attr = ours.attribute(zoo.x, target=3)
    plain = Saliency(zoo.model).attribute(zoo.x, target=3, abs=False)
    assert max_rel_err(attr, plain) > 0.5
    stock = CGuidedBackprop(zoo.stock).attribute(_t(zoo.x), target=3).detach().numpy()
    if zoo.arch == "resnet18":
        assert max_rel_err(attr, stock) < TOL
    else:
        assert max_rel_err(stock, plain) < TOL  # Captum hooked nothing
        assert max_rel_err(attr, stock) > 0.5


# -- noise tunnel ------------------------------------------------------------------------


def _captum_noise(seed: int, x: np.ndarray, nt_samples: int, batch: int, stdev: float) -> np.ndarray:
    """The draws Captum's NoiseTunnel makes after ``torch.manual_seed(seed)``, as
    (nt_samples, N, ...): per partition one ``torch.normal`` over (N·b, ...) rows ordered
    example-major (``repeat_interleave``)."""
    torch.manual_seed(seed)
    n, parts, done = len(x), [], 0
    while done < nt_samples:
        b = min(batch, nt_samples - done)
        std = torch.tensor(stdev).repeat((n * b, *x.shape[1:]))
        draw = torch.normal(0, std).numpy().reshape(n, b, *x.shape[1:])
        parts.append(draw.transpose(1, 0, *range(2, x.ndim + 1)))
        done += b
    return np.concatenate(parts)


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_tunnel_equals_captum_with_the_same_noise(zoo, nt_type):
    nt_samples, batch, stdev = 3, 2, 0.3  # a partition of 2, then the remainder of 1
    noise = _captum_noise(11, zoo.x, nt_samples, batch, stdev)
    ours = NoiseTunnel(Saliency(zoo.model)).attribute(
        zoo.x, nt_type=nt_type, nt_samples=nt_samples, nt_samples_batch_size=batch, stdevs=stdev,
        target=[4, 8], noise=noise)
    torch.manual_seed(11)
    ref = CNoiseTunnel(CSaliency(zoo.ref)).attribute(
        torch.from_numpy(zoo.x.copy()), nt_type=nt_type, nt_samples=nt_samples,
        nt_samples_batch_size=batch, stdevs=stdev, target=[4, 8])
    _check(ours, ref, "gradient")


# -- layer view --------------------------------------------------------------------------


def test_layer_integrated_gradients_equal_captum(zoo):
    base = np.full_like(zoo.x, -0.1)
    ours, delta = LayerIntegratedGradients(zoo.model, zoo.names["mid"]).attribute(
        zoo.x, target=[5, 2], baselines=base, n_steps=6, internal_batch_size=5,
        return_convergence_delta=True)
    ref, ref_delta = CLayerIntegratedGradients(zoo.ref, zoo.mid).attribute(
        torch.from_numpy(zoo.x), baselines=torch.from_numpy(base), target=[5, 2], n_steps=6,
        return_convergence_delta=True)
    _check(ours, ref, "integrated")
    scale = np.abs(ref.detach().numpy()).sum()
    np.testing.assert_allclose(delta, ref_delta.numpy(), atol=1e-4 * scale)
