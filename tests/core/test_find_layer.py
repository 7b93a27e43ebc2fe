"""find_layer("auto") in models without a global pooling."""

from __future__ import annotations

import torch
import torchvision

import onnxplain as ox


def test_auto_layer_without_global_pooling_has_one_map_per_example():
    # a small vision transformer: its attention reshapes put the tokens or heads first in
    # some 4-D tensors, e.g. (17, batch, 2, 16); CAM needs (batch, ...) maps
    torch.manual_seed(0)
    net = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=4
    )
    model = ox.adapters.torch.export(net.eval(), torch.randn(2, 3, 32, 32))
    assert any(s.shape[0] != model.input_spec.shape[0] for s in model.layers() if len(s.shape) == 4)
    auto = model.find_layer("auto")
    assert auto.shape[0] == model.input_spec.shape[0]
