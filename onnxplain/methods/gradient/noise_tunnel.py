"""NoiseTunnel: SmoothGrad (Smilkov et al. 2017, arXiv 1706.03825), SmoothGrad² (Hooker et
al., NeurIPS 2019) and VarGrad (Adebayo et al., 2018) around any attribution method.

With ε_s ~ N(0, σ²) drawn independently for s = 1 … n (``nt_samples``, σ = ``stdevs``):

    smoothgrad:     (1/n) Σ_s A(x + ε_s)
    smoothgrad_sq:  (1/n) Σ_s A(x + ε_s)²
    vargrad:        (1/n) Σ_s A(x + ε_s)² − ((1/n) Σ_s A(x + ε_s))²

as Captum's ``NoiseTunnel``. The target is resolved once, on the noise-free inputs
(``target=None`` explains the class predicted for x, not for each noisy copy). The noise
comes from :mod:`onnxplain.core.noise`: a seed gives the same draws on every device and
for every batching of the copies. Around a method that is the input gradient under some
backward rules, made absolute or times the input (Saliency, InputXGradient,
GuidedBackprop, Deconvolution, RectGrad), the backend computes the sums itself
(:meth:`~onnxplain.backends.base.Backend.smoothed_gradients`): on a GPU the copies are
drawn and their gradients summed there.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import numpy as np
import pydantic

from onnxplain.backends.base import copy_sums
from onnxplain.core.errors import InputValidationError
from onnxplain.core.noise import NoisyCopies, fresh_seed
from onnxplain.core.targets import Channel, Neuron, Objective, TargetLike
from onnxplain.core.validation import Params, Seed, validate_params
from onnxplain.methods.base import Attribution, GradientView

NTType = Literal["smoothgrad", "smoothgrad_sq", "vargrad"]

#: keyword arguments that hold one entry per example and follow the examples when they
#: are repeated for the noisy copies
_PER_EXAMPLE = ("baselines", "feature_mask")


class _NTParams(Params):
    nt_type: NTType
    nt_samples: int = pydantic.Field(ge=1)
    nt_samples_batch_size: int | None = pydantic.Field(default=None, ge=1)
    stdevs: float = pydantic.Field(ge=0.0, allow_inf_nan=False)
    seed: Seed = None


class NoiseTunnel(Attribution):
    """Average (or square-average, or variance of) ``attribution_method`` over noisy copies
    of the input.

    ``attribution_method``: any onnxplain method instance (``Saliency(model)``,
    ``IntegratedGradients(model)``, ``GuidedBackprop(model)``, ``GradCAM(model)``, …); its
    backend is used.
    """

    def __init__(self, attribution_method: Attribution) -> None:
        if not isinstance(attribution_method, Attribution):
            raise InputValidationError(
                "NoiseTunnel wraps an onnxplain method instance, e.g. NoiseTunnel(Saliency(model)); "
                f"got {type(attribution_method).__name__}"
            )
        self.attribution_method = attribution_method
        self.backend = attribution_method.backend
        self.model = attribution_method.model

    def attribute(
        self,
        inputs: Any,
        nt_type: NTType = "smoothgrad",
        nt_samples: int = 5,
        nt_samples_batch_size: int | None = None,
        stdevs: float = 1.0,
        *,
        target: TargetLike = None,
        seed: int | None = None,
        noise: np.ndarray | None = None,
        show_progress: bool | None = None,
        **kwargs: Any,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The smoothed attributions, shaped like the wrapped method's.

        ``nt_samples_batch_size``: noisy copies per example sent to the wrapped method at
        once (default: as many as fit the backend's ``max_batch_size`` rows), so memory
        is bounded by ``nt_samples_batch_size`` × N rows, not by ``nt_samples``; a wrapped
        IntegratedGradients further bounds its own passes with ``internal_batch_size``.
        ``seed``: the noise is drawn by :func:`onnxplain.core.noise.standard_normal` under
        it, in the inputs' float type: the same draws on every device and whatever the
        batch size (``None``: a fresh seed from the operating system).
        ``noise``: the perturbations themselves, shape ``(nt_samples, N, *inputs.shape[1:])``
        (``noise[s, i]`` is added to example i in copy s; ``stdevs`` and ``seed`` are then
        unused) — the way to reproduce another library's draws exactly (the tests rebuild
        Captum's). Other
        keyword arguments (``baselines``, ``n_steps``, ``internal_batch_size``, ``abs``, …)
        go to the wrapped method; per-example ``baselines`` follow their example.
        ``show_progress`` is NoiseTunnel's and is passed on to a wrapped method that takes
        one (as Captum forwards it), so ``show_progress=False`` silences both. With
        ``return_convergence_delta=True`` the wrapped method's deltas are returned too,
        shape (N, nt_samples).
        """
        p = validate_params(
            _NTParams, "NoiseTunnel", nt_type=nt_type, nt_samples=nt_samples,
            nt_samples_batch_size=nt_samples_batch_size, stdevs=stdevs, seed=seed,
        )
        method = self.attribution_method
        x = method._inputs(inputs)
        n = len(x)
        noise = checked_noise(noise, p.nt_samples, x)
        params = inspect.signature(method.attribute).parameters
        takes_target = "target" in params
        takes_progress = "show_progress" in params  # one switch for our bar and the wrapped one's
        if not takes_target and target is not None:
            raise InputValidationError(f"{type(method).__name__} takes no target")
        if not any(q.kind is inspect.Parameter.VAR_KEYWORD for q in params.values()):
            unknown = sorted(set(kwargs) - set(params) - {"inputs"})
            if unknown:
                accepted = sorted(set(params) - {"inputs", "target"})
                raise InputValidationError(
                    f"NoiseTunnel: {type(method).__name__}.attribute takes no argument {unknown}; "
                    f"it takes {accepted}"
                )
        objective, classes = self._explicit_target(x, target) if takes_target else (None, None)
        want_delta = bool(kwargs.get("return_convergence_delta", False))

        per_batch = p.nt_samples_batch_size or max(1, self.backend.max_batch_size // n)
        per_batch = min(per_batch, p.nt_samples)
        copies = NoisyCopies(p.nt_samples, p.stdevs, fresh_seed() if p.seed is None else p.seed, noise)
        squares = p.nt_type != "smoothgrad"  # the squares only where the result needs them
        view = _gradient_view(method, kwargs) if objective is not None else None
        if view is not None:
            total, total_sq = self.backend.smoothed_gradients(
                x, objective, copies, per_batch, view.rules, view.post, squares,
                progress=lambda starts: self._progress(starts, len(starts), show_progress, "NoiseTunnel"))
            deltas = None
        else:
            total = total_sq = None
            deltas = np.zeros((p.nt_samples, n)) if want_delta else None
            starts = list(range(0, p.nt_samples, per_batch))
            for s0 in self._progress(starts, len(starts), show_progress, "NoiseTunnel"):
                b = min(per_batch, p.nt_samples - s0)
                call = {k: _repeat(k, v, n, b, x.ndim) for k, v in kwargs.items()}
                if takes_target:
                    call["target"] = _repeat_target(classes, b)
                if takes_progress:
                    call["show_progress"] = show_progress
                out = method.attribute(copies.rows(x, s0, b), **call)
                if want_delta:
                    out, delta = out
                    deltas[s0:s0 + b] = np.asarray(delta, np.float64).reshape(b, n)
                part, part_sq = copy_sums(np.asarray(out).reshape(b, n, *np.shape(out)[1:]), squares)
                total = part if total is None else total + part
                total_sq = part_sq if total_sq is None else total_sq + part_sq
        mean = total / p.nt_samples
        mean_sq = None if total_sq is None else total_sq / p.nt_samples
        if p.nt_type == "smoothgrad":
            result = mean
        elif p.nt_type == "smoothgrad_sq":
            result = mean_sq
        else:
            result = mean_sq - mean * mean
        result = result.astype(np.float32)
        return (result, deltas.T) if want_delta else result

    def _explicit_target(self, x: np.ndarray, target: TargetLike) -> tuple[Objective, TargetLike]:
        """The objective of the clean inputs, and the target for the wrapped method: classes
        as one int per example (``None``: the class predicted for the clean inputs)."""
        objective = self.attribution_method._objective(x, target)
        if isinstance(target, (Neuron, Channel)):
            return objective, target
        return objective, objective.index[:, 0].copy()


def _gradient_view(method: Attribution, kwargs: dict[str, Any]) -> GradientView | None:
    """The wrapped method as a GradientView for these arguments, when its class declares
    one beside the ``attribute`` it runs (not for an ``attribute`` replaced on the instance
    or overridden by a subclass alone)."""
    cls = type(method)
    owner = next(c for c in cls.__mro__ if "attribute" in vars(c))
    if "attribute" in vars(method) or "_gradient_view" not in vars(owner):
        return None
    return method._gradient_view(**kwargs)


def _repeat_target(target: TargetLike, copies: int) -> TargetLike:
    if target is None or isinstance(target, (Neuron, Channel, int, np.integer)):
        return target
    return np.tile(np.asarray(target), copies)


def _repeat(name: str, value: Any, n: int, copies: int, ndim: int) -> Any:
    """Repeat a per-example keyword argument for ``copies`` blocks of ``n`` rows."""
    if name in _PER_EXAMPLE and isinstance(value, np.ndarray) and value.ndim == ndim and len(value) == n:
        return np.tile(value, (copies,) + (1,) * (ndim - 1))
    return value


def checked_noise(noise: Any, samples: int, x: np.ndarray) -> np.ndarray | None:
    """Given perturbations as an array of shape (samples, *x.shape) of finite numbers, or None."""
    if noise is None:
        return None
    noise = np.asarray(noise)
    if noise.shape != (samples, *x.shape):
        raise InputValidationError(
            f"noise must have shape (nt_samples, *inputs.shape) = {(samples, *x.shape)}, got {noise.shape}"
        )
    if not np.isfinite(noise).all():
        raise InputValidationError("noise contains NaN or Inf values")
    return noise
