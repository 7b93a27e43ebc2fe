"""Occlusion: Zeiler & Fergus, ECCV 2014.

A window slides over the input; inside it the input is replaced by the baseline (or any
in-fill), and every feature the window covered is credited with the drop of the target
score,

    attribution(x)_i = mean over windows W ∋ i of  S_c(x) − S_c(x with W := fill),

exactly as Captum's ``Occlusion`` defines it (windows clipped at the far edges).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pydantic

from onnxplain.backends.base import Capability
from onnxplain.core.errors import InputValidationError
from onnxplain.core.targets import TargetLike
from onnxplain.core.validation import Params, Seed, validate_params
from onnxplain.infill import Infill
from onnxplain.methods.perturbation.base import Filler, PerturbationAttribution


class _OcclusionParams(Params):
    sliding_window_shapes: tuple[pydantic.PositiveInt, ...]
    strides: tuple[pydantic.PositiveInt, ...]
    perturbations_per_eval: pydantic.PositiveInt | None = None
    batch_size: pydantic.PositiveInt | None = None
    seed: Seed = None
    incremental: pydantic.StrictBool = False


def _per_dim(value: Any, ndim: int, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        return (int(value),) * ndim
    if not isinstance(value, (Sequence, np.ndarray)) or isinstance(value, str):
        raise InputValidationError(
            f"{name} must be an int or one int per dim of (C, H, W), e.g. (3, 16, 16); got {value!r}"
        )
    value = tuple(value)
    if len(value) != ndim:
        raise InputValidationError(
            f"{name} has {len(value)} entries but each example has {ndim} dims; give one per "
            f"dim of (C, H, W), e.g. (3, 16, 16)"
        )
    return value


class Occlusion(PerturbationAttribution):
    """Sliding-window occlusion (Captum's argument names and results).

    ``baselines`` (Captum's constant fill, default 0) or ``infill`` (any
    :mod:`onnxplain.infill` strategy) says what replaces the window. Windows are evaluated
    in groups of ``perturbations_per_eval`` per example (default: as many as fill
    ``batch_size`` rows, itself defaulting to the backend's ``max_batch_size``), so memory
    is set by those numbers and not by the number of windows. ``seed`` seeds random fills.

    ``incremental=True`` (images (N, C, H, W) only) re-runs, for each window, only the
    early layers' region the window can reach, pasted into the unperturbed feature map,
    and the rest of the network from there (Nakandala et al., SIGMOD 2019; see
    :mod:`onnxplain.core.incremental`): the same attributions up to float rounding, faster
    on CNNs whose early layers are spatially local (convolutions, pooling, per-channel
    ops) and small windows. Where it would not pay, or on a backend that is not a
    registered one, it silently makes the usual full passes (``False``, the default).
    """

    requires = frozenset({Capability.FORWARD})

    def attribute(
        self,
        inputs: Any,
        sliding_window_shapes: tuple[int, ...],
        strides: int | tuple[int, ...] | None = None,
        baselines: Any = None,
        target: TargetLike = None,
        perturbations_per_eval: int | None = None,
        infill: Infill | None = None,
        batch_size: int | None = None,
        seed: int | None = 0,
        show_progress: bool | None = None,
        incremental: bool = False,
    ) -> np.ndarray:
        x = self._inputs(inputs)
        dims = x.shape[1:]
        window = _per_dim(sliding_window_shapes, len(dims), "sliding_window_shapes")
        stride = _per_dim(1 if strides is None else strides, len(dims), "strides")
        p = validate_params(_OcclusionParams, "Occlusion", sliding_window_shapes=window,
                            strides=stride, perturbations_per_eval=perturbations_per_eval,
                            batch_size=batch_size, seed=seed, incremental=incremental)
        for d, w, s in zip(dims, window, stride):
            if w > d:
                raise InputValidationError(
                    f"sliding_window_shapes {window} exceeds the input dims {dims}"
                )
            if w < d and s > w:
                raise InputValidationError(
                    f"strides {stride} larger than sliding_window_shapes {window} would skip features"
                )
        fill = self._infill(x, baselines, infill)
        objective = self._objective(x, target)
        n = len(x)
        # window starts per dim, as Captum: ceil((D - w) / s) + 1 positions, the last clipped
        starts = [range(0, (int(np.ceil((d - w) / s)) + 1) * s, s) for d, w, s in zip(dims, window, stride)]
        windows = [tuple(slice(a, min(a + w, d)) for a, w, d in zip(pos, window, dims))
                   for pos in itertools.product(*starts)]
        rows = self._batch_size(p.batch_size)
        per_eval = p.perturbations_per_eval or max(1, rows // n)

        def removed(win: tuple[slice, ...]) -> np.ndarray:
            mask = np.zeros((1, *dims), dtype=bool)
            mask[(slice(None), *win)] = True
            return mask

        filler = Filler(fill, x, np.random.default_rng(p.seed))
        total = np.zeros(x.shape, dtype=np.float64)
        counts = np.zeros(dims, dtype=np.float64)
        boxes = None
        if p.incremental and x.ndim == 4:  # each window's (h0, h1, w0, w1)
            boxes = np.array([(w[1].start, w[1].stop, w[2].start, w[2].stop) for w in windows])
        for group, drops in self._ablate(x, objective, windows, removed, filler, per_eval, rows,
                                         show_progress, "Occlusion", p.incremental, boxes):
            for k, win in enumerate(group):
                total[(slice(None), *win)] += drops[k].reshape(n, *([1] * len(dims)))
                counts[win] += 1
        return (total / counts).astype(x.dtype)
