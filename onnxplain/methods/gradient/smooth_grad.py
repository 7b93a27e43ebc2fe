"""SmoothGrad: Smilkov, Thorat, Kim, Viégas & Wattenberg 2017 (arXiv 1706.03825).

    M̂_c(x) = (1/n) Σ_{s=1..n} ∂S_c(x + ε_s) / ∂x,     ε_s ~ N(0, σ²)

The paper recommends σ of 10–20 % of the input's range; ``stdevs=None`` takes 15 % of
(max − min) over the batch. A convenience for ``NoiseTunnel(Saliency(model))``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from onnxplain.backends.base import Capability
from onnxplain.core.targets import TargetLike
from onnxplain.methods.base import Attribution
from onnxplain.methods.gradient.noise_tunnel import NoiseTunnel
from onnxplain.methods.gradient.saliency import Saliency


class SmoothGrad(Attribution):
    """The gradient averaged over noisy copies of the input (signed, as in the paper;
    ``abs=True`` averages |gradient| like Captum's ``NoiseTunnel(Saliency)``)."""

    requires: ClassVar[frozenset[Capability]] = frozenset({Capability.GRADIENTS})

    def attribute(
        self,
        inputs: Any,
        target: TargetLike = None,
        nt_samples: int = 50,
        stdevs: float | None = None,
        nt_samples_batch_size: int | None = None,
        seed: int | None = None,
        noise: np.ndarray | None = None,
        abs: bool = False,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        x = self._inputs(inputs)
        if stdevs is None:
            stdevs = 0.15 * float(x.max() - x.min())
        tunnel = NoiseTunnel(Saliency(self.backend))
        return tunnel.attribute(
            x, nt_type="smoothgrad", nt_samples=nt_samples, nt_samples_batch_size=nt_samples_batch_size,
            stdevs=stdevs, target=target, seed=seed, noise=noise, show_progress=show_progress, abs=abs,
        )
