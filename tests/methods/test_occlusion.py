"""Occlusion against Captum, across backends, and through a plain function."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from captum.attr import Occlusion as COcclusion
from helpers import max_rel_err
from perturbation_models import torch_threads

import onnxplain as ox
import onnxplain.infill as infill

TOL = 1e-4  # max |ours − Captum| / max |Captum|


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):  # small models run faster on one thread when the cores are shared
        yield


@pytest.mark.parametrize(
    "window, strides, baseline",
    [((3, 8, 8), (3, 4, 4), 0.0), ((1, 5, 5), (1, 3, 3), 0.5), ((3, 6, 6), 6, -1.0)],
)
def test_occlusion_equals_captum(small_torch, small_model, images, window, strides, baseline):
    ours = ox.Occlusion(small_model).attribute(
        images, sliding_window_shapes=window, strides=strides, baselines=baseline, target=[1, 2]
    )
    ref = COcclusion(small_torch).attribute(
        torch.from_numpy(images), sliding_window_shapes=window, strides=strides,
        baselines=baseline, target=[1, 2], perturbations_per_eval=64,
    ).numpy()
    assert max_rel_err(ours, ref) < TOL


def test_occlusion_on_resnet18_equals_captum(resnet_pair, resnet_images):
    net, model = resnet_pair
    ours = ox.Occlusion(model).attribute(resnet_images, sliding_window_shapes=(3, 16, 16),
                                         strides=(3, 8, 8), target=5)
    ref = COcclusion(net).attribute(torch.from_numpy(resnet_images), sliding_window_shapes=(3, 16, 16),
                                    strides=(3, 8, 8), target=5, perturbations_per_eval=16).numpy()
    assert max_rel_err(ours, ref) < 1e-3  # BatchNorm folded on both sides; float32 noise


def test_occlusion_runs_on_onnxruntime_by_default(small_model):
    assert ox.Occlusion(small_model).backend.name == "onnxruntime"


def test_occlusion_on_onnxruntime_equals_occlusion_on_torch(small_model, images):
    kwargs = dict(sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), target=3)
    a = ox.Occlusion(small_model, backend="onnxruntime").attribute(images, **kwargs)
    b = ox.Occlusion(small_model, backend="torch").attribute(images, **kwargs)
    assert max_rel_err(a, b) < 1e-5


def test_occlusion_through_a_plain_function_equals_onnxruntime(small_model, images):
    session = ort.InferenceSession(small_model.serialized())

    def served_model(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {small_model.input_name: batch})[0]

    kwargs = dict(sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), target=None)
    via_fn = ox.Occlusion(ox.backends.CallableBackend(served_model)).attribute(images, **kwargs)
    via_ort = ox.Occlusion(small_model).attribute(images, **kwargs)
    np.testing.assert_allclose(via_fn, via_ort, rtol=0, atol=1e-6)


def test_occlusion_batches_do_not_change_the_result(small_model, images):
    kwargs = dict(sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), target=0)
    a = ox.Occlusion(small_model).attribute(images, perturbations_per_eval=1, **kwargs)
    b = ox.Occlusion(small_model).attribute(images, perturbations_per_eval=50, **kwargs)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_occlusion_bounds_batch_size(small_model, images):
    be = ox.backends.CallableBackend(lambda b: small_model.predict(b), max_batch_size=64)
    sizes = []
    inner = be.fn
    be.fn = lambda b: (sizes.append(len(b)), inner(b))[1]
    ox.Occlusion(be).attribute(images, sliding_window_shapes=(3, 4, 4), strides=2, target=0,
                               perturbations_per_eval=5)
    assert max(sizes) <= 10  # 5 windows × 2 examples


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sliding_window_shapes=(3, 64, 64)), "exceeds"),
        (dict(sliding_window_shapes=(3, 4, 4), strides=(3, 8, 8)), "skip"),
        (dict(sliding_window_shapes=(4, 4)), "one per"),
        (dict(sliding_window_shapes=(3, 0, 4)), "sliding_window_shapes"),
        (dict(sliding_window_shapes=(3, 4, 4), perturbations_per_eval=0), "perturbations_per_eval"),
        (dict(sliding_window_shapes=(3, 4, 4), baselines=np.zeros((5, 5))), "baselines"),
        (dict(sliding_window_shapes=(3, 4, 4), target=99), "out of range"),
    ],
)
def test_occlusion_refuses_bad_arguments(small_model, images, kwargs, match):
    with pytest.raises(ox.InputValidationError, match=match):
        ox.Occlusion(small_model).attribute(images, **kwargs)


def test_occlusion_with_an_infill_equals_occlusion_with_that_fill_as_baselines(small_model, images):
    kwargs = dict(sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), target=1)
    blur = infill.GaussianBlur(3.0)
    a = ox.Occlusion(small_model).attribute(images, infill=blur, **kwargs)
    b = ox.Occlusion(small_model).attribute(images, baselines=blur.fill(images), **kwargs)
    np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ox.InputValidationError, match="not both"):
        ox.Occlusion(small_model).attribute(images, baselines=0.0, infill=blur, **kwargs)


def test_occlusion_batch_size_bounds_the_rows_per_forward_pass(small_model, images):
    be = ox.backends.CallableBackend(lambda b: small_model.predict(b), max_batch_size=64)
    sizes = []
    inner = be.fn
    be.fn = lambda b: (sizes.append(len(b)), inner(b))[1]
    ox.Occlusion(be).attribute(images, sliding_window_shapes=(3, 4, 4), strides=4, target=0, batch_size=6)
    assert max(sizes) <= 6
