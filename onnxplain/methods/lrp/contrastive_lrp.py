"""Contrastive LRP (CLRP): Gu, Yang & Tresp, ACCV 2018 ("Understanding individual
decisions of CNNs via contrastive backpropagation").

LRP of one class also highlights what every class would: its maps hardly change with the
class. CLRP subtracts the relevance of a "dual" virtual class that stands for all other
classes (the authors' CLRP1, their code's default): with z the logits and t the target,

    R     = LRP(seed z_t e_t)                  (the target)
    R̄     = LRP(seed Σ_{i≠t} |z_i| e_i)         (the dual: all other classes)
    CLRP  = max(0, R / Σ R − R̄ / Σ R̄)          (each map normalised to sum 1)

Both passes use the same composite, by default deep Taylor (z⁺ in hidden layers, z^B at
the input when ``low``/``high`` are given, w² otherwise), as the authors do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxplain.core.targets import TargetLike
from onnxplain.methods.lrp.base import ClassContrastBase, SeededObjective, per_example_sum


class ContrastiveLRP(ClassContrastBase):
    """Contrastive LRP (Gu et al. 2018), the formula in this module's docstring.

    ``composite``: the rules of both passes (default: deep Taylor with the pixel bounds
    ``low``/``high``). ``attribute(inputs, target)`` returns the CLRP map (input-shaped,
    ≥ 0, normalised units).
    """

    def attribute(
        self,
        inputs: Any,
        target: TargetLike = None,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        x = self._inputs(inputs)
        objective, z = self._class_logits(x, target)
        rows = np.arange(len(x))
        t = objective.index[:, 0]
        seed = np.zeros_like(z)
        seed[rows, t] = z[rows, t]
        dual = np.abs(z)
        dual[rows, t] = 0.0
        own, _ = self._propagate(
            x, SeededObjective(objective.tensor, "seed", seed.astype(np.float32)), batch_size, show_progress
        )
        other, _ = self._propagate(
            x, SeededObjective(objective.tensor, "seed", dual.astype(np.float32)), batch_size, show_progress
        )
        shape = (-1,) + (1,) * (own.ndim - 1)
        a = own / _nonzero(per_example_sum(own)).reshape(shape)
        b = other / _nonzero(per_example_sum(other)).reshape(shape)
        return np.maximum(a - b, 0.0).astype(x.dtype)


def _nonzero(s: np.ndarray) -> np.ndarray:
    return np.where(np.abs(s) < 1e-30, 1.0, s)
