"""Differentiable numpy pieces of the mask-optimisation methods, each with its adjoint.

Meaningful and extremal perturbation optimise a mask through a chain of numpy operations
(upsampling, blending, shifting, regularisers) whose last link, the model, gives its
input gradient through ``Backend.gradients``. Each operation here comes with the
transpose of its Jacobian (``*_adjoint``), so the chain rule runs in numpy. The tests
check every adjoint against finite differences.

Separable linear maps of the two spatial axes are written as a pair of matrices
(``Ay``, ``Ax``): ``y = Ay @ x @ Axᵀ`` and its adjoint ``g ↦ Ayᵀ @ g @ Ax``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxplain.methods._resize import interp_matrix

__all__ = ["interp_matrix"]  # re-exported: RISE and meaningful perturbation resize with it


def translate(x: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Translate each row of ``x`` (R, C, H, W) by its ``shifts`` (R, 2) = (τ_y, τ_x) pixels,
    repeating the edge: ``y[r, :, i, j] = x[r, :, clip(i − τ_y), clip(j − τ_x)]``."""
    r, _, h, w = x.shape
    shifts = np.asarray(shifts, dtype=np.int64).reshape(r, 2)
    iy = np.clip(np.arange(h)[None] - shifts[:, :1], 0, h - 1)  # (R, H)
    ix = np.clip(np.arange(w)[None] - shifts[:, 1:], 0, w - 1)  # (R, W)
    rows = np.arange(r)[:, None, None, None]
    return x[rows, np.arange(x.shape[1])[None, :, None, None], iy[:, None, :, None], ix[:, None, None, :]]


def separable(x: np.ndarray, ay: np.ndarray, ax: np.ndarray) -> np.ndarray:
    """``ay @ x @ axᵀ`` over the last two axes."""
    return np.matmul(np.matmul(ay, x), ax.T)


def separable_adjoint(g: np.ndarray, ay: np.ndarray, ax: np.ndarray) -> np.ndarray:
    """The adjoint of :func:`separable`: ``ayᵀ @ g @ ax``."""
    return np.matmul(np.matmul(ay.T, g), ax)


def total_variation(m: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Σ_u |∂_y m(u)|^β + |∂_x m(u)|^β per leading index (forward differences), and its
    gradient with respect to ``m`` (…, H, W): Fong & Vedaldi's ``‖∇m(u)‖_β^β`` summed."""
    dy = np.diff(m, axis=-2)
    dx = np.diff(m, axis=-1)
    lead = tuple(range(m.ndim - 2, m.ndim))
    value = (np.abs(dy) ** beta).sum(axis=lead) + (np.abs(dx) ** beta).sum(axis=lead)
    ty = beta * np.abs(dy) ** (beta - 1) * np.sign(dy)
    tx = beta * np.abs(dx) ** (beta - 1) * np.sign(dx)
    grad = np.zeros_like(m)
    grad[..., 1:, :] += ty
    grad[..., :-1, :] -= ty
    grad[..., :, 1:] += tx
    grad[..., :, :-1] -= tx
    return value, grad


@dataclass
class Adam:
    """Adam (Kingma & Ba 2015) on one numpy parameter, as ``torch.optim.Adam`` computes it."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    t: int = 0
    m: np.ndarray | None = field(default=None, repr=False)
    v: np.ndarray | None = field(default=None, repr=False)

    def step(self, param: np.ndarray, grad: np.ndarray) -> np.ndarray:
        b1, b2 = self.betas
        if self.m is None:
            self.m, self.v = np.zeros_like(grad), np.zeros_like(grad)
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * grad
        self.v = b2 * self.v + (1 - b2) * grad * grad
        m_hat = self.m / (1 - b1**self.t)
        denom = np.sqrt(self.v) / np.sqrt(1 - b2**self.t) + self.eps
        return param - self.lr * m_hat / denom


@dataclass
class SGD:
    """SGD with momentum and dampening, as ``torch.optim.SGD`` (the first step is undamped)."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    buf: np.ndarray | None = field(default=None, repr=False)

    def step(self, param: np.ndarray, grad: np.ndarray) -> np.ndarray:
        if self.momentum:
            if self.buf is None:
                self.buf = grad.copy()
            else:
                self.buf = self.momentum * self.buf + (1 - self.dampening) * grad
            grad = self.buf
        return param - self.lr * grad
