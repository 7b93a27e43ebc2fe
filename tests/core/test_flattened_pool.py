"""A map flattened before its pooling (``x.flatten(2).mean(-1)``, as Hugging Face's
SwiftFormer ends) is read as the global pooling it is: CAM finds its head, ``layer="auto"``
the map, and both backends compute what the module does."""

import numpy as np
import pytest
import torch
from helpers import max_rel_err

import onnxplain as ox


class _Flattened(torch.nn.Module):
    """conv → BatchNorm → flatten(2) → mean or max over the positions (keepdim or not) →
    Linear."""

    def __init__(self, reduce: str, keepdim: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.reduce, self.keepdim = reduce, keepdim
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(6, 5, 3, stride=2, padding=1),
                                        torch.nn.BatchNorm2d(5))
        self.fc = torch.nn.Linear(5, 4)

    def forward(self, x):
        flat = self.body(x).flatten(2)
        pooled = flat.mean(-1, keepdim=self.keepdim) if self.reduce == "mean" else flat.amax(2, self.keepdim)
        return self.fc(pooled.flatten(1))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("keepdim", [False, True])
def test_a_flattened_mean_is_a_global_pooling_with_a_cam_head(exporter, keepdim, images):
    net = _Flattened("mean", keepdim).eval()
    x = images[:, :, :16, :16]
    model = ox.adapters.torch.export(net, torch.from_numpy(x), exporter=exporter)
    assert "GlobalAveragePool" in [n.op_type for n in model.ir.graph] or any(
        n.op_type == "ReduceMean" and len(model.tensor_shape(n.inputs[0].name)) == 4 for n in model.ir.graph)
    want = net(torch.from_numpy(x)).detach().numpy()
    for backend in ("onnxruntime", "torch"):
        assert max_rel_err(model.backend(backend).predict(x), want) < 1e-5
    head = model.classifier_head()
    assert head is not None and head.feature_map == model.find_layer("auto").name
    assert model.tensor_shape(head.feature_map)[1:] == (5, 8, 8)
    np.testing.assert_allclose(head.weight, net.fc.weight.detach().numpy(), atol=1e-7)
    cam = ox.CAM(model).attribute(x, target=[1, 2], relu_attributions=False, upsample=False)
    grad = ox.GradCAM(model).attribute(x, target=[1, 2], relu_attributions=False, upsample=False)
    assert max_rel_err(cam, grad * 64) < 1e-5


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_a_flattened_max_computes_the_same_and_is_no_cam_head(exporter, images):
    net = _Flattened("max", False).eval()
    x = images[:, :, :16, :16]
    model = ox.adapters.torch.export(net, torch.from_numpy(x), exporter=exporter)
    want = net(torch.from_numpy(x)).detach().numpy()
    for backend in ("onnxruntime", "torch"):
        assert max_rel_err(model.backend(backend).predict(x), want) < 1e-5
    assert model.classifier_head() is None  # CAM's head averages
    assert model.find_layer("auto").shape[1:] == (5, 8, 8)
