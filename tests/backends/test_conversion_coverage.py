"""torchvision CNNs, exported by both torch exporters, run on both backends.

Logits must equal the torch module's: max |Δ| ≤ 1e-4 × max |logit| (seeded random
weights, 64×64 inputs). Stock onnx2torch converts none of these exports.
"""

import numpy as np
import pytest
import torch
import torchvision

import onnxplain as ox

ARCHS = ["resnet18", "mobilenet_v2", "densenet121", "efficientnet_b0", "squeezenet1_0",
         "googlenet", "convnext_tiny"]
HEAVY = {"densenet121", "convnext_tiny", "efficientnet_b0"}

_cache: dict = {}


def _export(arch: str, exporter: str):
    key = (arch, exporter)
    if key not in _cache:
        torch.manual_seed(0)
        kwargs = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
        net = getattr(torchvision.models, arch)(weights=None, **kwargs).eval()
        x = torch.randn(2, 3, 64, 64)
        _cache[key] = (net, ox.adapters.torch.export(net, x, exporter=exporter))
    return _cache[key]


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize(
    "arch", [pytest.param(a, marks=pytest.mark.slow) if a in HEAVY else a for a in ARCHS]
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
