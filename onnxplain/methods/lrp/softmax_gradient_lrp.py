"""Softmax-gradient LRP (SGLRP): Iwana, Kuroki & Uchida, ICCV Workshops 2019
("Explaining convolutional neural networks using softmax gradient layer-wise relevance
propagation").

The initial relevance is the gradient of the target's softmax probability ŷ_t with
respect to the logits, which is positive at the target and negative at every class that
competes with it:

    R_n = ∂ŷ_t/∂z_n = ŷ_t (1 − ŷ_t)   for n = t,
                      −ŷ_t ŷ_n        for n ≠ t,

and is propagated to the input with the composite's rules (default: deep Taylor, z⁺ in
hidden layers, z^B at the input with ``low``/``high``, w² without). Because every rule is
linear in the relevance, this single pass equals the paper's R_t − Σ_{n≠t} R_n of
separately propagated target and non-target relevances. (The authors' code can also
rescale the non-target part to the target's total; that option is not applied here.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxplain.core.targets import TargetLike
from onnxplain.methods.lrp.base import ClassContrastBase, SeededObjective


def softmax_gradient(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    """∂ŷ_t/∂z for each row of ``logits`` (N, K) and target classes (N,): ŷ_t(δ_tn − ŷ_n)."""
    z = logits - logits.max(1, keepdims=True)
    y = np.exp(z)
    y /= y.sum(1, keepdims=True)
    rows = np.arange(len(y))
    yt = y[rows, target][:, None]
    seed = -yt * y
    seed[rows, target] = yt[:, 0] * (1.0 - yt[:, 0])
    return seed


class SoftmaxGradientLRP(ClassContrastBase):
    """Softmax-gradient LRP (Iwana et al. 2019), the formula in this module's docstring.

    ``attribute(inputs, target)`` returns the SGLRP relevance (input-shaped; positive
    for evidence of the target, negative for evidence of its competitors).
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
        seed = softmax_gradient(z, objective.index[:, 0]).astype(np.float32)
        relevance, _ = self._propagate(
            x, SeededObjective(objective.tensor, "seed", seed), batch_size, show_progress
        )
        return relevance.astype(x.dtype)
