"""Export a torch CNN, load it as ONNX, and run every method of the foundation on it.

Runs offline in seconds: a torchvision ResNet-18 with seeded random weights, 64×64 inputs.
"""

import numpy as np
import torch
import torchvision

import onnxplain as ox

torch.manual_seed(0)
net = torchvision.models.resnet18(weights=None).eval()
model = ox.adapters.torch.export(net, torch.randn(2, 3, 64, 64))  # or: ox.load("model.onnx")
print(model)
print("Grad-CAM layer (auto):", model.find_layer("auto"))

x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
target = model.predict(x).argmax(1)
results = {
    "Saliency": ox.Saliency(model).attribute(x, target=target),
    "InputXGradient": ox.InputXGradient(model).attribute(x, target=target),
    "IntegratedGradients": ox.IntegratedGradients(model).attribute(x, target=target, n_steps=16),
    "Occlusion": ox.Occlusion(model).attribute(
        x, target=target, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), show_progress=False
    ),
    "GradCAM": ox.GradCAM(model).attribute(x, target=target),
}
for name, attr in results.items():
    print(f"{name:20s} shape={attr.shape}  max|a|={np.abs(attr).max():.4g}")
