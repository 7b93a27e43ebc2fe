"""How a ``feature_mask`` is read: one rule for FeatureAblation, Lime, KernelShap and
ShapleyValueSampling.

A feature mask holds an integer group id per input value. For inputs x of shape
(N, C, H, W) the accepted shapes are

- (H, W): one mask for every example and channel (the channels of a pixel are one feature);
- (N, H, W) or (1, H, W): one mask per example (or one for all), shared by the channels,
  which is what :mod:`onnxplain.segmentation` returns;
- (C, H, W): one mask for every example, channels grouped separately (numpy broadcasting);
- (N, C, H, W) or (1, C, H, W): the general form; any dim of size 1 broadcasts, so
  (1, 1, H, W) is (H, W) and (N, 1, H, W) is (N, H, W).

A 3-D mask whose first dim is N (or 1) is read as (N, H, W), one per example, even when
N == C. This is how Captum's Lime and KernelShap read it: they slice every argument whose
first dim is the batch size, one example at a time. Captum's FeatureAblation broadcasts it
as (C, H, W) instead. For a per-channel mask shared by a batch of N == C examples, pass
``mask[None]`` of shape (1, C, H, W). Inputs of other ranks follow numpy broadcasting,
with a leading batch dim of 1 or N.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxplain.core.errors import InputValidationError


def read_feature_mask(feature_mask: Any, x: np.ndarray) -> np.ndarray:
    """``feature_mask`` as an integer array of ``x.ndim`` dims, batch dim 1 or N,
    broadcastable to ``x`` (see the module docstring for the rule). Without a mask every
    input value is its own feature (Captum's default)."""
    n = len(x)
    example = x.shape[1:]
    if feature_mask is None:
        return np.arange(int(np.prod(example))).reshape(1, *example)
    if hasattr(feature_mask, "detach") and hasattr(feature_mask, "cpu"):
        feature_mask = feature_mask.detach().cpu().numpy()
    mask = np.asarray(feature_mask)
    if not np.issubdtype(mask.dtype, np.integer):
        raise InputValidationError(
            f"feature_mask must hold integers (one feature id per input value), got dtype {mask.dtype}"
        )
    given = mask.shape
    if x.ndim == 4 and mask.ndim == 3 and mask.shape[0] in (1, n):
        mask = mask[:, None]  # (N, H, W) segmentations, one per example
    elif mask.ndim < x.ndim:  # numpy broadcasting: (C, H, W) and (H, W) gain leading dims
        mask = mask.reshape((1,) * (x.ndim - mask.ndim) + mask.shape)
    ok = mask.ndim == x.ndim and mask.shape[0] in (1, n)
    if ok:
        try:
            np.broadcast_shapes(mask.shape[1:], example)
        except ValueError:
            ok = False
    if not ok:
        hint = (
            "(H, W), (N or 1, H, W) e.g. from onnxplain.segmentation, (C, H, W), or (N or 1, C, H, W)"
            if x.ndim == 4
            else f"{example} or (N or 1, *{example})"
        )
        raise InputValidationError(
            f"feature_mask of shape {given} does not fit the inputs' shape {x.shape}; give one "
            f"feature id per input value: {hint}, where dims of size 1 broadcast"
        )
    return mask
