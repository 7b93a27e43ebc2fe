"""Smooth Grad-CAM++: Omeiza, Speakman, Cintas & Weldemariam, "Smooth Grad-CAM++: An Enhanced
Inference Level Visualization Technique for Deep Convolutional Neural Network Models",
arXiv:1908.01224, 2019.

Grad-CAM++ (:mod:`~onnxplain.methods.cam.grad_cam_plus_plus`) with its derivatives averaged
over noisy copies of the input, as SmoothGrad averages the input gradient. With
g_s = ∂S^c/∂A^k_ij at x + ε_s, ε_s ~ N(0, σ²), s = 1 … n, and D^p = (1/n) Σ_s g_s^p:

    α^kc_ij = D² / ( 2 D² + Σ_ab A^k_ab D³ )          (0 where the denominator is 0)
    w^c_k   = Σ_ij α^kc_ij ReLU( D¹ )
    L^c     = ReLU( Σ_k w^c_k A^k )

with A the activations of the noise-free input and S^c the score before any softmax (no
exponential, as torch-cam's ``SmoothGradCAMpp``). The paper prints D¹ in α's numerator,
where Grad-CAM++'s closed form (and torch-cam) has D². torch-cam's code departs from this
formula (and from its own docstring) in ways that matter where the gradient varies over a
map or is small: it sums A·D³ over positions where Grad-CAM++'s eq. 19 multiplies the sum of
A by D³ at the position, weights by the ReLU of the last noisy copy's gradient instead of
D¹, multiplies the weights with the last noisy copy's activations, and adds 1e-8 to α's
denominator (2·D² is often far smaller). The tests hold us to torch-cam where these agree,
and to the formula computed with torch's autograd elsewhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydantic

from onnxplain.core.noise import NoisyCopies, fresh_seed
from onnxplain.core.targets import TargetLike
from onnxplain.core.validation import Params, Seed, validate_params
from onnxplain.methods.cam.base import CAMBase, LayerData
from onnxplain.methods.gradient.noise_tunnel import checked_noise


class _Params(Params):
    nt_samples: int = pydantic.Field(ge=1)
    stdevs: float | None = pydantic.Field(default=None, ge=0.0, allow_inf_nan=False)
    seed: Seed = None


class SmoothGradCAMPlusPlus(CAMBase):
    """Smooth Grad-CAM++ (module docstring): Grad-CAM++'s derivatives averaged over
    ``nt_samples`` noisy copies of the input."""

    def attribute(
        self,
        inputs: Any,
        target: TargetLike = None,
        nt_samples: int = 8,
        stdevs: float | None = None,
        seed: int | None = None,
        noise: np.ndarray | None = None,
        relu_attributions: bool = True,
        upsample: bool = True,
        normalize: bool = False,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """The map per example, as :meth:`CAMBase.attribute` returns it.

        ``nt_samples``: noisy copies of each input; ``stdevs``: the noise's standard
        deviation σ (default 0.15 × the inputs' range, as :class:`SmoothGrad`); ``seed``:
        the noise is drawn as :class:`NoiseTunnel` draws it (the same on every device and
        for every batching); ``noise``: the perturbations themselves,
        (nt_samples, N, *inputs.shape[1:]) (``stdevs`` and ``seed`` then unused). The target
        is resolved once, on the noise-free inputs. Memory is bounded by the backend's
        ``max_batch_size`` rows per pass (at least one noisy copy of the N inputs), not by
        ``nt_samples``.
        """
        p = validate_params(_Params, "SmoothGradCAMPlusPlus", nt_samples=nt_samples, stdevs=stdevs, seed=seed)
        return self._map(inputs, target, relu_attributions, upsample, normalize, show_progress,
                         settings=p, noise=noise)

    def _layer_data(self, x: np.ndarray, target: TargetLike, show_progress: bool | None, settings: _Params,
                    noise: np.ndarray | None) -> LayerData:
        p, n, name = settings, len(x), self.layer.name
        noise = checked_noise(noise, p.nt_samples, x)
        objective = self._objective(x, target)
        outs = self.backend.forward(x, outputs=list(dict.fromkeys([name, objective.tensor])))
        scores = np.asarray(objective.scores(outs[objective.tensor]), dtype=np.float64)
        grid = self._grid(x, outs[name])
        a = outs[name] if grid is None else grid.to_grid(outs[name])
        stdev = p.stdevs if p.stdevs is not None else 0.15 * float(x.max() - x.min())
        copies = NoisyCopies(p.nt_samples, stdev, fresh_seed() if p.seed is None else p.seed, noise)
        per_batch = min(p.nt_samples, max(1, self.backend.max_batch_size // n))
        sums = [np.zeros(a.shape, np.float64) for _ in range(3)]  # Σ g, Σ g², Σ g³
        starts = list(range(0, p.nt_samples, per_batch))
        for s0 in self._progress(starts, len(starts), show_progress, "SmoothGradCAMPlusPlus"):
            b = min(per_batch, p.nt_samples - s0)
            noisy = copies.rows(x, s0, b)
            rows = np.tile(np.arange(n), b)
            g = self.backend.gradients(noisy, objective.take(rows), wrt=[name]).gradients[name]
            g = (g if grid is None else grid.to_grid(g)).astype(np.float64).reshape(b, n, *a.shape[1:])
            power = g
            for total in sums:
                total += power.sum(axis=0)
                power = power * g
        d1, d2, d3 = (total / p.nt_samples for total in sums)
        return LayerData(x, objective, scores, a, d1, show_progress, raw=outs[name], grid=grid,
                         carried={"d2": d2, "d3": d3})

    def channel_weights(self, data: LayerData) -> np.ndarray:
        a = data.activations.astype(np.float64)
        d1, d2, d3 = data.gradients, data.carried["d2"], data.carried["d3"]
        denominator = 2 * d2 + a.sum(axis=(2, 3), keepdims=True) * d3
        alpha = np.where(denominator != 0, d2 / np.where(denominator != 0, denominator, 1), 0.0)
        return (alpha * np.maximum(d1, 0)).sum(axis=(2, 3))
