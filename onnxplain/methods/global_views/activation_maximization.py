"""Activation maximisation: Erhan, Bengio, Courville & Vincent 2009 ("Visualizing
higher-layer features of a deep network"), with the regularisers of Yosinski et al. 2015
("Understanding neural networks through deep visualization") and Mahendran & Vedaldi 2015
("Understanding deep image representations by inverting them"), and the decorrelated
Fourier parameterisation of Olah, Mordvintsev & Schubert 2017 ("Feature visualization").

An image is optimised by gradient ascent (Adam) to maximise one unit of the network:

    x* = argmax_x  S(T(x)) − λ_L2 · R_L2(x) − λ_TV · R_TV^β(x)

S is a class logit, a channel's mean activation or one neuron (a target from
:mod:`onnxplain.core.targets`); T a random shift, scaling and rotation drawn at every step
(transformation robustness; its exact adjoint carries the gradient back); R_L2 and R_TV^β
the decay and total-variation terms of :mod:`._image`, computed on the image rescaled to
[0, 1] per channel. Every ``blur_every`` steps the image is blurred (Yosinski et al.), and
it stays in the model's valid input range (clipping, or the sigmoid of the Fourier
parameterisation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pydantic

from onnxplain.backends.base import INPUT, Backend, Capability, batches
from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import Model
from onnxplain.core.targets import Channel, Neuron, Objective, TargetLike, resolve_target
from onnxplain.core.validation import Params, validate_params
from onnxplain.methods.base import Attribution
from onnxplain.methods.global_views._image import (
    Adam,
    AffineWarp,
    FourierImage,
    PixelImage,
    input_range,
    l2_penalty,
    total_variation,
)
from onnxplain.methods.global_views._image import image_shape as _image_shape


class _AMParams(Params):
    n_starts: pydantic.PositiveInt = 1
    n_steps: pydantic.PositiveInt = 128
    lr: float = pydantic.Field(default=0.05, gt=0)
    parameterization: Literal["fourier", "pixel"] = "fourier"
    decorrelate: bool = True
    l2: float = pydantic.Field(default=0.0, ge=0)
    tv: float = pydantic.Field(default=0.0, ge=0)
    tv_beta: float = pydantic.Field(default=2.0, ge=1)
    jitter: pydantic.NonNegativeInt = 0
    scale: tuple[pydantic.PositiveFloat, pydantic.PositiveFloat] = (1.0, 1.0)
    rotate: float = pydantic.Field(default=0.0, ge=0, le=180)
    blur_every: pydantic.NonNegativeInt = 0
    blur_sigma: pydantic.PositiveFloat = 0.5
    init_std: float = pydantic.Field(default=0.01, ge=0)
    batch_size: pydantic.PositiveInt | None = None
    seed: pydantic.NonNegativeInt = 0

    @pydantic.field_validator("scale")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1]:
            raise ValueError(f"scale must be (low, high) with low <= high, got {v}")
        return v


@dataclass
class OptimizedImages:
    """What :meth:`ActivationMaximization.optimize` returns.

    ``images``: (n, C, H, W) in the model's input space; ``objective``: (n_steps, n), the
    target's score at every step (on the transformed image the model saw); ``scores``:
    (n,), the target's score of the final, untransformed images; ``targets``: the target
    of each image (class ids, or the Neuron/Channel).
    """

    images: np.ndarray
    objective: np.ndarray
    scores: np.ndarray
    targets: list


def expand_targets(target: TargetLike, n_starts: int) -> tuple[list, int]:
    """One entry per optimised image: a single target ``n_starts`` times, or each class of a
    sequence ``n_starts`` times (class-major)."""
    if target is None:
        raise InputValidationError(
            "target must be a class index, a sequence of class indices, Neuron or Channel; "
            "activation maximisation has no input to predict a class from"
        )
    if isinstance(target, (Neuron, Channel, int, np.integer)) and not isinstance(target, (bool, np.bool_)):
        return [target] * n_starts, n_starts
    classes = np.asarray(target)
    if classes.ndim != 1 or not np.issubdtype(classes.dtype, np.integer) or len(classes) == 0:
        raise InputValidationError(
            f"target must be a class index, a non-empty sequence of class indices, Neuron or "
            f"Channel; got {target!r}"
        )
    per = [int(c) for c in np.repeat(classes, n_starts)]
    return per, len(per)


def resolve_targets(model: Model, targets: list, output_name: str, prefix: str = "") -> Objective:
    """An :class:`Objective` for a list of per-image targets (all classes, or one unit)."""
    first = targets[0]
    if isinstance(first, (Neuron, Channel)):
        model.check_tensors([prefix + first.layer])
        if isinstance(first, Neuron):
            unit: Neuron | Channel = Neuron(prefix + first.layer, first.index)
        else:
            unit = Channel(prefix + first.layer, first.channel)
        return resolve_target(unit, len(targets), output_name, None)
    return resolve_target(np.asarray(targets, dtype=np.int64), len(targets), output_name, model.num_classes)


class ActivationMaximization(Attribution):
    """Synthesise images that maximise a unit of the model (gradients from the backend).

    ``input_range``: the valid input values, (low, high), each a number or one per channel;
    None reads them from the model card or preprocessing spec stored next to the model
    (:func:`~onnxplain.methods.global_views._image.input_range`).

    >>> import onnxplain as ox
    >>> model = ox.examples.shapes_model()
    >>> from onnxplain.methods.global_views import ActivationMaximization
    >>> am = ActivationMaximization(model)
    >>> result = am.optimize(target=[0, 4], n_steps=8, show_progress=False)
    >>> result.images.shape, result.objective.shape
    ((2, 3, 64, 64), (8, 2))
    """

    requires = frozenset({Capability.GRADIENTS})

    def __init__(
        self,
        model: Model | Backend,
        backend: str | Backend = "auto",
        input_range: Any = None,
        **backend_options: Any,
    ) -> None:
        super().__init__(model, backend, **backend_options)
        self._input_range = input_range

    def optimize(
        self,
        target: TargetLike,
        n_starts: int = 1,
        n_steps: int = 128,
        lr: float = 0.05,
        parameterization: str = "fourier",
        decorrelate: bool = True,
        l2: float = 0.0,
        tv: float = 0.0,
        tv_beta: float = 2.0,
        jitter: int = 0,
        scale: tuple[float, float] = (1.0, 1.0),
        rotate: float = 0.0,
        blur_every: int = 0,
        blur_sigma: float = 0.5,
        init_std: float = 0.01,
        image_shape: Sequence[int] | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        show_progress: bool | None = None,
    ) -> OptimizedImages:
        """Optimise ``n_starts`` images per target.

        ``target``: a class index, a sequence of class indices (``n_starts`` images each,
        class-major), ``Neuron(layer, index)`` or ``Channel(layer, c)``.
        ``parameterization``: ``"fourier"`` (:class:`~._image.FourierImage`, with colour
        decorrelation for 3 channels when ``decorrelate``) or ``"pixel"`` (the image
        itself, clipped to the valid range after each step). ``lr``: Adam's step size.
        ``l2``, ``tv``: weights of the decay and TV^β (``tv_beta``) regularisers.
        ``jitter``: a random shift of up to that many pixels per step; ``scale``: a random
        scale factor drawn from [low, high]; ``rotate``: a random rotation in
        [−rotate, rotate] degrees. ``blur_every``: blur with a Gaussian of ``blur_sigma``
        pixels every that many steps (0: never). ``init_std``: the spread of the random
        start (of the spectrum, or of the pixels around mid-range). ``image_shape``:
        (C, H, W) when the model's input size is dynamic. ``batch_size`` images are
        optimised together (default: the backend's ``max_batch_size``), so memory does not
        grow with the number of images. Image i depends only on ``seed`` and i.
        """
        p = validate_params(
            _AMParams,
            "ActivationMaximization",
            n_starts=n_starts,
            n_steps=n_steps,
            lr=lr,
            parameterization=parameterization,
            decorrelate=decorrelate,
            l2=l2,
            tv=tv,
            tv_beta=tv_beta,
            jitter=jitter,
            scale=scale,
            rotate=rotate,
            blur_every=blur_every,
            blur_sigma=blur_sigma,
            init_std=init_std,
            batch_size=batch_size,
            seed=seed,
        )
        targets, n = expand_targets(target, p.n_starts)
        objective = resolve_targets(self.model, targets, self.backend.output_name)
        shape = _image_shape(self.model, image_shape)
        lo, hi = input_range(self.model, self._input_range, shape[0])
        streams = np.random.SeedSequence(p.seed).spawn(n)
        chunk = p.batch_size or self.backend.max_batch_size
        images = np.empty((n, *shape), dtype=self.model.input_dtype)
        curve = np.empty((p.n_steps, n))
        for sl in batches(n, chunk):
            rngs = [np.random.default_rng(s) for s in streams[sl]]
            images[sl], curve[:, sl] = self._run(p, objective.take(sl), rngs, shape, lo, hi, show_progress)
        scores = np.concatenate(
            [
                np.asarray(
                    objective.take(sl).scores(
                        self.backend.forward(images[sl], outputs=[objective.tensor])[objective.tensor]
                    )
                )
                for sl in batches(n, chunk)
            ]
        )
        return OptimizedImages(images=images, objective=curve, scores=scores, targets=targets)

    def _run(
        self,
        p: _AMParams,
        objective: Objective,
        rngs: list[np.random.Generator],
        shape: tuple[int, int, int],
        lo: np.ndarray,
        hi: np.ndarray,
        show: bool | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        if p.parameterization == "fourier":
            param: FourierImage | PixelImage = FourierImage(rngs, shape, p.init_std, p.decorrelate)
        else:
            param = PixelImage(rngs, shape, p.init_std)
        adam = Adam(param.params, p.lr)
        width = hi - lo
        transform = p.jitter > 0 or p.scale != (1.0, 1.0) or p.rotate > 0
        curve = np.empty((p.n_steps, len(rngs)))
        for step in self._progress(range(p.n_steps), p.n_steps, show, "ActivationMaximization"):
            u = param.image()
            x = lo + width * u
            warp = _random_warp(rngs, shape[1:], p) if transform else None
            seen = warp(x) if warp is not None else x
            result = self.backend.gradients(seen.astype(self.model.input_dtype), objective, wrt=[INPUT])
            grad = result.gradients[INPUT].astype(np.float64)
            if warp is not None:
                grad = warp.adjoint(grad)
            grad_u = grad * width
            if p.l2 > 0:
                grad_u -= p.l2 * l2_penalty(u)[1]
            if p.tv > 0:
                grad_u -= p.tv * total_variation(u, p.tv_beta)[1]
            curve[step] = result.scores
            adam.step(param.backward(grad_u))
            param.after_step()
            if p.blur_every and (step + 1) % p.blur_every == 0:
                param.blur(p.blur_sigma)
        return lo + width * param.image(), curve


def _random_warp(rngs: list[np.random.Generator], size: tuple[int, int], p: _AMParams) -> AffineWarp:
    """One random shift, scale and rotation per image, each from the image's own stream."""
    shift = np.array([r.integers(-p.jitter, p.jitter + 1, size=2) for r in rngs], dtype=np.float64)
    scale = np.array([r.uniform(p.scale[0], p.scale[1]) for r in rngs])
    angle = np.array([r.uniform(-p.rotate, p.rotate) for r in rngs]) * math.pi / 180.0
    return AffineWarp(size, shift, scale, angle)
