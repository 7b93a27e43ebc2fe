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

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from onnxplain.core.errors import InputValidationError

Layout = Literal["NCHW", "NHWC", "NHW"]
LAYOUTS: tuple[str, ...] = ("NCHW", "NHWC", "NHW")

#: The transpose that turns an NHWC tensor into NCHW, and its inverse.
TO_NCHW = (0, 3, 1, 2)
TO_NHWC = (0, 2, 3, 1)
#: Ops that may sit between a channels-last input and its Transpose (normalisation
#: layers such as Keras' Rescaling/Normalization), computed on the NHWC tensor.
_PASS_THROUGH = {"Mul", "Add", "Sub", "Div", "Cast", "Identity"}


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
    directly or through element-wise normalisation ops (Mul/Add/Sub/Div/Cast), as
    tf2onnx, Keras 3 and jax2onnx emit. A graph whose convolutions read the input directly
    is channels-first.
    """
    value = _float_input(model)
    if value is not None and value.shape is not None and len(value.shape) == 3:
        return "NHW" if _given_a_channel_axis(value) else "NCHW"
    if value is None or value.shape is None or len(value.shape) != 4:
        return "NCHW"
    frontier = [value]
    for _ in range(4):
        following = []
        for v in frontier:
            for node in v.consumers():
                if node.op_type == "Transpose" and _perm(node) == TO_NCHW:
                    return "NHWC"
                if (
                    node.op_type in _PASS_THROUGH
                    and node.outputs[0].shape is not None
                    and len(node.outputs[0].shape) == 4
                ):
                    following.append(node.outputs[0])
        if not following:
            break
        frontier = following
    return "NCHW"


def _given_a_channel_axis(value: ir.Value) -> bool:
    """Whether the rank-3 input ``value`` is read as images: it reaches an ``Unsqueeze`` or
    ``Reshape`` to rank 4 (``x.unsqueeze(1)``, Keras' ``Reshape((H, W, 1))``) directly or
    through element-wise normalisation. A sequence model's (T, N, F) input, which an LSTM
    reads, or a flattened one is not."""
    frontier = [value]
    for _ in range(4):
        following = []
        for v in frontier:
            for node in v.consumers():
                out = node.outputs[0].shape if node.outputs else None
                if node.op_type in ("Unsqueeze", "Reshape") and out is not None and len(out) == 4:
                    return True
                if node.op_type in _PASS_THROUGH and out is not None and len(out) == 3:
                    following.append(node.outputs[0])
        if not following:
            return False
        frontier = following
    return False


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
    old.name = f"{name}__{layout.lower()}"
    if layout == "NHW":
        n, h, w = old.shape
        new = ir.Value(name=name, shape=ir.Shape([n, 1, h, w]), type=old.type)
        if model.opset_imports.get("", 13) >= 13:
            axes = ir.Value(name=f"{name}__channel_axis", const_value=ir.tensor(np.array([1], np.int64)),
                            shape=ir.Shape([1]), type=ir.TensorType(ir.DataType.INT64))
            graph.register_initializer(axes)
            node = ir.node("Squeeze", inputs=[new, axes], name=f"{name}__to_nhw")
        else:
            node = ir.node("Squeeze", inputs=[new], attributes={"axes": [1]}, name=f"{name}__to_nhw")
    else:
        n, h, w, c = old.shape
        new = ir.Value(name=name, shape=ir.Shape([n, c, h, w]), type=old.type)
        node = ir.node("Transpose", inputs=[new], attributes={"perm": list(TO_NHWC)}, name=f"{name}__to_nhwc")
    node.outputs[0].name = old.name
    node.outputs[0].shape = ir.Shape(list(old.shape))
    node.outputs[0].type = old.type
    old.replace_all_uses_with(node.outputs[0])
    index = list(graph.inputs).index(old)
    graph.inputs[index] = new
    graph.insert_before(graph.node(0), node) if graph.num_nodes() else graph.append(node)
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
