"""Inputs besides the image, held at values the user gives (``load(..., fixed_inputs=...)``).

Some image models take more than the image: a scalar or a vector of side information
(an age, a sensor id, an image size and scale, as detection exports take them), or a flag
(a ``training`` switch a TensorFlow export kept). onnxplain explains the image: every other
input is fixed, as Captum's ``additional_forward_args`` fix what is not attributed, and the
graph is given that value in place of the input.

- An input whose first axis is the image's batch axis (the same symbol, or 1 in a model
  exported for one image) takes one example's value, shaped as the input without that axis
  or with it as 1; the graph repeats it for every image it is given (``Expand`` to the
  image's batch size), so methods batch their perturbed images as they do on any model.
  An input whose first axis is another symbolic one (exporters name batch axes apart,
  tf2onnx's ``unk__N``) is read the same way when the value has no such axis or a size of
  1 there.
- Any other input (a scalar, a table without a batch axis, the T tokenised texts a CLIP
  model compares every image with on an axis of their own) is the value as it is.

The value must fit the declared shape (a scalar or a flat list with exactly the values a
fixed shape holds is reshaped to it), and the input's type must hold it exactly (an
integer input does not take 0.5); each mismatch is an :class:`InputValidationError` that
names the input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxplain.core.errors import InputValidationError
from onnxplain.core.layout import as_array

__all__ = ["fix_inputs"]


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def _batched(dims: list[int | str | None] | None, image: list[int | str | None] | None,
             shape: tuple[int, ...]) -> bool:
    """Whether the value of ``shape`` for an input of ``dims`` is one example's, to repeat
    along the image batch: the input's first axis is the image's batch axis (the same
    symbol, or the image's own fixed size), or it is another symbolic axis and the value
    has no such axis or a size of 1 there. A value whose first axis is longer, on an axis
    of its own (the T texts a CLIP model compares the images with), is taken as it is."""
    if not dims or not image:
        return False
    first, batch = dims[0], image[0]
    if isinstance(batch, int) and batch > 0:
        return first == batch
    if isinstance(first, int) and first > 0:
        return False
    one_example = len(shape) == len(dims) - 1 or (len(shape) == len(dims) and shape[0] == 1)
    return one_example or (first is not None and first == batch)


def _as_type(name: str, value: Any, elem_type: int) -> np.ndarray:
    """``value`` as the input's numpy type, refused when that changes a value."""
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    given = np.asarray(as_array(value))  # a torch tensor too
    if given.dtype == object or not (np.issubdtype(given.dtype, np.number) or given.dtype == bool):
        raise InputValidationError(f"fixed_inputs[{name!r}] must be numbers, got {given.dtype}")
    if np.issubdtype(dtype, np.floating):
        if not np.isfinite(given.astype(np.float64)).all():
            raise InputValidationError(f"fixed_inputs[{name!r}] contains NaN or Inf")
        return given.astype(dtype)
    converted = given.astype(dtype)
    if not np.array_equal(converted.astype(np.float64), given.astype(np.float64)):
        raise InputValidationError(
            f"fixed_inputs[{name!r}] does not fit the input's type {np.dtype(dtype).name}: "
            f"{given.ravel()[:4].tolist()}..."
        )
    return converted


def _fits(dims: list[int | str | None] | None, shape: tuple[int, ...]) -> bool:
    if dims is None:
        return True
    return len(dims) == len(shape) and all(
        not isinstance(d, int) or d <= 0 or d == s for d, s in zip(dims, shape)
    )


def _shaped(array: np.ndarray, dims: list[int | str | None] | None) -> np.ndarray:
    """A scalar or a flat list (what a command line gives) in the fixed shape ``dims`` when it
    holds exactly as many values (2.5 for a (1, 1) input, ``[2.5]`` for a scalar one); any
    other array as it is."""
    if array.ndim > 1 or dims is None or not all(isinstance(d, int) and d > 0 for d in dims):
        return array
    return array.reshape(dims) if array.size == int(np.prod(dims, dtype=np.int64)) else array


def fix_inputs(proto: onnx.ModelProto, values: Mapping[str, Any]) -> list[str]:
    """Replace the inputs of ``proto`` named in ``values`` by those values (see the module),
    in place; the names replaced, in graph order."""
    if not values:
        return []
    graph = proto.graph
    inits = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in inits]
    names = [v.name for v in inputs]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise InputValidationError(
            f"fixed_inputs names {unknown}, which the model does not take; its inputs: {names}"
        )
    rest = [v for v in inputs if v.name not in values]
    if len(rest) != 1:
        raise InputValidationError(
            f"fixed_inputs must hold every input of the model but the image, which leaves "
            f"{[v.name for v in rest]} of {names}"
        )
    image = rest[0]
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    replaced, nodes, new_inits = [], [], []
    for value in inputs:
        if value.name not in values:
            continue
        name, dims = value.name, _dims(value)
        array = _as_type(name, values[name], value.type.tensor_type.elem_type)
        if _batched(dims, _dims(image), array.shape):
            one = array[None] if dims is not None and array.ndim == len(dims) - 1 else array
            one = _shaped(one, [1, *(dims or [None])[1:]])
            if one.ndim == 0 or one.shape[0] != 1 or not _fits(dims, (1, *one.shape[1:])):
                raise InputValidationError(
                    f"fixed_inputs[{name!r}] has shape {array.shape}; the input is {tuple(dims or ())} "
                    f"with a batch axis first: give one example's value, {tuple((dims or [None])[1:])} "
                    "(or with a batch axis of 1), which every image is explained with"
                )
            tag = f"{name}__fixed"
            new_inits += [numpy_helper.from_array(one, f"{tag}_value"),
                          numpy_helper.from_array(np.asarray([0], np.int64), f"{tag}_first"),
                          numpy_helper.from_array(np.asarray(one.shape[1:], np.int64), f"{tag}_rest")]
            nodes += [
                helper.make_node("Shape", [image.name], [f"{tag}_image_shape"], name=f"{tag}_image_shape"),
                helper.make_node("Gather", [f"{tag}_image_shape", f"{tag}_first"], [f"{tag}_batch"],
                                 name=f"{tag}_batch", axis=0),
                helper.make_node("Concat", [f"{tag}_batch", f"{tag}_rest"], [f"{tag}_shape"],
                                 name=f"{tag}_shape", axis=0),
                helper.make_node("Expand", [f"{tag}_value", f"{tag}_shape"], [name], name=f"{tag}_expand"),
            ]
        else:
            array = _shaped(array, dims)
            if not _fits(dims, array.shape):
                raise InputValidationError(
                    f"fixed_inputs[{name!r}] has shape {array.shape}, the input {tuple(dims or ())}"
                )
            new_inits.append(numpy_helper.from_array(array, name))
        replaced.append(name)
    if opset < 8 and nodes:  # Expand
        raise InputValidationError(
            f"fixed inputs with a batch axis need opset 8 or newer, the model has {opset}"
        )
    kept = [v for v in graph.input if v.name not in replaced]
    del graph.input[:]
    graph.input.extend(kept)
    graph.initializer.extend(new_inits)
    for node in reversed(nodes):
        graph.node.insert(0, node)
    return replaced
