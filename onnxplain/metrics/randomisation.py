"""Sanity checks for saliency maps (Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim,
NeurIPS 2018): model-parameter randomisation, done on the ONNX graph's initializers.

A method whose maps stay the same when the model's weights are replaced by random numbers
does not explain the model. The weights of each parametrised node (Conv, Gemm, MatMul,
BatchNormalization's scale and shift, ...) are replaced by Gaussian noise with the
original tensor's standard deviation, either cumulatively from the output layer down
(``"cascading"``) or one layer at a time (``"independent"``); every randomised graph is
loaded as a new :class:`~onnxplain.Model` (nothing is retrained), the explanation is
recomputed for the same inputs and targets, and compared with the original one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import numpy_helper

from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import Model
from onnxplain.core.validation import as_numbers, check_input, check_seed
from onnxplain.metrics._common import (
    MetricResult,
    check_batch_size,
    check_choice,
    check_model,
    explain,
    predict,
    progress,
    resolve_classes,
    spearman,
)

MEASURES = ("spearman_abs", "spearman", "ssim", "hog")


@dataclass(frozen=True)
class ParameterLayer:
    """A node with weights: its name, op type and the initializers randomised with it."""

    node: str
    op_type: str
    initializers: tuple[str, ...]


def parameter_layers(model: Model) -> list[ParameterLayer]:
    """The nodes that hold floating-point initializers, in graph (input → output) order.
    BatchNormalization contributes its scale and shift only (its running statistics are
    not learned parameters and the variance must stay positive)."""
    proto = check_model(model).proto()
    floats = {
        t.name
        for t in proto.graph.initializer
        if numpy_helper.to_array(t).dtype.kind == "f" and numpy_helper.to_array(t).size > 1
    }
    out, seen = [], set()
    for node in proto.graph.node:
        names = list(node.input[1:3]) if node.op_type == "BatchNormalization" else list(node.input)
        inits = tuple(n for n in names if n in floats and n not in seen)
        if inits:
            seen.update(inits)
            out.append(ParameterLayer(node.name, node.op_type, inits))
    return out


def randomized_model(model: Model, layers: Sequence[ParameterLayer | str], seed: int | None = 0) -> Model:
    """A new Model whose ``layers`` (ParameterLayer or node names) have random weights:
    each initializer w becomes N(0, std(w)²) (std 1e-2 for a constant tensor), drawn from
    a stream seeded by ``(seed, layer index in the graph)`` so a layer gets the same noise
    in the cascading and the independent checks."""
    from onnxplain.core.loading import load

    all_layers = parameter_layers(model)
    index = {layer.node: i for i, layer in enumerate(all_layers)}
    if isinstance(layers, (str, ParameterLayer)) or not isinstance(layers, (Sequence, np.ndarray)):
        raise InputValidationError(
            f"layers must be a list of ParameterLayer or node names (see parameter_layers), got {layers!r}"
        )
    wanted = [layer.node if isinstance(layer, ParameterLayer) else layer for layer in layers]
    unknown = [w for w in wanted if w not in index]
    if unknown:
        raise InputValidationError(
            f"no parametrised node {unknown}; choose from {[layer.node for layer in all_layers]}"
        )
    proto = model.proto()
    inits = {t.name: t for t in proto.graph.initializer}
    for name in wanted:
        layer = all_layers[index[name]]
        rng = np.random.default_rng([check_seed(seed, "randomized_model") or 0, index[name]])
        for init in layer.initializers:
            old = numpy_helper.to_array(inits[init])
            std = float(old.std()) or 1e-2
            new = rng.normal(0.0, std, old.shape).astype(old.dtype)
            inits[init].CopyFrom(numpy_helper.from_array(new, init))
    return load(proto)


# -- similarity of maps -------------------------------------------------------------------
def _box_mean(a: np.ndarray, win: int) -> np.ndarray:
    """Mean over win×win windows with scipy.ndimage's "reflect" border (numpy's "symmetric")."""
    r = win // 2
    p = np.pad(a, r, mode="symmetric")
    c = p.cumsum(0).cumsum(1)
    c = np.pad(c, ((1, 0), (1, 0)))
    h, w = a.shape
    s = c[win : win + h, win : win + w] - c[:h, win : win + w] - c[win : win + h, :w] + c[:h, :w]
    return s / (win * win)


def _two_maps(name: str, a: np.ndarray, b: np.ndarray, least: int,
              what: str) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` as float64, checked to be 2-D maps of one shape, each side ≥ ``least``."""
    a, b = as_numbers(a, f"{name}'s first map"), as_numbers(b, f"{name}'s second map")
    if a.shape != b.shape or a.ndim != 2:
        raise InputValidationError(
            f"{name} compares two 2-D maps of one shape, got {a.shape} and {b.shape}; pass one "
            "example's map each (similarity() compares batches)"
        )
    if min(a.shape) < least:
        raise InputValidationError(
            f"{name} needs maps of at least {least}×{least} pixels for {what}, got {a.shape}"
        )
    return a, b


def ssim(a: np.ndarray, b: np.ndarray, data_range: float | None = None, win_size: int = 7) -> float:
    """Structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004) of two 2-D maps, as
    ``skimage.metrics.structural_similarity`` computes it by default (7×7 uniform window,
    K1 = 0.01, K2 = 0.03, sample covariances, border of win//2 cropped, mean):

        SSIM = (2 μ_a μ_b + C1)(2 σ_ab + C2) / ((μ_a² + μ_b² + C1)(σ_a² + σ_b² + C2)),

    C_i = (K_i · data_range)². ``data_range``: default max − min over both maps.
    """
    a, b = _two_maps("ssim", a, b, win_size, f"its window (win_size={win_size})")
    if data_range is None:
        data_range = max(a.max(), b.max()) - min(a.min(), b.min())
    data_range = data_range or 1.0
    np_ = win_size * win_size
    cov = np_ / (np_ - 1)
    ux, uy = _box_mean(a, win_size), _box_mean(b, win_size)
    vx = cov * (_box_mean(a * a, win_size) - ux * ux)
    vy = cov * (_box_mean(b * b, win_size) - uy * uy)
    vxy = cov * (_box_mean(a * b, win_size) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


def hog_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the HOG descriptors of two 2-D maps (as Adebayo et al.
    compare maps), with ``skimage.feature.hog`` (8×8 cells, 2×2 blocks, 9 orientations).
    Needs scikit-image (``pip install onnxplain[segmentation]``)."""
    try:
        from skimage.feature import hog
    except ImportError:  # pragma: no cover - depends on the environment
        raise InputValidationError(
            "the 'hog' similarity needs scikit-image: pip install 'onnxplain[segmentation]' "
            "(or leave 'hog' out of measures)"
        ) from None
    a, b = _two_maps("hog_similarity", a, b, 16, "its 2×2 blocks of 8×8 cells")
    ha = hog(a, pixels_per_cell=(8, 8), cells_per_block=(2, 2), orientations=9)
    hb = hog(b, pixels_per_cell=(8, 8), cells_per_block=(2, 2), orientations=9)
    ha, hb = ha - ha.mean(), hb - hb.mean()
    den = np.sqrt((ha * ha).sum() * (hb * hb).sum())
    return float((ha * hb).sum() / den) if den > 0 else float("nan")


def _unit(m: np.ndarray) -> np.ndarray:
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def _as_maps(attr: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(signed, absolute) maps (N, H, W): channels summed (of the values and of |values|)."""
    a = np.asarray(attr, dtype=np.float64)
    if a.ndim == 4:
        return a.sum(axis=1), np.abs(a).sum(axis=1)
    if a.ndim == 3:
        return a, np.abs(a)
    raise InputValidationError(f"explanations must be (N, H, W) or (N, C, H, W), got shape {a.shape}")


def similarity(original: np.ndarray, other: np.ndarray, measure: str) -> np.ndarray:
    """One similarity per example between two batches of explanations.

    ``"spearman_abs"``: Spearman rank correlation of the absolute maps; ``"spearman"``: of
    the signed maps; ``"ssim"`` and ``"hog"``: :func:`ssim` / :func:`hog_similarity` of the
    absolute maps min-max scaled to [0, 1] (as Adebayo et al. normalise before comparing).
    Spearman is NaN when a map is constant (no rank order, e.g. a Grad-CAM that the ReLU
    zeroes on a randomised model); :class:`MetricResult`'s summary ignores NaN.
    """
    check_choice(measure, "measure", MEASURES)
    s0, a0 = _as_maps(original, ())
    s1, a1 = _as_maps(other, ())
    out = np.empty(len(s0))
    for i in range(len(s0)):
        if measure == "spearman":
            out[i] = spearman(s0[i], s1[i])
        elif measure == "spearman_abs":
            out[i] = spearman(a0[i], a1[i])
        elif measure == "ssim":
            out[i] = ssim(_unit(a0[i]), _unit(a1[i]), data_range=1.0)
        else:
            out[i] = hog_similarity(_unit(a0[i]), _unit(a1[i]))
    return out


# -- the sanity check ---------------------------------------------------------------------
def _factory(method: Any, method_kwargs: dict) -> Callable[[Model], Any]:
    from onnxplain.methods.base import Attribution

    if isinstance(method, type) and issubclass(method, Attribution):
        return lambda m: method(m, **method_kwargs)
    if isinstance(method, Attribution):
        kwargs = dict(method_kwargs)
        layer = getattr(method, "layer", None)
        if layer is not None and "layer" not in kwargs:
            kwargs["layer"] = getattr(layer, "name", layer)
        cls = type(method)
        return lambda m: cls(m, **kwargs)
    if callable(method):
        return method
    raise InputValidationError(
        "method must be an onnxplain method class (ox.Saliency), an instance (ox.GradCAM(model)) "
        f"or a function model -> explainer, got {type(method).__name__}"
    )


def model_parameter_randomisation(
    model: Model,
    method: Any,
    inputs: Any,
    target: Any = None,
    mode: str = "cascading",
    measures: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
    method_kwargs: dict | None = None,
    attribute_kwargs: dict | None = None,
    seed: int | None = 0,
    batch_size: int = 32,
    show_progress: bool | None = None,
) -> MetricResult:
    """Adebayo et al.'s model-parameter randomisation test.

    ``method``: an onnxplain method class (built as ``cls(model, **method_kwargs)`` on each
    randomised model), a method instance (rebuilt with its class and its ``layer``), or a
    function ``model -> explainer`` (an explainer is a method instance or
    ``explain(inputs, target=...)``). ``target``: fixed for all models (None: the class the
    original model predicts). ``mode``: ``"cascading"`` (randomise the layers from the output
    down, cumulatively) or ``"independent"`` (one layer at a time). ``layers``: node names
    to randomise (default: :func:`parameter_layers`, all of them). ``measures``: from
    :data:`MEASURES` (default all; ``"hog"`` is skipped with a warning when scikit-image is
    missing). Randomised weights: see :func:`randomized_model`.

    Returns a :class:`MetricResult`: ``steps`` the randomised layer names, preceded by
    ``"original"``; ``details["similarity"][measure]``: (N, 1 + L) similarity to the
    original explanation after each step (column 0 is the original model: 1 by
    construction); ``curves`` that array for the first measure; ``scores`` its last
    column (cascading: the fully randomised model) or, independent, its mean over layers.
    ``details["layer_means"][measure]``: the per-layer curve averaged over examples. A
    method that passes the check has similarities falling towards 0.
    """
    check_choice(mode, "mode", ("cascading", "independent"))
    batch_size = check_batch_size(batch_size)
    if measures is None:
        measures = list(MEASURES)
        try:
            import skimage.feature  # noqa: F401
        except ImportError:  # pragma: no cover - depends on the environment
            import warnings

            warnings.warn("scikit-image is not installed: the 'hog' similarity is skipped", stacklevel=2)
            measures.remove("hog")
    measures = [check_choice(m, "measures", MEASURES) for m in measures]
    if not measures:
        raise InputValidationError(f"measures must name at least one of {list(MEASURES)}")
    x = check_input(model, inputs)
    classes = resolve_classes(target, len(x), lambda: predict(model.backend("onnxruntime"), x, batch_size))
    make = _factory(method, dict(method_kwargs or {}))
    kw = dict(attribute_kwargs or {})

    def run(m: Model) -> np.ndarray:
        ex = make(m)
        return np.concatenate(
            [
                explain(ex, x[i : i + batch_size], classes[i : i + batch_size], **kw)
                for i in range(0, len(x), batch_size)
            ]
        )

    all_layers = parameter_layers(model)
    chosen = (
        all_layers
        if layers is None
        else [
            next((p for p in all_layers if p.node == name), None) or _missing(name, all_layers)
            for name in layers
        ]
    )
    chosen = sorted(chosen, key=lambda p: all_layers.index(p))
    original = run(model)
    steps = list(reversed(chosen)) if mode == "cascading" else chosen
    sims = {m: [similarity(original, original, m)] for m in measures}
    for k in progress(range(len(steps)), len(steps), show_progress, f"randomisation ({mode})"):
        randomised = steps[: k + 1] if mode == "cascading" else [steps[k]]
        expl = run(randomized_model(model, randomised, seed))
        for m in measures:
            sims[m].append(similarity(original, expl, m))
    arrays = {m: np.stack(v, axis=1) for m, v in sims.items()}
    first = arrays[measures[0]]
    scores = first[:, -1] if mode == "cascading" else first[:, 1:].mean(axis=1)
    return MetricResult(
        f"randomisation_{mode}",
        scores,
        first,
        np.array(["original", *[p.node for p in steps]]),
        {
            "similarity": arrays,
            "layer_means": {m: np.nanmean(a, axis=0) for m, a in arrays.items()},
            "target": classes,
            "measures": measures,
        },
    )


def _missing(name: str, layers: list[ParameterLayer]):
    raise InputValidationError(f"no parametrised node {name!r}; choose from {[p.node for p in layers]}")
