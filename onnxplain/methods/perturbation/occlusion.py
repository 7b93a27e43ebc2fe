"""Occlusion: Zeiler & Fergus, ECCV 2014.

A window slides over the input; inside it the input is replaced by the baseline, and
every feature the window covered is credited with the drop of the target score,

    attribution(x)_i = mean over windows W ∋ i of  S_c(x) − S_c(x with W := baseline),

exactly as Captum's ``Occlusion`` defines it (windows clipped at the far edges).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pydantic

from onnxplain.backends.base import Capability
from onnxplain.core.errors import InputValidationError
from onnxplain.core.targets import TargetLike
from onnxplain.core.validation import Params, validate_params
from onnxplain.methods.base import Attribution, expand_baseline


class _OcclusionParams(Params):
    sliding_window_shapes: tuple[pydantic.PositiveInt, ...]
    strides: tuple[pydantic.PositiveInt, ...]
    perturbations_per_eval: pydantic.PositiveInt | None = None


def _per_dim(value: Any, ndim: int, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        return (int(value),) * ndim
    value = tuple(value)
    if len(value) != ndim:
        raise InputValidationError(
            f"{name} has {len(value)} entries but each example has {ndim} dims; give one per "
            f"dim of (C, H, W), e.g. (3, 16, 16)"
        )
    return value


class Occlusion(Attribution):
    """Sliding-window occlusion (Captum's argument names and results).

    Windows are evaluated in batches of ``perturbations_per_eval`` per example (default:
    as many as fill the backend's ``max_batch_size``), so memory is set by that number
    and not by the number of windows.
    """

    requires = frozenset({Capability.FORWARD})

    def attribute(
        self,
        inputs: Any,
        sliding_window_shapes: tuple[int, ...],
        strides: int | tuple[int, ...] | None = None,
        baselines: Any = 0.0,
        target: TargetLike = None,
        perturbations_per_eval: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        x = self._inputs(inputs)
        dims = x.shape[1:]
        window = _per_dim(sliding_window_shapes, len(dims), "sliding_window_shapes")
        stride = _per_dim(1 if strides is None else strides, len(dims), "strides")
        p = validate_params(_OcclusionParams, "Occlusion", sliding_window_shapes=window,
                            strides=stride, perturbations_per_eval=perturbations_per_eval)
        for d, w, s in zip(dims, window, stride):
            if w > d:
                raise InputValidationError(
                    f"sliding_window_shapes {window} exceeds the input dims {dims}"
                )
            if w < d and s > w:
                raise InputValidationError(
                    f"strides {stride} larger than sliding_window_shapes {window} would skip features"
                )
        base = expand_baseline(baselines, x)
        objective = self._objective(x, target)
        n = len(x)
        initial = self._scores(x, objective)
        # window starts per dim, as Captum: ceil((D - w) / s) + 1 positions, the last clipped
        starts = [range(0, (int(np.ceil((d - w) / s)) + 1) * s, s) for d, w, s in zip(dims, window, stride)]
        windows = [tuple(slice(a, min(a + w, d)) for a, w, d in zip(pos, window, dims))
                   for pos in itertools.product(*starts)]
        per_eval = p.perturbations_per_eval or max(1, self.backend.max_batch_size // n)
        total = np.zeros(x.shape, dtype=np.float64)
        counts = np.zeros(dims, dtype=np.float64)
        groups = [windows[i:i + per_eval] for i in range(0, len(windows), per_eval)]
        for group in self._progress(groups, len(groups), show_progress, "Occlusion"):
            batch = np.repeat(x[None], len(group), axis=0)  # (windows, N, ...)
            for k, win in enumerate(group):
                region = (k, slice(None), *win)
                batch[region] = base[(slice(None), *win)]
            scores = self._scores(batch.reshape(-1, *dims), objective.take(np.tile(np.arange(n), len(group))))
            drops = initial[None, :] - scores.reshape(len(group), n)
            for k, win in enumerate(group):
                total[(slice(None), *win)] += drops[k].reshape(n, *([1] * len(dims)))
                counts[win] += 1
        return (total / counts).astype(x.dtype)
