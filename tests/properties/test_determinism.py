"""Determinism: every seeded method gives identical results for the same seed on repeated
runs, agrees across backends, does not depend on its batch size, and never touches the
global random state (numpy's legacy ``np.random``, Python's ``random``, torch's CPU RNG).

Tolerances, stated once:

- same seed, same backend: bit-identical (``np.array_equal``);
- ONNX Runtime vs torch (forward-only methods; the two run the same float32 graph with
  different kernels): ``max |ort − torch| ≤ CROSS_BACKEND_RTOL · max |ort|``;
- different batch sizes: the same random draws, summed in another order:
  ``max |a − b| ≤ BATCH_RTOL · max |a|``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
import torch

import onnxplain as ox

CROSS_BACKEND_RTOL = 1e-5  # measured: at most 1.9e-6 (FeatureAblation), 8x8 inputs
BATCH_RTOL = 1e-5

MODEL = ox.load(ox.examples.tiny_cnn())
X = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
CELLS = np.arange(16).reshape(4, 4).repeat(2, 0).repeat(2, 1)  # 16 features of 2×2 pixels
QUARTERS = np.arange(4).reshape(2, 2).repeat(4, 0).repeat(4, 1)  # 4 features of 4×4 pixels
NOISE = ox.infill.GaussianNoise(1.0)

Run = Callable[..., np.ndarray]  # run(model_or_backend, seed, **batch) -> attributions

#: forward-only methods (they run on ONNX Runtime and on torch); "batch" is their batch argument
FORWARD_ONLY: dict[str, tuple[Run, str | None]] = {
    "RISE": (
        lambda m, seed, **kw: ox.RISE(m).attribute(
            X, target=1, n_masks=24, s=3, seed=seed, show_progress=False, **kw
        ),
        "batch_size",
    ),
    "RISE noise fill": (
        lambda m, seed, **kw: ox.RISE(m).attribute(
            X, target=1, n_masks=24, s=3, infill=NOISE, seed=seed, show_progress=False, **kw
        ),
        "batch_size",
    ),
    "Lime": (
        lambda m, seed, **kw: ox.Lime(m).attribute(
            X, target=1, feature_mask=QUARTERS, n_samples=40, seed=seed, show_progress=False, **kw
        ),
        "batch_size",
    ),
    "KernelShap": (
        lambda m, seed, **kw: ox.KernelShap(m).attribute(
            X, target=1, feature_mask=CELLS, n_samples=60, seed=seed, show_progress=False, **kw
        ),
        "batch_size",
    ),
    "ShapleyValueSampling": (
        lambda m, seed, **kw: ox.ShapleyValueSampling(m).attribute(
            X, target=1, feature_mask=CELLS, n_samples=4, seed=seed, show_progress=False, **kw
        ),
        "batch_size",
    ),
    "FeatureAblation": (
        lambda m, seed, **kw: ox.FeatureAblation(m).attribute(
            X, target=1, feature_mask=CELLS, seed=seed, show_progress=False, **kw
        ),
        "batch_size",
    ),
    "FeatureAblation noise fill": (
        lambda m, seed, **kw: ox.FeatureAblation(m).attribute(
            X, target=1, feature_mask=CELLS, infill=NOISE, seed=seed, show_progress=False, **kw
        ),
        "batch_size",
    ),
    "Occlusion": (
        lambda m, seed, **kw: ox.Occlusion(m).attribute(
            X, target=1, sliding_window_shapes=(3, 3, 3), strides=(3, 2, 2), show_progress=False
        ),
        None,
    ),
    "ScoreCAM": (lambda m, seed, **kw: ox.ScoreCAM(m).attribute(X, target=1, show_progress=False), None),
}

#: methods that need gradients (torch only)
GRADIENT: dict[str, tuple[Run, str | None]] = {
    "SmoothGrad": (
        lambda m, seed, **kw: ox.SmoothGrad(m).attribute(
            X, target=1, nt_samples=6, seed=seed, show_progress=False, **kw
        ),
        "nt_samples_batch_size",
    ),
    "NoiseTunnel(IntegratedGradients)": (
        lambda m, seed, **kw: ox.NoiseTunnel(ox.IntegratedGradients(m)).attribute(
            X,
            nt_type="vargrad",
            nt_samples=4,
            stdevs=0.3,
            target=1,
            seed=seed,
            n_steps=4,
            show_progress=False,
            **kw,
        ),
        "nt_samples_batch_size",
    ),
    "MeaningfulPerturbation": (
        lambda m, seed, **kw: ox.MeaningfulPerturbation(m).attribute(
            X, target=1, max_iter=4, mask_scale=2, seed=seed, show_progress=False, **kw
        ),
        "batch_size",
    ),
    "MeaningfulPerturbation noise fill": (
        lambda m, seed, **kw: ox.MeaningfulPerturbation(m).attribute(
            X, target=1, max_iter=4, mask_scale=2, infill=NOISE, seed=seed, show_progress=False, **kw
        ),
        "batch_size",
    ),
    "ExtremalPerturbation": (
        lambda m, seed, **kw: ox.ExtremalPerturbation(m).attribute(
            X, target=1, max_iter=4, step=2, sigma=2.0, max_blur=2.0, seed=seed, show_progress=False, **kw
        ),
        "batch_size",
    ),
    "ExtremalPerturbation noise fill": (
        lambda m, seed, **kw: ox.ExtremalPerturbation(m).attribute(
            X, target=1, max_iter=4, step=2, sigma=2.0, infill=NOISE, seed=seed, show_progress=False, **kw
        ),
        "batch_size",
    ),
}

ALL = {**FORWARD_ONLY, **GRADIENT}
RUNS = [(name, "onnxruntime") for name in FORWARD_ONLY] + [(name, "torch") for name in ALL]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-12))


@pytest.mark.parametrize(("name", "backend"), RUNS, ids=[f"{n}-{b}" for n, b in RUNS])
def test_same_seed_gives_identical_results_on_repeated_runs(name, backend):
    run, _ = ALL[name]
    be = MODEL.backend(backend)
    first = run(be, 7)
    assert np.isfinite(first).all() and np.abs(first).max() > 0
    assert np.array_equal(first, run(be, 7))
    assert np.array_equal(first, run(ox.load(ox.examples.tiny_cnn()).backend(backend), 7))  # a fresh model


@pytest.mark.parametrize("name", sorted(FORWARD_ONLY))
def test_forward_only_methods_agree_across_backends(name):
    run, _ = FORWARD_ONLY[name]
    ort = run(MODEL.backend("onnxruntime"), 11)
    pt = run(MODEL.backend("torch"), 11)
    assert _rel(pt, ort) <= CROSS_BACKEND_RTOL


@pytest.mark.parametrize("name", sorted(n for n, (_, arg) in ALL.items() if arg))
def test_seeded_results_do_not_depend_on_the_batch_size(name):
    run, arg = ALL[name]
    be = MODEL.backend("torch" if name in GRADIENT else "onnxruntime")
    small, large = run(be, 5, **{arg: 1}), run(be, 5, **{arg: 64})
    assert _rel(small, large) <= BATCH_RTOL


X7 = np.random.default_rng(4).standard_normal((7, 3, 8, 8)).astype(np.float32)
#: methods with a random in-fill: each row's fill is drawn from a generator keyed by
#: (seed, example index, perturbation index), so the batch size (and the device's default)
#: cannot change the draws
NOISE_FILLED: dict[str, tuple[Callable[..., np.ndarray], str]] = {
    "RISE": (
        lambda be, bs: ox.RISE(be).attribute(
            X7, target=1, n_masks=10, s=3, infill=NOISE, seed=5, batch_size=bs, show_progress=False
        ),
        "onnxruntime",
    ),
    "MeaningfulPerturbation": (
        lambda be, bs: ox.MeaningfulPerturbation(be).attribute(
            X7, target=1, max_iter=3, mask_scale=2, infill=NOISE, seed=5, batch_size=bs, show_progress=False
        ),
        "torch",
    ),
    "ExtremalPerturbation": (
        lambda be, bs: ox.ExtremalPerturbation(be).attribute(
            X7,
            target=1,
            areas=[0.2, 0.4],
            variant="dual",
            max_iter=3,
            step=2,
            sigma=2.0,
            infill=NOISE,
            seed=5,
            batch_size=4 * bs,  # 4 rows per example (2 areas, 2 games)
            show_progress=False,
        ),
        "torch",
    ),
}


@pytest.mark.parametrize("name", sorted(NOISE_FILLED))
def test_random_in_fill_is_keyed_by_example_and_perturbation_not_by_batch(name):
    """Same seed, batches of 1, 3 and 7 examples (of 7, so batches split them unevenly):
    the same fills, hence the same results up to float32 summation order."""
    run, backend = NOISE_FILLED[name]
    be = MODEL.backend(backend)
    results = [run(be, bs) for bs in (1, 3, 7)]
    assert np.abs(results[0]).max() > 0
    for other in results[1:]:
        assert _rel(other, results[0]) <= BATCH_RTOL


def _global_state() -> tuple:
    return (np.random.get_state(), random.getstate(), torch.get_rng_state())


def _same_state(a: tuple, b: tuple) -> bool:
    (np_a, py_a, pt_a), (np_b, py_b, pt_b) = a, b
    numpy_same = np_a[0] == np_b[0] and np.array_equal(np_a[1], np_b[1]) and np_a[2:] == np_b[2:]
    return numpy_same and py_a == py_b and torch.equal(pt_a, pt_b)


@pytest.mark.parametrize(("name", "backend"), RUNS, ids=[f"{n}-{b}" for n, b in RUNS])
@pytest.mark.parametrize("seed", [3, None])
def test_no_method_touches_the_global_random_state(name, backend, seed):
    run, _ = ALL[name]
    be = MODEL.backend(backend)  # built beforehand: see the next test
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    before = _global_state()
    run(be, seed)
    assert _same_state(before, _global_state())


def test_building_the_torch_backend_leaves_the_global_random_state_alone():
    model = ox.load(ox.examples.tiny_cnn())
    before = _global_state()
    model.backend("torch")
    assert _same_state(before, _global_state())


def test_building_the_onnxruntime_backend_leaves_the_global_random_state_alone():
    model = ox.load(ox.examples.tiny_cnn())
    before = _global_state()
    model.backend("onnxruntime").predict(X)
    assert _same_state(before, _global_state())


@pytest.mark.parametrize("name", ["SmoothGrad", "NoiseTunnel(IntegratedGradients)"])
def test_noise_tunnel_without_a_seed_draws_fresh_noise(name):
    """seed=None (NoiseTunnel's and SmoothGrad's default, as Captum's) is not reproducible;
    pass a seed for reproducible results."""
    run, _ = GRADIENT[name]
    be = MODEL.backend("torch")
    assert not np.array_equal(run(be, None), run(be, None))
