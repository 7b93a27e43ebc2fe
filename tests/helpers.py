"""Models and checks the tests share (no downloads: seeded random weights only)."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn


def max_rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours − ref| / max |ref|: the error measure every parity test states."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


class SmallCNN(nn.Module):
    """Conv-ReLU-MaxPool-Conv-ReLU-GAP-Linear, no BatchNorm: exact parity is expected."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x)))))
        return self.fc(torch.flatten(self.gap(x), 1))


def small_cnn(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN().eval()


def fold_batchnorm_resnet(model: nn.Module) -> nn.Module:
    """Fold every Conv–BatchNorm pair of a torchvision ResNet, as the ONNX exporters do."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.conv1 = fuse_conv_bn_eval(model.conv1, model.bn1)
    model.bn1 = nn.Identity()
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            for i in (1, 2, 3):
                conv, bn = getattr(block, f"conv{i}", None), getattr(block, f"bn{i}", None)
                if conv is not None and bn is not None:
                    setattr(block, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                    setattr(block, f"bn{i}", nn.Identity())
            if block.downsample is not None:
                block.downsample = nn.Sequential(fuse_conv_bn_eval(block.downsample[0], block.downsample[1]))
    return model.eval()


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics so folding is really exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def unconvertible_cnn() -> onnx.ModelProto:
    """Conv → Shrink → GlobalAveragePool → Flatten → Gemm. onnx2torch has no Shrink."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Shrink", ["c"], ["s"], name="shrink", lambd=0.1),
        helper.make_node("GlobalAveragePool", ["s"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "shrink_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[w, fc],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def zennit_relevance(composite, net: nn.Module, x: np.ndarray, target: int, classes: int) -> np.ndarray:
    """zennit's relevance of ``target`` for inputs ``x`` under ``composite`` (an instance),
    scaled to start at the score as ours does: zennit's gradient is the relevance of an
    output of 1."""
    xt = torch.from_numpy(x).requires_grad_(True)
    with composite.context(net) as modified:
        out = modified(xt)
        (relevance,) = torch.autograd.grad(out, xt, torch.eye(classes)[[target] * len(x)])
    return relevance.numpy() * out[:, target].detach().numpy().reshape(-1, *[1] * (x.ndim - 1))


def occluded_by_hand_nhwc(predict, x: np.ndarray, target: int,
                          window: tuple[int, int] = (8, 8)) -> np.ndarray:
    """Occlusion of channels-last images (N, H, W, C) by ``window`` (h, w) rectangles of zeros
    tiling them, computed with ``predict`` (images → scores): the drop of the target's score,
    spread over its rectangle (as Occlusion with window equal to stride)."""
    (h, w), full = window, predict(x)[:, target]
    ref = np.zeros_like(x)
    for i, j in itertools.product(range(0, x.shape[1], h), range(0, x.shape[2], w)):
        occluded = x.copy()
        occluded[:, i : i + h, j : j + w, :] = 0
        ref[:, i : i + h, j : j + w, :] = (full - predict(occluded)[:, target])[:, None, None, None]
    return ref


class ConvLayerNormNHWC(nn.Module):
    """Conv (no bias) → ReLU → LayerNorm over the channels → mean over H, W → Linear (no
    bias), on channels-last images, with the weights of a TensorFlow/JAX twin: ``w`` (3, 3,
    C, K) HWIO, ``gamma`` and ``beta`` (K,), ``fc`` (K, classes). Its export has one
    LayerNormalization node: the reference for the LN rule on decomposed LayerNorms."""

    def __init__(self, w: np.ndarray, gamma: np.ndarray, beta: np.ndarray, fc: np.ndarray) -> None:
        super().__init__()
        self.conv = nn.Conv2d(w.shape[2], w.shape[3], w.shape[0], bias=False)
        self.norm = nn.LayerNorm(w.shape[3], eps=1e-6)
        self.fc = nn.Linear(*fc.shape, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))))
            self.norm.weight.copy_(torch.from_numpy(gamma))
            self.norm.bias.copy_(torch.from_numpy(beta))
            self.fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(fc.T)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(images.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        return self.fc(self.norm(h).mean((1, 2)))
