"""Layer-wise relevance propagation: Bach, Binder, Montavon, Klauschen, Müller & Samek,
PLOS ONE 2015 ("On pixel-wise explanations for non-linear classifier decisions by
layer-wise relevance propagation"); rules and composites as in Montavon et al. 2019
("Layer-wise relevance propagation: an overview") and zennit (Anders et al. 2021).

The relevance of the target, R = S_c(x) (the class logit: see below), is redistributed
backwards node by node, each node by the rule its :class:`Composite` gives it
(:mod:`onnxplain.methods.lrp.rules`), down to the input:

    R_j = Σ_k rule(x_j, w_jk, z_k) · R_k,        Σ_j R_j ≈ Σ_k R_k   (conservation)

Seed: the backward pass starts from R = S_c(x) e_c, the target's value at the target and
0 elsewhere (for ``Channel`` targets: the channel mean, split evenly over its units).
zennit seeds with the one-hot vector e_c, so its maps are ours / S_c(x).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxplain.backends.base import Backend
from onnxplain.core.model import Model
from onnxplain.core.targets import TargetLike
from onnxplain.methods.lrp.base import LRPBase, per_example_sum
from onnxplain.methods.lrp.composites import Composite, EpsilonPlusFlat


class LRP(LRPBase):
    """Layer-wise relevance propagation with a composite of rules (Captum's and zennit's LRP).

    ``composite``: which rule each node gets (default :class:`EpsilonPlusFlat`, the
    composite Kohlbrenner et al. 2020 recommend for CNNs); see
    :mod:`onnxplain.methods.lrp.composites`. Residual ``Add``, ``Concat``, gates and
    BatchNorm are graph nodes with their own rules, so ResNets need no canonizer.

    ``attribute`` returns the input relevance R (input-shaped), and with
    ``return_convergence_delta=True`` also Σ R − S_c(x) per example: 0 up to
    stabilisers when no bias absorbs relevance (LRP-0/ε/z⁺ with zero biases), otherwise
    the relevance the biases took.

    With LRP-0 on the layers and no stabiliser (``Composite(..., stabilizer=0.0)``) on a
    network of ReLUs, max and average pooling and Adds, R = x ⊙ ∂S_c/∂x exactly, biases
    included (each bias keeps its own share b_k·∂S_c/∂z_k).

    >>> import numpy as np, onnxplain as ox
    >>> from onnxplain.methods.lrp import LRP, EpsilonPlus
    >>> model = ox.load(ox.examples.tiny_cnn())
    >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    >>> relevance, delta = LRP(model, EpsilonPlus()).attribute(x, target=1, return_convergence_delta=True)
    >>> relevance.shape, delta.shape
    ((2, 3, 16, 16), (2,))
    """

    def __init__(
        self,
        model: Model | Backend,
        composite: Composite | None = None,
        backend: str | Backend = "auto",
        use_logits: bool | None = None,
        **backend_options: Any,
    ) -> None:
        super().__init__(
            model,
            composite if composite is not None else EpsilonPlusFlat(),
            backend,
            use_logits=use_logits,
            **backend_options,
        )

    def attribute(
        self,
        inputs: Any,
        target: TargetLike = None,
        return_convergence_delta: bool = False,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        x = self._inputs(inputs)
        objective = self._objective(x, target)
        relevance, scores = self._propagate(x, objective, batch_size, show_progress)
        # the rules are linear in the relevance: seeding with S_c(x) e_c scales the
        # one-hot seed's result by S_c(x)
        shape = (-1,) + (1,) * (relevance.ndim - 1)
        relevance = (relevance * scores.reshape(shape)).astype(x.dtype)
        if not return_convergence_delta:
            return relevance
        return relevance, per_example_sum(relevance) - scores
