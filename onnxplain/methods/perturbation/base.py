"""What the perturbation methods share: in-fills, the batched evaluation loop, checks.

A perturbation method replaces parts of the input by a *fill* (``baselines`` in Captum's
words, or any :mod:`onnxplain.infill` strategy) and watches the target's score. The
evaluation loop here batches perturbations so that the rows sent to the model at once
never exceed ``batch_size``, whatever the number of perturbations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from onnxplain.backends.base import batches
from onnxplain.core.errors import InputValidationError
from onnxplain.core.targets import Objective
from onnxplain.infill import Constant, Infill, blend
from onnxplain.methods.base import Attribution, expand_baseline, take_rows

T = TypeVar("T")


class Filler:
    """An in-fill bound to the inputs ``x``: a fill that depends neither on the mask nor on
    chance is computed once; others are computed for every batch of perturbed rows.

    ``rng``: a ``numpy.random.Generator`` draws random fills batch by batch from one stream
    (the draws then depend on how rows are batched); a ``numpy.random.SeedSequence`` keys
    them instead: given ``keys`` (R, 2) = (example index, perturbation index) per row, the
    fill of row r is drawn from ``default_rng(SeedSequence(entropy, spawn_key=(*spawn_key,
    *keys[r])))``, so it is the same whatever the batch size (or the device's default).
    """

    def __init__(
        self, infill: Infill, x: np.ndarray, rng: np.random.Generator | np.random.SeedSequence
    ) -> None:
        self.infill = infill
        self.seeds = rng if isinstance(rng, np.random.SeedSequence) else None
        self.rng = np.random.default_rng(rng) if self.seeds is not None else rng
        self.static: np.ndarray | None = None
        if not (infill.mask_dependent or infill.stochastic):
            ref = np.asarray(infill.fill(x, None, self.rng), dtype=x.dtype)
            if ref.shape != x.shape:
                raise InputValidationError(
                    f"infill {infill!r} returned shape {ref.shape} for inputs of shape {x.shape}"
                )
            self.static = ref
        #: the fill is the constant 0 (keep ⊙ x + (1 − keep) ⊙ 0 = keep ⊙ x, up to the sign of 0)
        self.zero = self.static is not None and not self.static.any()

    def reference(
        self, rows: np.ndarray, batch: np.ndarray, keep: np.ndarray | None, keys: np.ndarray | None = None
    ) -> np.ndarray:
        """The fill for ``batch`` (= the examples ``rows`` of x) under ``keep``; ``keys``
        (R, 2): each row's (example, perturbation) key for a keyed random fill."""
        if self.static is not None:
            return take_rows(self.static, rows)
        if self.seeds is not None and keys is not None and self.infill.stochastic:
            return self._keyed(batch, keep, np.asarray(keys, dtype=np.int64))
        return np.asarray(self.infill.fill(batch, keep, self.rng), dtype=batch.dtype)

    def _keyed(self, batch: np.ndarray, keep: np.ndarray | None, keys: np.ndarray) -> np.ndarray:
        """One fill per row, each from its own generator keyed by (seed, example, perturbation)."""
        assert self.seeds is not None
        out = np.empty(batch.shape, dtype=batch.dtype)
        per_row = keep is not None and np.ndim(keep) == batch.ndim and len(keep) == len(batch) > 1
        for r in range(len(batch)):
            seq = np.random.SeedSequence(
                self.seeds.entropy, spawn_key=(*self.seeds.spawn_key, *(int(k) for k in keys[r]))
            )
            row_keep = keep[r:r + 1] if per_row else keep
            out[r] = np.asarray(self.infill.fill(batch[r:r + 1], row_keep, np.random.default_rng(seq)))[0]
        return out

    def __call__(
        self, rows: np.ndarray, batch: np.ndarray, keep: np.ndarray, keys: np.ndarray | None = None
    ) -> np.ndarray:
        """The perturbed rows: ``keep ⊙ batch + (1 − keep) ⊙ fill``."""
        if self.zero:  # the default fill, 0: the blend is one product (x·1 = x, x·0 = ±0)
            # a float mask multiplies faster than a bool one, which numpy casts element by element
            return np.multiply(batch, np.asarray(keep).astype(batch.dtype, copy=False))
        ref = self.reference(rows, batch, keep if self.infill.mask_dependent else None, keys)
        return blend(batch, keep, ref)


def perturb(
    x: np.ndarray, group: Sequence[T], removed: Callable[[T], np.ndarray], filler: Filler
) -> tuple[np.ndarray, np.ndarray]:
    """Which example each row is, and the rows: ``group``'s perturbations of every example
    of ``x``, perturbation-major (row ``k·N + i``: perturbation k of example i)."""
    n, k = len(x), len(group)
    rows = np.tile(np.arange(n), k)
    keep = ~np.stack([removed(p) for p in group])  # (k, 1 or N, ...), the masks' own size
    keep = np.broadcast_to(keep, (k, n, *keep.shape[2:])).reshape(k * n, *keep.shape[2:])
    return rows, filler(rows, take_rows(x, rows), keep)


class PerturbationAttribution(Attribution):
    """Base of the perturbation family (forward passes only unless a method says so)."""

    # -- arguments ---------------------------------------------------------------------
    @staticmethod
    def _infill(
        x: np.ndarray, baselines: Any, infill: Infill | None, default: Callable[[], Infill] | None = None
    ) -> Infill:
        """The fill from ``baselines`` (Captum's constant) or ``infill``, not both."""
        if infill is not None:
            if baselines is not None:
                raise InputValidationError(
                    "pass either baselines (a constant fill) or infill (any onnxplain.infill "
                    "strategy), not both"
                )
            if not isinstance(infill, Infill):
                raise InputValidationError(
                    f"infill must be an onnxplain.infill strategy (e.g. infill.GaussianBlur(5)), "
                    f"got {type(infill).__name__}"
                )
            return infill
        if baselines is None:
            return default() if default is not None else Constant(0.0)
        return Constant(expand_baseline(baselines, x))

    @staticmethod
    def _images(x: np.ndarray, what: str) -> tuple[int, int]:
        if x.ndim != 4:
            raise InputValidationError(
                f"{what} explains images: inputs must have shape (N, C, H, W), got {x.shape}"
            )
        return x.shape[2], x.shape[3]

    def _batch_size(self, batch_size: int | None) -> int:
        return int(batch_size) if batch_size is not None else self.backend.max_batch_size

    # -- evaluation --------------------------------------------------------------------
    def _scores_batched(self, batch: np.ndarray, objective: Objective, batch_size: int) -> np.ndarray:
        """Scores of every row of ``batch``, at most ``batch_size`` rows per forward pass."""
        if len(batch) <= batch_size:
            return self._scores(batch, objective)
        return np.concatenate(
            [self._scores(batch[sl], objective.take(sl)) for sl in batches(len(batch), batch_size)]
        )

    def _ablate(
        self,
        x: np.ndarray,
        objective: Objective,
        perturbations: Sequence[T],
        removed: Callable[[T], np.ndarray],
        filler: Filler,
        per_eval: int,
        batch_size: int,
        show_progress: bool | None,
        desc: str,
        incremental: bool = False,
        boxes: np.ndarray | None = None,
    ) -> Iterator[tuple[list[T], np.ndarray]]:
        """The shared loop of Occlusion and FeatureAblation.

        ``removed(p)`` is a boolean array, broadcastable to ``x``, of the features that
        perturbation ``p`` removes; all have the same shape, with a leading dim of 1 or N.
        ``per_eval`` perturbations are evaluated together on all N examples (rows ordered
        perturbation-major, as in Captum). Yields each group and the score drops
        ``S(x) − S(x̃)`` of shape (len(group), N).

        The masks stay at their own size (a mask shared by the channels is not copied per
        channel) and one example is broadcast, not copied, so each row of a batch is
        written once, by the blend.

        ``incremental``: evaluate through
        :mod:`onnxplain.methods.perturbation._incremental` (the same drops up to float
        rounding) where a plan pays, else as below; ``boxes`` (P, 4): each perturbation's
        spatial bounding box (h0, h1, w0, w1), if the caller knows them.
        """
        if incremental:
            from onnxplain.methods.perturbation._incremental import incremental_ablate

            found = incremental_ablate(self, x, objective, perturbations, removed, filler, per_eval,
                                       batch_size, show_progress, desc, boxes)
            if found is not None:
                yield from found
                return
        n = len(x)
        initial = self._scores_batched(x, objective, batch_size)
        groups = [list(perturbations[i:i + per_eval]) for i in range(0, len(perturbations), per_eval)]
        for group in self._progress(groups, len(groups), show_progress, desc):
            rows, perturbed = perturb(x, group, removed, filler)
            scores = self._scores_batched(perturbed, objective.take(rows), batch_size)
            yield group, initial[None, :] - scores.reshape(len(group), n)
