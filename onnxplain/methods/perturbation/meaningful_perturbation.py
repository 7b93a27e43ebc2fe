"""Meaningful perturbation: Fong & Vedaldi, "Interpretable explanations of black boxes by
meaningful perturbation", ICCV 2017 (arXiv 1704.03296).

A mask m ∈ [0, 1] on a coarse grid (upsampled bilinearly to the input size, M = up(m))
blends the input with a perturbed version of it, by default its blur (σ₀ = 10):

    Φ(x; M) = M ⊙ x + (1 − M) ⊙ fill(x).

The deletion game looks for the smallest, smoothest region whose deletion kills the
target score f_c,

    min_m  λ₁ ‖1 − M‖₁ + λ₂ Σ_u ‖∇M(u)‖_β^β + E_τ[ f_c(Φ(x(· − τ); M)) ],

with τ a random translation of the input by 0 to ``jitter`` − 1 pixels per axis, edges
repeated (the paper's jitter against artifacts); the preservation game minimises
λ₁ ‖M‖₁ + λ₂ TV_β(M) − E_τ[f_c(Φ(x(· − τ); M))]. ‖∇M(u)‖_β^β = |∂_y M|^β + |∂_x M|^β
(forward differences).
Projected Adam on m, clipped to [0, 1] after each step. Defaults are the paper's:
λ₁ = 1e-4, λ₂ = 1e-2, β = 3, a 28×28 mask for 224×224 inputs (``mask_scale=8``), blur
σ₀ = 10, jitter up to 4 pixels, 300 iterations of Adam at learning rate 0.1; the regular-
isers sum over the input's pixels, so λ₁ and λ₂ suit 224×224 inputs (scale them with the
pixel count for others). The paper's f_c was the softmax probability; here f_c is the
target score as the model outputs it, so explain a model that ends in Softmax to match.

The gradient ∂f_c/∂x̃ comes from the backend; the chain rule through the blend, the
regularisers and the upsampling is computed in numpy (``_ops``). A mask-dependent
in-fill (a generative in-painter) is recomputed at every iteration under the current mask and held
fixed in the gradient, as the in-painter's own gradient is not available.

Returns the salient region: 1 − M for deletion, M for preservation, (N, H, W).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pydantic

from onnxplain.backends.base import INPUT, Capability, batches
from onnxplain.core.targets import TargetLike
from onnxplain.core.validation import Params, Seed, validate_params
from onnxplain.infill import GaussianBlur, Infill
from onnxplain.methods.perturbation import _ops
from onnxplain.methods.perturbation.base import Filler, PerturbationAttribution


class _MPParams(Params):
    variant: Literal["delete", "preserve"]
    l1_coeff: float = pydantic.Field(ge=0)
    tv_coeff: float = pydantic.Field(ge=0)
    tv_beta: float = pydantic.Field(ge=1)
    mask_scale: pydantic.PositiveInt
    max_iter: pydantic.NonNegativeInt
    learning_rate: float = pydantic.Field(gt=0)
    jitter: pydantic.NonNegativeInt
    batch_size: pydantic.PositiveInt | None = None
    seed: Seed = None


class MeaningfulPerturbation(PerturbationAttribution):
    """Optimise a smooth deletion (or preservation) mask: gradients needed (torch backend).

    ``baselines`` (a constant) or ``infill`` (default: ``infill.GaussianBlur(10)``) is
    the perturbation. ``batch_size`` examples are optimised together (default: the
    backend's ``max_batch_size``). ``seed`` seeds the jitter and random in-fills, per
    example (a fill is keyed by (seed, example, iteration)), so results do not depend on
    ``batch_size``.
    """

    requires = frozenset({Capability.GRADIENTS})

    def attribute(
        self,
        inputs: Any,
        target: TargetLike = None,
        variant: Literal["delete", "preserve"] = "delete",
        l1_coeff: float = 1e-4,
        tv_coeff: float = 1e-2,
        tv_beta: float = 3.0,
        mask_scale: int = 8,
        max_iter: int = 300,
        learning_rate: float = 0.1,
        jitter: int = 4,
        baselines: Any = None,
        infill: Infill | None = None,
        batch_size: int | None = None,
        seed: int | None = 0,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        x = self._inputs(inputs)
        h, w = self._images(x, "MeaningfulPerturbation")
        p = validate_params(_MPParams, "MeaningfulPerturbation", variant=variant, l1_coeff=l1_coeff,
                            tv_coeff=tv_coeff, tv_beta=tv_beta, mask_scale=mask_scale,
                            max_iter=max_iter, learning_rate=learning_rate, jitter=jitter,
                            batch_size=batch_size, seed=seed)
        fill = self._infill(x, baselines, infill, default=lambda: GaussianBlur(10.0))
        objective = self._objective(x, target)
        if p.max_iter == 0:  # nothing is evaluated: check the target on one example all the same
            self._scores(x[:1], objective.take(slice(0, 1)))
        # a random fill of example i at iteration t is keyed by (seed, i, t): batch-size independent
        filler = Filler(fill, x, np.random.SeedSequence(p.seed))
        # one jitter stream per example: results do not depend on batch_size
        jitters = [np.random.default_rng(s) for s in np.random.SeedSequence(p.seed).spawn(len(x))]
        size = (int(np.ceil(h / p.mask_scale)), int(np.ceil(w / p.mask_scale)))
        up_y, up_x = _ops.interp_matrix(size[0], h), _ops.interp_matrix(size[1], w)
        out = np.zeros((len(x), h, w), dtype=x.dtype)
        parts = list(batches(len(x), self._batch_size(p.batch_size)))
        for sl in parts:
            rows = np.arange(sl.start, sl.stop)
            m = np.ones((len(rows), 1, *size))  # start from the unperturbed input
            adam = _ops.Adam(p.learning_rate)
            desc = f"MeaningfulPerturbation {sl.start + 1}-{sl.stop}/{len(x)}"
            for t in self._progress(range(p.max_iter), p.max_iter, show_progress, desc):
                shift = np.array([j.integers(0, max(p.jitter, 1), size=2) for j in jitters[sl]])
                _, grad = self._loss_and_gradient(x[rows], rows, objective, filler, m, (up_y, up_x), p,
                                                  shift, draw=t)
                m = np.clip(adam.step(m, grad), 0.0, 1.0)
            mask = _ops.separable(m, up_y, up_x)[:, 0]
            out[rows] = 1 - mask if p.variant == "delete" else mask
        return out

    def _loss_and_gradient(self, xb, rows, objective, filler, m, up, p, shift, draw=0):
        """The loss per row and its gradient with respect to the mask parameters ``m``
        (n, 1, h, w), each row's input translated by its ``shift`` (n, 2) = (τ_y, τ_x);
        ``draw`` (the iteration) keys a random fill with each row's example."""
        mask = _ops.separable(m, *up)  # M (n, 1, H, W)
        moved = _ops.translate(xb, shift)  # x(· − τ)
        if filler.static is not None:
            ref = _ops.translate(filler.static[rows], shift)
        else:
            keys = np.stack([rows, np.full(len(rows), draw)], axis=1)
            ref = filler.reference(rows, moved.astype(xb.dtype), mask, keys)
        perturbed = (mask * moved + (1 - mask) * ref).astype(xb.dtype)
        res = self.backend.gradients(perturbed, objective.take(rows), wrt=[INPUT])
        sign = 1.0 if p.variant == "delete" else -1.0  # delete: minimise f; preserve: maximise
        area = (1 - mask) if p.variant == "delete" else mask  # ‖·‖₁ of it, M in [0, 1]
        loss = sign * res.scores + p.l1_coeff * area.sum(axis=(1, 2, 3))
        g_mask = sign * (res.gradients[INPUT].astype(np.float64) * (moved - ref)).sum(axis=1, keepdims=True)
        g_mask += -sign * p.l1_coeff
        if p.tv_coeff:
            tv, g_tv = _ops.total_variation(mask, p.tv_beta)
            loss = loss + p.tv_coeff * tv[:, 0]
            g_mask += p.tv_coeff * g_tv
        return loss, _ops.separable_adjoint(g_mask, *up)
