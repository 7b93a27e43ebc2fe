"""Gaussian noise that is the same on every device and for every batching of the copies.

The draw for element e of example i in noisy copy s is a function of (seed, s, i, e) alone,
a counter-based generator (as Random123's, Salmon et al., SC 2011) built from the PCG hash
of Jarzynski & Olano (JCGT 2020): two 32-bit words per pair j of elements (j and
j + ⌈size/2⌉), each ``pcg(pcg(j) ^ key)`` with a key hashed from the seed, s and i, turned
into the pair's two standard normals by Box–Muller in float64. The words are integer
arithmetic that is exact in int64 (values below 2³² times constants below 2³¹), so every
device computes the same words; the float64 transform can differ between devices in its
last bits only, far below a float32 draw's resolution. Because nothing is sequential, a
GPU draws a whole batch of copies in a few kernels, where a host generator would send
every copy through host memory.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

_WORD = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # separates the two words of a pair
#: elements hashed at once on a CPU (cache-sized blocks); a GPU hashes a whole request
_CPU_BLOCK = 1 << 18


def fresh_seed() -> int:
    """A seed from the operating system's entropy, for ``seed=None``."""
    return secrets.randbits(64)


def _pcg(v: torch.Tensor) -> torch.Tensor:
    """The PCG hash of 32-bit words held in int64, in place (Jarzynski & Olano 2020)."""
    v.mul_(747796405).add_(2891336453).bitwise_and_(_WORD)
    shift = (v >> 28).add_(4)
    w = (v >> shift).bitwise_xor_(v).mul_(277803737).bitwise_and_(_WORD)
    return w.bitwise_xor_(w >> 22)


def _seed_key(seed: int, device: Any) -> torch.Tensor:
    import torch

    key = _pcg(torch.tensor(seed & _WORD, dtype=torch.int64, device=device))
    seed >>= 32
    while seed:  # every 32-bit word of a large seed counts
        key = _pcg(key ^ (seed & _WORD))
        seed >>= 32
    return key


def standard_normal(
    seed: int,
    first: int,
    copies: int,
    n: int,
    shape: tuple[int, ...],
    dtype: torch.dtype | None = None,
    device: Any = "cpu",
) -> torch.Tensor:
    """Standard normal draws for copies ``first`` … ``first + copies − 1`` of ``n`` examples
    of ``shape``: a tensor (copies, n, *shape) of ``dtype`` (default float32) on ``device``.

    Copy s of example i is the same whichever ``first``/``copies`` range it is drawn in and
    on whichever device, so results do not depend on how copies are batched.
    """
    import torch

    dtype = dtype or torch.float32
    size = 1
    for d in shape:
        size *= int(d)
    rows = torch.arange(first * n, (first + copies) * n, dtype=torch.int64, device=device)
    copy, example = rows // n, rows % n
    key = _pcg(_pcg(copy ^ _seed_key(seed, device)) ^ example)
    keys = (_pcg(key.clone()), _pcg(key ^ _GOLDEN))
    pairs = (size + 1) // 2  # Box–Muller: pair j gives elements j and pairs + j
    element = _pcg(torch.arange(pairs, dtype=torch.int64, device=device))
    out = torch.empty((len(rows), 2, pairs), dtype=dtype, device=device)
    per_block = len(rows) if torch.device(device).type != "cpu" else max(1, _CPU_BLOCK // pairs)
    for r0 in range(0, len(rows), per_block):
        block = slice(r0, r0 + per_block)
        radius = _pcg(element[None] ^ keys[0][block, None]).to(torch.float64)
        radius.add_(0.5).mul_(2.0**-32).log_().mul_(-2.0).sqrt_()  # √(−2 ln u₁), u₁ ∈ (0, 1)
        angle = _pcg(element[None] ^ keys[1][block, None]).to(torch.float64).mul_(2.0 * torch.pi * 2.0**-32)
        out[block, 0] = torch.cos(angle).mul_(radius)  # r cos 2πu₂ and r sin 2πu₂
        out[block, 1] = angle.sin_().mul_(radius)
    return out.reshape(len(rows), 2 * pairs)[:, :size].reshape(copies, n, *shape)


@dataclass(frozen=True)
class NoisyCopies:
    """``copies`` noisy copies x + ε_s (s = 0 … copies − 1) of a batch of examples: ε_s drawn
    from N(0, ``stdev``²) by :func:`standard_normal` under ``seed``, or ``given`` as an array
    (copies, N, ...) (``given[s, i]`` is added to example i in copy s)."""

    copies: int
    stdev: float = 0.0
    seed: int = 0
    given: np.ndarray | None = None

    def rows(self, x: Any, first: int, count: int) -> Any:
        """Copies ``first`` … ``first + count − 1`` of the examples ``x`` (N, ...) as one batch
        (count · N, ...) in x's dtype, row (s − first) · N + i being example i in copy s; a
        numpy ``x`` gives a numpy batch, a torch ``x`` a tensor on its device. Drawn noise is
        drawn in x's float type (float32 or float64, else float64)."""
        import torch

        if isinstance(x, np.ndarray):
            return self.rows(torch.from_numpy(np.require(x, requirements=["C", "W"])), first, count).numpy()
        if self.given is not None:
            eps = torch.as_tensor(np.require(self.given[first:first + count], requirements=["C", "W"]))
            noisy = (x[None] + eps.to(x.device)).to(x.dtype)
        else:
            kind = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float64
            eps = standard_normal(self.seed, first, count, len(x), tuple(x.shape[1:]), kind, x.device)
            noisy = eps.mul_(self.stdev).add_(x[None]).to(x.dtype)
        return noisy.reshape(count * len(x), *x.shape[1:])
