"""Token layers read as feature maps, for CAMs on vision transformers.

A ViT layer is a (N, T, C) sequence: ``extra`` leading tokens (the class token, DeiT's
distillation token, register tokens) and then one token per patch, row by row. A CAM reads
its patch tokens as the (N, C, h, w) map they tile, as pytorch-grad-cam's
``reshape_transform`` for ViTs does: ``a[:, extra:].reshape(N, h, w, C)``, channels moved
first. The grid is the one the input's shape implies: ``h·w = T − extra`` with the patch
size the same along both axes (``H / h == W / w``), the fewest extra tokens first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxplain.core.errors import InputValidationError

#: The most leading non-patch tokens considered (class, distillation and register tokens).
MAX_EXTRA = 16


@dataclass(frozen=True)
class TokenGrid:
    """The patch grid of a (N, T, C) token layer: ``extra`` leading tokens, then h × w."""

    extra: int
    h: int
    w: int

    @classmethod
    def infer(cls, layer: str, tokens: int, input_hw: tuple[int, int]) -> TokenGrid:
        height, width = input_hw
        for extra in range(min(MAX_EXTRA, tokens - 1) + 1):
            patches = tokens - extra
            for h in range(1, patches + 1):
                if patches % h:
                    continue
                w = patches // h
                if height % h == 0 and width % w == 0 and height // h == width // w:
                    return cls(extra, h, w)
        raise InputValidationError(
            f"layer {layer!r} has {tokens} tokens, which no square-patch grid of the "
            f"{height}×{width} input (after up to {MAX_EXTRA} class/register tokens) accounts "
            "for; CAMs read a (N, tokens, C) layer as its patch grid: choose a layer of patch "
            "tokens, or a 4-D (N, C, H, W) feature map"
        )

    def to_grid(self, a: np.ndarray) -> np.ndarray:
        """(N, T, C) tokens → the (N, C, h, w) map of the patch tokens."""
        n, _, c = a.shape
        return np.ascontiguousarray(a[:, self.extra:].reshape(n, self.h, self.w, c).transpose(0, 3, 1, 2))

    def channels(self, a: np.ndarray) -> np.ndarray:
        """A (N, C, patches) view of the patch tokens of (N, T, C) ``a``: writing to
        ``view[i, k]`` writes channel k of example i's patch tokens (class tokens untouched)."""
        return np.moveaxis(a, 2, 1)[:, :, self.extra:]


def is_token_layer(shape: tuple, batch: object) -> bool:
    """A (batch, tokens, channels) layer."""
    return len(shape) == 3 and (shape[0] is None or batch is None or shape[0] == batch)
