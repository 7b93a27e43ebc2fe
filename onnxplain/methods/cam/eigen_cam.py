"""Eigen-CAM: Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal
Components", IJCNN 2020.

    Â = A reshaped to (h·w, K), each channel centred over the positions
    L = ReLU( Â v_1 )  reshaped to (h, w),   v_1 the first right-singular vector of Â

Class-agnostic: ``target`` is ignored. A singular vector's sign is arbitrary (LAPACK's
choice, which pytorch-grad-cam keeps); we orient v_1 so that Σ_k v_1k ≥ 0, which makes the
map correlate positively with the channel sum Σ_k A^k. Forward-only: runs on ONNX Runtime.
"""

from __future__ import annotations

import numpy as np

from onnxplain.backends.base import Capability
from onnxplain.methods.cam.base import CAMBase, LayerData


class EigenCAM(CAMBase):
    """Projection of the feature map on its first principal component."""

    requires = frozenset({Capability.FORWARD, Capability.ACTIVATIONS})

    def raw_map(self, data: LayerData) -> np.ndarray:
        n, k, h, w = data.activations.shape
        a = data.activations.astype(np.float64).reshape(n, k, h * w).transpose(0, 2, 1)
        a = a - a.mean(axis=1, keepdims=True)
        _, _, vt = np.linalg.svd(a, full_matrices=False)
        v = vt[:, 0, :]  # (N, K)
        v = v * np.where(v.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
        return np.einsum("npk,nk->np", a, v).reshape(n, h, w)
