"""Ablation-CAM: Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep
Convolutional Network via Gradient-free Localization", WACV 2020.

    w_k^c = ( y^c − y^c_k ) / y^c,      L^c = ReLU( Σ_k w_k^c A^k )

y^c_k is the target score with channel k of A set to zero. Only the layers after
``layer`` are re-run (:meth:`onnxplain.Model.tail_with_skips`), on ``batch_size`` ablated
copies of A at a time, which bounds the memory; where skip connections cross ``layer`` (a
layer inside a residual block), those layers also take the tensors the skips carry past
it, computed once per example with A. Where the target is a class of a global-average-pooling
→ linear head (:meth:`onnxplain.Model.classifier_head`), the head is applied in float64 to
the target's row only: at the pooled map itself the ablated scores are then exact in closed
form, y^c_k = y^c − W_ck · GAP(A^k), with no pass at all; at earlier layers only the layers up
to the pooled features are re-run. Forward-only: runs on ONNX Runtime. pytorch-grad-cam
ablates the same way wherever A's minimum is 0 (post-ReLU layers); on layers with
negative values it instead sets the channel to min(A) − 10⁷ (cumulatively across its
batch), which is not the paper's definition. Where y^c = 0 the weight is the plain drop
y^c − y^c_k. On a transformer's token layer, channel k is zeroed in the patch tokens only;
``layer="auto"`` is the last block's first LayerNorm, as for the other CAMs.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pydantic

from onnxplain.backends.base import Backend, Capability
from onnxplain.core.errors import BackendCapabilityError, InputValidationError
from onnxplain.core.model import ClassifierHead, LayerSpec, Model
from onnxplain.core.targets import Objective
from onnxplain.core.validation import Params, validate_params
from onnxplain.methods.cam.base import CAMBase, LayerData


class _Params(Params):
    batch_size: pydantic.PositiveInt | None


class AblationCAM(CAMBase):
    """Ablation-CAM. ``batch_size``: ablated feature maps per forward pass (default: the
    backend's ``max_batch_size``)."""

    requires = frozenset({Capability.FORWARD, Capability.ACTIVATIONS})

    def __init__(self, model: Model | Backend, layer: str | LayerSpec = "auto",
                 backend: str | Backend = "auto", batch_size: int | None = None,
                 **backend_options: Any) -> None:
        p = validate_params(_Params, "AblationCAM", batch_size=batch_size)
        super().__init__(model, layer, backend, **backend_options)
        self.batch_size = p.batch_size or self.backend.max_batch_size
        # the layers after `layer`, and the tensors that skip connections carry past it
        self.tail, self.carried = self.model.tail_with_skips(self.layer.name)
        self._tail_backend = self._backend_of(self.tail, backend_options)
        self._backend_options = backend_options

    def _backend_of(self, part: Model, options: dict[str, Any]) -> Backend:
        try:
            return part.backend_for(self.requires, self.backend.name, "AblationCAM", **options)
        except InputValidationError:
            raise BackendCapabilityError(
                f"AblationCAM re-runs the layers after {self.layer.name!r} and needs a registered "
                f"backend such as 'onnxruntime', not a {self.backend.name!r} backend"
            ) from None

    @functools.cached_property
    def _head(self) -> ClassifierHead | None:
        """The model's global-average-pooling → linear classifier, if it has one."""
        head = self.model.classifier_head()
        return head if head is not None and head.features else None

    @functools.cached_property
    def _features_backend(self) -> Backend | None:
        """The layers from ``layer`` to the head's pooled features (None where they cannot
        be re-run from ``layer`` alone)."""
        try:
            part = self.model.tail(self.layer.name, outputs=[self._head.features])
        except InputValidationError:
            return None
        return self._backend_of(part, self._backend_options)

    def _linear_head(self, objective: Objective) -> ClassifierHead | None:
        """The head, when the target is one of its classes: we then apply its target row in
        float64 instead of computing every class of every ablated copy (on resnet18 the
        1000-class product was most of the tail's work)."""
        if objective.kind != "index" or objective.index.shape[1] != 1 or self._head is None:
            return None
        return self._head if objective.tensor == self._head.logits else None

    def channel_weights(self, data: LayerData) -> np.ndarray:
        a, objective = data.activations, data.objective
        if objective.tensor not in (*self.tail.output_names, self.model.logits()):
            raise InputValidationError(
                f"AblationCAM's target must be an output class, not {objective.tensor!r}"
            )
        n, k = a.shape[:2]
        head = self._linear_head(objective)
        at_map = (head is not None and head.feature_map == self.layer.name and data.grid is None
                  and not head.rounded)
        if at_map and not self.carried:
            # the layers after the map are the head itself, GAP → linear: zeroing channel k
            # takes W_ck · GAP(A^k) off the score, exactly, without running them
            w = head.weight[objective.index[:, 0]]  # (N, K)
            drop = w * a.mean(axis=(2, 3), dtype=np.float64)
            y = drop.sum(axis=1, keepdims=True)
            if head.bias is not None:
                y = y + head.bias[objective.index[:, 0], None]
            return drop / np.where(y != 0, y, 1)
        raw = data.raw if data.raw is not None else a  # the layer's tensor as the model computes it
        # what the tail takes per example: the layer's tensor, then the tensors skip
        # connections carry past it, flattened side by side (Model.tail_with_skips)
        full = raw if not self.carried else np.concatenate(
            [raw.reshape(n, -1), *(data.carried[c].reshape(n, -1) for c in self.carried)], axis=1)
        # channel k of example i is chan(...)[i, k]: the map's channel, or for a token layer
        # that channel of the patch tokens (the class tokens are left as they are)
        chan = data.grid.channels if data.grid is not None else (lambda t: t)
        jobs = np.arange(n * k)  # (example, channel) pairs as n * K + k
        ablated = np.zeros(n * k)
        chunks = [jobs[i:i + self.batch_size] for i in range(0, len(jobs), self.batch_size)]
        # One buffer of the tail's inputs, reused: between batches only the channel each slot
        # zeroed is restored (and a slot's whole input copied when its example changes).
        slots = min(self.batch_size, n * k)
        buf = np.empty((slots, *full.shape[1:]), dtype=full.dtype)
        layer_part = buf if not self.carried else buf[:, :raw[0].size].reshape(slots, *raw.shape[1:])
        buf_k, raw_k = chan(layer_part), chan(raw)
        held = np.full(slots, -1)  # the example each slot holds
        zeroed = np.zeros(slots, dtype=np.int64)  # the channel each slot has zeroed
        part = self._features_backend if head is not None and not self.carried else None
        if part is not None:
            classes = objective.index[:, 0]

            def score(maps: np.ndarray, rows: np.ndarray) -> np.ndarray:
                feats = part.forward(maps, outputs=[head.features])[head.features]
                feats = feats.reshape(len(maps), -1).astype(np.float64)
                out = np.einsum("rk,rk->r", feats, head.weight[classes[rows]])
                return out + head.bias[classes[rows]] if head.bias is not None else out
        else:
            def score(maps: np.ndarray, rows: np.ndarray) -> np.ndarray:
                out = self._tail_backend.forward(maps, outputs=[objective.tensor])[objective.tensor]
                return objective.take(rows).scores(out)

        for chunk in self._progress(chunks, len(chunks), data.show_progress, "AblationCAM"):
            m, rows, channel = len(chunk), chunk // k, chunk % k
            slot = np.arange(m)
            same = held[:m] == rows
            buf_k[slot[same], zeroed[:m][same]] = raw_k[rows[same], zeroed[:m][same]]
            buf[slot[~same]] = full[rows[~same]]
            held[:m], zeroed[:m] = rows, channel
            buf_k[slot, channel] = 0
            ablated[chunk] = score(buf[:m], rows)
        # the unablated score by the same path as the ablated ones, so that a channel whose
        # ablation changes nothing gets weight 0, not a rounding difference (for a quantized
        # model, the tail is the float simulation and the model's scores the integer graph's)
        y = score(full, np.arange(n))[:, None]
        return (y - ablated.reshape(n, k)) / np.where(y != 0, y, 1)
