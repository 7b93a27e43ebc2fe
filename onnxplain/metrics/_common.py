"""What every metric shares: results, targets, explanations, scores, noise streams."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxplain.backends.base import Backend, Capability
from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import Model
from onnxplain.core.validation import check_input, check_seed

#: An explainer: an onnxplain method instance (its ``attribute`` is called) or a callable
#: ``explain(inputs, target=target) -> attributions`` (numpy in and out, like Captum's
#: ``explanation_func``). ``target`` is always an int array, one class per example.
Explainer = Any


@dataclass
class MetricResult:
    """A metric's value per example and its summary.

    ``name``: the metric; ``scores``: one number per example (N,); ``curves``: for
    curve metrics, the curve per example (N, K) and ``steps`` its x-axis (K,);
    ``details``: anything else a metric reports (named arrays).
    """

    name: str
    scores: np.ndarray
    curves: np.ndarray | None = None
    steps: np.ndarray | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(np.nanmean(self.scores))

    @property
    def std(self) -> float:
        return float(np.nanstd(self.scores))

    def summary(self) -> dict[str, float]:
        """``{"mean": ..., "std": ..., "n": ...}`` over the examples."""
        return {"mean": self.mean, "std": self.std, "n": int(len(self.scores))}

    def __repr__(self) -> str:
        return f"MetricResult({self.name}: {self.mean:.4g} ± {self.std:.4g} over {len(self.scores)} examples)"


def forward_backend(model: Model | Backend, backend: str | Backend = "auto") -> tuple[Model | None, Backend]:
    """The model and the backend a forward-only metric runs on (ONNX Runtime under ``"auto"``)."""
    if isinstance(model, Backend):
        model.require(frozenset({Capability.FORWARD}), "this metric")
        return model.model, model
    if not isinstance(model, Model):
        raise InputValidationError(
            f"model must be an onnxplain Model (from ox.load) or a Backend, got {type(model).__name__}"
        )
    return model, model.backend_for(frozenset({Capability.FORWARD}), backend, what="this metric")


def check_batch_size(batch_size: Any) -> int:
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputValidationError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def check_positive_int(value: Any, name: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise InputValidationError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_real(value: Any, name: str, low: float = 0.0) -> float:
    """``value`` as a float, checked to be a finite real number ≥ ``low``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value < low:
        raise InputValidationError(f"{name} must be a finite number >= {low:g}, got {value!r}")
    return float(value)


def check_model(model: Any, name: str = "model") -> Model:
    if not isinstance(model, Model):
        raise InputValidationError(
            f"{name} must be an onnxplain Model (from ox.load), got {type(model).__name__}"
        )
    return model


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InputValidationError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def inputs_of(model: Model | None, x: Any) -> np.ndarray:
    x = check_input(model, x)
    if x.ndim != 4:
        raise InputValidationError(f"inputs must be images (N, C, H, W), got shape {x.shape}")
    return x


def predict(backend: Backend, x: np.ndarray, batch_size: int) -> np.ndarray:
    """The model output (N, classes) in chunks of ``batch_size``."""
    outs = [backend.predict(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    out = np.concatenate(outs).astype(np.float64)
    return out.reshape(len(x), -1)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def resolve_classes(target: Any, n: int, predict_fn: Callable[[], np.ndarray]) -> np.ndarray:
    """``None`` (the predicted class), an int, or one int per example -> (N,) int64."""
    if target is None:
        return predict_fn().argmax(axis=1).astype(np.int64)
    arr = np.asarray(target)
    if not np.issubdtype(arr.dtype, np.integer) or arr.ndim > 1:
        raise InputValidationError(
            f"target must be None, an int or one int per example for this metric, got {target!r}"
        )
    if arr.ndim == 0:
        return np.full(n, int(arr), dtype=np.int64)
    if len(arr) != n:
        raise InputValidationError(f"target has {len(arr)} entries but there are {n} examples")
    return arr.astype(np.int64)


class Scorer:
    """The target score of each row of a batch: the output (``softmax=False``) or the
    class probability (``softmax=True``), computed ``batch_size`` rows at a time."""

    def __init__(self, backend: Backend, batch_size: int, softmax: bool) -> None:
        self.backend, self.batch_size, self.softmax = backend, batch_size, softmax

    def __call__(self, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
        out = predict(self.backend, x, self.batch_size)
        if self.softmax:
            out = softmax(out)
        return out[np.arange(len(x)), classes]


def explain(explainer: Explainer, x: np.ndarray, classes: np.ndarray, **kwargs: Any) -> np.ndarray:
    """Attributions of ``x`` for ``classes`` from a method instance or a callable."""
    from onnxplain.methods.base import Attribution

    if isinstance(explainer, Attribution):
        attr = explainer.attribute(x, target=classes, **kwargs)
    elif callable(explainer):
        attr = explainer(x, target=classes, **kwargs)
    else:
        raise InputValidationError(
            "explainer must be an onnxplain method (e.g. ox.Saliency(model)) or a callable "
            f"explain(inputs, target=...) -> attributions, got {type(explainer).__name__}"
        )
    attr = np.asarray(attr)
    if attr.shape[:1] != (len(x),):
        raise InputValidationError(
            f"the explainer returned shape {attr.shape} for {len(x)} inputs; it must return one "
            "attribution per example"
        )
    return attr


def attributions_or_explain(
    attributions: Any, x: np.ndarray, classes: np.ndarray, batch_size: int
) -> np.ndarray:
    """An attribution array as given, or computed by an explainer ``batch_size`` at a time."""
    if isinstance(attributions, np.ndarray) or (
        hasattr(attributions, "shape") and hasattr(attributions, "dtype") and not callable(attributions)
    ):
        attr = np.asarray(attributions)
        if attr.shape[:1] != (len(x),):
            raise InputValidationError(f"attributions have shape {attr.shape} but there are {len(x)} inputs")
        return attr
    parts = [explain(attributions, x[s], classes[s]) for s in chunks(len(x), batch_size)]
    return np.concatenate(parts)


def pixel_map(attr: np.ndarray, x: np.ndarray, name: str = "attributions") -> np.ndarray:
    """(N, H, W) float64 from (N, H, W), (N, 1, H, W) or (N, C, H, W) attributions
    (channels summed, as the RISE and ROAD papers rank pixels)."""
    h, w = x.shape[-2:]
    attr = np.asarray(attr, dtype=np.float64)
    if attr.ndim == 4 and attr.shape[2:] == (h, w):
        return attr.sum(axis=1)
    if attr.ndim == 3 and attr.shape[1:] == (h, w):
        return attr
    raise InputValidationError(
        f"{name} must have shape (N, H, W) or (N, C, H, W) with H, W = {(h, w)}, got {attr.shape}"
    )


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def example_streams(seed: int | None, n: int) -> list[np.random.Generator]:
    """One random stream per example: example i's noise depends on ``(seed, i)`` only, so
    results do not depend on the batch size (and a reference can replay the noise)."""
    seed = check_seed(seed, "metric")
    if seed is None:
        seeds = np.random.SeedSequence().spawn(n)
        return [np.random.default_rng(s) for s in seeds]
    return [np.random.default_rng([int(seed), i]) for i in range(n)]


def progress(items, total: int, show: bool | None, desc: str):
    from tqdm.auto import tqdm

    disable = None if show is None else not show
    yield from tqdm(items, total=total, disable=disable, desc=desc, leave=False)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two arrays (average ranks for ties); NaN if one is constant."""
    ra, rb = rankdata(a.ravel()), rankdata(b.ravel())
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def rankdata(a: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) like ``scipy.stats.rankdata``."""
    a = np.asarray(a, dtype=np.float64).ravel()
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    starts = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, len(a)])
    avg = first + (counts + 1) / 2.0
    ranks = np.empty(len(a))
    ranks[order] = avg[group]
    return ranks
