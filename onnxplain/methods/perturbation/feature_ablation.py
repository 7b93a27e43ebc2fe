"""Feature ablation (Captum's ``FeatureAblation``).

The features are grouped by an integer ``feature_mask``; each group f is removed at once
(replaced by the baseline or an in-fill) and every feature of the group is credited with
the drop of the target score:

    attribution(x)_i = S_c(x) − S_c(x with group f(i) := fill).

Without a ``feature_mask`` every scalar of the input is its own group. Occlusion is the
special case of rectangular, overlapping groups; both share one batched loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydantic

from onnxplain.backends.base import Capability
from onnxplain.core.errors import InputValidationError
from onnxplain.core.targets import TargetLike
from onnxplain.core.validation import Params, validate_params
from onnxplain.infill import Infill
from onnxplain.methods.perturbation.base import Filler, PerturbationAttribution


class _AblationParams(Params):
    perturbations_per_eval: pydantic.PositiveInt | None = None
    batch_size: pydantic.PositiveInt | None = None
    seed: int | None = None


def _feature_mask(feature_mask: Any, x: np.ndarray) -> np.ndarray:
    """The mask as an integer array with a batch axis (1 or N), broadcastable to ``x``."""
    if feature_mask is None:
        return np.arange(int(np.prod(x.shape[1:]))).reshape(1, *x.shape[1:])
    if hasattr(feature_mask, "detach") and hasattr(feature_mask, "cpu"):
        feature_mask = feature_mask.detach().cpu().numpy()
    mask = np.asarray(feature_mask)
    if not np.issubdtype(mask.dtype, np.integer):
        raise InputValidationError(
            f"feature_mask must hold integers (one group id per feature), got dtype {mask.dtype}"
        )
    if mask.ndim < x.ndim:  # numpy broadcasting: (C, H, W) or (H, W) gain leading axes
        mask = mask.reshape((1,) * (x.ndim - mask.ndim) + mask.shape)
    ok = mask.ndim == x.ndim and mask.shape[0] in (1, len(x))
    try:
        np.broadcast_shapes(mask.shape, x.shape)
    except ValueError:
        ok = False
    if not ok:
        raise InputValidationError(
            f"feature_mask of shape {np.shape(feature_mask)} does not fit the inputs' shape "
            f"{x.shape}; give one group id per feature, (1 or N, C, H, W), (C, H, W) or (H, W), "
            "where dims of size 1 broadcast (e.g. (1, 1, H, W) groups the channels together)"
        )
    return mask


class FeatureAblation(PerturbationAttribution):
    """Remove groups of features and measure the target's drop (Captum's semantics).

    ``feature_mask``: integer group ids, (1 or N, C, H, W), size-1 dims broadcast; a mask
    with fewer dims gains leading ones, so (H, W) groups the channels of each pixel.
    ``baselines`` (Captum's constant fill, default 0) or ``infill`` (any
    :mod:`onnxplain.infill` strategy) replaces a removed group. Groups are evaluated
    ``perturbations_per_eval`` at a time per example (default: as many as fill
    ``batch_size`` rows, itself defaulting to the backend's ``max_batch_size``).
    """

    requires = frozenset({Capability.FORWARD})

    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: TargetLike = None,
        feature_mask: Any = None,
        perturbations_per_eval: int | None = None,
        infill: Infill | None = None,
        batch_size: int | None = None,
        seed: int | None = 0,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        x = self._inputs(inputs)
        p = validate_params(_AblationParams, "FeatureAblation",
                            perturbations_per_eval=perturbations_per_eval,
                            batch_size=batch_size, seed=seed)
        mask = _feature_mask(feature_mask, x)
        fill = self._infill(x, baselines, infill)
        objective = self._objective(x, target)
        rows = self._batch_size(p.batch_size)
        per_eval = p.perturbations_per_eval or max(1, rows // len(x))
        features = np.unique(mask).tolist()
        filler = Filler(fill, x, np.random.default_rng(p.seed))
        total = np.zeros(x.shape, dtype=np.float64)
        for group, drops in self._ablate(x, objective, features, lambda f: mask == f, filler,
                                         per_eval, rows, show_progress, "FeatureAblation"):
            for k, f in enumerate(group):
                total += drops[k].reshape(-1, *([1] * (x.ndim - 1))) * (mask == f)
        return total.astype(x.dtype)
