"""Output targets beyond class indices, compiled into the graph as extra ONNX nodes.

Segmentation and detection models, and any model whose score of interest is not one
entry of the output, are explained through a scalar per example computed from an
output tensor ``T`` (N, ...):

    S_n = Σ_i W_i · T_n,i                   (``reduce="sum"``)
    S_n = Σ_i W_i · T_n,i / Σ_i W_i          (``reduce="mean"``)
    S_n = max_{i : W_i ≠ 0} T_n,i            (``reduce="max"``)

with a weight (mask) ``W`` over the non-batch dims. The targets here choose ``T`` and
``W``:

- :class:`SegmentationTarget` ``(class_index, mask)``: the class-``c`` scores of a
  segmentation output (N, K, H, W) summed over a region mask (H, W), as pytorch-grad-cam's
  ``SemanticSegmentationTarget`` and Captum's advice for segmentation (a forward that
  returns ``(out[:, c] * mask).sum((1, 2))``);
- :class:`DetectionScore` ``(output, box_index, class_index)``: one entry of a detection
  output (N, boxes, classes);
- :class:`OutputTarget` ``(name, index)``: one entry of any tensor by name (all of it,
  summed, with ``index=None``);
- :class:`Reduction` ``(output, reduce, mask)``: sum, mean or max of any tensor under a
  mask (a mask of shape (K, 1, 1) reduces over the classes it selects and every pixel),
  or ``fragment=``: an ONNX graph with one input and one output (N,) or (N, 1), for any
  other reduction.

``Model.with_targets`` appends the nodes that compute the scores (``Flatten`` →
``MatMul`` with ``W``, or ``Add`` of a −∞ mask → ``ReduceMax``; fragments are inlined)
and makes their (N, T) concatenation the model's only output, so both backends compute
the same scalars and every method works unchanged: pass the target (or one per example)
as ``target=`` to any method. ``output=None`` is the explained output (the pre-softmax
logits for gradient and CAM methods when the model ends in Softmax).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from onnxplain.core.errors import InputValidationError

if TYPE_CHECKING:
    from onnxplain.core.model import Model

#: The name of the (N, T) output of a model with compiled targets.
TARGETS_OUTPUT = "onnxplain_targets"
Reduce = Literal["sum", "mean", "max"]


def _mask_array(mask: Any, what: str) -> np.ndarray | None:
    if mask is None:
        return None
    if hasattr(mask, "detach") and hasattr(mask, "cpu"):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask)
    if m.dtype == bool:
        m = m.astype(np.float64)
    if not np.issubdtype(m.dtype, np.number) or not np.isfinite(m).all():
        raise InputValidationError(f"{what}: mask must be a finite numeric or boolean array")
    return m.astype(np.float64)


class OutputTargetBase:
    """What every compiled target provides: the tensor and the weights over its dims."""

    output: str | None

    def weights(self, shape: tuple[int, ...]) -> tuple[str, np.ndarray]:
        """(reduce, W) for a tensor whose non-batch shape is ``shape``."""
        raise NotImplementedError

    def key(self) -> tuple:
        raise NotImplementedError


def _digest(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha1()
    for a in arrays:
        if a is not None:
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _one_hot(shape: tuple[int, ...], index: int | tuple[int, ...], what: str) -> np.ndarray:
    w = np.zeros(shape)
    try:
        if isinstance(index, (int, np.integer)):
            if index < 0:
                raise IndexError
            w.reshape(-1)[int(index)] = 1.0
        else:
            w[tuple(int(i) for i in index)] = 1.0
    except (IndexError, ValueError, TypeError):
        raise InputValidationError(
            f"{what}: index {index!r} is outside the tensor's dims {shape} (per example)"
        ) from None
    return w


@dataclass(frozen=True, eq=False)
class SegmentationTarget(OutputTargetBase):
    """Σ over ``mask`` of class ``class_index``'s scores in a segmentation output.

    ``mask``: (H, W) boolean or weights (None: every pixel); ``output``: the tensor
    (N, K, H, W) (None: the explained output); ``class_axis``: where K is (1; 3 for
    channels-last outputs (N, H, W, K)).
    """

    class_index: int
    mask: Any = None
    output: str | None = None
    class_axis: int = 1
    _mask: np.ndarray | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_mask", _mask_array(self.mask, "SegmentationTarget"))

    def weights(self, shape: tuple[int, ...]) -> tuple[str, np.ndarray]:
        axis = self.class_axis - 1
        if len(shape) < 2 or not 0 <= axis < len(shape):
            raise InputValidationError(
                f"SegmentationTarget: the output has dims {shape} per example; class_axis="
                f"{self.class_axis} must name one of them (a (N, K, H, W) output has class_axis=1)"
            )
        k = shape[axis]
        if not 0 <= self.class_index < k:
            raise InputValidationError(
                f"SegmentationTarget: class_index {self.class_index} out of range 0..{k - 1}"
            )
        rest = shape[:axis] + shape[axis + 1 :]
        region = np.ones(rest) if self._mask is None else self._mask
        try:
            region = np.broadcast_to(region, rest)
        except ValueError:
            raise InputValidationError(
                f"SegmentationTarget: mask of shape {region.shape} does not fit the output's "
                f"spatial dims {rest}"
            ) from None
        w = np.zeros(shape)
        index = [slice(None)] * len(shape)
        index[axis] = self.class_index
        w[tuple(index)] = region
        return "sum", w

    def key(self) -> tuple:
        return ("segmentation", self.output, int(self.class_index), self.class_axis, _digest(self._mask))


@dataclass(frozen=True, eq=False)
class DetectionScore(OutputTargetBase):
    """The score of class ``class_index`` of box ``box_index`` in a detection output
    (N, boxes, classes) named ``output`` (None: the explained output)."""

    output: str | None
    box_index: int
    class_index: int

    def weights(self, shape: tuple[int, ...]) -> tuple[str, np.ndarray]:
        if len(shape) != 2:
            raise InputValidationError(
                f"DetectionScore: the output has dims {shape} per example; expected (boxes, classes)"
            )
        return "sum", _one_hot(shape, (self.box_index, self.class_index), "DetectionScore")

    def key(self) -> tuple:
        return ("detection", self.output, int(self.box_index), int(self.class_index))


@dataclass(frozen=True, eq=False)
class OutputTarget(OutputTargetBase):
    """One entry of the tensor ``name``: ``index`` an int into its flattened non-batch
    dims or a tuple (one index per dim); ``index=None`` sums the whole tensor."""

    name: str
    index: int | tuple[int, ...] | None = None

    @property
    def output(self) -> str:  # type: ignore[override]
        return self.name

    def weights(self, shape: tuple[int, ...]) -> tuple[str, np.ndarray]:
        if self.index is None:
            return "sum", np.ones(shape)
        return "sum", _one_hot(shape, self.index, f"OutputTarget({self.name!r})")

    def key(self) -> tuple:
        index = self.index if self.index is None or isinstance(self.index, int) else tuple(self.index)
        return ("output", self.name, index)


@dataclass(frozen=True, eq=False)
class Reduction(OutputTargetBase):
    """A user reduction of ``output`` (None: the explained output) to one score.

    ``reduce``: ``"sum"`` (Σ W·T), ``"mean"`` (Σ W·T / Σ W) or ``"max"`` (max of T where
    W ≠ 0), with ``mask`` W broadcast to the tensor's non-batch dims (None: all ones).
    Or ``fragment``: an ``onnx.GraphProto`` with one input (the tensor, (N, ...)) and one
    output ((N,) or (N, 1)), using the model's opset; it is inlined into the graph.
    """

    output: str | None = None
    reduce: Reduce = "sum"
    mask: Any = None
    fragment: onnx.GraphProto | None = None
    _mask: np.ndarray | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if self.reduce not in ("sum", "mean", "max"):
            raise InputValidationError(
                f"Reduction: reduce must be 'sum', 'mean' or 'max', got {self.reduce!r}"
            )
        if self.fragment is not None and not isinstance(self.fragment, onnx.GraphProto):
            raise InputValidationError("Reduction: fragment must be an onnx.GraphProto")
        if self.fragment is not None and (len(self.fragment.input) != 1 or len(self.fragment.output) != 1):
            raise InputValidationError("Reduction: the fragment needs exactly one input and one output")
        object.__setattr__(self, "_mask", _mask_array(self.mask, "Reduction"))

    def weights(self, shape: tuple[int, ...]) -> tuple[str, np.ndarray]:
        m = np.ones(shape) if self._mask is None else self._mask
        try:
            w = np.broadcast_to(m, shape).copy()
        except ValueError:
            raise InputValidationError(
                f"Reduction: mask of shape {m.shape} does not broadcast to the tensor's dims {shape}"
            ) from None
        if self.reduce == "mean":
            total = w.sum()
            if total == 0:
                raise InputValidationError("Reduction(reduce='mean'): the mask selects nothing")
            w = w / total
        if self.reduce == "max" and not (w != 0).any():
            raise InputValidationError("Reduction(reduce='max'): the mask selects nothing")
        return ("max" if self.reduce == "max" else "sum"), w

    def key(self) -> tuple:
        frag = (
            hashlib.sha1(self.fragment.SerializeToString()).hexdigest() if self.fragment is not None else None
        )
        return ("reduction", self.output, self.reduce, _digest(self._mask), frag)


def is_output_target(target: Any) -> bool:
    """Whether ``target`` is a compiled output target or a sequence holding one."""
    if isinstance(target, OutputTargetBase):
        return True
    if isinstance(target, (list, tuple)) and target:
        kinds = [isinstance(t, OutputTargetBase) for t in target]
        if any(kinds) and not all(kinds):
            raise InputValidationError(
                "a target list mixes output targets (SegmentationTarget, ...) with other targets; "
                "give one kind"
            )
        return all(kinds)
    return False


def target_key(target: Any) -> tuple:
    """A hashable identity of a compiled target (masks by content)."""
    if not isinstance(target, OutputTargetBase):
        raise InputValidationError(f"not an output target: {target!r}")
    return target.key()


# -- compilation -------------------------------------------------------------------------
def _inline(fragment: onnx.GraphProto, tensor: str, prefix: str, graph: onnx.GraphProto) -> str:
    """Append ``fragment``'s nodes reading ``tensor``; returns its output's new name."""
    rename = {fragment.input[0].name: tensor}

    def new(name: str) -> str:
        if not name:
            return name
        if name not in rename:
            rename[name] = f"{prefix}{name}"
        return rename[name]

    for init in fragment.initializer:
        t = onnx.TensorProto()
        t.CopyFrom(init)
        t.name = new(init.name)
        graph.initializer.append(t)
    for node in fragment.node:
        n = onnx.NodeProto()
        n.CopyFrom(node)
        del n.input[:]
        del n.output[:]
        n.input.extend(new(i) for i in node.input)
        n.output.extend(new(o) for o in node.output)
        n.name = f"{prefix}{node.name or node.op_type}"
        graph.node.append(n)
    return new(fragment.output[0].name)


def compile_targets(
    model: Model, targets: Sequence[OutputTargetBase], default_output: str
) -> tuple[Model, str]:
    """``model`` with nodes computing each target's score, their (N, T) concatenation its
    only output; returns the new Model and that output's name (see the module doc)."""
    from onnxplain.core.model import Model

    if not targets:
        raise InputValidationError("no output targets to compile")
    proto = model.proto()
    graph = proto.graph
    opset = model.opset
    columns: list[str] = []
    flat: dict[str, str] = {}
    elem = onnx.TensorProto.FLOAT
    for i, target in enumerate(targets):
        tensor = target.output or default_output
        model.check_tensors([tensor])
        shape = model.tensor_shape(tensor)
        prefix = f"onnxplain_target{i}/"
        if isinstance(target, Reduction) and target.fragment is not None:
            out = _inline(target.fragment, tensor, prefix, graph)
            graph.node.append(
                helper.make_node(
                    "Reshape", [out, prefix + "column_shape"], [prefix + "column"], name=prefix + "column"
                )
            )
            graph.initializer.append(
                numpy_helper.from_array(np.array([-1, 1], np.int64), prefix + "column_shape")
            )
            columns.append(prefix + "column")
            continue
        if shape is None or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            raise InputValidationError(
                f"{type(target).__name__}: tensor {tensor!r} has shape {shape}; its dims other than "
                "the batch must be static to build the target"
            )
        reduce, w = target.weights(tuple(shape[1:]))
        dtype = model._values[tensor].dtype
        elem = dtype.value if dtype is not None else elem
        np_dtype = np.dtype(dtype.numpy()) if dtype is not None else np.dtype(np.float32)
        if tensor not in flat:
            flat[tensor] = f"onnxplain_flat{len(flat)}"
            graph.node.append(
                helper.make_node("Flatten", [tensor], [flat[tensor]], axis=1, name=f"{flat[tensor]}/flatten")
            )
        if reduce == "sum":
            graph.initializer.append(
                numpy_helper.from_array(w.reshape(-1, 1).astype(np_dtype), prefix + "weights")
            )
            graph.node.append(
                helper.make_node(
                    "MatMul", [flat[tensor], prefix + "weights"], [prefix + "score"], name=prefix + "matmul"
                )
            )
        else:
            lowest = np.finfo(np_dtype).min
            bias = np.where(w.reshape(1, -1) != 0, 0, lowest).astype(np_dtype)
            graph.initializer.append(numpy_helper.from_array(bias, prefix + "mask"))
            graph.node.append(
                helper.make_node(
                    "Add", [flat[tensor], prefix + "mask"], [prefix + "masked"], name=prefix + "add"
                )
            )
            if opset >= 18:
                graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), prefix + "axes"))
                graph.node.append(
                    helper.make_node(
                        "ReduceMax",
                        [prefix + "masked", prefix + "axes"],
                        [prefix + "score"],
                        keepdims=1,
                        name=prefix + "max",
                    )
                )
            else:
                graph.node.append(
                    helper.make_node(
                        "ReduceMax",
                        [prefix + "masked"],
                        [prefix + "score"],
                        axes=[1],
                        keepdims=1,
                        name=prefix + "max",
                    )
                )
        columns.append(prefix + "score")
    graph.node.append(
        helper.make_node("Concat", columns, [TARGETS_OUTPUT], axis=1, name="onnxplain_targets/concat")
    )
    batch = (model.input_spec.shape or (None,))[0]
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(
            TARGETS_OUTPUT, elem, [batch if batch is not None else "batch", len(targets)]
        )
    )
    try:
        ir_model = ir.from_proto(proto)
        from onnxplain.core.canonical import ShapeInferencePass

        ir_model = ShapeInferencePass()(ir_model).model
    except Exception as exc:
        raise InputValidationError(
            f"the output targets could not be compiled into the graph: {exc}"
        ) from None
    derived = Model(
        ir_model,
        source=f"{model.source}+targets",
        custom_op_libraries=getattr(model, "custom_op_libraries", ()),
        layout=model.layout,
    )
    return derived, TARGETS_OUTPUT


__all__ = [
    "TARGETS_OUTPUT",
    "DetectionScore",
    "OutputTarget",
    "OutputTargetBase",
    "Reduction",
    "SegmentationTarget",
    "compile_targets",
    "is_output_target",
    "target_key",
]
