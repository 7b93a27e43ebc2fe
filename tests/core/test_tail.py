"""Model.tail: the layers after a tensor, as a model of their own (what AblationCAM re-runs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import onnxplain as ox


class BatchFromInput(torch.nn.Module):
    """A CNN whose layers after the feature map read the batch size from the *input*, as
    dynamic-batch exports of ConvNeXt or ViT do (Shape(input) → Range / Expand)."""

    def __init__(self, batch_trick: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)
        self.batch_trick = batch_trick

    def forward(self, x):
        f = torch.relu(self.conv(x))
        g = f.mean((2, 3))
        if self.batch_trick:
            rows = torch.arange(x.shape[0], dtype=x.dtype)[:, None]  # 0..N-1, from the input's shape
            return self.fc(g) + 0 * rows + x.new_zeros(x.shape[0], 5)
        return self.fc(g)


@pytest.fixture(scope="module")
def exports():
    x = torch.randn(2, 3, 16, 16)
    return ox.adapters.torch.export(BatchFromInput(), x), ox.adapters.torch.export(BatchFromInput(False), x)


def test_tail_reads_the_batch_size_from_its_own_input(exports):
    model, _ = exports
    layer = model.find_layer("auto").name
    tail = model.tail(layer)
    assert tail.input_name == layer
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    for n in (1, 3):  # neither is the exported batch of 2
        a = model.backend().forward(x[:n], outputs=[layer])[layer]
        out = tail.backend().forward(a)[tail.output_name]
        np.testing.assert_allclose(out, model.predict(x[:n]), rtol=0, atol=1e-6)


def test_ablation_cam_runs_on_such_a_model_and_equals_the_plain_one(exports):
    model, plain = exports
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    got = ox.AblationCAM(model).attribute(x, target=1, show_progress=False)
    want = ox.AblationCAM(plain).attribute(x, target=1, show_progress=False)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_skip_connection_across_the_tensor_is_still_refused():
    model = ox.load(_skip_model())
    with pytest.raises(ox.InputValidationError, match="every\\s+path"):
        model.tail(model.layers()[0].name)


def _skip_model():
    class Skip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return (torch.relu(self.conv(x)) + x).mean((1, 2, 3))[:, None]

    return ox.adapters.torch.export(Skip(), torch.randn(2, 3, 8, 8)).proto()


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_tail_with_skips_reproduces_the_model_from_every_layer(exporter):
    """From feature maps all through a resnet (every second, inside its residual blocks too),
    the part after each, fed that map and the tensors its skip connections carry, computes
    the model's output (float32 rounding: 1e-5 of the logits' range). torchvision's ResNet
    with one basic block per stage: four residual joins, two of them downsampling."""
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    model = ox.adapters.torch.export(net, x, exporter=exporter)
    want = model.predict(x.numpy())
    backend = model.backend("onnxruntime")
    crossed = 0
    for layer in model.layers()[::2]:
        tail, carried = model.tail_with_skips(layer.name)
        outs = backend.forward(x.numpy(), outputs=[layer.name, *carried])
        feed = outs[layer.name] if not carried else np.concatenate(
            [outs[n].reshape(2, -1) for n in [layer.name, *carried]], axis=1)
        np.testing.assert_allclose(tail.predict(feed), want, rtol=0, atol=1e-5 * np.ptp(want))
        crossed += bool(carried)
    assert crossed >= 5
