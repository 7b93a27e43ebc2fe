import os
import sys
from pathlib import Path

# torch's OpenMP threads spin while waiting; on a shared 2-core machine that stalls them.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import fold_batchnorm_resnet, randomize_batchnorm, small_cnn  # noqa: E402

import onnxplain as ox  # noqa: E402

torch.set_num_threads(2)


def _build_the_torchlib_table_once() -> None:
    """The dynamo exporter rebuilds onnxscript's table of ATen translations on every export,
    reading the source of its ~550 functions again (0.7 s of each export here, where a small
    CNN's export takes 2 s). The table depends only on the installed onnxscript: the suite
    builds it once. What an export writes is unchanged."""
    import functools
    import importlib

    try:
        from torch.onnx._internal import _lazy_import

        apis = importlib.import_module(_lazy_import.onnxscript_apis._name)
        apis.get_torchlib_ops = functools.cache(apis.get_torchlib_ops)
    except (ImportError, AttributeError):  # another torch or onnxscript: exports take their time
        pass


_build_the_torchlib_table_once()


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def images():
    """Two 32×32 RGB inputs."""
    return np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="session")
def small_torch():
    return small_cnn()


@pytest.fixture(scope="session")
def small_model(small_torch, images):
    return ox.adapters.torch.export(small_torch, torch.from_numpy(images), exporter="dynamo")


@pytest.fixture(scope="session")
def resnet_pair():
    """(torch resnet18 with BatchNorm folded, the ONNX Model of the same network), 64×64."""
    import torchvision

    torch.manual_seed(0)
    net = randomize_batchnorm(torchvision.models.resnet18(weights=None)).eval()
    x = torch.randn(2, 3, 64, 64)
    model = ox.adapters.torch.export(net, x, exporter="legacy")
    return fold_batchnorm_resnet(net), model


@pytest.fixture(scope="session")
def resnet_images():
    return np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
