"""Faithfulness: does removing what the map calls important change the prediction?

Deletion and insertion (Petsiuk, Das & Saenko 2018, the RISE paper), region perturbation
with AOPC (Samek et al. 2017, "pixel flipping"), ROAD (Rong et al. 2022) and infidelity
(Yeh et al. 2019, Captum's definition). All run on forward passes only (ONNX Runtime
under ``backend="auto"``), ``batch_size`` perturbed images at a time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxplain.backends.base import Backend
from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import Model
from onnxplain.core.validation import as_numbers
from onnxplain.metrics._common import (
    Explainer,
    MetricResult,
    Scorer,
    attributions_or_explain,
    check_batch_size,
    check_choice,
    check_positive_int,
    check_real,
    chunks,
    example_streams,
    forward_backend,
    inputs_of,
    pixel_map,
    predict,
    progress,
    resolve_classes,
)

SUBSTRATES = ("zero", "mean", "blur", "uniform")


# -- substrates ---------------------------------------------------------------------------
def gaussian_blur(x: np.ndarray, klen: int = 11, sigma: float = 5.0) -> np.ndarray:
    """Blur images (N, C, H, W) with a ``klen``×``klen`` Gaussian (std ``sigma``), zero
    padding, as the RISE paper's insertion metric blurs its starting image."""
    x = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        raise InputValidationError(f"gaussian_blur takes float images (N, C, H, W), got {x.dtype} {x.shape}")
    r = klen // 2
    t = np.arange(klen) - r
    k = np.exp(-(t**2) / (2 * sigma**2))
    k /= k.sum()
    pad = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (r, r), (r, r)))
    rows = sum(k[i] * pad[:, :, i : i + x.shape[2], :] for i in range(klen))
    out = sum(k[i] * rows[:, :, :, i : i + x.shape[3]] for i in range(klen))
    return out.astype(x.dtype)


def substrate_of(kind: Any, x: np.ndarray, seed: int | None = 0, name: str = "substrate") -> np.ndarray:
    """What removed pixels become: ``"zero"``, ``"mean"`` (each image's per-channel mean),
    ``"blur"`` (:func:`gaussian_blur`), ``"uniform"`` (noise in the image's value range,
    seeded per example), a number, or an array broadcastable to ``x``."""
    if isinstance(kind, str):
        check_choice(kind, name, SUBSTRATES)
        if kind == "zero":
            return np.zeros_like(x)
        if kind == "mean":
            return np.broadcast_to(x.mean(axis=(2, 3), keepdims=True), x.shape).astype(x.dtype)
        if kind == "blur":
            return gaussian_blur(x)
        streams = example_streams(seed, len(x))
        lo, hi = float(x.min()), float(x.max())
        return np.stack([s.uniform(lo, hi, x.shape[1:]) for s in streams]).astype(x.dtype)
    try:
        return np.ascontiguousarray(np.broadcast_to(np.asarray(kind, dtype=x.dtype), x.shape))
    except ValueError:
        raise InputValidationError(
            f"{name} must be one of {list(SUBSTRATES)}, a number or an array broadcastable to "
            f"{x.shape}, got shape {np.shape(kind)}"
        ) from None


def _ranks(saliency: np.ndarray, descending: bool = True) -> np.ndarray:
    """Position of every pixel in the removal order (0 = first), (N, H·W)."""
    flat = saliency.reshape(len(saliency), -1)
    order = np.argsort(-flat if descending else flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None].repeat(len(flat), 0), axis=1)
    return ranks


def _curves(
    scorer: Scorer,
    start: np.ndarray,
    finish: np.ndarray,
    ranks: np.ndarray,
    counts: np.ndarray,
    classes: np.ndarray,
    show: bool | None,
    desc: str,
) -> np.ndarray:
    """Score of ``where(rank < counts[k], finish, start)`` for every example and step k,
    ``scorer.batch_size`` images at a time: (N, K)."""
    n, c, h, w = start.shape
    k = len(counts)
    rows = np.repeat(np.arange(n), k)
    steps = np.tile(np.arange(k), n)
    out = np.empty(n * k)
    parts = list(chunks(n * k, scorer.batch_size))
    for sl in progress(parts, len(parts), show, desc):
        i, j = rows[sl], steps[sl]
        removed = (ranks[i] < counts[j][:, None]).reshape(-1, 1, h, w)
        batch = np.where(removed, finish[i], start[i])
        out[sl] = scorer(batch, classes[i])
    return out.reshape(n, k)


def _auc(curves: np.ndarray) -> np.ndarray:
    """Trapezoidal area under curves sampled at K equally spaced points of [0, 1]."""
    k = curves.shape[1]
    return (curves.sum(axis=1) - (curves[:, 0] + curves[:, -1]) / 2) / (k - 1)


def _setup(model, inputs, target, backend, batch_size):
    batch_size = check_batch_size(batch_size)
    model, be = forward_backend(model, backend)
    x = inputs_of(model, inputs)
    classes = resolve_classes(target, len(x), lambda: predict(be, x, batch_size))
    return model, be, x, classes, batch_size


def _causal(
    kind: str,
    model,
    inputs,
    attributions,
    target,
    step,
    substrate,
    start_substrate,
    softmax,
    batch_size,
    backend,
    show_progress,
) -> MetricResult:
    model, be, x, classes, batch_size = _setup(model, inputs, target, backend, batch_size)
    step = check_positive_int(step, "step")
    sal = pixel_map(attributions_or_explain(attributions, x, classes, batch_size), x)
    hw = x.shape[2] * x.shape[3]
    n_steps = -(-hw // step)
    counts = np.minimum(np.arange(n_steps + 1) * step, hw)
    if kind == "deletion":
        start, finish = x, substrate_of(substrate, x, name="substrate")
    else:
        start, finish = substrate_of(start_substrate, x, name="start_substrate"), x
    curves = _curves(
        Scorer(be, batch_size, softmax), start, finish, _ranks(sal), counts, classes, show_progress, kind
    )
    return MetricResult(kind, _auc(curves), curves, counts / hw, {"target": classes})


def deletion(
    model: Model | Backend,
    inputs: Any,
    attributions: np.ndarray | Explainer,
    target: Any = None,
    step: int = 64,
    substrate: Any = "zero",
    softmax: bool = True,
    batch_size: int = 64,
    backend: str | Backend = "auto",
    show_progress: bool | None = None,
) -> MetricResult:
    """The deletion metric of Petsiuk et al. 2018 (RISE, BMVC): remove pixels in order of
    decreasing attribution, ``step`` pixels at a time, and record the target's
    probability after each step; the score is the area under that curve (lower is better).

    With ``n = ⌈H·W / step⌉`` steps and x⁽ᵏ⁾ the input with its ``k·step`` most important
    pixels (all channels) replaced by the substrate,

        curve_k = p_c(x⁽ᵏ⁾), k = 0..n,    AUC = Σ_k ½(curve_k + curve_{k+1}) / n.

    ``attributions``: (N, H, W) or (N, C, H, W) (channels summed to rank pixels), or an
    explainer (a method instance or ``explain(inputs, target=...)``) to compute them.
    ``target``: None (the predicted class), an int or one int per example. ``substrate``:
    ``"zero"`` (the paper's), ``"mean"``, ``"blur"``, ``"uniform"``, a number or an array.
    ``softmax``: score the class probability (the paper) or, if False, the raw output.
    Returns a :class:`MetricResult`: ``scores`` the AUC per example, ``curves`` (N, n+1),
    ``steps`` the fraction of pixels removed.

    Example (a random map on the bundled model):

    >>> import numpy as np, onnxplain as ox
    >>> from onnxplain.metrics import deletion
    >>> model = ox.examples.shapes_model()
    >>> x = ox.examples.shapes_dataset(2, seed=5).images
    >>> saliency = np.random.default_rng(0).random((2, 64, 64))
    >>> res = deletion(model, x, saliency, step=256, show_progress=False)
    >>> res.curves.shape, res.scores.shape
    ((2, 17), (2,))
    """
    return _causal(
        "deletion",
        model,
        inputs,
        attributions,
        target,
        step,
        substrate,
        None,
        softmax,
        batch_size,
        backend,
        show_progress,
    )


def insertion(
    model: Model | Backend,
    inputs: Any,
    attributions: np.ndarray | Explainer,
    target: Any = None,
    step: int = 64,
    start: Any = "blur",
    softmax: bool = True,
    batch_size: int = 64,
    backend: str | Backend = "auto",
    show_progress: bool | None = None,
) -> MetricResult:
    """The insertion metric of Petsiuk et al. 2018: start from a blurred copy of the
    image (``start``, any substrate as in :func:`deletion`; the paper's is a Gaussian blur,
    kernel 11, σ = 5) and put the original pixels back in order of decreasing attribution,
    ``step`` at a time; the score is the area under the probability curve (higher is
    better). Same arguments and result as :func:`deletion`."""
    return _causal(
        "insertion",
        model,
        inputs,
        attributions,
        target,
        step,
        None,
        start,
        softmax,
        batch_size,
        backend,
        show_progress,
    )


def pixel_flipping(
    model: Model | Backend,
    inputs: Any,
    attributions: np.ndarray | Explainer,
    target: Any = None,
    order: str = "morf",
    patch_size: int = 8,
    n_regions: int | None = None,
    substrate: Any = "zero",
    softmax: bool = False,
    seed: int | None = 0,
    batch_size: int = 64,
    backend: str | Backend = "auto",
    show_progress: bool | None = None,
) -> MetricResult:
    """Region perturbation and AOPC (Samek, Binder, Montavon, Lapuschkin & Müller 2017,
    "Evaluating the visualization of what a deep neural network has learned").

    The image is cut into ``patch_size``×``patch_size`` regions (all channels); they are
    ranked by their summed attribution, most relevant first (``order="morf"``), least
    relevant first (``"lerf"``) or at random (``"random"``, seeded), and replaced by the
    substrate one after another. With x⁽ᵏ⁾ the input after k replacements and L =
    ``n_regions`` (default: all regions),

        AOPC = 1/(L+1) · Σ_{k=0..L} ( f(x⁽⁰⁾) − f(x⁽ᵏ⁾) ).

    A faithful map has a high MoRF AOPC and a low LeRF AOPC. ``curves`` holds
    f(x⁽⁰⁾) − f(x⁽ᵏ⁾) for k = 0..L (Quantus's ``RegionPerturbation`` reports k = 1..L).
    ``substrate`` as in :func:`deletion` (Samek et al. used ``"uniform"`` noise).
    ``softmax``: score probabilities instead of the raw output.
    """
    model, be, x, classes, batch_size = _setup(model, inputs, target, backend, batch_size)
    check_choice(order, "order", ("morf", "lerf", "random"))
    p = check_positive_int(patch_size, "patch_size")
    n, _, h, w = x.shape
    sal = pixel_map(attributions_or_explain(attributions, x, classes, batch_size), x)
    gh, gw = -(-h // p), -(-w // p)
    region = ((np.arange(h) // p)[:, None] * gw + (np.arange(w) // p)[None, :]).ravel()
    sums = np.zeros((n, gh * gw))
    np.add.at(sums, (slice(None), region), sal.reshape(n, -1))
    if order == "random":
        streams = example_streams(seed, n)
        region_order = np.stack([s.permutation(gh * gw) for s in streams])
    else:
        region_order = np.argsort(-sums if order == "morf" else sums, axis=1, kind="stable")
    region_rank = np.empty_like(region_order)
    np.put_along_axis(region_rank, region_order, np.arange(gh * gw)[None].repeat(n, 0), axis=1)
    ranks = region_rank[:, region]  # each pixel's position = its region's
    total = gh * gw if n_regions is None else min(check_positive_int(n_regions, "n_regions"), gh * gw)
    scores = _curves(
        Scorer(be, batch_size, softmax),
        x,
        substrate_of(substrate, x, seed),
        ranks,
        np.arange(total + 1),
        classes,
        show_progress,
        f"pixel flipping ({order})",
    )
    drops = scores[:, :1] - scores
    return MetricResult(
        f"aopc_{order}",
        drops.mean(axis=1),
        drops,
        np.arange(total + 1),
        {"target": classes, "scores": scores},
    )


# -- ROAD ---------------------------------------------------------------------------------
_NEIGHBOURS = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)


def noisy_linear_imputation(
    image: np.ndarray, removed: np.ndarray, noise: float = 0.01, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Fill the ``removed`` pixels of ``image`` (C, H, W) by noisy linear imputation
    (Rong, Leemann, Borisov, Kasneci & Kasneci 2022, ROAD).

    Each removed pixel takes the weighted mean of its 8 neighbours (weight 1/6 for the
    4 direct ones, 1/12 for the diagonals, renormalised at the border), removed
    neighbours being unknowns too: one sparse linear system per image, solved for all
    channels at once (scipy.sparse), then Gaussian noise of std ``noise`` is added to the
    imputed values. ``removed``: flat pixel indices into H·W, or an (H, W) bool mask.
    """
    try:
        from scipy.sparse import coo_matrix
        from scipy.sparse.linalg import spsolve
    except ImportError:  # pragma: no cover - depends on the environment
        raise InputValidationError("ROAD's noisy linear imputation needs scipy: pip install scipy") from None

    c, h, w = image.shape
    flat = image.reshape(c, -1).astype(np.float64)
    removed = np.asarray(removed)
    idx = np.flatnonzero(removed.ravel()) if removed.dtype == bool else removed.ravel().astype(np.int64)
    out = flat.copy()
    m = len(idx)
    if m == 0:
        return image.copy()
    var = np.full(h * w, -1, dtype=np.int64)
    var[idx] = np.arange(m)
    r, col = idx // w, idx % w
    rows_a, cols_a, vals_a = [np.arange(m)], [np.arange(m)], []
    b = np.zeros((m, c))
    diag = np.zeros(m)
    for (dr, dc), weight in _NEIGHBOURS:
        rr, cc = r + dr, col + dc
        valid = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        diag[valid] += weight
        nb = rr[valid] * w + cc[valid]
        ids = np.flatnonzero(valid)
        unknown = var[nb] >= 0
        b[ids[~unknown]] -= weight * flat[:, nb[~unknown]].T
        rows_a.append(ids[unknown])
        cols_a.append(var[nb[unknown]])
        vals_a.append(np.full(unknown.sum(), weight))
    vals = np.concatenate([-diag, *vals_a])
    a = coo_matrix((vals, (np.concatenate(rows_a), np.concatenate(cols_a))), shape=(m, m)).tocsc()
    sol = spsolve(a, b).reshape(m, c)
    if noise:
        rng = rng if rng is not None else np.random.default_rng()
        sol = sol + noise * rng.standard_normal(sol.shape)
    out[:, idx] = sol.T
    return out.reshape(c, h, w).astype(image.dtype)


def road(
    model: Model | Backend,
    inputs: Any,
    attributions: np.ndarray | Explainer,
    target: Any = None,
    percentages: Any = (10, 20, 30, 40, 50, 60, 70, 80, 90),
    order: str = "morf",
    noise: float = 0.01,
    softmax: bool = True,
    seed: int | None = 0,
    batch_size: int = 64,
    backend: str | Backend = "auto",
    show_progress: bool | None = None,
) -> MetricResult:
    """ROAD, RemOve And Debias (Rong et al., ICML 2022): the retraining-free stand-in for
    ROAR. For each percentage q, the ⌊q·H·W/100⌋ most (``order="morf"``) or least
    (``"lerf"``) important pixels are removed and filled by
    :func:`noisy_linear_imputation` (noise std ``noise``, seeded per example), and the
    model is run on the result.

    ``curves`` (N, len(percentages)): the target's probability (raw output with
    ``softmax=False``); ``details["correct"]``: whether the target is still the predicted
    class (Quantus's ``ROAD`` reports its mean over examples per percentage, in
    ``details["accuracy"]``); ``scores``: the mean of each curve (lower is better for
    MoRF, higher for LeRF).
    """
    model, be, x, classes, batch_size = _setup(model, inputs, target, backend, batch_size)
    check_choice(order, "order", ("morf", "lerf"))
    pct = as_numbers(percentages, "percentages").ravel()
    noise = check_real(noise, "noise")
    if pct.size == 0 or not np.isfinite(pct).all() or (pct < 0).any() or (pct > 100).any():
        raise InputValidationError(f"percentages must be numbers in [0, 100], got {percentages!r}")
    n, _, h, w = x.shape
    sal = pixel_map(attributions_or_explain(attributions, x, classes, batch_size), x)
    order_idx = np.argsort(
        -sal.reshape(n, -1) if order == "morf" else sal.reshape(n, -1), axis=1, kind="stable"
    )
    streams = example_streams(seed, n)
    jobs = [(i, j) for i in range(n) for j in range(len(pct))]
    probs = np.empty((n, len(pct)))
    correct = np.empty((n, len(pct)), dtype=bool)
    parts = list(chunks(len(jobs), batch_size))
    for sl in progress(parts, len(parts), show_progress, f"ROAD ({order})"):
        batch = np.stack(
            [
                noisy_linear_imputation(x[i], order_idx[i, : int(h * w * pct[j] / 100)], noise, streams[i])
                for i, j in jobs[sl]
            ]
        )
        ii = np.array([i for i, _ in jobs[sl]])
        jj = np.array([j for _, j in jobs[sl]])
        out = predict(be, batch, batch_size)
        correct[ii, jj] = out.argmax(axis=1) == classes[ii]
        if softmax:
            from onnxplain.metrics._common import softmax as _softmax

            out = _softmax(out)
        probs[ii, jj] = out[np.arange(len(ii)), classes[ii]]
    return MetricResult(
        f"road_{order}",
        probs.mean(axis=1),
        probs,
        pct,
        {"target": classes, "correct": correct, "accuracy": correct.mean(axis=0)},
    )


# -- infidelity ---------------------------------------------------------------------------
def gaussian_perturbation(std: float = 0.1):
    """A perturbation function for :func:`infidelity`: I ~ N(0, std²), perturbed input
    x − I (Captum's convention)."""

    def perturb(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        noise = (rng.standard_normal(x.shape) * std).astype(x.dtype)
        return noise, x - noise

    return perturb


def infidelity(
    model: Model | Backend,
    inputs: Any,
    attributions: np.ndarray | Explainer,
    target: Any = None,
    perturb_func: Any = None,
    n_perturb_samples: int = 10,
    normalize: bool = False,
    softmax: bool = False,
    seed: int | None = 0,
    batch_size: int = 64,
    backend: str | Backend = "auto",
    show_progress: bool | None = None,
) -> MetricResult:
    """Explanation infidelity (Yeh, Hsieh, Suggala, Inouye & Ravikumar, NeurIPS 2019), as
    Captum's ``captum.metrics.infidelity`` defines it:

        INFD(Φ, f, x) = E_I [ ( Iᵀ Φ(x) − ( f(x) − f(x − I) ) )² ],

    estimated with ``n_perturb_samples`` perturbations per example. ``perturb_func(x, rng)``
    receives the example repeated (S, C, H, W) and its random generator and returns the
    perturbations I and the perturbed inputs (x − I in Captum's convention); the default is
    :func:`gaussian_perturbation` (std 0.1). Example i's perturbations come from its own
    stream seeded by ``(seed, i)``, so they do not depend on ``batch_size``.
    ``normalize``: scale Φ by β = E[IᵀΦ·Δf] / E[(IᵀΦ)²] first (Captum's ``normalize``).
    ``f``: the target's raw output (``softmax=True``: its probability). Lower is better.
    """
    model, be, x, classes, batch_size = _setup(model, inputs, target, backend, batch_size)
    s = check_positive_int(n_perturb_samples, "n_perturb_samples")
    perturb = perturb_func if perturb_func is not None else gaussian_perturbation()
    attr = np.asarray(attributions_or_explain(attributions, x, classes, batch_size), dtype=np.float64)
    if attr.shape != x.shape:
        raise InputValidationError(
            f"infidelity needs attributions of the inputs' shape {x.shape}, got {attr.shape}"
        )
    scorer = Scorer(be, batch_size, softmax)
    fx = scorer(x, classes)
    streams = example_streams(seed, len(x))
    aa, ab, bb = (np.zeros(len(x)) for _ in range(3))
    for i in progress(range(len(x)), len(x), show_progress, "infidelity"):
        done = 0
        while done < s:  # at most batch_size perturbed images in memory
            k = min(batch_size, s - done)
            reps = np.repeat(x[i : i + 1], k, axis=0)
            noise, perturbed = perturb(reps, streams[i])
            noise = np.asarray(noise, dtype=np.float64)
            a = (noise * attr[i]).reshape(k, -1).sum(axis=1)
            b = fx[i] - scorer(np.asarray(perturbed, dtype=x.dtype), np.full(k, classes[i]))
            aa[i] += (a * a).sum()
            ab[i] += (a * b).sum()
            bb[i] += (b * b).sum()
            done += k
    if normalize:
        beta = np.divide(ab, aa, out=np.zeros_like(ab), where=aa != 0)
        values = beta * beta * aa - 2 * beta * ab + bb
    else:
        values = aa - 2 * ab + bb
    return MetricResult("infidelity", values / s, details={"target": classes})
