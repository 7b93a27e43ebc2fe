"""In-fill strategies: what replaces the features a perturbation method removes.

Every perturbation method (Occlusion, FeatureAblation, RISE, meaningful and extremal
perturbation) blends the input ``x`` with a *fill* under a keep mask ``k`` in [0, 1]:

    x̃ = k ⊙ x + (1 − k) ⊙ fill(x, k)

``k = 1`` keeps a feature, ``k = 0`` removes it. The fills are those of the survey's
Fig. 7 (after Fong & Vedaldi, ICCV 2017, and Agarwal et al. 2019, arXiv 1910.04256):

- :class:`Constant` (and :class:`Zeros`, :class:`Gray`, :class:`Mean`): a constant image;
- :class:`GaussianBlur`: the blurred input, σ in pixels;
- :class:`UniformNoise`, :class:`GaussianNoise`: noise, fresh on every call;
- :class:`Generative`: an in-painting model given as ONNX, which fills the removed region
  from its surroundings so that the perturbed input stays in-distribution.

The strategies are numpy code (the in-painter of :class:`Generative` runs on an onnxplain
backend, ONNX Runtime by default). Random fills draw from a ``numpy.random.Generator``
the method seeds, so results are reproducible under the method's ``seed`` (and, as the
draws follow the batches, its ``batch_size``).

>>> import numpy as np, onnxplain.infill as infill
>>> x = np.ones((1, 3, 4, 4), np.float32)
>>> keep = np.zeros((1, 1, 4, 4), np.float32); keep[..., :2] = 1
>>> infill.Constant(0.5)(x, keep)[0, 0, 0].tolist()
[1.0, 1.0, 0.5, 0.5]
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np

from onnxplain.core.errors import InputValidationError
from onnxplain.core.validation import broadcast_to_inputs

Padding = Literal["reflect", "constant", "edge"]

__all__ = [
    "Constant",
    "GaussianBlur",
    "GaussianNoise",
    "Generative",
    "Gray",
    "Infill",
    "Mean",
    "UniformNoise",
    "Zeros",
    "blend",
    "blur_matrix",
    "gaussian_blur",
]


class Infill:
    """Base of in-fill strategies: subclasses implement :meth:`fill`.

    ``mask_dependent``: the fill depends on which features are removed (a generative
    in-painter). ``stochastic``: the fill is random (noise). A fill that is neither is
    computed once per input and reused for every perturbation.
    """

    mask_dependent: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False

    def fill(
        self, x: np.ndarray, keep: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """The values that replace removed features of ``x`` (N, C, H, W), shape of ``x``.

        ``keep`` (broadcastable to ``x``) is given to mask-dependent fills.
        """
        raise NotImplementedError

    def __call__(
        self, x: np.ndarray, keep: Any, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """``keep ⊙ x + (1 − keep) ⊙ fill``: the perturbed input."""
        x = np.asarray(x)
        keep = np.asarray(keep, dtype=x.dtype)
        return blend(x, keep, self.fill(x, keep, rng))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def blend(x: np.ndarray, keep: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """``keep ⊙ x + (1 − keep) ⊙ fill``; exact (no rounding) where ``keep`` is 0 or 1.

    A boolean ``keep`` selects exactly, as ``np.where`` would (up to the sign of a zero),
    for finite values: ``x·1 + fill·0 = x``; two products and a sum run several times
    faster than ``np.where`` over broadcast operands.
    """
    if keep.dtype == bool:
        out = np.empty(np.broadcast_shapes(x.shape, keep.shape, np.shape(fill)), dtype=x.dtype)
        np.multiply(x, keep, out=out)
        out += np.multiply(fill, ~keep, dtype=x.dtype)
        return out
    out = keep * x
    out += (1 - keep) * fill
    return out.astype(x.dtype, copy=False)


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return rng if rng is not None else np.random.default_rng()


class Constant(Infill):
    """A constant image: ``value`` is a scalar, one example (C, H, W), or one per example.

    Captum's ``baselines`` are this fill.
    """

    def __init__(self, value: Any = 0.0) -> None:
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
            raise InputValidationError(f"Constant: value must be finite numbers, got {value!r}")
        self.value = value

    def fill(self, x, keep=None, rng=None):
        return broadcast_to_inputs(self.value, x, "Constant: value")


class Zeros(Constant):
    """All zeros (the usual baseline, and RISE's ``x ⊙ M``)."""

    def __init__(self) -> None:
        super().__init__(0.0)


class Gray(Constant):
    """A uniform gray image; ``level`` 0.5 suits inputs in [0, 1]. For normalised inputs
    give the normalised gray (e.g. 0.0 after ImageNet mean/std normalisation)."""

    def __init__(self, level: float = 0.5) -> None:
        super().__init__(float(level))


class Mean(Infill):
    """Each example's mean, per channel (``per_channel=True``) or over all channels."""

    def __init__(self, per_channel: bool = True) -> None:
        self.per_channel = bool(per_channel)

    def fill(self, x, keep=None, rng=None):
        axes = tuple(range(2 if self.per_channel else 1, x.ndim))
        return np.broadcast_to(x.mean(axis=axes, keepdims=True, dtype=np.float64).astype(x.dtype), x.shape)


# -- Gaussian blur ------------------------------------------------------------------------

def _kernel(sigma: float, truncate: float) -> np.ndarray:
    """TorchRay's ``imsmooth`` kernel: exp(−i²/2σ²), |i| ≤ ⌈truncate·σ⌉, summing to one."""
    width = int(np.ceil(truncate * sigma))
    i = np.arange(-width, width + 1, dtype=np.float64)
    k = np.exp(-(i**2) / (2 * sigma**2)) if sigma > 0 else (i == 0).astype(np.float64)
    return k / k.sum()


@functools.lru_cache(maxsize=64)
def blur_matrix(n: int, sigma: float, padding: str = "reflect", truncate: float = 4.0) -> np.ndarray:
    """The (n, n) matrix of a 1-D Gaussian blur with the given border ``padding``.

    ``"constant"`` pads with zeros (TorchRay's ``imsmooth``), ``"reflect"`` mirrors without
    repeating the edge (torch's ``reflect``), ``"edge"`` repeats the edge value.
    """
    k = _kernel(sigma, truncate)
    w = len(k) // 2
    eye = np.eye(n)
    padded = np.pad(eye, ((w, w), (0, 0)), mode=padding) if w else eye
    out = np.zeros((n, n))
    for j, kj in enumerate(k):
        out += kj * padded[j:j + n]
    out.setflags(write=False)
    return out


def gaussian_blur(
    x: np.ndarray, sigma: float, padding: Padding = "reflect", truncate: float = 4.0
) -> np.ndarray:
    """Blur the last two axes of ``x`` with a Gaussian of std ``sigma`` pixels (separable)."""
    if sigma == 0:
        return np.array(x, copy=True)
    h, w = x.shape[-2:]
    by = blur_matrix(h, float(sigma), padding, float(truncate))
    bx = blur_matrix(w, float(sigma), padding, float(truncate))
    out = np.matmul(np.matmul(by, x.astype(np.float64)), bx.T)
    return out.astype(x.dtype)


_PADDINGS = ("reflect", "constant", "edge")


class GaussianBlur(Infill):
    """The input blurred by a Gaussian of std ``sigma`` pixels (Fong & Vedaldi use σ₀ = 10
    at 224×224). ``padding``: how the border is extended (see :func:`blur_matrix`)."""

    def __init__(self, sigma: float = 10.0, padding: Padding = "reflect", truncate: float = 4.0) -> None:
        if not sigma >= 0 or not np.isfinite(sigma):
            raise InputValidationError(f"GaussianBlur: sigma must be >= 0, got {sigma!r}")
        if padding not in _PADDINGS:
            raise InputValidationError(f"GaussianBlur: padding must be one of {_PADDINGS}, got {padding!r}")
        if not truncate > 0:
            raise InputValidationError(f"GaussianBlur: truncate must be > 0, got {truncate!r}")
        self.sigma = float(sigma)
        self.padding = padding
        self.truncate = float(truncate)

    def fill(self, x, keep=None, rng=None):
        return gaussian_blur(x, self.sigma, self.padding, self.truncate)


# -- noise --------------------------------------------------------------------------------

class UniformNoise(Infill):
    """Noise drawn uniformly from [``low``, ``high``), independently per feature and call."""

    stochastic = True

    def __init__(self, low: float = 0.0, high: float = 1.0) -> None:
        if not high > low:
            raise InputValidationError(f"UniformNoise: high ({high}) must be greater than low ({low})")
        self.low, self.high = float(low), float(high)

    def fill(self, x, keep=None, rng=None):
        return _rng(rng).uniform(self.low, self.high, size=x.shape).astype(x.dtype)


class GaussianNoise(Infill):
    """Gaussian noise ``mean + std·ε``; with ``additive=True`` the noise is added to the
    input instead (``x + std·ε``), removing information without leaving the image."""

    stochastic = True

    def __init__(self, std: float = 1.0, mean: float = 0.0, additive: bool = False) -> None:
        if not std > 0:
            raise InputValidationError(f"GaussianNoise: std must be > 0, got {std!r}")
        self.std, self.mean, self.additive = float(std), float(mean), bool(additive)

    def fill(self, x, keep=None, rng=None):
        noise = _rng(rng).standard_normal(x.shape) * self.std
        base = x if self.additive else self.mean
        return (base + noise).astype(x.dtype)


# -- generative in-filling ----------------------------------------------------------------

_FUSED_INPUT = "onnxplain_infill_input"


def _single_input(proto: Any, image_input: str | None, mask_input: str | None) -> Any:
    """Give a two-input in-painter (image, mask) one input: their channel concatenation."""
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) == 1:
        return proto
    if len(inputs) != 2:
        raise InputValidationError(
            f"Generative: the in-painting model has {len(inputs)} inputs; it must take one "
            "(image and hole mask stacked on channels) or two (image, hole mask)"
        )
    names = [i.name for i in inputs]
    image = image_input or names[0]
    mask = mask_input or next(n for n in names if n != image)
    if {image, mask} != set(names):
        raise InputValidationError(
            f"Generative: image_input={image!r} / mask_input={mask!r} do not name the model's "
            f"inputs {names}"
        )
    spec = {i.name: i for i in inputs}[image]
    dims = spec.type.tensor_type.shape.dim
    if len(dims) != 4 or not dims[1].HasField("dim_value"):
        raise InputValidationError(
            f"Generative: the image input {image!r} needs a static channel dim (N, C, H, W)"
        )
    channels = dims[1].dim_value
    elem = spec.type.tensor_type.elem_type
    fused = onnx.ModelProto()
    fused.CopyFrom(proto)
    g = fused.graph
    keep_inputs = [i for i in g.input if i.name not in (image, mask)]
    del g.input[:]
    shape = ["batch", channels + 1] + [d.dim_value or d.dim_param or None for d in dims[2:]]
    g.input.extend([helper.make_tensor_value_info(_FUSED_INPUT, elem, shape), *keep_inputs])
    g.initializer.extend([
        numpy_helper.from_array(np.arange(channels, dtype=np.int64), "onnxplain_infill_image_idx"),
        numpy_helper.from_array(np.array([channels], dtype=np.int64), "onnxplain_infill_mask_idx"),
    ])
    split = [
        helper.make_node("Gather", [_FUSED_INPUT, "onnxplain_infill_image_idx"], [image],
                         name="onnxplain_infill_image", axis=1),
        helper.make_node("Gather", [_FUSED_INPUT, "onnxplain_infill_mask_idx"], [mask],
                         name="onnxplain_infill_mask", axis=1),
    ]
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(split + nodes)
    return fused


class Generative(Infill):
    """Fill removed regions with an in-painting model (Agarwal et al. 2019; Chang et al.,
    ICLR 2019): ``fill = G(x ⊙ h̄, h)``, with ``h`` the hole mask (1 = fill this pixel).

    ``model``: the in-painter as ONNX — an ``onnxplain.Model`` (``ox.load``), an
    ``onnx.ModelProto``, bytes or a path — taking either one input (N, C+1, H, W), the
    image and the hole mask stacked on channels, or two inputs, the image (N, C, H, W)
    and the hole mask (N, 1, H, W) (named by ``image_input``/``mask_input``, else in that
    order). It must return the in-painted image (N, C, H, W). It runs on ONNX Runtime. A
    forward-capable :class:`~onnxplain.backends.Backend` or a function
    ``fn(image, hole) -> image`` is accepted as well.

    ``zero_holes``: zero the image inside the holes before in-painting (most in-painters
    expect it). Soft keep masks become holes where ``keep < threshold``; the blend with
    the input still uses the soft mask. ``max_batch_size`` bounds the in-painter's batch.
    """

    mask_dependent = True

    def __init__(
        self,
        model: Any,
        image_input: str | None = None,
        mask_input: str | None = None,
        zero_holes: bool = True,
        threshold: float = 0.5,
        max_batch_size: int = 32,
    ) -> None:
        from onnxplain.backends.base import Backend

        if max_batch_size < 1:
            raise InputValidationError(f"Generative: max_batch_size must be >= 1, got {max_batch_size}")
        if not 0 < threshold <= 1:
            raise InputValidationError(f"Generative: threshold must be in (0, 1], got {threshold}")
        self.zero_holes = bool(zero_holes)
        self.threshold = float(threshold)
        self.max_batch_size = int(max_batch_size)
        self._fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
        self._dtype = np.dtype(np.float32)
        if isinstance(model, Backend):
            self._fn = self._stacked(model)
        elif callable(model) and not isinstance(model, (str, bytes)) and not hasattr(model, "graph"):
            self._fn = model
        else:
            self._fn = self._stacked(self._load(model, image_input, mask_input))

    @staticmethod
    def _load(model: Any, image_input: str | None, mask_input: str | None) -> Any:
        import onnx

        from onnxplain.core.loading import load
        from onnxplain.core.model import Model

        if isinstance(model, Model):
            if image_input or mask_input:
                raise InputValidationError(
                    "Generative: image_input/mask_input apply to a two-input ONNX model, "
                    "not to a loaded single-input Model"
                )
            return model.backend("onnxruntime")
        if isinstance(model, (bytes, bytearray)):
            model = onnx.load_from_string(bytes(model))
        elif not isinstance(model, onnx.ModelProto):
            import os

            model = onnx.load(os.path.abspath(os.fspath(model)))
        return load(_single_input(model, image_input, mask_input)).backend("onnxruntime")

    def _stacked(self, backend: Any) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        if getattr(backend, "model", None) is not None:
            self._dtype = np.dtype(backend.model.input_dtype)

        def run(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
            stacked = np.concatenate([image, hole], axis=1).astype(self._dtype)
            return backend.predict(stacked)

        return run

    def fill(self, x, keep=None, rng=None):
        if keep is None:
            raise InputValidationError("Generative: in-filling needs the keep mask")
        keep = np.broadcast_to(np.asarray(keep, dtype=x.dtype), x.shape)
        hole = (keep.min(axis=1, keepdims=True) < self.threshold).astype(x.dtype)
        image = x * (1 - hole) if self.zero_holes else x
        parts = []
        for start in range(0, len(x), self.max_batch_size):
            sl = slice(start, start + self.max_batch_size)
            out = np.asarray(self._fn(image[sl], hole[sl]))
            if out.shape != x[sl].shape:
                raise InputValidationError(
                    f"Generative: the in-painter returned shape {out.shape} for images of shape "
                    f"{x[sl].shape}; it must return the in-painted image"
                )
            parts.append(out.astype(x.dtype, copy=False))
        return np.concatenate(parts)
