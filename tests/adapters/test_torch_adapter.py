"""The torch adapter exports, checks the export against the module, and returns a Model."""

import numpy as np
import pytest
import torch
from helpers import small_cnn

import onnxplain as ox


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_export_matches_the_module_and_keeps_the_batch_dynamic(exporter):
    net = small_cnn(seed=1)
    model = ox.adapters.torch.export(net, torch.randn(1, 3, 32, 32), exporter=exporter)
    assert model.fixed_batch is None  # traced with one example, yet any batch size runs
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), expected, atol=1e-5)
    assert exporter in model.source


def test_auto_exporter_accepts_numpy_examples():
    model = ox.adapters.torch.export(small_cnn(), np.zeros((2, 3, 32, 32), np.float32))
    assert model.num_classes == 5


def test_an_export_that_disagrees_with_the_module_is_refused():
    class Noisy(torch.nn.Module):
        def forward(self, x):  # random numbers: ONNX Runtime draws others than torch
            return x.mean((2, 3)) + torch.rand(x.shape[0], 3)

    with pytest.raises(ox.ExportError, match="differs"):
        ox.adapters.torch.export(Noisy(), torch.ones(2, 3, 4, 4), exporter="legacy")


def test_bad_arguments():
    with pytest.raises(ox.InputValidationError, match="torch.nn.Module"):
        ox.adapters.torch.export(lambda x: x, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ox.InputValidationError, match="exporter"):
        ox.adapters.torch.export(small_cnn(), torch.zeros(1, 3, 4, 4), exporter="onnx")


class _Outputs(dict):
    """A mapping of named outputs, as Hugging Face's ``ModelOutput`` is."""


class _Several(torch.nn.Module):
    def __init__(self, returns: str) -> None:
        super().__init__()
        self.net, self.returns = small_cnn(seed=2), returns

    def forward(self, x):
        logits = self.net(x)
        if self.returns == "mapping":
            return _Outputs(hidden=x.mean((2, 3)), logits=logits)
        if self.returns == "one-tuple":
            return (logits,)
        return logits, x.mean((2, 3))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("returns", ["mapping", "one-tuple"])
def test_a_module_returning_named_outputs_is_exported_with_its_logits(returns, exporter):
    net = _Several(returns).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = ox.adapters.torch.export(net, x, exporter=exporter)
    assert len(model.proto().graph.output) == 1
    with torch.no_grad():
        expected = net.net(x).numpy()
    np.testing.assert_allclose(model.predict(x.numpy()), expected, atol=1e-5)


def test_a_module_returning_several_unnamed_outputs_is_refused():
    with pytest.raises(ox.InputValidationError, match=r"a tuple of 2 items.*class scores as one tensor"):
        ox.adapters.torch.export(_Several("pair"), torch.zeros(2, 3, 32, 32))
