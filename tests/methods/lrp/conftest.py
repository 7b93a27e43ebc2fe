"""Models shared by the LRP tests: exported once per session (seeded random weights)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lrp_models import export, randomize_batch_norm, vgg_style  # noqa: E402


@pytest.fixture(scope="session")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)


@pytest.fixture(scope="session")
def vgg(images):
    torch.manual_seed(0)
    net = randomize_batch_norm(vgg_style())
    return net, export(net, torch.from_numpy(images))


@pytest.fixture(scope="session")
def resnet18(images):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = randomize_batch_norm(torchvision.models.resnet18(num_classes=10))
    return net, export(net, torch.from_numpy(images))
