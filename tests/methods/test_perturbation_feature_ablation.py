"""FeatureAblation against Captum, across backends, and sharing Occlusion's loop."""

import numpy as np
import pytest
import torch
from captum.attr import FeatureAblation as CFeatureAblation
from helpers import max_rel_err
from perturbation_models import torch_threads

import onnxplain as ox
import onnxplain.infill as infill
from onnxplain.methods.perturbation import FeatureAblation, Occlusion

TOL = 1e-4  # max |ours − Captum| / max |Captum|


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):  # the small CNN runs faster on one thread when the cores are shared
        yield


def blocks(size: int, block: int) -> np.ndarray:
    """(size, size) group ids of block × block squares."""
    ids = np.arange((size // block) ** 2).reshape(size // block, size // block)
    return ids.repeat(block, 0).repeat(block, 1)


def _masks():
    b = blocks(32, 4)
    per_channel = np.stack([b, b + 64, b + 128])  # (3, 32, 32): every channel apart
    per_example = np.stack([np.broadcast_to(b, (3, 32, 32)), np.broadcast_to(blocks(32, 8), (3, 32, 32))])
    return {
        "spatial (1, 1, H, W)": b[None, None],
        "per channel (C, H, W)": per_channel,
        "per example (N, C, H, W)": per_example,
    }


@pytest.mark.parametrize("name", list(_masks()))
@pytest.mark.parametrize("baseline", [0.0, 0.5])
def test_feature_ablation_equals_captum(small_torch, small_model, images, name, baseline):
    mask = _masks()[name]
    ours = FeatureAblation(small_model).attribute(images, target=[1, 2], feature_mask=mask,
                                                  baselines=baseline, show_progress=False)
    ref_mask = torch.from_numpy(mask if mask.ndim == 4 else mask[None])
    ref = CFeatureAblation(small_torch).attribute(
        torch.from_numpy(images), target=[1, 2], feature_mask=ref_mask, baselines=baseline,
        perturbations_per_eval=16,
    ).numpy()
    assert ours.shape == images.shape
    assert max_rel_err(ours, ref) < TOL


def test_feature_ablation_of_every_scalar_equals_captum(small_torch, small_model):
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    model = ox.adapters.torch.export(small_torch, torch.from_numpy(x), exporter="legacy")
    base = np.random.default_rng(5).standard_normal((3, 8, 8)).astype(np.float32)
    ours = FeatureAblation(model).attribute(x, target=4, baselines=base, show_progress=False)
    ref = CFeatureAblation(small_torch).attribute(torch.from_numpy(x), target=4,
                                                  baselines=torch.from_numpy(base)[None],
                                                  perturbations_per_eval=64).numpy()
    assert max_rel_err(ours, ref) < TOL


def test_feature_ablation_on_onnxruntime_equals_feature_ablation_on_torch(small_model, images):
    assert FeatureAblation(small_model).backend.name == "onnxruntime"
    kwargs = dict(target=3, feature_mask=blocks(32, 8), show_progress=False)
    a = FeatureAblation(small_model, backend="onnxruntime").attribute(images, **kwargs)
    b = FeatureAblation(small_model, backend="torch").attribute(images, **kwargs)
    assert max_rel_err(a, b) < 1e-5


def test_occlusion_with_disjoint_windows_is_feature_ablation_of_blocks(small_model, images):
    occ = Occlusion(small_model).attribute(images, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8),
                                           target=0, infill=infill.GaussianBlur(2.0))
    fa = FeatureAblation(small_model).attribute(images, target=0, feature_mask=blocks(32, 8),
                                                infill=infill.GaussianBlur(2.0), show_progress=False)
    np.testing.assert_allclose(occ, fa, atol=1e-6)


def test_feature_ablation_batches_do_not_change_the_result(small_model, images):
    kwargs = dict(target=0, feature_mask=blocks(32, 4), show_progress=False)
    a = FeatureAblation(small_model).attribute(images, perturbations_per_eval=1, **kwargs)
    b = FeatureAblation(small_model).attribute(images, batch_size=5, **kwargs)
    c = FeatureAblation(small_model).attribute(images, perturbations_per_eval=64, **kwargs)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)


def test_feature_ablation_bounds_the_batch_sent_to_the_model(small_model, images):
    be = ox.backends.CallableBackend(lambda b: small_model.predict(b), max_batch_size=64)
    sizes = []
    inner = be.fn
    be.fn = lambda b: (sizes.append(len(b)), inner(b))[1]
    FeatureAblation(be).attribute(images, target=0, feature_mask=blocks(32, 4), batch_size=6,
                                  show_progress=False)
    assert max(sizes) <= 6


def test_noise_infill_is_reproducible_under_a_seed(small_model, images):
    kwargs = dict(target=1, feature_mask=blocks(32, 8), infill=infill.GaussianNoise(1.0), show_progress=False)
    a = FeatureAblation(small_model).attribute(images, seed=1, **kwargs)
    b = FeatureAblation(small_model).attribute(images, seed=1, **kwargs)
    c = FeatureAblation(small_model).attribute(images, seed=2, **kwargs)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(feature_mask=np.zeros((32, 32), dtype=np.float32)), "integers"),
        (dict(feature_mask=np.zeros((5, 32, 32), dtype=int)), "feature_mask"),
        (dict(feature_mask=np.zeros((3, 1, 32, 32), dtype=int)), "feature_mask"),
        (dict(feature_mask=np.zeros((1, 2, 1, 32, 32), dtype=int)), "feature_mask"),
        (dict(perturbations_per_eval=0), "perturbations_per_eval"),
        (dict(batch_size=0), "batch_size"),
        (dict(baselines=np.zeros((5, 5))), "baselines"),
        (dict(baselines=0.0, infill=infill.Zeros()), "baselines"),
        (dict(target=99), "out of range"),
    ],
)
def test_feature_ablation_refuses_bad_arguments(small_model, images, kwargs, match):
    kwargs = {"feature_mask": blocks(32, 16)[None, None], **kwargs}
    with pytest.raises(ox.InputValidationError, match=match):
        FeatureAblation(small_model).attribute(images, **kwargs)
