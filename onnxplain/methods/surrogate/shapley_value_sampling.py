"""Shapley value sampling: Castro, Gómez & Tejada, "Polynomial calculation of the Shapley
value based on sampling", Computers & Operations Research 2009 (Štrumbelj & Kononenko
2010 for explanations; Captum's ``ShapleyValueSampling``).

The Shapley value is the mean marginal contribution of a feature over all orderings of
the features. For random permutations σ₁..σ_P of the M features, with Pre_σ(j) the
features before j in σ,

    φ_j ≈ (1/P) Σ_p [ v(Pre_σp(j) ∪ {j}) − v(Pre_σp(j)) ],

an unbiased estimate; every permutation telescopes to Σ_j φ_j = v(1) − v(∅), so
efficiency holds exactly. With ``antithetic=True`` permutations come in pairs σ and its
reverse, which lowers the variance and keeps the estimate unbiased (Mitchell et al.,
JMLR 2022). Each permutation costs M − 1 forward passes per example.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxplain.backends.base import Capability
from onnxplain.core.targets import TargetLike
from onnxplain.core.validation import validate_params
from onnxplain.infill import Infill
from onnxplain.methods.surrogate.base import SurrogateAttribution, SurrogateParams

#: Coalition matrices built at once are kept under this many entries.
_MAX_COALITION_ENTRIES = 1 << 24


class _SamplingParams(SurrogateParams):
    antithetic: bool = True


class ShapleyValueSampling(SurrogateAttribution):
    """Permutation-sampling Shapley values on any model that runs forward.

    ``n_samples``: permutations per example (Captum's name and default, 25).
    ``feature_mask``, ``baselines`` / ``infill`` / ``background``, ``batch_size`` and
    ``perturbations_per_eval`` are as in :class:`KernelShap`. Returns φ in the input's
    shape, or (N, M) with ``return_input_shape=False``.
    """

    requires = frozenset({Capability.FORWARD})

    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: TargetLike = None,
        feature_mask: Any = None,
        n_samples: int = 25,
        perturbations_per_eval: int | None = None,
        return_input_shape: bool = True,
        infill: Infill | None = None,
        background: Any = None,
        antithetic: bool = True,
        batch_size: int | None = None,
        seed: int | None = 0,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        p = validate_params(
            _SamplingParams, "ShapleyValueSampling", n_samples=n_samples,
            perturbations_per_eval=perturbations_per_eval, batch_size=batch_size, seed=seed,
            antithetic=antithetic,
        )
        setup = self._setup(inputs, baselines, infill, background, feature_mask, target, p, show_progress)
        sizes = setup.features.sizes
        ranks = [self._ranks(m, p.n_samples, p.antithetic, setup.rng) for m in sizes]
        ends, _ = self._responses(
            setup, [np.stack([np.zeros(m, bool), np.ones(m, bool)]) for m in sizes], "ShapleyValueSampling"
        )
        values = [np.empty((p.n_samples, m + 1)) for m in sizes]
        for v, e in zip(values, ends):
            v[:, 0], v[:, -1] = e
        group = max(1, _MAX_COALITION_ENTRIES // (len(sizes) * max(sizes) ** 2))
        for start in range(0, p.n_samples, group):
            rows = slice(start, min(start + group, p.n_samples))
            prefixes = [(r[rows][:, None, :] < np.arange(1, m)[None, :, None]).reshape(-1, m)
                        for r, m in zip(ranks, sizes)]
            found, _ = self._responses(setup, prefixes, "ShapleyValueSampling")
            for v, f, m in zip(values, found, sizes):
                if m > 1:
                    v[rows, 1:m] = f.reshape(-1, m - 1)
        phis = []
        for v, r in zip(values, ranks):
            gains = np.take_along_axis(v, r + 1, axis=1) - np.take_along_axis(v, r, axis=1)
            phis.append(gains.mean(0))
        feats = setup.features
        return feats.to_input_shape(phis, setup.x.dtype) if return_input_shape else feats.to_columns(phis)

    @staticmethod
    def _ranks(m: int, n: int, antithetic: bool, rng: np.random.Generator) -> np.ndarray:
        """(n, m): the position of each feature in each of ``n`` random permutations."""
        drawn = -(-n // 2) if antithetic else n
        ranks = rng.random((drawn, m)).argsort(1).argsort(1)
        if antithetic:
            ranks = np.concatenate([ranks, m - 1 - ranks])[:n]
        return ranks
