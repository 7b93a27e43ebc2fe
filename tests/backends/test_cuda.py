"""GPU variants: both backends on CUDA agree with CPU, and methods run there end to end.

Skipped without a CUDA GPU (torch's view); run by benchmarks/gpu_check.sh on a GPU machine.
"""

import numpy as np
import pytest
import torch

import onnxplain as ox
from onnxplain.backends import INPUT
from onnxplain.core.targets import resolve_target

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOL = {"rtol": 1e-3, "atol": 1e-4}  # cuDNN vs MKL-DNN convolutions (TF32 disabled below)


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def test_both_backends_really_run_on_cuda(resnet_pair):
    _, model = resnet_pair
    assert model.backend("onnxruntime", device="cuda").providers[0] == "CUDAExecutionProvider"
    assert model.backend("onnxruntime", device="cuda").io_binding
    assert model.backend("torch", device="cuda").device == "cuda"
    assert model.backend("onnxruntime", device="cuda").device == "cuda"
    assert model.backend("onnxruntime", device="cuda:0").device == "cuda:0"
    assert next(model.backend("torch", device="cuda").module.parameters()).is_cuda


def test_cuda_forward_and_activations_match_cpu(resnet_pair, resnet_images):
    _, model = resnet_pair
    names = [model.layers()[-1].name, model.output_name]
    cpu = model.backend("onnxruntime", device="cpu").forward(resnet_images, outputs=names)
    for name in ("onnxruntime", "torch"):
        got = model.backend(name, device="cuda").forward(resnet_images, outputs=names)
        for n in names:
            np.testing.assert_allclose(got[n], cpu[n], **TOL)


def test_cuda_gradients_match_cpu(resnet_pair, resnet_images):
    _, model = resnet_pair
    objective = resolve_target(1, len(resnet_images), model.output_name, model.num_classes)
    cpu = model.backend("torch", device="cpu").gradients(resnet_images, objective)
    gpu = model.backend("torch", device="cuda").gradients(resnet_images, objective)
    np.testing.assert_allclose(gpu.gradients[INPUT], cpu.gradients[INPUT], **TOL)


@pytest.mark.parametrize(
    "method, kwargs",
    [
        ("Saliency", {}),
        ("IntegratedGradients", {"n_steps": 8}),
        ("GuidedBackprop", {}),
        ("GradCAM", {}),
        ("ScoreCAM", {}),
        ("Occlusion", {"sliding_window_shapes": (3, 16, 16), "strides": (3, 8, 8)}),
        ("RISE", {"n_masks": 64}),
    ],
)
def test_methods_on_cuda_match_cpu(resnet_pair, resnet_images, method, kwargs):
    _, model = resnet_pair
    cls = getattr(ox, method)
    progress = {"show_progress": False} if method not in ("Saliency", "GuidedBackprop", "GradCAM") else {}
    cpu = cls(model, device="cpu").attribute(resnet_images, target=1, **kwargs, **progress)
    gpu = cls(model, device="cuda").attribute(resnet_images, target=1, **kwargs, **progress)
    scale = float(np.abs(cpu).max()) + 1e-12
    np.testing.assert_allclose(gpu / scale, cpu / scale, atol=1e-3)


def test_a_batch_too_big_for_the_device_backs_off_instead_of_failing(resnet_pair):
    _, model = resnet_pair
    be = model.backend("torch", device="cuda", max_batch_size=4096, verify=False)
    x = np.zeros((4096, 3, 64, 64), np.float32)  # conv1's output alone is 1 GiB
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1.2 * 2**30 / torch.cuda.get_device_properties(0).total_memory)
    try:
        out = be.predict(x)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert out.shape[0] == 4096 and be.max_batch_size < 4096
