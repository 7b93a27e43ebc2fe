"""What feature visualisation shares: the optimiser, image parameterisations, regularisers,
random transformations and the model's valid input range. All numpy; every operation that
sits between the parameters and the model comes with its exact adjoint, so gradients from
the backend are carried back to the parameters by the chain rule.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxplain.core.errors import InputValidationError

if TYPE_CHECKING:
    from onnxplain.core.model import Model


# -- the optimiser ------------------------------------------------------------------------
class Adam:
    """Adam (Kingma & Ba, ICLR 2015) for gradient *ascent* on a list of numpy arrays:

        m ← β₁m + (1 − β₁)g,  v ← β₂v + (1 − β₂)g²,  p ← p + lr · m̂ / (√v̂ + ε)

    with the bias-corrected m̂ = m / (1 − β₁ᵗ), v̂ = v / (1 − β₂ᵗ).
    """

    def __init__(
        self,
        params: list[np.ndarray],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = params
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * g * g
            p += self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


# -- the valid input range -------------------------------------------------------------
def input_range(model: Model, given: Any, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (low, high) of valid model inputs, each shaped (1, C, 1, 1).

    ``given``: (low, high), each a number or one per channel. None: read from the model
    card next to the model file (``"input": {"range": [low, high]}``, as the bundled
    model's), else from its stored :class:`~onnxplain.preprocess.Preprocess` spec (the
    pixel values 0 and 255 carried through ``x · scale``, ``(x − mean) / std``); with
    neither, [0, 1] with a warning.
    """
    if given is None:
        given = _stored_range(model)
        if given is None:
            warnings.warn(
                "the model's valid input range is unknown (no model card or preprocessing spec "
                "next to it); assuming [0, 1]. Pass input_range=(low, high) to set it",
                UserWarning,
                stacklevel=3,
            )
            given = (0.0, 1.0)
    try:
        lo, hi = given
        lo = np.broadcast_to(np.asarray(lo, np.float64).reshape(-1), (channels,)).copy()
        hi = np.broadcast_to(np.asarray(hi, np.float64).reshape(-1), (channels,)).copy()
    except (TypeError, ValueError):
        raise InputValidationError(
            f"input_range must be (low, high), each a number or one per channel ({channels}), got {given!r}"
        ) from None
    if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (hi > lo).all()):
        raise InputValidationError(f"input_range must have finite low < high, got {given!r}")
    return lo.reshape(1, -1, 1, 1), hi.reshape(1, -1, 1, 1)


def _stored_range(model: Model) -> tuple[Any, Any] | None:
    source = Path(str(model.source))
    if not source.suffix or not source.is_file():
        return None
    card = source.with_suffix(".json")
    if card.is_file():
        try:
            data = json.loads(card.read_text())
            rng = data.get("input", {}).get("range") if isinstance(data, dict) else None
            if isinstance(rng, list) and len(rng) == 2:
                return rng[0], rng[1]
        except (OSError, json.JSONDecodeError, AttributeError):
            pass
    from onnxplain.preprocess import find_spec

    try:
        spec = find_spec(source)
    except Exception:
        return None
    if spec is None:
        return None
    mean, std = spec._arrays()
    return (0.0 - mean) / std, (255.0 * spec.scale - mean) / std


def image_shape(model: Model, given: Sequence[int] | None) -> tuple[int, int, int]:
    """(C, H, W) of the model's input: ``given``, else the input's static shape."""
    shape = given
    if shape is None:
        spec = model.input_spec.shape
        if spec is None or len(spec) != 4 or not all(isinstance(d, int) and d > 0 for d in spec[1:]):
            raise InputValidationError(
                f"the model input {model.input_name!r} has shape {spec}; pass image_shape=(C, H, W)"
            )
        shape = spec[1:]
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputValidationError(f"image_shape must be (C, H, W) with positive sizes, got {given!r}")
    return shape  # type: ignore[return-value]


# -- parameterisations: parameters -> image in [0, 1] per channel ---------------------------
class PixelImage:
    """The image itself, u ∈ [0, 1]ᶜˣᴴˣᵂ (the model input is low + (high − low)·u), clipped
    to [0, 1] after every step."""

    def __init__(
        self, rngs: Sequence[np.random.Generator], shape: tuple[int, int, int], init_std: float
    ) -> None:
        self.u = np.stack([np.clip(0.5 + init_std * r.standard_normal(shape), 0, 1) for r in rngs])
        self.params = [self.u]

    def image(self) -> np.ndarray:
        return self.u

    def backward(self, grad: np.ndarray) -> list[np.ndarray]:
        return [grad]

    def after_step(self) -> None:
        np.clip(self.u, 0.0, 1.0, out=self.u)

    def blur(self, sigma: float) -> None:
        self.u[...] = gaussian_blur(self.u, sigma)


#: Lucid's square root of ImageNet's RGB colour covariance (Olah et al. 2017).
_COLOR_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


class FourierImage:
    """Olah et al.'s decorrelated parameterisation (Distill 2017, "Feature Visualization"):

        t = M · irfft2(s ⊙ Z) / 4,   u = sigmoid(t)

    Z is a complex half spectrum (N, C, H, W//2 + 1) stored as two real arrays; s(f) =
    √(HW) / max(|f|, 1/max(H, W)) scales each frequency by its inverse magnitude, so every
    frequency starts with the same energy in the image; M decorrelates colours (Lucid's
    ImageNet colour matrix, normalised, for three channels; identity otherwise). The
    sigmoid keeps u in (0, 1) without clipping. Gradients go back through the same chain
    (the adjoint of irfft2 is rfft2 with the Hermitian weights: see :meth:`backward`).
    """

    def __init__(
        self,
        rngs: Sequence[np.random.Generator],
        shape: tuple[int, int, int],
        init_std: float,
        decorrelate: bool = True,
    ) -> None:
        c, h, w = shape
        self.h, self.w = h, w
        fy = np.fft.fftfreq(h)[:, None]
        fx = np.fft.rfftfreq(w)[None, :]
        self.freqs = np.sqrt(fy**2 + fx**2)
        self.scale = np.sqrt(h * w) / np.maximum(self.freqs, 1.0 / max(h, w))
        half = (c, h, w // 2 + 1)
        self.re = np.stack([init_std * r.standard_normal(half) for r in rngs])
        self.im = np.stack([init_std * r.standard_normal(half) for r in rngs])
        self.params = [self.re, self.im]
        if decorrelate and c == 3:
            self.color = _COLOR_SQRT / np.linalg.norm(_COLOR_SQRT, axis=0).max()
        else:
            self.color = np.eye(c)
        # Hermitian weights of the half spectrum: columns 0 and W/2 (W even) appear once.
        self.weights = np.full(w // 2 + 1, 2.0)
        self.weights[0] = 1.0
        if w % 2 == 0:
            self.weights[-1] = 1.0
        self._sig: np.ndarray | None = None

    def _linear(self) -> np.ndarray:
        spectrum = self.scale * (self.re + 1j * self.im)
        t = np.fft.irfft2(spectrum, s=(self.h, self.w)) / 4.0
        return np.einsum("ij,njhw->nihw", self.color, t)

    def image(self) -> np.ndarray:
        self._sig = 1.0 / (1.0 + np.exp(-self._linear()))
        return self._sig

    def backward(self, grad: np.ndarray) -> list[np.ndarray]:
        sig = self._sig if self._sig is not None else self.image()
        g = grad * sig * (1.0 - sig)
        g = np.einsum("ij,nihw->njhw", self.color, g) / 4.0
        # adjoint of irfft2 (norm "backward") on the half spectrum, as Re + i·Im gradients
        spec = np.fft.rfft2(g) * (self.weights / (self.h * self.w))
        spec = spec * self.scale
        return [spec.real, spec.imag]

    def after_step(self) -> None:
        self._sig = None

    def blur(self, sigma: float) -> None:
        """A Gaussian blur of the linear image t (circular): the spectrum times the
        Gaussian's transfer function exp(−2π²σ²|f|²)."""
        transfer = np.exp(-2.0 * math.pi**2 * sigma**2 * self.freqs**2)
        self.re *= transfer
        self.im *= transfer
        self._sig = None


# -- regularisers on u ∈ [0, 1] ------------------------------------------------------------
def l2_penalty(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R(u) = mean((u − ½)²) per image and its gradient (the decay of Yosinski et al. 2015)."""
    d = u - 0.5
    per = d.size // len(d)
    return (d**2).reshape(len(d), -1).mean(1), 2.0 * d / per


def total_variation(u: np.ndarray, beta: float = 2.0, eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Mahendran & Vedaldi's (CVPR 2015) TV^β per image and its gradient:

        R(u) = 1/(CHW) Σ_{c,i,j} ((u_{i,j+1} − u_{ij})² + (u_{i+1,j} − u_{ij})²)^{β/2}

    summed over positions with both neighbours (per channel), then divided by C·H·W so
    that the weight does not depend on the image size.
    """
    n = len(u)
    a = u[:, :, :-1, 1:] - u[:, :, :-1, :-1]
    b = u[:, :, 1:, :-1] - u[:, :, :-1, :-1]
    r = a * a + b * b + eps
    norm = u[0].size
    value = (r ** (beta / 2)).reshape(n, -1).sum(1) / norm
    coef = beta * r ** (beta / 2 - 1) / norm
    da, db = coef * a, coef * b
    grad = np.zeros_like(u)
    grad[:, :, :-1, 1:] += da
    grad[:, :, 1:, :-1] += db
    grad[:, :, :-1, :-1] -= da + db
    return value, grad


def gaussian_blur(u: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (N, C, H, W) images over H and W (reflected borders)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    out = u
    for axis in (2, 3):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        size = out.shape[axis]
        acc = np.zeros_like(out)
        for i, weight in enumerate(k):
            acc += weight * np.take(padded, np.arange(i, i + size), axis=axis)
        out = acc
    return out


# -- random transformations with their adjoints --------------------------------------------
class AffineWarp:
    """A bilinear resampling of each image by its own affine map, and its exact adjoint.

    Output pixel p of image n reads the input at A_n⁻¹(p) (a rotation by θ and a scaling
    by s about the centre, then a shift by (dy, dx) pixels), bilinearly, with the border
    replicated. The warp is linear in the image, x' = T x, so the gradient with respect to
    x is Tᵀ g' (:meth:`adjoint`): the transformation-robustness of Olah et al. 2017 and the
    jitter of Mordvintsev et al. 2015 with exact gradients.
    """

    def __init__(
        self, shape: tuple[int, int], shift: np.ndarray, scale: np.ndarray, angle: np.ndarray
    ) -> None:
        h, w = shape
        n = len(shift)
        self.shape, self.n = (h, w), n
        yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        # source = R(−θ)/s · (p − c − shift) + c
        py = yy[None] - cy - shift[:, 0, None, None]
        px = xx[None] - cx - shift[:, 1, None, None]
        cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
        s = scale[:, None, None]
        sy = (cos * py + sin * px) / s + cy
        sx = (-sin * py + cos * px) / s + cx
        sy = np.clip(sy, 0, h - 1).reshape(n, -1)
        sx = np.clip(sx, 0, w - 1).reshape(n, -1)
        y0 = np.minimum(np.floor(sy).astype(np.int64), h - 1)
        x0 = np.minimum(np.floor(sx).astype(np.int64), w - 1)
        y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
        wy, wx = sy - y0, sx - x0
        self.index = np.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1], -1)  # (n, HW, 4)
        self.weight = np.stack([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx], -1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, c, h, w = x.shape
        flat = x.reshape(n, c, h * w)
        out = np.zeros((n, c, h * w), dtype=np.float64)
        for k in range(4):
            idx = np.broadcast_to(self.index[:, None, :, k], (n, c, h * w))
            out += self.weight[:, None, :, k] * np.take_along_axis(flat, idx, axis=2)
        return out.reshape(x.shape)

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        n, c, h, w = g.shape
        hw = h * w
        flat = g.reshape(n, c, hw).astype(np.float64)
        offsets = (np.arange(n * c) * hw).reshape(n, c, 1, 1)
        idx = (self.index[:, None, :, :] + offsets).reshape(-1)
        vals = (self.weight[:, None, :, :] * flat[..., None]).reshape(-1)
        return np.bincount(idx, weights=vals, minlength=n * c * hw).reshape(g.shape)
