"""Hugging Face transformers' image classifiers as users have them: the module returns a
``ModelOutput``, attention runs through ``scaled_dot_product_attention`` or ``einsum``,
pooling and padding are written as the library writes them. Tiny random configurations
(nothing downloaded)."""

import numpy as np
import pytest
import torch
from helpers import max_rel_err, randomize_batchnorm

import onnxplain as ox

transformers = pytest.importorskip("transformers")


class _Logits(torch.nn.Module):
    """The module's logits, for the references (Captum, pytorch-grad-cam), which need a tensor."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(pixel_values=x).logits


def _build(config) -> torch.nn.Module:
    """The classifier of ``config``. Hugging Face initialises convolutions and BatchNorm
    scales with std 0.02 (for pretrained weights to replace): through EfficientNet's blocks
    the map vanishes and every score is the classifier's bias. Convolutions get He's
    initialisation, BatchNorms random statistics."""
    torch.manual_seed(0)
    name = {"vit": "ViTForImageClassification", "cvt": "CvtForImageClassification",
            "bit": "BitForImageClassification", "efficientnet": "EfficientNetForImageClassification",
            "swiftformer": "SwiftFormerForImageClassification"}
    net = getattr(transformers, name[config.model_type])(config).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        randomize_batchnorm(net)
        for key, param in net.named_parameters():  # a zero classifier: every score would be 0
            if key.startswith("classifier") and not param.any():
                param.normal_(0, 0.05)
    return net


CONFIGS = {
    "vit": lambda: transformers.ViTConfig(image_size=64, patch_size=8, num_hidden_layers=1, hidden_size=32,
                                          intermediate_size=64, num_attention_heads=2, num_labels=5),
    # opset 23: the dynamo exporter writes the SDPA as one Attention node, written out at load
    "vit-opset-23": lambda: CONFIGS["vit"](),
    "cvt": lambda: transformers.CvtConfig(embed_dim=[16, 32, 48], depth=[1, 2, 3], num_heads=[1, 2, 3],
                                          num_labels=5),
    "bit": lambda: transformers.BitConfig(hidden_sizes=[16, 32, 64, 128], embedding_size=16, num_groups=8,
                                          depths=[1, 1, 1, 1], num_labels=5),
    "efficientnet": lambda: transformers.EfficientNetConfig(image_size=64, width_coefficient=1.0,
                                                            depth_coefficient=0.5, hidden_dim=1280,
                                                            num_labels=5),
    "swiftformer": lambda: transformers.SwiftFormerConfig(depths=[1, 1, 1, 1], embed_dims=[16, 24, 32, 48],
                                                          num_labels=5),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def hf(request):
    net = _build(CONFIGS[request.param]())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    # the module as it comes, returning its ModelOutput; the export is checked against it
    exporter = {"efficientnet": "legacy", "vit-opset-23": "dynamo"}.get(request.param, "auto")
    opset = 23 if request.param == "vit-opset-23" else None
    model = ox.adapters.torch.export(net, x, exporter=exporter, opset=opset)
    return request.param, net, x, model


def test_the_export_of_the_module_as_it_comes_predicts_its_logits(hf):
    """BiT zero-pads before max pooling: ONNX Runtime's Pad_Fusion, left on, would differ."""
    _, net, _, model = hf
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = net(pixel_values=x).logits.numpy()
    assert max_rel_err(model.predict(x.numpy()), expected) < 1e-4


def test_saliency_equals_captums_on_the_module(hf):
    from captum.attr import Saliency

    _, net, x, model = hf
    ref = Saliency(_Logits(net)).attribute(x.clone().requires_grad_(True), target=1, abs=False).numpy()
    ours = ox.Saliency(model).attribute(x.numpy(), target=1, abs=False)
    assert max_rel_err(ours, ref) < 1e-4


def test_lrp_runs_through_attention_einsum_and_padding(hf):
    """ViT's masked SDPA (a NaN guard after the softmax) and CvT's einsum attention get the
    attention rule, SwiftFormer's additive attention (a product of two computed tensors) the
    uniform rule; no node is left without a rule."""
    name, _, x, model = hf
    relevance = ox.LRP(model).attribute(x.numpy(), target=1)
    assert relevance.shape == x.shape and np.isfinite(relevance).all() and relevance.any()
    if name == "cvt":
        assert "Einsum" not in {node.op_type for node in model.ir.graph}
    if name == "vit-opset-23":
        assert "Attention" not in {node.op_type for node in model.ir.graph}


def test_cam_on_pooled_heads_as_hugging_face_writes_them_equals_pytorch_grad_cams_gradcam_times_hw(hf):
    """EfficientNet pools with AvgPool2d(1280, ceil_mode=True) over its last map, SwiftFormer
    with ``flatten(2).mean(-1)`` and averages two linear heads: each is a GAP → linear head,
    so CAM finds it and equals h·w × Grad-CAM (pytorch-grad-cam on the module, its map
    before ReLU, resizing and scaling)."""
    name, net, x, model = hf
    if name not in ("efficientnet", "swiftformer"):
        pytest.skip("EfficientNet's and SwiftFormer's pooling")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class Raw(GradCAM):
        def get_cam_image(self, *args, **kwargs):
            self.raw = super().get_cam_image(*args, **kwargs)
            return self.raw

    layer = net.efficientnet.encoder.top_activation if name == "efficientnet" else net.norm
    if name == "efficientnet":
        assert "GlobalAveragePool" in {node.op_type for node in model.ir.graph}
    else:
        assert "+" in model.classifier_head().linear  # the two heads, summed
    cam = ox.CAM(model).attribute(x.numpy(), target=1, relu_attributions=False, upsample=False)
    with Raw(_Logits(net), target_layers=[layer]) as reference:
        reference(input_tensor=x, targets=[ClassifierOutputTarget(1)] * len(x))
    ref = reference.raw
    assert cam.shape == ref.shape and max_rel_err(cam, ref * ref.shape[1] * ref.shape[2]) < 1e-4
