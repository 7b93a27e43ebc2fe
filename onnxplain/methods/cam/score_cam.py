"""Score-CAM: Wang et al., "Score-CAM: Score-Weighted Visual Explanations for
Convolutional Neural Networks", CVPR Workshops 2020 (arXiv:1910.01279).

Every channel, upsampled to the input and min-max normalised, masks the input; the
target's score on the masked input weights the channel:

    H^k   = s( Up(A^k) ),   s(M) = (M − min M) / (max M − min M)
    w_k^c = softmax( f(X ∘ H^k) )_c          weighting="probability" (default)
    w_k^c = f_c(X ∘ H^k)                     weighting="score"
    w^c   = softmax_k( f_c(X ∘ H^k) )        weighting="channel_softmax"
    L^c   = ReLU( Σ_k w_k^c A^k )

"probability" is the paper's and its authors' code: the softmax over classes of the masked
input's output (taken as is when the model ends in Softmax), masks upsampled bilinearly
with ``align_corners=False``, channels whose map is constant skipped (weight 0). "score"
uses the target score as is (for Neuron/Channel targets). "channel_softmax" is
pytorch-grad-cam's: the target logits softmaxed across channels, constant channels
masking the input to zero; with ``align_corners=True`` (its ``UpsamplingBilinear2d``
masks) it reproduces pytorch-grad-cam. Forward-only: runs on ONNX Runtime. Masked inputs
are evaluated ``batch_size`` at a time, which bounds the memory.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pydantic

from onnxplain.backends.base import Backend, Capability
from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import LayerSpec, Model
from onnxplain.core.outputs import TARGETS_OUTPUT
from onnxplain.core.targets import Objective
from onnxplain.core.validation import Params, validate_params
from onnxplain.methods._resize import resize_bilinear
from onnxplain.methods.base import take_rows
from onnxplain.methods.cam.base import CAMBase, LayerData, min_max_masks

Weighting = Literal["probability", "score", "channel_softmax"]


class _Params(Params):
    batch_size: pydantic.PositiveInt | None
    weighting: Weighting
    align_corners: pydantic.StrictBool


def _softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class ScoreCAM(CAMBase):
    """Score-CAM. ``batch_size``: masked inputs per forward pass (default: the backend's
    ``max_batch_size``); ``weighting`` and ``align_corners``: see the module docstring."""

    requires = frozenset({Capability.FORWARD, Capability.ACTIVATIONS})

    def __init__(self, model: Model | Backend, layer: str | LayerSpec = "auto",
                 backend: str | Backend = "auto", batch_size: int | None = None,
                 weighting: Weighting = "probability", align_corners: bool = False,
                 **backend_options: Any) -> None:
        p = validate_params(_Params, "ScoreCAM", batch_size=batch_size, weighting=weighting,
                            align_corners=align_corners)
        super().__init__(model, layer, backend, **backend_options)
        self.batch_size = p.batch_size or self.backend.max_batch_size
        self.weighting, self.align_corners = p.weighting, p.align_corners
        # a model that already ends in Softmax gives probabilities: don't softmax twice
        self._output_is_softmax = self.model.output_softmax() == "Softmax"

    def channel_weights(self, data: LayerData) -> np.ndarray:
        x, a, objective = data.inputs, data.activations, data.objective
        n, k = a.shape[:2]
        if self.weighting == "probability" and (
                objective.kind != "index"
                or objective.tensor not in (*self.model.output_names, self.model.logits())
                or objective.tensor == TARGETS_OUTPUT):
            raise InputValidationError(
                "ScoreCAM(weighting='probability') softmaxes the model output over classes; "
                "for a Neuron, Channel or output target (SegmentationTarget, ...) use weighting='score'"
            )
        flat = a.reshape(n * k, -1)
        constant = flat.max(axis=1) <= flat.min(axis=1)
        jobs = np.flatnonzero(~constant)  # (example, channel) pairs as n * K + k
        scores = np.zeros(n * k)
        chunks = [jobs[i:i + self.batch_size] for i in range(0, len(jobs), self.batch_size)]
        for chunk in self._progress(chunks, len(chunks), data.show_progress, "ScoreCAM"):
            rows = chunk // k
            maps = resize_bilinear(a.reshape(n * k, *a.shape[2:])[chunk], x.shape[2:], self.align_corners)
            masks, _ = min_max_masks(maps)
            scores[chunk] = self._score(take_rows(x, rows) * masks[:, None], objective.take(rows))
        scores = scores.reshape(n, k)
        if self.weighting != "channel_softmax":
            return scores  # constant channels keep weight 0, as in the authors' code
        if constant.any():  # pytorch-grad-cam masks the whole input with zeros for those
            zero = self._score(np.zeros_like(x), objective)
            scores = np.where(constant.reshape(n, k), zero[:, None], scores)
        return _softmax(scores, axis=1)

    def _score(self, batch: np.ndarray, objective: Objective) -> np.ndarray:
        out = self.backend.forward(batch, outputs=[objective.tensor])[objective.tensor]
        if self.weighting == "probability" and not (
                self._output_is_softmax and objective.tensor == self.model.output_name):
            out = _softmax(out.reshape(len(out), -1).astype(np.float64), axis=1)
        return np.asarray(objective.scores(out), dtype=np.float64)
