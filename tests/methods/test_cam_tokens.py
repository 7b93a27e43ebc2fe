"""CAMs on a vision transformer: token layers read as the grid of their patch tokens.

A small torchvision VisionTransformer (32×32 input, 8×8 patches: a class token and a 4×4
grid; LayerNorm and head weights randomised, as torchvision initialises the head to 0)
against pytorch-grad-cam with the ``reshape_transform`` its ViT tutorial uses, at the layer
that tutorial takes (the last block's first LayerNorm), which ``layer="auto"`` finds.
Error: max |ours − ref| over maps min-max scaled to [0, 1]. Measured: gradient variants
≤ 8e-7 (Grad-CAM++ 4e-6), Score-CAM 3e-6; Eigen-CAM's maps before ReLU within 1e-4 up to
the sign; Ablation-CAM's weights equal a torch ablation of the same tokens to 4e-6
(max_rel_err).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
from helpers import max_rel_err
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from test_cam_parity import Scale, raw
from torchvision.models.vision_transformer import VisionTransformer

import onnxplain as ox
from onnxplain.methods.cam import (
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from onnxplain.methods.cam._tokens import TokenGrid

TOL = 1e-5
TARGET = 2


def reshape_transform(t: torch.Tensor, h: int = 4, w: int = 4) -> torch.Tensor:
    """pytorch-grad-cam's ViT reshape: drop the class token, tokens → (N, C, h, w)."""
    return t[:, 1:, :].reshape(t.size(0), h, w, t.size(2)).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def vit():
    """(torch ViT, its ONNX Model, inputs (2, 3, 32, 32))."""
    torch.manual_seed(0)
    net = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                            mlp_dim=64, num_classes=5).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g))
        net.heads.head.weight.copy_(torch.randn(net.heads.head.weight.shape, generator=g))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    return net, ox.adapters.torch.export(net, torch.from_numpy(x)), x


def _reference(net, cls, x, wrap_scale: float | None = None, **kwargs) -> np.ndarray:
    """pytorch-grad-cam at the last block's first LayerNorm. ``wrap_scale`` t: that layer's
    output divided by t and multiplied again (an exact reparametrisation), hooked between, so
    that Grad-CAM++'s 1e-6 in α's denominator becomes negligible (see test_cam_parity.py)."""
    layer = net.encoder.layers[-1].ln_1
    if wrap_scale:
        net = copy.deepcopy(net)
        down, block = Scale(1 / wrap_scale), net.encoder.layers[-1]
        block.ln_1 = torch.nn.Sequential(block.ln_1, down, Scale(wrap_scale))
        layer = down
    cam = cls(model=net, target_layers=[layer], reshape_transform=reshape_transform, **kwargs)
    return cam(torch.from_numpy(x), targets=[ClassifierOutputTarget(TARGET)] * len(x))


def test_auto_finds_the_last_blocks_first_layernorm(vit):
    net, model, x = vit
    spec = model.find_layer("auto")
    assert spec.op_type == "LayerNormalization" and len(spec.shape) == 3
    seen = {}
    hook = net.encoder.layers[-1].ln_1.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    with torch.no_grad():
        net(torch.from_numpy(x))
    hook.remove()
    ours = model.backend("onnxruntime").forward(x, outputs=[spec.name])[spec.name]
    assert max_rel_err(ours, seen["a"].numpy()) < 1e-5


@pytest.mark.parametrize("ours, ref", [
    (GradCAM, pgc.GradCAM), (GradCAMPlusPlus, pgc.GradCAMPlusPlus), (XGradCAM, pgc.XGradCAM),
    (LayerCAM, pgc.LayerCAM), (HiResCAM, pgc.HiResCAM),
])
def test_gradient_cams_equal_pytorch_grad_cam_with_its_vit_reshape(vit, ours, ref):
    net, model, x = vit
    got = ours(model).attribute(x, target=TARGET, normalize=True)
    want = _reference(net, ref, x, wrap_scale=1e4 if ours is GradCAMPlusPlus else None)
    assert got.shape == want.shape == (2, 32, 32)
    assert np.abs(got - want).max() < TOL
    assert want.max() > 0.5  # the maps are not degenerate


def test_score_cam_equals_pytorch_grad_cam_with_its_vit_reshape(vit):
    net, model, x = vit
    got = ScoreCAM(model, weighting="channel_softmax", align_corners=True).attribute(
        x, target=TARGET, normalize=True, show_progress=False)
    want = _reference(net, pgc.ScoreCAM, x)
    assert np.abs(got - want).max() < TOL


def test_eigen_cam_equals_pytorch_grad_cam_up_to_the_singular_vector_sign(vit):
    """The maps before ReLU and resizing (a singular vector's sign is arbitrary)."""
    net, model, x = vit
    cam = raw(pgc.EigenCAM)(model=net, target_layers=[net.encoder.layers[-1].ln_1],
                            reshape_transform=reshape_transform)
    cam(torch.from_numpy(x), targets=None)
    got = EigenCAM(model).attribute(x, relu_attributions=False, upsample=False)
    assert got.shape == cam.raw.shape == (2, 4, 4)
    for ours, ref in zip(got, cam.raw):
        assert min(max_rel_err(ours, ref), max_rel_err(-ours, ref)) < 1e-4


@pytest.mark.parametrize("where", ["auto", "block input"])
def test_ablation_cam_ablates_each_channel_of_the_layers_patch_tokens(vit, where):
    """``layer="auto"``: the last block's first LayerNorm, as for the other CAMs (the block's
    residual connection skips it: the layers after it also take the residual stream, which
    is carried past it); or the block's input, which every path goes through. Weights
    (y − y_k) / y against the torch network with channel k of that tensor's patch tokens
    zeroed by a hook."""
    net, model, x = vit
    block = net.encoder.layers[-1]
    layer = "auto" if where == "auto" else model.producer_inputs(model.find_layer("auto").name)[0]
    cam = AblationCAM(model, layer=layer, batch_size=7)  # batches that split the 32 channels unevenly
    assert cam.layer.op_type == ("LayerNormalization" if where == "auto" else "Add")
    assert bool(cam.carried) == (where == "auto")
    captured = {}
    real = cam.channel_weights
    cam.channel_weights = lambda data: captured.setdefault("w", real(data))
    cam.attribute(x, target=TARGET, show_progress=False)

    def score(channel: int | None) -> np.ndarray:
        def zero(t: torch.Tensor) -> torch.Tensor:
            t = t.clone()
            if channel is not None:
                t[:, 1:, channel] = 0
            return t
        if where == "auto":
            hook = block.ln_1.register_forward_hook(lambda module, args, out: zero(out))
        else:
            hook = block.register_forward_pre_hook(lambda module, args: (zero(args[0]),))
        with torch.no_grad():
            out = net(torch.from_numpy(x))[:, TARGET].double().numpy()
        hook.remove()
        return out

    y = score(None)
    want = np.stack([(y - score(k)) / y for k in range(32)], axis=1)
    assert max_rel_err(captured["w"], want) < 1e-4


@pytest.mark.parametrize("tokens, hw, want", [
    (197, (224, 224), TokenGrid(1, 14, 14)),  # ViT-B/16
    (198, (224, 224), TokenGrid(2, 14, 14)),  # DeiT: class and distillation tokens
    (196, (224, 224), TokenGrid(0, 14, 14)),  # no class token
    (33, (32, 64), TokenGrid(1, 4, 8)),  # a wide input
    (261, (224, 224), TokenGrid(5, 16, 16)),  # class + 4 register tokens, 14-pixel patches
])
def test_the_patch_grid_follows_from_the_token_count_and_the_input_size(tokens, hw, want):
    assert TokenGrid.infer("t", tokens, hw) == want


def test_a_token_count_no_grid_explains_is_our_error():
    with pytest.raises(ox.InputValidationError, match="no square-patch grid"):
        TokenGrid.infer("t", 40, (7, 11))


class _TokenMixer(torch.nn.Module):
    """Patch tokens → a token-mixing and a channel-mixing MLP → LayerNorm → the mean over
    the tokens → Linear (MLP-Mixer, ResMLP, Twins); ``class_token``: a class token is
    prepended and left out of the mean, as timm's ViTs with ``global_pool="avg"``;
    ``transposed``: the mean as ``AdaptiveAvgPool1d`` of the tokens moved channels first
    (Hugging Face's Swin)."""

    def __init__(self, class_token: bool, transposed: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Conv2d(3, 12, 8, stride=8)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 12)) if class_token else None
        tokens = 16 + (1 if class_token else 0)
        self.tokens = torch.nn.Linear(tokens, tokens)
        self.channels = torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.GELU(), torch.nn.Linear(24, 12))
        self.norm = torch.nn.LayerNorm(12)
        self.head = torch.nn.Linear(12, 5)
        self.transposed = transposed

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        if self.cls is not None:
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        t = t + self.tokens(t.transpose(1, 2)).transpose(1, 2)
        t = self.norm(t + self.channels(t))
        t = t[:, 1:] if self.cls is not None else t
        if self.transposed:
            return self.head(torch.nn.functional.adaptive_avg_pool1d(t.transpose(1, 2), 1).flatten(1))
        return self.head(t.mean(1))


@pytest.mark.parametrize("class_token,transposed", [(False, False), (True, False), (False, True)],
                         ids=["mean", "class-token", "transposed-pool1d"])
@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_cam_reads_a_head_that_averages_the_tokens(exporter, class_token, transposed):
    """CAM's head is the mean over the patch tokens → linear; on the 4×4 grid CAM equals
    16 × Grad-CAM at the same layer (d mean / d token = 1/16), and Ablation-CAM's weights
    equal re-running the tail on each ablated copy. Pooled channels first (``transposed``),
    the map is still the (N, T, C) tokens, never the (N, C, T) transpose read as C tokens."""
    net = _TokenMixer(class_token, transposed).eval()
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    model = ox.adapters.torch.export(net, torch.from_numpy(x), exporter=exporter)
    head = model.classifier_head()
    assert head is not None and model.find_layer(head.feature_map).shape[1:] == (16, 12)
    np.testing.assert_allclose(head.weight, net.head.weight.detach().numpy(), atol=1e-7)
    cam = ox.CAM(model).attribute(x, target=[1, 3], relu_attributions=False, upsample=False)
    grad = GradCAM(model, layer=head.feature_map).attribute(x, target=[1, 3], relu_attributions=False,
                                                             upsample=False)
    assert cam.shape == (2, 4, 4) and np.abs(cam).max() > 0
    assert max_rel_err(cam, 16 * grad) < TOL
    method = AblationCAM(model)
    assert method.layer.name == head.feature_map
    captured = {}
    real = method.channel_weights
    method.channel_weights = lambda data: captured.setdefault("w", real(data))
    method.attribute(x, target=[1, 3], show_progress=False)
    acts = model.backend("onnxruntime").forward(x, outputs=[head.feature_map])[head.feature_map]
    y = model.predict(x)[[0, 1], [1, 3]].astype(np.float64)
    want = []
    for i, c in enumerate([1, 3]):
        copies = np.repeat(acts[i:i + 1], 12, axis=0)
        copies[np.arange(12), :, np.arange(12)] = 0
        want.append((y[i] - method.tail.predict(copies)[:, c]) / y[i])
    assert max_rel_err(captured["w"], np.stack(want)) < 1e-4
