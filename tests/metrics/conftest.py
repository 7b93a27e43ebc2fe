import numpy as np
import pytest
import torch

import onnxplain as ox


@pytest.fixture(scope="session")
def shapes():
    """The bundled model and 8 held-out images (seed 21: not a training/validation/test seed)."""
    return ox.examples.shapes_model(), ox.examples.shapes_dataset(8, seed=21)


class GrayNet(torch.nn.Module):
    """A small one-channel CNN: pixels are features, so Quantus's feature order is ours."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 6, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(6, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(8, 4),
        )

    def forward(self, x):
        return self.body(x)


@pytest.fixture(scope="session")
def gray():
    """(torch net, its ONNX Model, inputs (3, 1, 16, 16) in [0, 1], labels)."""
    net = GrayNet().eval()
    x = np.random.default_rng(3).random((3, 1, 16, 16)).astype(np.float32)
    model = ox.adapters.torch.export(net, torch.from_numpy(x), exporter="legacy")
    with torch.no_grad():
        labels = net(torch.from_numpy(x)).argmax(1).numpy()
    return net, model, x, labels
