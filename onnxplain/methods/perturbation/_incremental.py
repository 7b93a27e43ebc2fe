"""Incremental evaluation of box-shaped perturbations (Occlusion, FeatureAblation).

The exact counterpart of :meth:`PerturbationAttribution._ablate` for CNNs whose early
layers are spatially local (Nakandala et al., SIGMOD 2019; the graph analysis is in
:mod:`onnxplain.core.incremental`): for every perturbed row x̃ (built by the same filler
as the full path, so random and mask-dependent fills give the same rows),

    T(x̃) = T(x) with the positions the box can reach replaced by head(crop of x̃),
    S(x̃) = tail(T(x̃)),

where ``head`` and ``tail`` are the two parts of the model cut at ``T``, run as
sub-models on the same kind of backend as the method. Crops of equal size are batched;
no backend call gets more than ``batch_size`` rows, and memory holds one group of
perturbations (the rows of one ``perturbations_per_eval`` step), as the full path does.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from onnxplain.backends import registry
from onnxplain.backends.base import Backend, batches
from onnxplain.core import incremental
from onnxplain.core.errors import OnnxplainError
from onnxplain.core.targets import Objective
from onnxplain.methods.perturbation.base import perturb

if TYPE_CHECKING:
    from onnxplain.methods.perturbation.base import Filler, PerturbationAttribution

T = TypeVar("T")
logger = logging.getLogger(__name__)


def mask_boxes(removed: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The bounding box (h0, h1, w0, w1), end exclusive, of a mask broadcastable to an
    (N, C, H, W) input of spatial ``size``; (0, 0, 0, 0) for an empty mask."""
    hw = np.shape(removed)[-2:]
    spatial = np.asarray(removed).reshape(-1, *hw).any(axis=0)
    rows, cols = np.flatnonzero(spatial.any(axis=1)), np.flatnonzero(spatial.any(axis=0))
    if not len(rows):
        return np.zeros(4, dtype=np.int64)
    box = np.array([[rows[0], rows[-1] + 1, cols[0], cols[-1] + 1]], dtype=np.int64)
    return _full_axes(box, hw, size)[0]


def _full_axes(boxes: np.ndarray, mask_hw: tuple[int, ...], size: tuple[int, int]) -> np.ndarray:
    """Boxes on a mask axis of size 1 broadcast over an input axis: the whole axis."""
    for axis, (m, d) in enumerate(zip(mask_hw, size)):
        if m == 1 and d > 1:
            nonempty = boxes[:, 2 * axis + 1] > boxes[:, 2 * axis]
            boxes[nonempty, 2 * axis], boxes[nonempty, 2 * axis + 1] = 0, d
    return boxes


def label_boxes(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The bounding box of each feature id of an integer ``mask`` (…, H, W) broadcastable
    to inputs of spatial ``size``, in the order of ``np.unique(mask)``: (ids, 4), the union
    over the leading axes."""
    mask = np.asarray(mask)
    h, w = mask.shape[-2:]
    ids, index = np.unique(mask, return_inverse=True)
    flat = index.ravel()
    hh = np.broadcast_to(np.arange(h)[:, None], mask.shape).ravel()
    ww = np.broadcast_to(np.arange(w)[None, :], mask.shape).ravel()
    out = np.zeros((len(ids), 4), dtype=np.int64)
    out[:, 0], out[:, 2] = h, w
    np.minimum.at(out[:, 0], flat, hh)
    np.maximum.at(out[:, 1], flat, hh + 1)
    np.minimum.at(out[:, 2], flat, ww)
    np.maximum.at(out[:, 3], flat, ww + 1)
    return _full_axes(out, (h, w), size)


def _backend_options(method: PerturbationAttribution) -> dict[str, Any]:
    """The backend options the method was constructed with (none when it got a Backend)."""
    args, kwargs = method.__dict__.get("_init_args", ((), {}))
    try:
        bound = inspect.signature(type(method).__init__).bind(method, *args, **kwargs)
    except TypeError:
        return {}
    params = inspect.signature(type(method).__init__).parameters.values()
    extra = next((p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    if isinstance(bound.arguments.get("backend"), Backend) or extra is None:
        return {}
    return dict(bound.arguments.get(extra) or {})


def _backends(method: PerturbationAttribution, plan: incremental.Plan) -> list[Backend] | None:
    """Backends of the method's kind for each stage and the tail, or None."""
    name = method.backend.name
    options = _backend_options(method)
    what = type(method).__name__
    try:
        return [
            m.backend_for(method.requires, name, what, **options)
            for m in [*(st.model for st in plan.stages), plan.tail]
        ]
    except Exception as exc:  # noqa: BLE001 - any failure: the full path stays correct
        logger.debug("incremental: cannot build %r backends for the sub-models: %s", name, exc)
        return None


def incremental_ablate(
    method: PerturbationAttribution,
    x: np.ndarray,
    objective: Objective,
    perturbations: Sequence[T],
    removed: Callable[[T], np.ndarray],
    filler: Filler,
    per_eval: int,
    batch_size: int,
    show_progress: bool | None,
    desc: str,
    boxes: np.ndarray | None = None,
) -> Iterator[tuple[list[T], np.ndarray]] | None:
    """What ``_ablate`` yields, computed incrementally; None when no plan pays (or the
    inputs are not images, the backend is not a registered one, the objective reads a
    tensor before the cut, the model is quantized), so the caller makes full passes. ``boxes`` (P, 4): each
    perturbation's bounding box (h0, h1, w0, w1) if known; else from ``removed``."""
    model = method.model
    if model is None or x.ndim != 4 or not len(perturbations):
        return None
    if model.quantized:  # its sub-models would run the float simulation, not the integer graph
        logger.debug("incremental: a quantized model; full passes")
        return None
    try:
        registry.entry(method.backend.name)
    except OnnxplainError:
        logger.debug("incremental: the %r backend is not registered; full passes", method.backend.name)
        return None
    size = (int(x.shape[2]), int(x.shape[3]))
    if boxes is None:
        boxes = np.stack([mask_boxes(removed(p), size) for p in perturbations])
    boxes = np.asarray(boxes, dtype=np.int64).reshape(len(perturbations), 4)
    try:
        plan = incremental.plan(model, size, boxes)
    except Exception as exc:  # noqa: BLE001 - an analysis failure must not break the method
        logger.debug("incremental: analysis failed: %s", exc)
        return None
    if plan is None:
        return None
    try:
        plan.tail.check_tensors([objective.tensor])
        after = objective.tensor != plan.tensor
    except OnnxplainError:
        after = False
    if not after:
        logger.debug("incremental: the objective reads %r, not after the cut", objective.tensor)
        return None
    found = _backends(method, plan)
    if found is None:
        return None
    run = _Run(plan, found, x, objective, boxes, batch_size)
    return run.groups(method, list(perturbations), removed, filler, per_eval, show_progress, desc)


def _index(axes: tuple[int, ...], h: slice, w: slice) -> tuple[slice, ...]:
    """The index of one example (no batch axis) of a tensor with (N, C, H, W) at ``axes``."""
    index = [slice(None)] * 3
    index[axes[2] - 1], index[axes[3] - 1] = h, w
    return tuple(index)


class _Run:
    """One call's incremental evaluation: the cut tensors of ``x``, each perturbation's
    windows per stage, and the loop over groups of perturbations."""

    def __init__(
        self,
        plan: incremental.Plan,
        backends: list[Backend],
        x: np.ndarray,
        objective: Objective,
        boxes: np.ndarray,
        batch_size: int,
    ) -> None:
        self.plan, self.objective, self.batch_size, self.x = plan, objective, batch_size, x
        self.stage_backends, self.tail = backends[:-1], backends[-1]
        self.windows = [st.windows(boxes) for st in plan.stages]  # per stage: target positions, source crop
        self.cached = {plan.stages[0].source: x}
        for st, be in zip(plan.stages, self.stage_backends):  # the unperturbed cuts of x
            src = self.cached[st.source]
            self.cached[st.target] = np.concatenate(
                [be.forward(src[sl], outputs=[st.target])[st.target] for sl in batches(len(x), batch_size)]
            )
        self.initial = self.tail_scores(self.cached[plan.tensor], np.arange(len(x)))

    def tail_scores(self, t: np.ndarray, rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(t))
        name = self.objective.tensor
        for sl in batches(len(t), self.batch_size):
            res = self.tail.forward(t[sl], outputs=[name])[name]
            out[sl] = self.objective.take(rows[sl]).scores(res)
        return out

    def groups(
        self,
        method: PerturbationAttribution,
        perturbations: list[T],
        removed: Callable[[T], np.ndarray],
        filler: Filler,
        per_eval: int,
        show_progress: bool | None,
        desc: str,
    ) -> Iterator[tuple[list[T], np.ndarray]]:
        n = len(self.x)
        starts = list(range(0, len(perturbations), per_eval))
        for start in method._progress(starts, len(starts), show_progress, desc):
            group = perturbations[start : start + per_eval]
            k = len(group)
            rows, perturbed = perturb(self.x, group, removed, filler)
            pert = np.repeat(np.arange(start, start + k), n)  # each row's perturbation
            patches = self.patches(perturbed, rows, pert)
            last = self.plan.stages[-1]
            pos = self.windows[-1][0]
            t_rows = self.cached[last.target][rows]  # copies, updated where the box reaches
            for r, patch in patches.items():
                p = pert[r]
                t_rows[r][_index(last.target_geometry.axes, slice(*pos[p, 0:2]), slice(*pos[p, 2:4]))] = patch
            yield group, self.initial[None, :] - self.tail_scores(t_rows, rows).reshape(k, n)

    def patches(self, perturbed: np.ndarray, rows: np.ndarray, pert: np.ndarray) -> dict[int, np.ndarray]:
        """Row → the values of the last cut at the positions its box changes, stage by stage."""
        patches: dict[int, np.ndarray] = {}
        for s, (st, be) in enumerate(zip(self.plan.stages, self.stage_backends)):
            pos, crop = self.windows[s]
            live = np.flatnonzero((pos[pert, 1] > pos[pert, 0]) & (pos[pert, 3] > pos[pert, 2]))
            if s:
                live = np.array([r for r in live if r in patches], dtype=np.int64)
            sizes = np.stack([crop[pert, 1] - crop[pert, 0], crop[pert, 3] - crop[pert, 2]], axis=1)
            new: dict[int, np.ndarray] = {}
            for hw in np.unique(sizes[live], axis=0) if len(live) else ():
                same = live[(sizes[live] == hw).all(axis=1)]
                for sl in batches(len(same), self.batch_size):
                    chosen = same[sl]
                    crops = np.stack([self.crop(s, perturbed, patches, r, rows[r], pert[r]) for r in chosen])
                    out = be.forward(crops, outputs=[st.target])[st.target]
                    dh, dw = (
                        crop[pert[chosen], 0] // st.relative.h.stride,
                        crop[pert[chosen], 2] // st.relative.w.stride,
                    )
                    for i, r in enumerate(chosen):
                        p = pert[r]
                        new[r] = out[i][
                            _index(
                                st.target_geometry.axes,
                                slice(pos[p, 0] - dh[i], pos[p, 1] - dh[i]),
                                slice(pos[p, 2] - dw[i], pos[p, 3] - dw[i]),
                            )
                        ]
            patches = new
        return patches

    def crop(
        self, s: int, perturbed: np.ndarray, patches: dict[int, np.ndarray], r: int, example: int, p: int
    ) -> np.ndarray:
        """Stage ``s``'s input crop for row ``r``: of the perturbed image, or of the cached
        cut with the previous stage's patch written over it."""
        st = self.plan.stages[s]
        crop = self.windows[s][1][p]
        axes = st.source_geometry.axes
        region = _index(axes, slice(crop[0], crop[1]), slice(crop[2], crop[3]))
        if s == 0:
            return perturbed[r][region]
        out = self.cached[st.source][example][region].copy()
        prev = self.windows[s - 1][0][p]  # the source positions the box changed
        h0, h1 = max(prev[0], crop[0]), min(prev[1], crop[1])
        w0, w1 = max(prev[2], crop[2]), min(prev[3], crop[3])
        if h1 > h0 and w1 > w0:
            out[_index(axes, slice(h0 - crop[0], h1 - crop[0]), slice(w0 - crop[2], w1 - crop[2]))] = patches[
                r
            ][_index(axes, slice(h0 - prev[0], h1 - prev[0]), slice(w0 - prev[2], w1 - prev[2]))]
        return out
