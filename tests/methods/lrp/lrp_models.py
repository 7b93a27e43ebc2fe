"""Torch models for the LRP tests (seeded random weights) and their export."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def vgg_style(batch_norm: bool = True, bias: bool = True) -> torch.nn.Module:
    """A small VGG-style CNN: conv blocks with max pooling, adaptive average pooling, two dense layers."""
    nn = torch.nn

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        return layers + [nn.ReLU()]

    return nn.Sequential(
        *block(3, 8),
        nn.MaxPool2d(2),
        *block(8, 16),
        nn.MaxPool2d(2),
        *block(16, 16),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 32, bias=bias),
        nn.ReLU(),
        nn.Linear(32, 10, bias=bias),
    )


def randomize_batch_norm(net: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Non-trivial running statistics and affine parameters, so folding them matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


def export(net: torch.nn.Module, x: torch.Tensor):
    from onnxplain.adapters.torch import export as _export

    return _export(net, x, exporter="legacy")


def he_init(net: torch.nn.Module) -> torch.nn.Module:
    """He-normal weights, so activations stay of order 1 through the layers (the default
    init shrinks them, and relevances of 1e-4 would sit near the 1e-6 stabilisers)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net.eval()
