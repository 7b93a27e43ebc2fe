"""Input layouts: channels first (NCHW) inside onnxplain, the model's own layout outside.

Keras, TensorFlow (tf2onnx) and JAX export image models whose input is channels-last,
(N, H, W, C), followed by a ``Transpose(perm=[0, 3, 1, 2])`` into the channels-first
convolutions ONNX defines. onnxplain detects such an input (:func:`detect_layout`) and
gives the canonical graph a channels-first input instead: a ``Transpose(perm=[0, 2, 3, 1])``
is inserted after the new (N, C, H, W) input (:func:`make_input_channels_first`), so the
graph computes exactly what it computed before (ONNX Runtime cancels the two transposes).

Every method therefore works on (N, C, H, W) arrays, with windows, CAM maps, upsampling,
masks and segmentations in their usual axes, and the conversion happens once, at the
boundary (:func:`onnxplain.methods.base.user_layout`):

- what the user passes is in the model's layout: ``inputs``, ``baselines``,
  ``feature_mask``, ``background``, ``sliding_window_shapes`` and ``strides``
  ((H, W, C) for an NHWC model), ``model.predict(x)``;
- what comes back is in the model's layout: input-shaped attributions are
  (N, H, W, C) for an NHWC model, so that they overlay the user's images; maps without a
  channel axis (CAMs, RISE) are (N, H, W) in both layouts.

A model whose input is (N, H, W) (one-channel images without their channel axis, as
Keras MNIST models take them) has the layout ``"NHW"``: the canonical graph gets an
(N, 1, H, W) input followed by a ``Squeeze`` of that axis. Its users pass (N, H, W)
arrays, with baselines and feature masks (H, W) or (N, H, W) and windows (h, w), and get
(N, H, W) attributions back; (N, 1, H, W) arrays (what a one-channel
:class:`~onnxplain.preprocess.Preprocess` gives) are taken as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from onnxplain.core.canonical import add_initializer
from onnxplain.core.errors import InputValidationError

Layout = Literal["NCHW", "NHWC", "NHW"]
LAYOUTS: tuple[str, ...] = ("NCHW", "NHWC", "NHW")

#: The transpose that turns an NHWC tensor into NCHW, and its inverse.
TO_NCHW = (0, 3, 1, 2)
TO_NHWC = (0, 2, 3, 1)
#: Ops that may sit between a channels-last input and its Transpose, computed on the NHWC
#: tensor and keeping its rank: normalisation (Keras' Rescaling and Normalization), resizing
#: (Resizing, ``jax.image.resize``), cropping and padding (CenterCrop, Cropping2D,
#: ZeroPadding2D), clipping and other element-wise functions (ReLU(max_value=6)), the
#: quantization of an integer TFLite model.
_PASS_THROUGH = {
    "Mul", "Add", "Sub", "Div", "Cast", "Identity", "Resize", "QuantizeLinear", "DequantizeLinear",
    "Slice", "Pad", "Clip", "Relu", "LeakyRelu", "Min", "Max", "Neg", "Abs", "Sqrt", "Pow", "Exp",
    "Log", "Reciprocal", "Floor", "Ceil", "Round", "Sigmoid", "Tanh", "HardSigmoid", "Where",
}
#: How many such ops are looked through.
_PASS_DEPTH = 8


def check_layout(layout: Any, name: str = "layout") -> str | None:
    """``layout`` upper-cased, or None for ``None``/``"auto"``; anything else is an error."""
    if layout is None or (isinstance(layout, str) and layout.lower() == "auto"):
        return None
    if isinstance(layout, str) and layout.upper() in LAYOUTS:
        return layout.upper()
    raise InputValidationError(f"{name} must be 'auto', 'NCHW', 'NHWC' or 'NHW', got {layout!r}")


def _perm(node: ir.Node) -> tuple[int, ...] | None:
    attr = node.attributes.get("perm")
    return tuple(attr.as_ints()) if attr is not None else None


def _float_input(model: ir.Model) -> ir.Value | None:
    for v in model.graph.inputs:
        if v.dtype is not None and v.dtype.is_floating_point():
            return v
    return None


def detect_layout(model: ir.Model) -> str:
    """``"NHWC"`` when the graph's image input is channels-last, ``"NHW"`` when it has rank 3
    and the graph gives it a channel axis (one-channel images without one), else ``"NCHW"``.

    Channels-last means: a rank-4 input that reaches a ``Transpose(perm=[0, 3, 1, 2])``
    directly or through ops that keep its rank (normalising, cropping, padding, clipping,
    resizing, quantizing: ``_PASS_THROUGH``), as tf2onnx, Keras 3 and jax2onnx emit. A
    graph whose convolutions read the input directly is channels-first.
    """
    value = _float_input(model)
    if value is not None and value.shape is not None and len(value.shape) == 3:
        return "NHW" if _given_a_channel_axis(value) else "NCHW"
    if value is None or value.shape is None or len(value.shape) != 4:
        return "NCHW"
    return _image_layout(value)


def looks_channels_last(model: ir.Model) -> tuple | None:
    """The image input's shape when it has 1 or 3 on its last axis and not on axis 1 (what
    an NHWC image looks like), else None: a doubt worth a warning where the graph showed no
    transpose to channels-first."""
    value = _float_input(model)
    if value is None or value.shape is None or len(value.shape) != 4:
        return None
    shape = tuple(d if isinstance(d, int) else str(d) for d in value.shape)
    return shape if shape[3] in (1, 3) and isinstance(shape[1], int) and shape[1] not in (1, 3) else None


def _rank(node: ir.Node) -> int | None:
    """The rank of ``node``'s first output, None if unknown."""
    shape = node.outputs[0].shape if node.outputs else None
    return None if shape is None else len(shape)


def _first_reader(value: ir.Value, rank: int, found: Callable[[ir.Node], bool]) -> ir.Node | None:
    """The first node for which ``found`` holds among those reading ``value``, directly or
    through ops that keep its ``rank`` (``_PASS_THROUGH``: Keras' Rescaling and
    Normalization, a torch export's ``(x - mean) / std``, crops, pads, resizes), up to
    ``_PASS_DEPTH`` deep; or None."""
    frontier = [value]
    for _ in range(_PASS_DEPTH):
        following = []
        for v in frontier:
            for node in v.consumers():
                if found(node):
                    return node
                if node.op_type in _PASS_THROUGH and _rank(node) in (rank, None):
                    following.append(node.outputs[0])
        if not following:
            return None
        frontier = following
    return None


def _given_a_channel_axis(value: ir.Value) -> bool:
    """Whether the rank-3 input ``value`` is read as images: it reaches an ``Unsqueeze`` or
    ``Reshape`` to rank 4 (``x.unsqueeze(1)``, Keras' ``Reshape((H, W, 1))``) directly or
    through element-wise normalisation. A sequence model's (T, N, F) input, which an LSTM
    reads, or a flattened one is not."""
    made_image = _first_reader(value, 3, lambda n: n.op_type in ("Unsqueeze", "Reshape") and _rank(n) == 4)
    return made_image is not None


def _replace_input(graph: ir.Graph, old: ir.Value, shape: Sequence[Any], op_type: str,
                   suffix: str, extra: Sequence[ir.Value] = (), **attributes: Any) -> None:
    """Replace the graph input ``old`` by one of the same name and dtype and shape ``shape``
    that feeds ``op_type(new, *extra, **attributes)``, whose output (named
    ``<name>__<suffix>``, with ``old``'s shape) takes every use of ``old``. The node goes
    first in the graph."""
    name = old.name
    old.name = f"{name}__{suffix}"
    new = ir.Value(name=name, shape=ir.Shape(list(shape)), type=old.type)
    node = ir.node(op_type, inputs=[new, *extra], attributes=attributes, name=f"{name}__to_{suffix}")
    node.outputs[0].name = old.name
    node.outputs[0].shape = ir.Shape(list(old.shape))
    node.outputs[0].type = old.type
    old.replace_all_uses_with(node.outputs[0])
    index = list(graph.inputs).index(old)
    graph.inputs[index] = new
    graph.insert_before(graph.node(0), node) if graph.num_nodes() else graph.append(node)


def make_input_channels_first(model: ir.Model, layout: str = "NHWC") -> ir.Model:
    """Give the channels-last (``layout="NHWC"``) or channel-less (``"NHW"``) image input of
    ``model`` a channels-first replacement.

    The new graph input keeps the name and dtype, has shape (N, C, H, W) (C = 1 for NHW),
    and feeds a ``Transpose(perm=[0, 2, 3, 1])`` (NHW: a ``Squeeze`` of axis 1) whose output
    takes every use of the old input. In place; returns ``model``.
    """
    graph = model.graph
    old = _float_input(model)
    rank = 3 if layout == "NHW" else 4
    if old is None or old.shape is None or len(old.shape) != rank:
        raise InputValidationError(
            f"layout={layout!r} needs a rank-{rank} image input ({', '.join(layout)}); this model's input "
            f"has shape {None if old is None else old.shape}"
        )
    name = old.name
    if layout != "NHW":
        n, h, w, c = old.shape
        _replace_input(graph, old, [n, c, h, w], "Transpose", "nhwc", perm=list(TO_NHWC))
    elif model.opset_imports.get("", 13) >= 13:
        axes = add_initializer(graph, f"{name}__channel_axis", np.array([1], np.int64))
        n, h, w = old.shape
        _replace_input(graph, old, [n, 1, h, w], "Squeeze", "nhw", extra=[axes])
    else:
        n, h, w = old.shape
        _replace_input(graph, old, [n, 1, h, w], "Squeeze", "nhw", axes=[1])
    return model


# -- flattened images ------------------------------------------------------------------
def check_image_shape(image_shape: Any) -> tuple[int, ...] | None:
    """``image_shape`` as a tuple of 2 or 3 positive ints, or None; anything else is an error."""
    if image_shape is None:
        return None
    try:
        shape = tuple(int(d) for d in image_shape)
        ok = all(float(d) == int(d) for d in image_shape)
    except (TypeError, ValueError):
        shape, ok = (), False
    if not ok or len(shape) not in (2, 3) or any(d < 1 for d in shape):
        raise InputValidationError(
            f"image_shape must be the shape of one image: (C, H, W), (H, W, C) with layout='NHWC', or "
            f"(H, W) for one channel; got {image_shape!r}"
        )
    return shape


def _image_layout(value: ir.Value) -> str:
    """``"NHWC"`` when the rank-4 ``value`` reaches a ``Transpose(perm=[0, 3, 1, 2])``
    (directly or through element-wise normalisation), else ``"NCHW"``."""
    nhwc = _first_reader(value, 4, lambda n: n.op_type == "Transpose" and _perm(n) == TO_NCHW)
    return "NCHW" if nhwc is None else "NHWC"


def detect_flattened_image(model: ir.Model) -> tuple[tuple[int, ...], str] | None:
    """The image shape and layout of a flattened image input, or None.

    A flattened input is a rank-2 (N, F) input that the graph itself reshapes into images:
    a ``Reshape`` to (N, C, H, W), or to (N, H, W, C) followed by the ``Transpose`` into
    channels first, directly or through element-wise normalisation (``x.view(-1, 1, 28, 28)``
    in torch, Keras' ``Input((784,))`` then ``Reshape((28, 28, 1))``). The image axes must be
    static and hold the F features. A tabular or pixel-MLP input, which nothing reshapes,
    is not detected: ``load(..., image_shape=...)`` says its shape.
    """
    value = _float_input(model)
    if value is None or value.shape is None or len(value.shape) != 2:
        return None
    features = value.shape[1]

    def images(node: ir.Node) -> bool:
        image = tuple(node.outputs[0].shape[1:]) if node.op_type == "Reshape" and _rank(node) == 4 else ()
        return bool(image) and all(isinstance(d, int) and d > 0 for d in image) and (
            not isinstance(features, int) or features == int(np.prod(image)))

    reshape = _first_reader(value, 2, images)
    if reshape is None:
        return None
    return tuple(reshape.outputs[0].shape[1:]), _image_layout(reshape.outputs[0])


def make_input_images(model: ir.Model, image_shape: Sequence[int]) -> ir.Model:
    """Give the flattened (N, F) image input of ``model`` an image-shaped replacement.

    The new graph input keeps the name and dtype, has shape (N, *image_shape), and feeds a
    ``Flatten(axis=1)`` whose output takes every use of the old input: the C-order
    flattening ``images.reshape(n, -1)`` that gave the features. In place; returns ``model``.
    """
    graph = model.graph
    old = _float_input(model)
    shape = tuple(int(d) for d in image_shape)
    if old is None or old.shape is None or len(old.shape) != 2:
        raise InputValidationError(
            f"image_shape={shape} is for a model whose input is flattened images (N, F); this model's "
            f"input has shape {None if old is None else old.shape}"
        )
    features = old.shape[1]
    if isinstance(features, int) and features != int(np.prod(shape)):
        raise InputValidationError(
            f"image_shape={shape} holds {int(np.prod(shape))} values, but the model's input "
            f"{old.name!r} takes {features} features per example"
        )
    _replace_input(graph, old, [old.shape[0], *shape], "Flatten", "flat", axis=1)
    return model


# -- arrays at the boundary -------------------------------------------------------------
def as_array(value: Any) -> Any:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        return value.detach().cpu().numpy()
    return value


def to_channels_first(x: Any) -> Any:
    """(N, H, W, C) → (N, C, H, W) and (H, W, C) → (C, H, W); other ranks unchanged."""
    x = as_array(x)
    if isinstance(x, (int, float, np.number)) or x is None:
        return x
    arr = np.asarray(x)
    if arr.ndim == 4:
        return np.moveaxis(arr, -1, 1)
    if arr.ndim == 3:
        return np.moveaxis(arr, -1, 0)
    return x


def to_channels_last(a: np.ndarray) -> np.ndarray:
    """(N, C, H, W) → (N, H, W, C) (a contiguous copy)."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def window_to_channels_first(value: Any) -> Any:
    """A per-dim tuple (H, W, C) → (C, H, W); an int (one value for every dim) unchanged."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3:
        h, w, c = value
        return (c, h, w)
    return value


def mask_to_channels_first(mask: Any, n: int, size: tuple[int, int]) -> Any:
    """A ``feature_mask`` in the user's NHWC layout, for (N, C, H, W) inputs.

    (H, W) and segmentations (1 or N, H, W) have no channel axis and stay; (H, W, C)
    becomes (C, H, W); (1 or N, H, W, C) becomes (1 or N, C, H, W).
    """
    mask = as_array(mask)
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.ndim == 4:
        return np.moveaxis(m, -1, 1)
    if m.ndim == 3:
        segmentation = m.shape[0] in (1, n) and all(d in (1, s) for d, s in zip(m.shape[1:], size))
        if not segmentation:
            return np.moveaxis(m, -1, 0)
    return mask
