"""Exports with a fixed batch of 1: made dynamic when provably safe, looped otherwise."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import onnxplain as ox


class FlattensToBatchOne(nn.Module):
    """Conv → ReLU → pool → ``reshape(1, -1)`` → Linear: the export's Reshape has the
    constant shape [1, -1], which breaks any batch but 1 unless rewritten."""

    def __init__(self, mix: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc, self.mix = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 16 * 16, 5), mix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.max_pool2d(torch.relu(self.conv(x)), 2)
        if self.mix:  # a batch statistic: examples would change each other's outputs
            a = a - a.mean(0, keepdim=True)
        return self.fc(a.reshape(1, -1))


def _fixed_export(net: nn.Module) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            (torch.randn(1, 3, 32, 32),),
            buffer,
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
        )
    proto = onnx.load_from_string(buffer.getvalue())
    reshapes = [n for n in proto.graph.node if n.op_type == "Reshape"]
    assert reshapes and proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    return proto


@pytest.fixture(scope="module")
def proto():
    return _fixed_export(FlattensToBatchOne())


@pytest.fixture
def count_runs(monkeypatch):
    calls = {"n": 0}
    for name in ("run", "run_with_iobinding"):
        original = getattr(ort.InferenceSession, name)

        def counted(self, *args, _original=original, **kwargs):
            calls["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ort.InferenceSession, name, counted)
    return calls


def test_the_batch_of_a_fixed_export_is_made_dynamic(proto):
    model = ox.load(proto)
    assert model.fixed_batch is None and model.batch_note is None
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    looped = ox.load(proto, dynamic_batch=False)
    assert looped.fixed_batch == 1
    np.testing.assert_allclose(model.predict(x), looped.predict(x), atol=1e-5)
    np.testing.assert_allclose(
        ox.Saliency(model).attribute(x, target=[0, 1, 4]),
        ox.Saliency(looped).attribute(x, target=[0, 1, 4]),
        atol=1e-6,
    )


def test_64_occlusion_windows_run_in_batches_with_the_looped_result(proto, count_runs):
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    kwargs = dict(target=2, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4))  # 8 × 8 windows
    dynamic, looped = ox.load(proto), ox.load(proto, dynamic_batch=False)
    ox.Occlusion(dynamic).attribute(x, **kwargs)  # sessions built and warm
    ox.Occlusion(looped).attribute(x, **kwargs)
    count_runs["n"] = 0
    batched = ox.Occlusion(dynamic).attribute(x, **kwargs)
    batched_calls = count_runs["n"]
    count_runs["n"] = 0
    one_by_one = ox.Occlusion(looped).attribute(x, **kwargs)
    looped_calls = count_runs["n"]
    assert looped_calls == 64 + 1  # the unperturbed input, then one call per window
    assert batched_calls <= 3 < 64  # 65 rows in batches of 32
    np.testing.assert_allclose(batched, one_by_one, atol=1e-6)


class ResizesFirst(nn.Module):
    """Preprocessing inside the model: images of any size interpolated to 16×16 (the
    export writes a Resize to constant sizes, batch included), then the flattening net."""

    def __init__(self) -> None:
        super().__init__()
        self.net = FlattensToBatchOne()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        return self.net(x)


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_a_resize_to_a_fixed_size_takes_the_batch_it_is_given(exporter):
    """The Resize's constant sizes (1, 3, 32, 32) would fix the batch; rewritten to read
    the batch from its input, the model takes any batch and explains as Captum does."""
    from captum.attr import Saliency

    net = ResizesFirst().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 40, 24),), buffer, dynamo=exporter == "dynamo",
                          verbose=False)
    proto = onnx.load_from_string(buffer.getvalue())
    assert any(n.op_type == "Resize" for n in proto.graph.node)
    model = ox.load(proto)
    assert model.fixed_batch is None and model.batch_note is None
    x = np.random.default_rng(3).standard_normal((3, 3, 40, 24)).astype(np.float32)
    expected = np.concatenate([net(torch.from_numpy(x[i : i + 1])).detach().numpy() for i in range(3)])
    np.testing.assert_allclose(model.predict(x), expected, atol=1e-5)
    saliency = Saliency(net)
    reference = np.concatenate([saliency.attribute(torch.from_numpy(x[i : i + 1]).requires_grad_(True),
                                                   target=2, abs=False).numpy() for i in range(3)])
    ours = ox.Saliency(model).attribute(x, target=2, abs=False)
    assert np.abs(ours - reference).max() <= 1e-4 * np.abs(reference).max()


def test_a_graph_that_mixes_examples_stays_fixed_and_says_why():
    proto = _fixed_export(FlattensToBatchOne(mix=True))
    with pytest.warns(UserWarning, match="fixed to 1 and could not be made dynamic"):
        model = ox.load(proto)
    assert model.fixed_batch == 1 and "changes" in model.batch_note
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32)
    one = np.concatenate([model.predict(x[i : i + 1]) for i in range(3)])
    for backend in ("onnxruntime", "torch"):
        np.testing.assert_allclose(model.backend(backend).predict(x), one, atol=1e-5)


class DropsTheBatchAxis(nn.Module):
    """A one-image export's head: ``logits[0]``, then ``softmax(·, 0)`` or ``.sum()``."""

    def __init__(self, head: str) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv, self.fc, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 5), head

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        row = self.logits(x)[0]
        return {"softmax": torch.softmax(row, 0), "logits": row, "scalar": row[2]}[self.head]


@pytest.mark.parametrize("head", ["softmax", "logits", "scalar"])
def test_outputs_of_a_one_image_export_without_a_batch_axis_get_it_back(head):
    """(K,) (or a scalar) from a batch-1 input: the output becomes (1, K) ((1,)), the model
    runs one row per call, and methods equal Captum on the module's batched head; the
    logits under a final softmax are found (gradient methods explain them)."""
    from captum.attr import Saliency

    net = DropsTheBatchAxis(head).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), buffer, dynamo=False, input_names=["input"])
    with pytest.warns(UserWarning, match="fixed to 1"):
        model = ox.load(buffer.getvalue())
    assert model.fixed_batch == 1
    assert model.output_spec.shape == ((1, 5) if head != "scalar" else (1,))
    x = np.random.default_rng(4).standard_normal((3, 3, 16, 16)).astype(np.float32)
    batched = net.logits(torch.from_numpy(x))
    want = {"softmax": torch.softmax(batched, 1), "logits": batched, "scalar": batched[:, 2]}[head]
    np.testing.assert_allclose(model.predict(x), want.detach().numpy(), rtol=1e-5, atol=1e-6)
    target = 0 if head == "scalar" else 3
    ours = ox.Saliency(model).attribute(x, target=target, abs=False)
    reference = (lambda t: net.logits(t)[:, 2:3]) if head == "scalar" else net.logits
    ref = Saliency(reference).attribute(torch.from_numpy(x), target=target, abs=False).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)
    assert (model.logits() is not None) == (head == "softmax")
    occlusion = ox.Occlusion(model).attribute(x, target=target, sliding_window_shapes=(3, 8, 8), strides=8)
    assert occlusion.shape == x.shape and np.isfinite(occlusion).all()
