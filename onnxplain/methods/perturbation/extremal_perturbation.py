"""Extremal perturbation: Fong, Patrick & Vedaldi, "Understanding deep networks via
extremal perturbations and smooth masks", ICCV 2019 (arXiv 1910.08485).

For each area a, find the smooth mask m of area a that keeps (preservation game) or
removes (deletion game) as much of the target score as possible,

    m_a = argmax_{m: area(m) = a} Φ-score,   preserve: f_c(x ⊗ m),
                                             delete:  −f_c(x ⊗ (1 − m)),
                                             dual:    f_c(x ⊗ m) − f_c(x ⊗ (1 − m)),

with the definitions of TorchRay's ``extremal_perturbation`` (the authors' reference):

- smooth masks: parameters m̄ on a grid of step ``step`` pixels; the mask is the smooth
  max (softmax pooling with coldness 20) of the bumps m̄_j · k(‖u − u_j‖ / σ),
  k(z) = exp(−2 max(z − ½, 0)²), clamped to [0, 1]; it has a margin of σ on each side;
- ``x ⊗ m``: the blur pyramid y_l = g_{σ_l} ∗ x, σ_l = σ_max (1 − l/(L−1)),
  l = 0…L−1 (zero padding), read at level m·(L−1) with linear interpolation, so m = 1
  is the input and m = 0 its strongest blur; or, with ``infill``/``baselines``, the blend
  m ⊙ x + (1 − m) ⊙ fill (TorchRay's "fade" is the zero fill);
- the area constraint as a ranking loss: λ · mean((sort(m) − r_a)²), r_a the vector of
  (1 − a)·|m| zeros then ones, over the whole mask including its margin, λ = 300 growing
  by ×1.0035 per iteration;
- SGD on m̄ (learning rate 0.01, momentum 0.9, dampening 0.9), m̄ clamped to [0, 1],
  started at 1; the input is flipped horizontally on even iterations (``jitter``).

Defaults are TorchRay's (the paper's): 800 iterations, L = 8 levels, σ_max = 20,
step 7, σ = 21, area 0.1. The gradient of f_c comes from the backend; the chain rule
through the pyramid, the smooth-max mask generator and the ranking loss runs in numpy.
TorchRay's contrastive reward is not offered (it needs every class's gradient).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pydantic

from onnxplain.backends.base import INPUT, Capability
from onnxplain.core.targets import TargetLike
from onnxplain.core.validation import Params, Seed, validate_params
from onnxplain.infill import Infill, Zeros, gaussian_blur
from onnxplain.methods.perturbation import _ops
from onnxplain.methods.perturbation.base import Filler, PerturbationAttribution

COLDNESS = 20.0  # TorchRay's softmax-pooling temperature


class _EPParams(Params):
    areas: tuple[float, ...]
    variant: Literal["preserve", "delete", "dual"]
    perturbation: Literal["blur", "fade"]
    max_iter: pydantic.PositiveInt
    num_levels: int = pydantic.Field(ge=2)
    step: pydantic.PositiveInt
    sigma: float = pydantic.Field(gt=0)
    max_blur: float = pydantic.Field(gt=0)
    jitter: bool
    smooth: float = pydantic.Field(ge=0)
    batch_size: pydantic.PositiveInt | None = None
    seed: Seed = None

    @pydantic.field_validator("areas")
    @classmethod
    def _areas(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0 < a < 1 for a in v):
            raise ValueError(f"each area must be in (0, 1), got {list(v)}")
        return v


class SmoothMask:
    """TorchRay's mask generator: parameters (R, 1, h_in, w_in) -> masks (R, H_out, W_out).

    ``generate`` returns the full mask (with its margin of σ) and ``crop`` the part over
    the input; ``backward`` maps ∂loss/∂(full mask) to ∂loss/∂parameters. Rows are
    processed a few at a time so memory stays bounded by ``max_elements``.
    """

    def __init__(
        self, shape: tuple[int, int], step: int, sigma: float, max_elements: int = 2**22,
        dtype: Any = np.float32,
    ) -> None:
        self.shape, self.step, self.sigma = shape, int(step), float(sigma)
        self.dtype = np.dtype(dtype)
        self.margin = self.sigma
        self.padding = 1 + math.ceil((self.margin + self.sigma) / step)
        self.radius = 1 + math.ceil(self.sigma / step)
        self.diameter = 2 * self.radius + 1
        self.shape_in = tuple(math.ceil(z / step) for z in shape)
        self.shape_mid = tuple(z + 2 * self.padding - self.diameter + 1 for z in self.shape_in)
        # TorchRay's grid can end short of margin + input (σ small next to ``step``, or an
        # input not a multiple of it): extend it past the bottom/right edge, over zero
        # parameters as in the padding, until the full mask covers the crop. The geometry of
        # every other pixel is unchanged (and nothing changes where TorchRay's grid suffices).
        need = [math.ceil((round(self.margin) + z + self.step - 1) / self.step) for z in shape]
        self.extra = tuple(max(0, k - z) for k, z in zip(need, self.shape_mid))
        self.shape_mid = tuple(z + e for z, e in zip(self.shape_mid, self.extra))
        self.shape_up = tuple(step * z for z in self.shape_mid)
        self.shape_out = tuple(z - step + 1 for z in self.shape_up)
        f32 = np.float32
        ho, wo = self.shape_out
        step_inv = [f32(zm) / f32(zu) for zm, zu in zip(self.shape_mid, self.shape_up)]
        uy, ux = np.meshgrid(np.arange(ho, dtype=f32), np.arange(wo, dtype=f32), indexing="ij")
        self.weight = np.empty((self.diameter**2, ho, wo), dtype=f32)
        for ky in range(self.diameter):
            for kx in range(self.diameter):
                iy = np.floor(step_inv[0] * uy) + f32(ky - self.padding)
                ix = np.floor(step_inv[1] * ux) + f32(kx - self.padding)
                delta = np.sqrt((uy - (f32(self.margin) + f32(step) * iy)) ** 2
                                + (ux - (f32(self.margin) + f32(step) * ix)) ** 2)
                z = np.maximum(delta / f32(self.sigma) - f32(0.5), f32(0))
                self.weight[ky * self.diameter + kx] = np.exp(f32(-2) * z * z)
        # nearest upsampling of the mid grid by `step`, cropped to shape_out
        self.up_y = np.arange(ho) // step
        self.up_x = np.arange(wo) // step
        self._weight = self.weight.astype(self.dtype)
        self.chunk = max(1, max_elements // self.weight.size)
        self._cache: tuple[np.ndarray, tuple[np.ndarray, ...]] | None = None

    @property
    def crop_offset(self) -> int:
        return round(self.margin)

    def crop(self, full: np.ndarray) -> np.ndarray:
        m = self.crop_offset
        return full[:, m:m + self.shape[0], m:m + self.shape[1]]

    def uncrop(self, g: np.ndarray) -> np.ndarray:
        """Adjoint of :meth:`crop`."""
        out = np.zeros((len(g), *self.shape_out), dtype=g.dtype)
        m = self.crop_offset
        out[:, m:m + self.shape[0], m:m + self.shape[1]] = g
        return out

    def _bumps(self, params: np.ndarray) -> np.ndarray:
        """a (R, K, H_out, W_out): each grid neighbour's value times its bump."""
        p = self.padding
        ey, ex = self.extra
        padded = np.pad(params[:, 0].astype(self.dtype), ((0, 0), (p, p + ey), (p, p + ex)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (self.diameter,) * 2, axis=(1, 2))
        mid = windows.reshape(len(params), *self.shape_mid, -1).transpose(0, 3, 1, 2)
        return mid[:, :, self.up_y][:, :, :, self.up_x] * self._weight

    @staticmethod
    def _pool(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Softmax pooling over the neighbours: Σ_k a_k · softmax(coldness · a)_k."""
        z = COLDNESS * a
        e = np.exp(z - z.max(axis=1, keepdims=True))
        s = e / e.sum(axis=1, keepdims=True)
        return (a * s).sum(axis=1), s

    def _forward(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a = self._bumps(params)
        pooled, s = self._pool(a)
        return a, s, pooled

    def generate(self, params: np.ndarray) -> np.ndarray:
        """The full masks (R, H_out, W_out) in [0, 1]."""
        out = np.empty((len(params), *self.shape_out), dtype=self.dtype)
        self._cache = None
        for i in range(0, len(params), self.chunk):
            a, s, pooled = self._forward(params[i:i + self.chunk])
            out[i:i + self.chunk] = np.clip(pooled, 0, 1)
        if len(params) <= self.chunk:  # small enough to keep for the backward pass
            self._cache = (params.copy(), (a, s, pooled))
        return out

    def backward(self, params: np.ndarray, g_full: np.ndarray) -> np.ndarray:
        """∂loss/∂params from ∂loss/∂(full mask) (the forward pass is recomputed unless
        :meth:`generate` just ran on the same parameters and could keep it)."""
        grads = np.empty(params.shape, dtype=np.float64)
        hm, wm = self.shape_mid
        p, d = self.padding, self.diameter
        cached = self._cache if self._cache is not None and np.array_equal(self._cache[0], params) else None
        for i in range(0, len(params), self.chunk):
            sl = slice(i, i + self.chunk)
            a, s, pooled = cached[1] if cached is not None else self._forward(params[sl])
            # clamp(0, 1): torch passes the gradient only strictly inside (0, 1)
            g = (g_full[sl] * ((pooled > 0) & (pooled < 1))).astype(self.dtype)
            # ∂/∂a_j of Σ_k a_k s_k = s_j (1 + coldness (a_j − pooled))
            g_up = g[:, None] * s * (1 + COLDNESS * (a - pooled[:, None])) * self._weight
            # adjoint of the nearest upsampling: sum each step × step block
            g_mid = np.add.reduceat(g_up, np.arange(0, self.shape_out[0], self.step), axis=2)
            g_mid = np.add.reduceat(g_mid, np.arange(0, self.shape_out[1], self.step), axis=3)
            # adjoint of the unfold: scatter each neighbour back to its grid cell
            g_pad = np.zeros((len(g_mid), self.shape_in[0] + 2 * p + self.extra[0],
                              self.shape_in[1] + 2 * p + self.extra[1]))
            for ky in range(d):
                for kx in range(d):
                    g_pad[:, ky:ky + hm, kx:kx + wm] += g_mid[:, ky * d + kx]
            grads[sl, 0] = g_pad[:, p:p + self.shape_in[0], p:p + self.shape_in[1]]
        return grads


class BlurPyramid:
    """TorchRay's perturbation pyramid: level l is the input blurred with
    σ_l = σ_max (1 − l/(L−1)) (zero padding); a mask m reads level m·(L−1), linearly
    interpolated."""

    def __init__(self, x: np.ndarray, num_levels: int, max_blur: float) -> None:
        self.levels = num_levels
        self.dtype = x.dtype
        sigmas = (1 - np.linspace(0, 1, num_levels)) * max_blur
        self.pyramid = np.stack([gaussian_blur(x, float(s), padding="constant") for s in sigmas], axis=1)

    def apply(self, rows: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Perturbed rows (R, C, H, W) and their derivative with respect to ``mask`` (R, H, W)."""
        w = mask * mask.dtype.type(self.levels - 1)
        k = np.floor(w)
        frac = (w - k)[:, None]
        k = k.astype(np.int64)[:, None, None]
        pyr = self.pyramid[rows]  # (R, L, C, H, W)
        shape = (len(rows), 1, *pyr.shape[2:])
        y0 = np.take_along_axis(pyr, np.broadcast_to(k, shape), axis=1)[:, 0]
        y1 = np.take_along_axis(pyr, np.broadcast_to(np.minimum(k + 1, self.levels - 1), shape), axis=1)[:, 0]
        return (1 - frac) * y0 + frac * y1, (self.levels - 1) * (y1 - y0)


class _Blend:
    """``m ⊙ x + (1 − m) ⊙ fill`` with the same interface as :class:`BlurPyramid`."""

    def __init__(self, x: np.ndarray, filler: Filler, offset: int = 0) -> None:
        self.x, self.filler = x, filler
        self.dtype = x.dtype
        self.offset = offset  # the index of x[0] among all the inputs
        self.calls = 0  # one call per iteration

    def apply(self, rows: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xb = self.x[rows]
        keep = mask[:, None].astype(xb.dtype)
        # a random fill is keyed by (seed, example, draw), draw = (iteration, occurrence of the
        # example among the rows: game × area), so it does not depend on how examples are grouped
        order = np.argsort(rows, kind="stable")
        rank = np.empty(len(rows), dtype=np.int64)
        rank[order] = np.arange(len(rows)) - np.searchsorted(rows[order], rows[order])
        per_example = int(np.bincount(rows).max()) if len(rows) else 1
        keys = np.stack([self.offset + rows, self.calls * per_example + rank], axis=1)
        self.calls += 1
        ref = self.filler.reference(rows, xb, keep, keys)
        return keep * xb + (1 - keep) * ref, xb - ref


class ExtremalPerturbation(PerturbationAttribution):
    """Extremal perturbations with smooth masks: gradients needed (torch backend).

    ``areas``: one area or a list (the paper shows 0.05, 0.1, 0.2); the result is
    (N, H, W) for one area given as a number, (N, len(areas), H, W) for a list.
    ``variant``: ``"preserve"``, ``"delete"`` or ``"dual"``. ``perturbation``: ``"blur"``
    (the pyramid) or ``"fade"``; ``baselines``/``infill`` blend with another fill instead.
    ``smooth`` > 0 blurs the final masks by σ = smooth · min(H, W), as TorchRay does.
    Rows (examples × areas × games) are optimised ``batch_size`` at a time. ``seed``
    seeds random in-fills, each row's keyed by (seed, example, iteration and row of the
    example), so results do not depend on ``batch_size``.

    As in TorchRay, the area counts the mask's margin of σ pixels around the image, so the
    mask over the image covers about a·(H + 2σ)(W + 2σ)/(HW) of it. The numpy mask
    machinery costs about 0.3 s per iteration and mask at 224×224 (step 7, σ = 21) on
    one CPU core, on top of the model's gradient.
    """

    requires = frozenset({Capability.GRADIENTS})

    def attribute(
        self,
        inputs: Any,
        target: TargetLike = None,
        areas: float | Sequence[float] = 0.1,
        variant: Literal["preserve", "delete", "dual"] = "preserve",
        perturbation: Literal["blur", "fade"] = "blur",
        max_iter: int = 800,
        num_levels: int = 8,
        step: int = 7,
        sigma: float = 21.0,
        max_blur: float = 20.0,
        jitter: bool = True,
        smooth: float = 0.0,
        baselines: Any = None,
        infill: Infill | None = None,
        batch_size: int | None = None,
        seed: int | None = 0,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        x = self._inputs(inputs)
        h, w = self._images(x, "ExtremalPerturbation")
        single = isinstance(areas, (int, float, np.floating, np.integer))
        area_list = (float(areas),) if single else tuple(float(a) for a in areas)
        p = validate_params(_EPParams, "ExtremalPerturbation", areas=area_list, variant=variant,
                            perturbation=perturbation, max_iter=max_iter, num_levels=num_levels,
                            step=step, sigma=sigma, max_blur=max_blur, jitter=jitter, smooth=smooth,
                            batch_size=batch_size, seed=seed)
        objective = self._objective(x, target)
        pyramid = baselines is None and infill is None and p.perturbation == "blur"
        if not pyramid:
            fill = self._infill(x, baselines, infill, default=Zeros if p.perturbation == "fade" else None)
            seeds = np.random.SeedSequence(p.seed)
        gen = SmoothMask((h, w), p.step, p.sigma)
        n_areas = len(p.areas)
        games = 2 if p.variant == "dual" else 1
        per_group = max(1, self._batch_size(p.batch_size) // (n_areas * games))
        out = np.zeros((len(x), n_areas, h, w), dtype=x.dtype)
        for start in range(0, len(x), per_group):
            group = slice(start, min(start + per_group, len(x)))
            xg = x[group]  # the pyramid (L × the inputs) is built per group, not for all inputs
            if pyramid:
                perturb: BlurPyramid | _Blend = BlurPyramid(xg, p.num_levels, p.max_blur)
            else:
                perturb = _Blend(xg, Filler(fill, xg, seeds), offset=start)
            desc = f"ExtremalPerturbation {start + 1}-{group.stop}/{len(x)}"
            out[group] = self._optimise(len(xg), objective.take(group), perturb, gen, p, show_progress, desc)
        if p.smooth > 0:
            flat = out.reshape(-1, 1, h, w)
            out = gaussian_blur(flat, p.smooth * min(h, w), padding="constant").reshape(out.shape)
        return out[:, 0] if single else out

    def _optimise(self, n: int, objective, perturb, gen: SmoothMask, p: _EPParams, show_progress, desc):
        """TorchRay's optimisation for ``n`` examples and all areas at once."""
        n_areas = len(p.areas)
        owner = np.repeat(np.arange(n), n_areas)  # the example of each mask row
        params = np.ones((len(owner), 1, *gen.shape_in), dtype=gen.dtype)
        reference = np.tile(area_reference(p.areas, int(np.prod(gen.shape_out))), (n, 1))
        sgd = _ops.SGD(lr=0.01, momentum=0.9, dampening=0.9)
        regul_weight = 300.0
        cropped = None
        for t in self._progress(range(p.max_iter), p.max_iter, show_progress, desc):
            _, grad, cropped = self._loss_and_gradient(
                params, owner, objective, perturb, gen, reference, regul_weight, p.variant,
                flip=p.jitter and t % 2 == 0,
            )
            params = np.clip(sgd.step(params, grad), 0, 1).astype(gen.dtype)
            regul_weight *= 1.0035
        assert cropped is not None
        return cropped.reshape(n, n_areas, *gen.shape)

    def _loss_and_gradient(
        self, params, owner, objective, perturb, gen: SmoothMask, reference, regul_weight, variant, flip
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """−energy per mask row, its gradient with respect to ``params``, and the masks."""
        full = gen.generate(params)
        cropped = gen.crop(full)
        if variant == "preserve":
            masks, rows = cropped, owner
        elif variant == "delete":
            masks, rows = 1 - cropped, owner
        else:
            masks, rows = np.concatenate([cropped, 1 - cropped]), np.concatenate([owner, owner])
        perturbed, d_mask = perturb.apply(rows, masks)
        width = gen.shape[1]
        if flip:  # TorchRay's jitter: a horizontal flip on even iterations
            perturbed = perturbed[..., ::-1]
        res = self.backend.gradients(np.ascontiguousarray(perturbed, dtype=perturb.dtype),
                                     objective.take(rows), wrt=[INPUT])
        g_x = res.gradients[INPUT].astype(np.float64)
        if flip:
            g_x = g_x[..., ::-1]
        assert g_x.shape[-1] == width
        # every row's score enters the loss as −f(x ⊗ u) with u = m or 1 − m, so
        # ∂loss/∂m = −Σ_c ∂f/∂x̃ · ∂x̃/∂u (the two minus signs cancel for u = 1 − m)
        g_rows = -(g_x * d_mask).sum(axis=1)
        scores = res.scores.astype(np.float64)
        n = len(owner)
        if variant == "preserve":
            reward, g_crop = scores, g_rows
        elif variant == "delete":
            reward, g_crop = -scores, g_rows
        else:
            reward, g_crop = scores[:n] - scores[n:], g_rows[:n] + g_rows[n:]
        regul, g_full = area_loss(full, reference, regul_weight)
        return regul - reward, gen.backward(params, g_full + gen.uncrop(g_crop)), cropped


def area_reference(areas: Sequence[float], size: int) -> np.ndarray:
    """TorchRay's target vectors r_a: (1 − a)·size zeros, then ones, one row per area."""
    reference = np.ones((len(areas), size))
    for i, a in enumerate(areas):
        reference[i, :int(size * (1 - a))] = 0
    return reference


def area_loss(full: np.ndarray, reference: np.ndarray, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """The area ranking loss λ · mean((sort(m) − r)²) per mask (R, H, W), and its gradient
    with respect to the masks: 2λ(sort(m) − r)/|m| scattered back through the sort."""
    flat = full.reshape(len(full), -1).astype(np.float64)
    order = np.argsort(flat, axis=1, kind="stable")
    gap = np.take_along_axis(flat, order, axis=1) - reference
    grad = np.zeros_like(flat)
    np.put_along_axis(grad, order, weight * 2 * gap / flat.shape[1], axis=1)
    return weight * (gap**2).mean(axis=1), grad.reshape(full.shape)
