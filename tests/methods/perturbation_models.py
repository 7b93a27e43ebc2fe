"""Models the perturbation tests share, built or trained in seconds (no downloads)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch on ``n`` threads inside the block (tiny models are slower on more threads
    when other jobs share the cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def quadrant_masks(size: int) -> np.ndarray:
    """(4, size, size) indicator masks of the quadrants: top-left, top-right, bottom-left,
    bottom-right."""
    half = size // 2
    out = np.zeros((4, size, size))
    out[0, :half, :half] = out[1, :half, half:] = out[2, half:, :half] = out[3, half:, half:] = 1
    return out


def region_linear_model(weights: np.ndarray, size: int = 32, channels: int = 3) -> onnx.ModelProto:
    """logit_c = Σ_r weights[c, r] · mean of the input over quadrant r (all channels):
    a model whose logits are a known linear function of input regions (Flatten → Gemm)."""
    weights = np.asarray(weights, dtype=np.float64)
    quads = quadrant_masks(size)
    per_pixel = np.einsum("cr,rhw->chw", weights, quads / quads.sum(axis=(1, 2), keepdims=True))
    w = np.repeat(per_pixel[:, None] / channels, channels, axis=1).reshape(len(weights), -1)
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "region_linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(weights)])],
        initializer=[numpy_helper.from_array(w.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# -- a small CNN that recognises the colour of a bright square on noise -----------------

SIZE, SQUARE = 32, 10  # the square covers 100 / 1024 ≈ 0.1 of the image


def square_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` images of noise with a bright square whose colour (R, G, B) is the class.

    Returns images (n, 3, 32, 32), labels (n,) and the squares' top-left corners (n, 2).
    """
    x = rng.normal(0.0, 0.3, size=(n, 3, SIZE, SIZE)).astype(np.float32)
    labels = rng.integers(0, 3, size=n)
    corners = rng.integers(0, SIZE - SQUARE + 1, size=(n, 2))
    for i, (c, (r0, c0)) in enumerate(zip(labels, corners)):
        x[i, c, r0:r0 + SQUARE, c0:c0 + SQUARE] += 2.0
    return x, labels, corners


class SquareNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        )
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def train_square_net(steps: int = 100, seed: int = 0) -> SquareNet:
    """Train :class:`SquareNet` on freshly generated batches (about a second on a CPU)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = SquareNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    with torch_threads(1):
        for _ in range(steps):
            x, y, _ = square_images(32, rng)
            loss = nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@functools.lru_cache(maxsize=1)
def square_model():
    """(trained SquareNet, its ONNX Model, 3 images, their labels, their squares' corners),
    built once per test session."""
    import onnxplain as ox

    net = train_square_net()
    x, labels, corners = square_images(3, np.random.default_rng(5))
    model = ox.adapters.torch.export(net, torch.from_numpy(x[:2]), exporter="legacy")
    return net, model, x, labels, corners
