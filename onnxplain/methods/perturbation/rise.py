"""RISE, randomized input sampling: Petsiuk, Das & Saenko, BMVC 2018 (arXiv 1806.07421).

N random masks M_i are drawn: an s×s grid of cells, each kept with probability p,
upsampled bilinearly to (s+1)·C_H × (s+1)·C_W (C = ⌈H/s⌉ × ⌈W/s⌉, the cell size) and
cropped to H × W at a random shift in [0, C_H) × [0, C_W). The saliency of pixel λ is the
score-weighted average of the masks,

    S(λ) = 1 / (N · p) · Σ_i f(x ⊙ M_i) · M_i(λ),

the Monte-Carlo estimate of E[f(x ⊙ M) | M(λ) = 1]. ``x ⊙ M`` keeps the input where the
mask is 1; the removed part is filled with zeros as in the paper, or with any in-fill
(``x ⊙ M + fill ⊙ (1 − M)``). f is the target score as the model outputs it (the paper
used class probabilities: explain a model that ends in Softmax to match).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydantic

from onnxplain.backends.base import Capability
from onnxplain.core.errors import InputValidationError
from onnxplain.core.targets import TargetLike
from onnxplain.core.validation import Params, Seed, validate_params
from onnxplain.infill import Infill
from onnxplain.methods.perturbation._ops import interp_matrix
from onnxplain.methods.perturbation.base import Filler, PerturbationAttribution


class _RISEParams(Params):
    n_masks: pydantic.PositiveInt
    s: tuple[pydantic.PositiveInt, pydantic.PositiveInt]
    p: float = pydantic.Field(gt=0, le=1)
    batch_size: pydantic.PositiveInt | None = None
    seed: Seed = None


class RISEMasks:
    """The RISE masks, drawn chunk by chunk: chunk j is the same whatever the chunk size.

    Cell states come from one random stream and shifts from another (both seeded), so mask
    i depends only on ``seed`` and i. Each chunk is computed directly at the input size,
    ``M = R_y[shift_y + :H] · grid · R_x[shift_x + :W]ᵀ``, never at the upsampled size.
    """

    def __init__(self, size: tuple[int, int], s: tuple[int, int], p: float, seed: int | None) -> None:
        self.h, self.w = size
        self.sy, self.sx = s
        self.p = p
        self.cell = (int(np.ceil(self.h / self.sy)), int(np.ceil(self.w / self.sx)))
        up = ((self.sy + 1) * self.cell[0], (self.sx + 1) * self.cell[1])
        self.ry = interp_matrix(self.sy, up[0]).astype(np.float32)
        self.rx = interp_matrix(self.sx, up[1]).astype(np.float32)
        cells, shifts = np.random.SeedSequence(seed).spawn(2)
        self._cells = np.random.default_rng(cells)
        self._shifts = np.random.default_rng(shifts)

    def next(self, count: int) -> np.ndarray:
        """The next ``count`` masks, (count, H, W) float32 in [0, 1]."""
        grid = (self._cells.random((count, self.sy, self.sx)) < self.p).astype(np.float32)
        shift = np.floor(self._shifts.random((count, 2)) * self.cell).astype(np.int64)
        rows = self.ry[shift[:, :1] + np.arange(self.h)]  # (count, H, sy)
        cols = self.rx[shift[:, 1:] + np.arange(self.w)]  # (count, W, sx)
        return np.matmul(np.matmul(rows, grid), cols.transpose(0, 2, 1))


class RISE(PerturbationAttribution):
    """Randomized input sampling for explanation (forward passes only).

    ``n_masks``: N (the paper used 4000 at 224×224); ``s``: the grid size (s×s cells, an
    int or (s_H, s_W)); ``p``: the probability that a cell is kept. Masks are generated
    and evaluated ``batch_size`` at a time (default: the backend's ``max_batch_size``), so
    memory does not grow with ``n_masks``. ``seed`` makes the masks (and random in-fills)
    reproducible, independently of ``batch_size``: the fill of example i under mask j is
    drawn from its own generator keyed by (seed, i, j). Returns (N, H, W) maps.
    """

    requires = frozenset({Capability.FORWARD})

    def attribute(
        self,
        inputs: Any,
        target: TargetLike = None,
        n_masks: int = 4000,
        s: int | tuple[int, int] = 7,
        p: float = 0.5,
        baselines: Any = None,
        infill: Infill | None = None,
        batch_size: int | None = None,
        seed: int | None = 0,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        x = self._inputs(inputs)
        h, w = self._images(x, "RISE")
        grid = (s, s) if isinstance(s, (int, np.integer, float)) else s  # the rest: pydantic's check
        prm = validate_params(_RISEParams, "RISE", n_masks=n_masks, s=grid, p=p,
                              batch_size=batch_size, seed=seed)
        if prm.s[0] > h or prm.s[1] > w:
            raise InputValidationError(f"RISE: s={prm.s} cells exceed the input size {(h, w)}")
        fill = self._infill(x, baselines, infill)
        objective = self._objective(x, target)
        chunk = self._batch_size(prm.batch_size)
        masks = RISEMasks((h, w), prm.s, prm.p, prm.seed)
        # a random fill of (example i, mask j) is keyed by (seed, i, j): batch-size independent
        filler = Filler(fill, x, np.random.SeedSequence(prm.seed))
        saliency = np.zeros((len(x), h * w), dtype=np.float64)
        starts = list(range(0, prm.n_masks, chunk))
        for start in self._progress(starts, len(starts), show_progress, "RISE"):
            size = min(chunk, prm.n_masks - start)
            m = masks.next(size)
            keep = m[:, None]
            for i in range(len(x)):
                rows = np.full(size, i)
                keys = np.stack([rows, np.arange(start, start + size)], axis=1)
                batch = filler(rows, np.broadcast_to(x[i], (size, *x.shape[1:])), keep, keys)
                scores = self._scores(batch, objective.take(rows))
                # float32 products of one batch (no float64 copy of the masks), summed in float64
                saliency[i] += scores.astype(m.dtype) @ m.reshape(size, h * w)
        saliency /= prm.n_masks * prm.p
        return saliency.reshape(len(x), h, w).astype(x.dtype)
