"""Grad-CAM against pytorch-grad-cam (raw weighted map) and Captum's LayerGradCam."""

import numpy as np
import pytest
import torch
from captum.attr import LayerGradCam
from helpers import max_rel_err
from pytorch_grad_cam import GradCAM as RefGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import onnxplain as ox

TOL = 1e-4  # max |ours − reference| / max |reference| on the map at the layer's resolution


class RawGradCAM(RefGradCAM):
    """pytorch-grad-cam's GradCAM, keeping the weighted map before its ReLU and resizing."""

    def get_cam_image(self, *args, **kwargs):
        cam = super().get_cam_image(*args, **kwargs)
        self.raw = cam
        return cam


def test_gradcam_equals_pytorch_grad_cam_on_resnet18(resnet_pair, resnet_images):
    net, model = resnet_pair
    ours = ox.GradCAM(model).attribute(resnet_images, target=[3, 9], relu_attributions=False,
                                       upsample=False)
    with RawGradCAM(model=net, target_layers=[net.layer4[-1]]) as ref:  # hooks removed on exit
        ref(input_tensor=torch.from_numpy(resnet_images),
            targets=[ClassifierOutputTarget(3), ClassifierOutputTarget(9)])
    assert ours.shape == ref.raw.shape == (2, 2, 2)
    assert max_rel_err(ours, ref.raw) < TOL


def test_gradcam_equals_captum_layer_gradcam(small_torch, small_model, images):
    ours = ox.GradCAM(small_model).attribute(images, target=1, relu_attributions=True, upsample=False)
    ref = LayerGradCam(small_torch, small_torch.relu2).attribute(
        torch.from_numpy(images), target=1, relu_attributions=True
    ).detach().numpy()[:, 0]
    assert max_rel_err(ours, ref) < TOL


def test_gradcam_is_upsampled_to_the_input_like_torch_bilinear(small_model, images):
    cam = ox.GradCAM(small_model)
    small = cam.attribute(images, target=1, upsample=False)
    big = cam.attribute(images, target=1)
    ref = torch.nn.functional.interpolate(torch.from_numpy(small)[:, None], size=(32, 32),
                                          mode="bilinear", align_corners=False)[:, 0].numpy()
    assert big.shape == (2, 32, 32)
    np.testing.assert_allclose(big, ref, atol=1e-6)


def test_auto_layer_is_the_input_of_global_pooling(resnet_pair):
    _, model = resnet_pair
    layer = model.find_layer("auto")
    assert layer.shape[1:] == (512, 2, 2)
    assert ox.GradCAM(model).layer == layer


def test_gradcam_accepts_a_named_layer(resnet_pair, resnet_images):
    _, model = resnet_pair
    name = [s for s in model.layers() if s.shape[1] == 256][-1].name
    cam = ox.GradCAM(model, layer=name).attribute(resnet_images, target=0, upsample=False)
    assert cam.shape == (2, 4, 4)


def test_gradcam_unknown_layer_names_the_alternatives(small_model):
    with pytest.raises(ox.LayerNotFoundError, match="model.layers"):
        ox.GradCAM(small_model, layer="no-such-layer")


def test_gradcam_normalized_map_equals_pytorch_grad_cam_output(resnet_pair, resnet_images):
    """Its ReLU → min-max → OpenCV resize → min-max equals our ReLU → bilinear upsampling
    → min-max (min-max is a positive affine map, which bilinear resizing commutes with)."""
    net, model = resnet_pair
    ours = ox.GradCAM(model).attribute(resnet_images, target=[3, 9], normalize=True)
    with RefGradCAM(model=net, target_layers=[net.layer4[-1]]) as ref:
        final = ref(input_tensor=torch.from_numpy(resnet_images),
                    targets=[ClassifierOutputTarget(3), ClassifierOutputTarget(9)])
    assert ours.shape == final.shape == (2, 64, 64)
    np.testing.assert_allclose(ours, final, atol=1e-5)
