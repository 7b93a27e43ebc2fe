"""The top-k activating patches of a channel, projected back by the deconvnet: Zeiler &
Fergus, ECCV 2014 ("Visualizing and understanding convolutional networks"), Fig. 2.

For channel c of a feature map A, over a set of images x₁ … x_N:

1. forward every image (ONNX Runtime, in batches) and rank the activations A_c(xᵢ)[y, x]:
   with ``per_image=True`` (the paper's figures) the strongest position of each image,
   v_i = max_{y,x} A_c(xᵢ)[y, x], then the k images with the largest v_i; with
   ``per_image=False`` every (image, position), so one image may give several patches;
2. crop each winner's receptive field from its image (computed on the graph:
   :mod:`._receptive_field`);
3. project the single activation A_c(xᵢ)[y, x] back to the pixels with the deconvnet rule
   at every rectifier (the backward pass of :class:`~onnxplain.Deconvolution` with a
   ``Neuron(layer, (c, y, x))`` target): R = 1[g > 0] ⊙ g at each ReLU, transposed
   filters and the pooling switches elsewhere.

Ties are broken by image index, then position (row-major), so the selection is exactly
the ordering ``sorted(key=(−value, image, position))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pydantic

from onnxplain.backends.base import INPUT, Backend, BackwardRule, Capability, batches
from onnxplain.core.errors import InputValidationError
from onnxplain.core.model import Model
from onnxplain.core.targets import Channel, Objective
from onnxplain.core.validation import Params, validate_params
from onnxplain.methods.base import Attribution
from onnxplain.methods.global_views._receptive_field import ReceptiveField, receptive_field
from onnxplain.methods.gradient._modified import rectifier_nodes


class _TopKParams(Params):
    k: pydantic.PositiveInt = 9
    per_image: bool = True
    batch_size: pydantic.PositiveInt | None = None


@dataclass
class TopKPatches:
    """What :meth:`DeconvnetTopK.attribute` returns, strongest first (k rows).

    ``values``: the activations; ``image_indices``: the row of ``inputs`` each came from;
    ``positions``: (row, col) in the feature map; ``boxes``: (top, left, bottom, right)
    of the receptive field in input pixels (bottom/right exclusive, not clipped: the
    field may reach into the padding); ``crops``: (k, C, h, w) the image under each box
    (zero outside the image); ``projections``: (k, C, H, W) the deconvnet projections;
    ``projection_crops``: the projections under the boxes; ``receptive_field``: the
    layer's :class:`ReceptiveField`.
    """

    values: np.ndarray
    image_indices: np.ndarray
    positions: np.ndarray
    boxes: np.ndarray
    crops: np.ndarray
    projections: np.ndarray
    projection_crops: np.ndarray
    receptive_field: ReceptiveField


def crop(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(k, C, h, w) windows of ``images`` (k, C, H, W) under ``boxes`` (zero outside)."""
    k, c, height, width = images.shape
    h = int(boxes[0, 2] - boxes[0, 0]) if len(boxes) else 0
    w = int(boxes[0, 3] - boxes[0, 1]) if len(boxes) else 0
    out = np.zeros((k, c, h, w), dtype=images.dtype)
    for i, (top, left, bottom, right) in enumerate(boxes):
        t, lft = max(top, 0), max(left, 0)
        b, r = min(bottom, height), min(right, width)
        if b > t and r > lft:
            out[i, :, t - top : b - top, lft - left : r - left] = images[i, :, t:b, lft:r]
    return out


class DeconvnetTopK(Attribution):
    """Top-k activating patches of a channel and their deconvnet projections.

    Forward passes run on ``forward_backend`` (default: the fastest backend with
    activations, ONNX Runtime); the projections on a backend with gradients and rules
    (torch).

    >>> import onnxplain as ox
    >>> model = ox.examples.shapes_model()
    >>> images, labels, masks = ox.examples.shapes_dataset(16, seed=5)
    >>> from onnxplain.methods.global_views import DeconvnetTopK
    >>> top = DeconvnetTopK(model).attribute(
    ...     images, ox.Channel("/block2/block2.2/Relu_output_0", 3), k=4)
    >>> top.crops.shape, top.projections.shape
    ((4, 3, 8, 8), (4, 3, 64, 64))
    """

    requires = frozenset({Capability.GRADIENTS, Capability.RULES})

    def __init__(
        self,
        model: Model | Backend,
        backend: str | Backend = "auto",
        forward_backend: str | Backend = "auto",
        **backend_options: Any,
    ) -> None:
        super().__init__(model, backend, **backend_options)
        if isinstance(model, Backend):
            self.forward_backend = model
        else:
            self.forward_backend = self.model.backend_for(
                frozenset({Capability.ACTIVATIONS}), forward_backend, what="DeconvnetTopK"
            )
        self.nodes = rectifier_nodes(self.model)

    def attribute(
        self,
        inputs: Any,
        target: Channel,
        k: int = 9,
        per_image: bool = True,
        batch_size: int | None = None,
        show_progress: bool | None = None,
    ) -> TopKPatches:
        """The ``k`` strongest activations of ``target`` (``Channel(layer, c)``) over
        ``inputs`` (N, C, H, W), their patches and projections. Images are forwarded
        ``batch_size`` at a time (default: the backend's ``max_batch_size``); memory holds
        one batch of the channel's maps and the k best so far."""
        p = validate_params(_TopKParams, "DeconvnetTopK", k=k, per_image=per_image, batch_size=batch_size)
        x = self._inputs(inputs)
        if not isinstance(target, Channel):
            raise InputValidationError(
                f"DeconvnetTopK: target must be Channel(layer, channel), got {target!r}"
            )
        layer, channel = target.layer, int(target.channel)
        shape = self.model.tensor_shape(layer)
        if shape is None or len(shape) != 4:
            raise InputValidationError(
                f"DeconvnetTopK: {layer!r} has shape {shape}; choose a 4-D feature map from model.layers()"
            )
        if channel < 0 or (isinstance(shape[1], int) and channel >= shape[1]):
            raise InputValidationError(f"Channel {channel} out of range: {layer!r} has {shape[1]} channels")
        size = p.batch_size or self.forward_backend.max_batch_size
        best = np.empty((0, 4), dtype=np.float64)  # value, image, row, col
        n_batches = -(-len(x) // size)
        for sl in self._progress(batches(len(x), size), n_batches, show_progress, "DeconvnetTopK"):
            maps = self.forward_backend.forward(x[sl], outputs=[layer])[layer][:, channel]
            best = _merge(best, _candidates(maps.astype(np.float64), sl.start, p.per_image), p.k)
        values = best[:, 0]
        images = best[:, 1].astype(np.int64)
        positions = best[:, 2:].astype(np.int64)
        field = receptive_field(self.model, layer)
        boxes = np.array([field.box(r, c) for r, c in positions], dtype=np.int64).reshape(-1, 4)
        projections = self._project(x, layer, channel, images, positions, size)
        return TopKPatches(
            values=values,
            image_indices=images,
            positions=positions,
            boxes=boxes,
            crops=crop(x[images], boxes),
            projections=projections,
            projection_crops=crop(projections, boxes),
            receptive_field=field,
        )

    def _project(
        self, x: np.ndarray, layer: str, channel: int, images: np.ndarray, positions: np.ndarray, size: int
    ) -> np.ndarray:
        rule = BackwardRule("deconvnet")
        rules = {n: rule for n in self.nodes}
        index = np.column_stack([np.full(len(images), channel), positions]).astype(np.int64)
        out = []
        for sl in batches(len(images), size):
            objective = Objective(layer, "index", index[sl])
            result = self.backend.gradients(x[images[sl]], objective, wrt=[INPUT], rules=rules)
            out.append(result.gradients[INPUT])
        if not out:
            return np.zeros((0, *x.shape[1:]), dtype=x.dtype)
        return np.concatenate(out)


def _candidates(maps: np.ndarray, offset: int, per_image: bool) -> np.ndarray:
    """(value, image, row, col) rows for a batch of one channel's maps (b, h, w)."""
    b, h, w = maps.shape
    flat = maps.reshape(b, -1)
    if per_image:
        pos = flat.argmax(1)  # the first maximum: row-major tie-break
        vals = flat[np.arange(b), pos]
        img = np.arange(b) + offset
    else:
        img_local, pos = np.divmod(np.arange(b * h * w), h * w)
        vals = flat.reshape(-1)
        img = img_local + offset
    return np.column_stack([vals, img, pos // w, pos % w]).astype(np.float64)


def _merge(best: np.ndarray, new: np.ndarray, k: int) -> np.ndarray:
    both = np.concatenate([best, new])
    order = np.lexsort((both[:, 3], both[:, 2], both[:, 1], -both[:, 0]))
    return both[order[:k]]
