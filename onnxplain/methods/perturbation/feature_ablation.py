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
from onnxplain.core.targets import TargetLike
from onnxplain.core.validation import Params, Seed, validate_params
from onnxplain.infill import Infill
from onnxplain.methods._feature_mask import read_feature_mask
from onnxplain.methods.perturbation.base import Filler, PerturbationAttribution


class _AblationParams(Params):
    perturbations_per_eval: pydantic.PositiveInt | None = None
    batch_size: pydantic.PositiveInt | None = None
    seed: Seed = None
    incremental: pydantic.StrictBool = False


class FeatureAblation(PerturbationAttribution):
    """Remove groups of features and measure the target's drop (Captum's semantics).

    ``feature_mask``: integer group ids, (H, W), (N or 1, H, W) one per example (as
    :mod:`onnxplain.segmentation` returns, also when N == C), (C, H, W) or (N or 1, C, H, W),
    size-1 dims broadcast; the rule is shared with Lime, KernelShap and ShapleyValueSampling
    (:mod:`onnxplain.methods._feature_mask`).
    ``baselines`` (Captum's constant fill, default 0) or ``infill`` (any
    :mod:`onnxplain.infill` strategy) replaces a removed group. Groups are evaluated
    ``perturbations_per_eval`` at a time per example (default: as many as fill
    ``batch_size`` rows, itself defaulting to the backend's ``max_batch_size``).

    ``incremental=True`` (images (N, C, H, W) only) re-runs, for each group, only the early
    layers' region its bounding box can reach and the rest of the network from there
    (Nakandala et al., SIGMOD 2019; see :mod:`onnxplain.core.incremental`): the same
    attributions up to float rounding, faster on CNNs whose early layers are spatially
    local when the groups are compact (superpixels, patches). Where it would not pay, or
    on a backend that is not a registered one, it silently makes the usual full passes
    (``False``, the default).
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
        incremental: bool = False,
    ) -> np.ndarray:
        x = self._inputs(inputs)
        p = validate_params(_AblationParams, "FeatureAblation",
                            perturbations_per_eval=perturbations_per_eval,
                            batch_size=batch_size, seed=seed, incremental=incremental)
        mask = read_feature_mask(feature_mask, x)
        fill = self._infill(x, baselines, infill)
        objective = self._objective(x, target)
        rows = self._batch_size(p.batch_size)
        per_eval = p.perturbations_per_eval or max(1, rows // len(x))
        ids, index = np.unique(mask, return_inverse=True)  # index: each value's feature number
        filler = Filler(fill, x, np.random.default_rng(p.seed))
        drops = np.zeros((len(ids), len(x)))  # (feature, example)
        done = 0
        boxes = None
        if p.incremental and x.ndim == 4:  # each group's (h0, h1, w0, w1)
            from onnxplain.methods.perturbation._incremental import label_boxes

            boxes = label_boxes(mask, x.shape[2:])
        for group, d in self._ablate(x, objective, ids.tolist(), lambda f: mask == f, filler,
                                     per_eval, rows, show_progress, "FeatureAblation",
                                     p.incremental, boxes):
            drops[done:done + len(group)] = d
            done += len(group)
        # every input value gets the drop of its own feature, for its own example
        example = np.arange(len(x)).reshape(-1, *([1] * (x.ndim - 1)))
        return drops[np.broadcast_to(index.reshape(mask.shape), x.shape), example].astype(x.dtype)
