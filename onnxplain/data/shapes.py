"""A procedurally generated shape-classification data set with known object masks.

Every image is 64×64 RGB: one object of a known class (circle, square, triangle, cross,
star), filled with a colour that contrasts with its surroundings, drawn on a textured
background (gratings, checkerboards or smooth noise, plus pixel noise) with clutter
behind it (line segments, dots and small blobs, all far smaller than the object and
never of a class shape). The object's pixel mask is returned with each image, so any
attribution can be scored for whether it points at the object.

Only numpy is used. Image ``i`` of ``generate(n, seed)`` depends on ``(seed, i)`` alone:
``generate(10, seed)[:5]`` equals ``generate(5, seed)``.

>>> from onnxplain.data import shapes
>>> batch = shapes.generate(4, seed=0)
>>> batch.images.shape, batch.images.dtype, batch.labels.shape, batch.masks.shape
((4, 3, 64, 64), dtype('float32'), (4,), (4, 64, 64))
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from onnxplain.core.errors import InputValidationError

#: Class names, in label order.
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star")
#: Side length of the generated images, in pixels.
IMAGE_SIZE = 64
#: Object radius range (pixels): objects are 2·radius ≈ 18–32 px across.
RADIUS_RANGE = (9.0, 16.0)
_SUPERSAMPLE = 2  # anti-aliasing: coverage is the mean of 2×2 sub-pixel samples


class ShapesBatch(NamedTuple):
    """``images`` (N, 3, H, W) float32 in [0, 1]; ``labels`` (N,) int64 indices into
    :data:`CLASSES`; ``masks`` (N, H, W) bool, True on the object's pixels."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray


# -- object outlines, in unit coordinates (radius 1, centred at 0) -------------------------
def _regular(points: int, outer: float, inner: float | None = None, phase: float = np.pi / 2) -> np.ndarray:
    if inner is None:
        angles = phase + 2 * np.pi * np.arange(points) / points
        return np.stack([outer * np.cos(angles), outer * np.sin(angles)], axis=1)
    angles = phase + np.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_ARM = 0.32  # half-width of a cross's arms
_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]]),
    "triangle": _regular(3, 1.1),
    "cross": np.array([
        [-_ARM, -1], [_ARM, -1], [_ARM, -_ARM], [1, -_ARM], [1, _ARM], [_ARM, _ARM],
        [_ARM, 1], [-_ARM, 1], [-_ARM, _ARM], [-1, _ARM], [-1, -_ARM], [-_ARM, -_ARM],
    ]),
    "star": _regular(5, 1.15, 0.48),
}


def _inside_polygon(px: np.ndarray, py: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd ray casting, vectorised over points."""
    inside = np.zeros(px.shape, dtype=bool)
    xj, yj = poly[-1]
    for xi, yi in poly:
        crosses = (yi > py) != (yj > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = (xj - xi) * (py - yi) / (yj - yi) + xi
        inside ^= crosses & (px < x_at)
        xj, yj = xi, yi
    return inside


def _inside(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if name == "circle":
        return u * u + v * v <= 1.0
    return _inside_polygon(u, v, _POLYGONS[name])


def _sample_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel sample positions (size·s, size·s) in pixel coordinates."""
    s = _SUPERSAMPLE
    coords = (np.arange(size * s) + 0.5) / s
    return np.meshgrid(coords, coords, indexing="xy")


def _coverage(inside: np.ndarray, size: int) -> np.ndarray:
    s = _SUPERSAMPLE
    return inside.reshape(size, s, size, s).mean(axis=(1, 3))


def _shape_coverage(name: str, cx: float, cy: float, radius: float, angle: float,
                    grid: tuple[np.ndarray, np.ndarray], size: int) -> np.ndarray:
    gx, gy = grid
    dx, dy = (gx - cx) / radius, (gy - cy) / radius
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return _coverage(_inside(name, u, v), size)


# -- backgrounds and clutter ------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled random grid: (size, size) in [0, 1]."""
    grid = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size)
    i0 = np.minimum(t.astype(int), cells - 1)
    f = t - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    kind = rng.integers(3)
    if kind == 0:  # sinusoidal grating
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(2, 9) / size
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta))
                                     + rng.uniform(0, 2 * np.pi))
    elif kind == 1:  # checkerboard, possibly rotated
        theta = rng.uniform(0, np.pi)
        cell = rng.uniform(4, 12)
        u, v = x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)
        pattern = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float64)
    else:  # smooth noise
        pattern = _smooth_noise(rng, size, int(rng.integers(3, 9)))
    a, b = rng.random(3), rng.random(3)
    strength = rng.uniform(0.2, 0.6)
    mid = (a + b) / 2
    lo, hi = mid + (a - mid) * strength, mid + (b - mid) * strength
    image = lo[None, None] + pattern[..., None] * (hi - lo)[None, None]
    image += _smooth_noise(rng, size, 4)[..., None] * rng.uniform(-0.15, 0.15, 3)
    return image


def _paint(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    image *= 1 - alpha[..., None]
    image += alpha[..., None] * colour


def _clutter(rng: np.random.Generator, image: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> None:
    """Line segments, dots and small blobs, each rendered only in the pixel window that
    can hold it (the result is the same as over the whole image, only faster)."""
    size = image.shape[0]
    s = _SUPERSAMPLE
    gx_all, gy_all = grid

    def window(x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        c0, c1 = max(0, int(np.floor(x0)) - 1), min(size, int(np.ceil(x1)) + 1)
        r0, r1 = max(0, int(np.floor(y0)) - 1), min(size, int(np.ceil(y1)) + 1)
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))

    def samples(rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        sub = (slice(rows.start * s, rows.stop * s), slice(cols.start * s, cols.stop * s))
        return gx_all[sub], gy_all[sub]

    for _ in range(int(rng.integers(3, 9))):
        colour = rng.random(3)
        kind = rng.integers(3)
        if kind == 0:  # line segment
            x0, y0 = rng.uniform(0, size, 2)
            length, theta = rng.uniform(10, 40), rng.uniform(0, np.pi)
            dx, dy = np.cos(theta), np.sin(theta)
            width = rng.uniform(0.5, 1.3)
            xe, ye = x0 + length * dx, y0 + length * dy
            rows, cols = window(min(x0, xe) - width, max(x0, xe) + width, min(y0, ye) - width,
                                max(y0, ye) + width)
            gx, gy = samples(rows, cols)
            t = np.clip((gx - x0) * dx + (gy - y0) * dy, 0, length)
            inside = np.hypot(gx - x0 - t * dx, gy - y0 - t * dy) <= width
        elif kind == 1:  # dot
            cx, cy = rng.uniform(0, size, 2)
            r = rng.uniform(1.0, 3.0)
            rows, cols = window(cx - r, cx + r, cy - r, cy + r)
            gx, gy = samples(rows, cols)
            inside = np.hypot(gx - cx, gy - cy) <= r
        else:  # small irregular blob: a wobbly disc, not a class shape
            cx, cy = rng.uniform(0, size, 2)
            r = rng.uniform(2.0, 4.0)
            phase = rng.uniform(0, 6.3)
            reach = r * 1.5  # the wobble below stays within ±50 %
            rows, cols = window(cx - reach, cx + reach, cy - reach, cy + reach)
            gx, gy = samples(rows, cols)
            angle = np.arctan2(gy - cy, gx - cx)
            wobble = 1 + 0.3 * np.sin(3 * angle + phase) + 0.2 * np.sin(5 * angle)
            inside = np.hypot(gx - cx, gy - cy) <= r * wobble
        strength = rng.uniform(0.6, 1.0)
        h, w = rows.stop - rows.start, cols.stop - cols.start
        if h and w:
            alpha = inside.reshape(h, s, w, s).mean(axis=(1, 3)) * strength
            _paint(image[rows, cols], alpha, colour)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def _object_colour(rng: np.random.Generator, around: np.ndarray) -> np.ndarray:
    """A colour whose luminance differs from the surroundings' by at least 0.3."""
    lum = float(_luminance(around))
    for _ in range(50):
        colour = rng.random(3)
        if abs(float(_luminance(colour)) - lum) >= 0.3:
            return colour
    return np.full(3, 0.0 if lum > 0.5 else 1.0)


def render(label: int, rng: np.random.Generator, size: int = IMAGE_SIZE,
           clutter: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One image (size, size, 3) float64 in [0, 1] of class ``label``, and its mask."""
    name = CLASSES[label]
    grid = _sample_grid(size)
    image = _background(rng, size)
    if clutter:
        _clutter(rng, image, grid)
    scale = size / IMAGE_SIZE
    radius = rng.uniform(*RADIUS_RANGE) * scale
    margin = radius * 1.15 + 1
    cx, cy = rng.uniform(margin, size - margin, 2)
    angle = rng.uniform(0, 2 * np.pi)
    alpha = _shape_coverage(name, cx, cy, radius, angle, grid, size)
    mask = alpha >= 0.5
    colour = _object_colour(rng, image[mask].mean(axis=0))
    # A gentle shading across the object, so its fill is not one flat colour.
    y, x = np.mgrid[0:size, 0:size]
    theta = rng.uniform(0, 2 * np.pi)
    shade = 1 + 0.12 * ((x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)) / radius
    fill = np.clip(colour[None, None] * shade[..., None], 0, 1)
    image = image * (1 - alpha[..., None]) + fill * alpha[..., None]
    image += rng.normal(0, rng.uniform(0.01, 0.06), image.shape)
    return np.clip(image, 0, 1), mask


def generate(n: int, seed: int = 0, size: int = IMAGE_SIZE, clutter: bool = True) -> ShapesBatch:
    """``n`` images, labels and masks; image ``i`` depends only on ``(seed, i)``.

    Labels are drawn uniformly from :data:`CLASSES`. ``clutter=False`` leaves out the
    line segments, dots and blobs (backgrounds stay textured).
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise InputValidationError(f"n must be a positive number of images, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputValidationError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise InputValidationError(f"size must be an integer >= 16, got {size!r}")
    images = np.empty((n, 3, size, size), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    masks = np.empty((n, size, size), dtype=bool)
    for i in range(n):
        rng = np.random.default_rng([int(seed), i])
        labels[i] = rng.integers(len(CLASSES))
        image, masks[i] = render(int(labels[i]), rng, size, clutter)
        images[i] = image.transpose(2, 0, 1)
    return ShapesBatch(images, labels, masks)
