"""The ``Model``: a loaded, canonical ONNX graph with its queries and its backends."""

from __future__ import annotations

import json
import math
import os
import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxplain.core.canonical import _nhwc_source, _perm
from onnxplain.core.errors import (
    InputValidationError,
    LayerNotFoundError,
    ModelLoadError,
)
from onnxplain.core.layout import as_array
from onnxplain.core.quantized import ROUNDING_OPS
from onnxplain.core.validation import rank_hint

if TYPE_CHECKING:
    from onnxplain.backends.base import Backend, Capability
    from onnxplain.preprocess import Preprocess

Dim = int | str | None

_GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
_SPATIAL_REDUCES = {"ReduceMean", "ReduceMax", "ReduceSum", "ReduceL2", "ReduceL1"}
# Nodes that only reshape a pooled (N, K, 1, 1) vector between pooling and the classifier.
_SHAPE_ONLY = {"Flatten", "Reshape", "Squeeze", "Identity", "Dropout"}


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, shape (ints, symbolic names or None) and numpy dtype."""

    name: str
    shape: tuple[Dim, ...] | None
    dtype: np.dtype


@dataclass(frozen=True)
class LayerSpec:
    """A feature map of the graph: the tensor ``name``, its producer and its shape."""

    name: str
    op_type: str
    node: str
    shape: tuple[Dim, ...]


@dataclass(frozen=True, eq=False)
class ClassifierHead:
    """A global-average-pooling classifier: ``logits = weight · GAP(feature_map) + bias``.

    ``feature_map``: the pooled tensor (N, K, h, w), or (N, tokens, K) for a transformer or
    MLP mixer that averages its tokens; ``pool`` / ``linear``: the node names
    of the pooling and of the Gemm/MatMul (or 1×1 Conv) layers, joined by ``+`` where several
    heads are summed ("" where the pooled maps are the scores); ``logits``: the tensor the head
    computes (N, classes); ``weight``: (classes, K), every affine map on the way folded in;
    ``bias``: (classes,) or None; ``features``: the pooled features (N, K) the head reads;
    ``rounded``: a quantized model rounds on the way (so the formula holds up to that
    rounding).
    """

    feature_map: str
    pool: str
    linear: str
    logits: str
    weight: np.ndarray
    bias: np.ndarray | None
    features: str = ""
    rounded: bool = False


def _dims(value: ir.Value) -> tuple[Dim, ...] | None:
    if value.shape is None:
        return None
    out: list[Dim] = []
    for d in value.shape:
        if isinstance(d, int):
            out.append(d)
        else:  # a symbol; ``unk__N`` is shape inference's name for a dim it could not infer
            name = getattr(d, "value", None) or None
            out.append(None if isinstance(name, str) and name.startswith("unk__") else name)
    return tuple(out)


#: How many models with compiled output targets a Model keeps (see Model.with_targets).
MAX_DERIVED = 8
#: metadata_props keys onnxplain reads and writes.
PREPROCESS_KEY = "onnxplain.preprocess"
LAYOUT_KEY = "onnxplain.layout"
GRAPH_LAYOUT_KEY = "onnxplain.graph_layout"
CONVERTED_KEY = "onnxplain.converted_from"


def _read_preprocess(props: dict[str, str]) -> Preprocess | None:
    text = props.get(PREPROCESS_KEY)
    if not text:
        return None
    from onnxplain.preprocess import Preprocess

    try:
        data = json.loads(text)
        if isinstance(data, dict) and isinstance(data.get("preprocess"), dict):
            data = data["preprocess"]
        return Preprocess.parse(data, what=f"metadata {PREPROCESS_KEY!r}")
    except (ValueError, InputValidationError) as exc:  # a bad spec must not block loading
        warnings.warn(f"ignoring the model's {PREPROCESS_KEY!r} metadata: {exc}", UserWarning, stacklevel=3)
        return None


def save_metadata(model: Model) -> dict[str, str]:
    """The metadata_props :meth:`Model.save` writes."""
    props = {LAYOUT_KEY: model.layout, GRAPH_LAYOUT_KEY: "NCHW"}  # load() made the graph's input NCHW
    if model.preprocess is not None:
        props[PREPROCESS_KEY] = model.preprocess.model_dump_json()
    if model.converted_from is not None:
        props[CONVERTED_KEY] = model.converted_from
    return props


def batch_shape(node: ir.Node, batch: Dim) -> list[int] | None:
    """The dims a ``Shape`` node reads when they are the batch dim ``batch`` (a symbol) and
    dims of fixed size, so that another batch-first tensor's batch size and constants can
    stand in for it (see :meth:`Model.tail`); None for any other node."""
    if node.op_type != "Shape" or node.domain not in ("", "ai.onnx") or not isinstance(batch, str):
        return None
    dims = _dims(node.inputs[0])
    if not dims or dims[0] != batch:
        return None
    attrs = {k: a.value for k, a in node.attributes.items()}
    picked = list(range(len(dims)))[attrs.get("start", 0) : attrs.get("end", len(dims))]
    return picked if all(isinstance(dims[i], int) for i in picked if i) else None


def _computed_by(values: Iterable[ir.Value | None]) -> set[int]:
    """The ids of the nodes that ``values`` are computed by, back to the graph inputs."""
    seen: set[int] = set()
    stack = [v.producer() for v in values if v is not None]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(v.producer() for v in node.inputs if v is not None)
    return seen


def _computed_from(values: Iterable[ir.Value]) -> set[int]:
    """The ids of the values computed from ``values`` (and theirs)."""
    seen = {id(v) for v in values}
    stack = list(values)
    while stack:
        for node, _ in stack.pop().uses():
            for out in node.outputs:
                if id(out) not in seen:
                    seen.add(id(out))
                    stack.append(out)
    return seen


def _np_dtype(value: ir.Value) -> np.dtype | None:
    if value.dtype is None:
        return None
    try:
        return np.dtype(value.dtype.numpy())
    except Exception:  # pragma: no cover - e.g. float8
        return None


def _is_integer(value: ir.Value) -> bool:
    """Whether ``value`` holds integers (a quantized model's rounded activations, indices)."""
    dtype = value.dtype
    return dtype is not None and not dtype.is_floating_point()


def _affine(node: ir.Node, value: ir.Value) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) per feature (flat, size 1 or K) when ``node`` maps ``value`` to
    scale · value + shift with constants: an inference BatchNormalization, or a Mul, Div,
    Add or Sub by a constant that varies along one axis at most."""
    if node.domain not in ("", "ai.onnx") or not node.inputs or value not in node.inputs:
        return None
    if node.op_type == "BatchNormalization":
        if node.inputs[0] is not value or len(node.inputs) < 5 or len(node.outputs) > 1:
            return None
        params = [v.const_value if v is not None else None for v in node.inputs[1:5]]
        if any(p is None for p in params):
            return None
        gamma, beta, mean, var = (p.numpy().astype(np.float64).reshape(-1) for p in params)
        eps = node.attributes["epsilon"].as_float() if "epsilon" in node.attributes else 1e-5
        scale = gamma / np.sqrt(var + eps)
        return scale, beta - mean * scale
    if node.op_type not in ("Mul", "Div", "Add", "Sub") or len(node.inputs) != 2:
        return None
    other = node.inputs[1] if node.inputs[0] is value else node.inputs[0]
    const = other.const_value if other is not None else None
    if const is None:
        return None
    c = const.numpy().astype(np.float64)
    if sum(d > 1 for d in c.shape) > 1:
        return None
    c = c.reshape(-1)
    first = node.inputs[0] is value
    if node.op_type == "Mul":
        return c, np.zeros(1)
    if node.op_type == "Div":
        return (1.0 / c, np.zeros(1)) if first else None
    if node.op_type == "Add":
        return np.ones(1), c
    return (np.ones(1), -c) if first else (-np.ones(1), c)


@dataclass(frozen=True)
class _Affine:
    """``y = m · f + c`` per example, for the pooled features ``f`` (K,): ``m`` is None (the
    identity), a vector (a diagonal) or a (d, K) matrix; ``c`` has size 1 or d. ``rounded``:
    a quantized model's rounding lies on the way; ``linears``: the linear layers on it."""

    m: np.ndarray | None
    c: np.ndarray
    rounded: bool = False
    linears: tuple[str, ...] = ()

    def size(self, k: int | None) -> int | None:
        """d, the number of values per example (None where unknown): K while ``m`` is
        still the identity (``c`` is then 0, set only with ``m``)."""
        return k if self.m is None else self.m.shape[0]

    def dense(self, k: int | None) -> np.ndarray | None:
        """``m`` as a (d, K) matrix (None when K is unknown and ``m`` is the identity)."""
        if self.m is None:
            return np.eye(k) if k is not None else None
        return np.diag(self.m) if self.m.ndim == 1 else self.m

    def scaled(self, scale: np.ndarray, shift: np.ndarray, k: int | None) -> _Affine | None:
        """``scale · y + shift``, with ``scale`` and ``shift`` of size 1 or d."""
        d = self.size(k)
        if any(v.size != 1 and d is not None and v.size != d for v in (scale, shift)):
            return None
        if self.m is None or self.m.ndim == 1:
            m = scale * (self.m if self.m is not None else 1.0)
            if m.size == 1 and d is not None:
                m = np.full(d, m.item())
            elif m.size == 1:
                return None
        else:
            m = (scale[:, None] if scale.size > 1 else scale) * self.m
        return _Affine(m, scale * self.c + shift, self.rounded, self.linears)

    def through(self, w: np.ndarray, b: np.ndarray | None, name: str, k: int | None) -> _Affine | None:
        """``w · y + b`` for a linear layer ``w`` (out, d)."""
        d = self.size(k)
        if d is not None and w.shape[1] != d:
            return None
        m = w if self.m is None else (w * self.m if self.m.ndim == 1 else w @ self.m)
        c = w @ np.broadcast_to(self.c, (w.shape[1],)) + (b if b is not None else 0.0)
        return _Affine(m, c, self.rounded, (*self.linears, name))

    def plus(self, other: _Affine, sign: float, k: int | None) -> _Affine | None:
        """``y ± other``: two heads on the same features, summed."""
        a, b = self.dense(k), other.dense(k)
        if a is None or b is None or a.shape != b.shape:
            return None
        return _Affine(a + sign * b, self.c + sign * other.c, self.rounded or other.rounded,
                       (*self.linears, *other.linears))


def _keeps_the_elements(node: ir.Node) -> bool:
    """Whether ``node`` only reshapes its first input: shape-only operators, or a ``Gather``
    of one index along an axis of size 1 (``y[:, 0]`` of (N, 1) scores)."""
    if node.domain not in ("", "ai.onnx") or not node.inputs or node.inputs[0] is None:
        return False
    if node.op_type in _SHAPE_ONLY or node.op_type == "Unsqueeze":
        return True
    if node.op_type != "Gather" or len(node.inputs) < 2 or node.inputs[1] is None:
        return False
    index = node.inputs[1].const_value
    axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
    dims = _dims(node.inputs[0])
    return index is not None and index.numpy().size == 1 and dims is not None \
        and -len(dims) <= axis < len(dims) and dims[axis] == 1


def _per_example(value: ir.Value) -> int | None:
    """The number of values per example in ``value`` (None where a dim is unknown)."""
    dims = _dims(value)
    if not dims or not all(isinstance(d, int) for d in dims[1:]):
        return None
    return math.prod(dims[1:])


def _linear_weight(node: ir.Node) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(W (out, in), b or None) of a Gemm, a MatMul by a matrix or a 1×1 convolution of a
    1×1 map (no padding, one group), with constant weights; None for anything else."""
    weight = node.inputs[1].const_value if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if weight is None:
        return None
    w = weight.numpy().astype(np.float64)
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    b = bias.const_value if bias is not None else None
    if bias is not None and b is None:
        return None
    b = b.numpy().astype(np.float64).reshape(-1) if b is not None else None
    attrs = node.attributes
    if node.op_type == "MatMul" and w.ndim == 2:
        return w.T, None
    if node.op_type == "Gemm" and w.ndim == 2:
        if attrs.get("transA") is not None and attrs["transA"].as_int() != 0:
            return None
        trans_b = attrs["transB"].as_int() if attrs.get("transB") is not None else 0
        alpha = attrs["alpha"].as_float() if attrs.get("alpha") is not None else 1.0
        beta = attrs["beta"].as_float() if attrs.get("beta") is not None else 1.0
        w = alpha * (w if trans_b else w.T)
        return w, (beta * np.broadcast_to(b, (w.shape[0],)) if b is not None else None)
    if node.op_type == "Conv" and w.ndim == 4 and w.shape[2:] == (1, 1):
        group = attrs["group"].as_int() if attrs.get("group") is not None else 1
        pads = attrs["pads"].as_ints() if attrs.get("pads") is not None else ()
        auto_pad = attrs["auto_pad"].as_string() if attrs.get("auto_pad") is not None else "NOTSET"
        dims = _dims(node.inputs[0])
        if group != 1 or any(pads) or auto_pad not in ("NOTSET", "VALID") or dims is None \
                or len(dims) != 4 or dims[2:] != (1, 1):
            return None
        return w.reshape(w.shape[0], -1), b
    return None


def _affine_step(node: ir.Node, maps: dict[int, _Affine], k: int | None) -> _Affine | None:
    """The affine map of ``node``'s output in the pooled features, when ``node`` computes it
    from inputs with one (``maps``, by ``id``) and constants, by an op that keeps it affine:
    a reshape or a quantized model's rounding; a per-feature scale or shift (BatchNorm, Mul,
    Div, Add or Sub by a constant); a linear layer (:func:`_linear_weight`); the sum or
    difference of two such inputs. None for anything else."""
    if node.domain not in ("", "ai.onnx"):
        return None
    ins = [v for v in node.inputs if v is not None]
    tracked = [maps.get(id(v)) for v in ins]
    if any(t is None and v.const_value is None for t, v in zip(tracked, ins)):
        return None  # it also reads a tensor computed otherwise
    first = tracked[0] if tracked else None
    op = node.op_type
    if op in _SHAPE_ONLY | {"Unsqueeze"} | ROUNDING_OPS and first is not None:
        found = replace(first, rounded=first.rounded or op in ROUNDING_OPS)
    elif op in ("Add", "Sub") and len(ins) == 2 and tracked[1] is not None and first is not None:
        found = first.plus(tracked[1], 1.0 if op == "Add" else -1.0, k)
    elif op in ("Gemm", "MatMul", "Conv") and first is not None and sum(t is not None for t in tracked) == 1:
        linear = _linear_weight(node)
        found = first.through(*linear, node.name or op, k) if linear is not None else None
    else:
        value = next(v for v, t in zip(ins, tracked) if t is not None)
        affine = _affine(node, value) if sum(t is not None for t in tracked) == 1 else None
        found = maps[id(value)].scaled(*affine, k) if affine is not None else None
    if found is None:
        return None
    d, size = found.size(k), _per_example(node.outputs[0])
    return found if d is None or size is None or d == size else None


def _spec(value: ir.Value) -> LayerSpec:
    producer = value.producer()
    return LayerSpec(value.name, producer.op_type if producer else "Input", producer.name if producer else "",
                     _dims(value) or ())


def _reduce_axes(node: ir.Node) -> list[int] | None:
    """The constant axes of a Reduce* node (attribute or second input), None if unknown."""
    if "axes" in node.attributes:
        return list(node.attributes["axes"].as_ints())
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        const = node.inputs[1].const_value
        return const.numpy().reshape(-1).tolist() if const is not None else None
    return None


def _channels_first_source(value: ir.Value) -> ir.Value:
    """For a channels-last feature map made by ``Transpose(perm=[0, 2, 3, 1])`` (as tf2onnx
    leaves before a Keras global pooling), the channels-first tensor it transposes; else
    ``value`` itself. CAMs read feature maps channels first."""
    return _nhwc_source(value) or value


class Model:
    """A model loaded with :func:`onnxplain.load`.

    Holds the canonical graph IR (``model.ir``), answers graph queries (``inputs``,
    ``outputs``, ``layers()``, ``find_layer()``), and creates backends on demand
    (``model.backend("onnxruntime")``), each built once and reused. For a quantized model
    (``model.quantized``), ``ir`` is its float simulation and ``runtime_ir`` the graph as
    written, which ONNX Runtime runs (:mod:`onnxplain.core.quantized`).
    """

    def __init__(
        self, ir_model: ir.Model, source: str = "<memory>", custom_op_libraries: Sequence[str] = (),
        layout: str = "NCHW", runtime: ir.Model | None = None,
    ) -> None:
        self.ir = ir_model
        #: For a quantized model, the graph as it was written, which ONNX Runtime runs;
        #: ``ir`` is then its float simulation (see :mod:`onnxplain.core.quantized`).
        self.runtime_ir = runtime
        self._runtime_values = set() if runtime is None else {
            v.name for node in runtime.graph for v in node.outputs if v.name} | {
            v.name for v in runtime.graph.inputs}
        self.source = source
        #: The layout of the user's arrays: ``"NCHW"``, ``"NHWC"`` or ``"NHW"`` (the graph's
        #: input is channels first either way; see :mod:`onnxplain.core.layout`).
        self.layout = layout
        #: Why the batch dimension stayed fixed (None when it is dynamic or was made so).
        self.batch_note: str | None = None
        #: The type the exported graph computed in or took its input as, when load() changed
        #: it: ``"float16"``, ``"bfloat16"`` or ``"float64"`` (computed in float32), or an
        #: integer input type such as ``"uint8"`` (the input is float32; integer arrays are
        #: taken too; see
        #: :func:`onnxplain.load`).
        self.converted_from: str | None = None
        self._preprocess = _read_preprocess(dict(ir_model.metadata_props))
        self._derived: dict[tuple, tuple[Model, str]] = {}
        #: custom-op libraries the user named in :func:`onnxplain.load` (never implicit)
        self.custom_op_libraries = tuple(custom_op_libraries)
        graph = ir_model.graph
        self._values: dict[str, ir.Value] = {}
        for v in graph.inputs:
            self._values[v.name] = v
        for node in graph:
            for v in node.outputs:
                if v.name:
                    self._values[v.name] = v
        self.inputs = [TensorSpec(v.name, _dims(v), _np_dtype(v)) for v in graph.inputs]
        self.outputs = [TensorSpec(v.name, _dims(v), _np_dtype(v)) for v in graph.outputs]
        floats = [s for s in self.inputs if s.dtype is not None and np.issubdtype(s.dtype, np.floating)]
        if not floats:
            raise ModelLoadError(
                "the model has no floating-point input to explain "
                f"(inputs: {[(s.name, str(s.dtype)) for s in self.inputs]})"
            )
        if len(self.inputs) > 1:
            described = ", ".join(f"{s.name!r} {s.shape} {np.dtype(s.dtype).name if s.dtype else '?'}"
                                  for s in self.inputs)
            others = [s for s in self.inputs if s not in floats[:1]]
            hint = ""  # weights as inputs: no initializers, every other input of a fixed shape
            if not graph.initializers and all(s.shape and all(isinstance(d, int) for d in s.shape)
                                              for s in others):
                hint = ("; the others look like the model's weights, left out of the file (torch's "
                        "export_params=False): export the model with its parameters")
            raise ModelLoadError(
                f"the model has {len(self.inputs)} inputs ({described}); "
                "onnxplain explains one input, the image: hold the others at values with "
                "load(..., fixed_inputs={name: value})" + hint
            )
        if not self.outputs:
            raise ModelLoadError("the model has no outputs")
        # The output explained: the first floating-point one, so that a classifier whose
        # first output is its label (skl2onnx: label, probabilities) is explained by its
        # probabilities.
        self.output_spec = next(
            (o for o in self.outputs if o.dtype is not None and np.issubdtype(o.dtype, np.floating)),
            self.outputs[0],
        )
        self.input_spec = floats[0]
        self._serialized: dict[tuple, bytes] = {}
        self._backends: dict[tuple, Backend] = {}
        #: incremental inference's analyses, plans and sub-models (onnxplain.core.incremental)
        self._incremental: dict[tuple, Any] = {}
        self._lock = threading.RLock()

    # -- description -------------------------------------------------------------------
    @property
    def input_name(self) -> str:
        return self.input_spec.name

    @property
    def input_dtype(self) -> np.dtype:
        return self.input_spec.dtype

    @property
    def output_name(self) -> str:
        return self.output_spec.name

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def opset(self) -> int:
        return self.ir.opset_imports.get("", self.ir.opset_imports.get("ai.onnx", 0))

    @property
    def batch_dim(self) -> Dim:
        """The input's batch dim as the graph declares it: a symbol, a size, or None."""
        return self.input_spec.shape[0] if self.input_spec.shape else None

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the input is fixed to, or None when the batch is dynamic."""
        shape = self.input_spec.shape
        if shape and isinstance(shape[0], int) and shape[0] > 0:
            return shape[0]
        return None

    @property
    def num_classes(self) -> int | None:
        """Number of entries per example in the primary output, when static."""
        shape = self.output_spec.shape
        if not shape or len(shape) < 2 or not all(isinstance(d, int) for d in shape[1:]):
            return None
        return math.prod(shape[1:])

    @property
    def metadata(self) -> dict[str, str]:
        """The model's ``metadata_props`` (a copy; keys starting with ``onnxplain.`` are ours)."""
        return dict(self.ir.metadata_props)

    @property
    def preprocess(self) -> Preprocess | None:
        """The :class:`~onnxplain.preprocess.Preprocess` spec stored in the model's metadata
        (key ``"onnxplain.preprocess"``, JSON), or None. Settable; :meth:`save` stores it."""
        return self._preprocess

    @preprocess.setter
    def preprocess(self, spec: Preprocess | dict | None) -> None:
        from onnxplain.preprocess import Preprocess

        self._preprocess = None if spec is None else Preprocess.parse(spec)

    @property
    def user_input_shape(self) -> tuple[Dim, ...] | None:
        """The input shape in the user's layout: (N, H, W, C) for an NHWC model, (N, H, W)
        for an NHW one."""
        shape = self.input_spec.shape
        if shape is None or self.layout == "NCHW" or len(shape) != 4:
            return shape
        if self.layout == "NHW":
            return (shape[0], shape[2], shape[3])
        return (shape[0], shape[2], shape[3], shape[1])

    def __repr__(self) -> str:
        layout = f", layout={self.layout}" if self.layout != "NCHW" else ""
        return (
            f"Model({self.source!r}, input={self.input_name}{self.user_input_shape}{layout}, "
            f"output={self.output_name}{self.output_spec.shape}, opset={self.opset})"
        )

    # -- layout ------------------------------------------------------------------------
    def to_internal(self, x: Any, name: str = "inputs") -> Any:
        """``x`` from the user's layout to the channels-first one methods compute in
        ((N, H, W, C) → (N, C, H, W) for an NHWC model, (N, H, W) → (N, 1, H, W) for an NHW
        one, which takes (N, 1, H, W) as it is; unchanged otherwise). The shape is checked
        against the model's input in the user's layout first."""
        if self.layout == "NCHW":
            return x
        if hasattr(x, "detach") and hasattr(x, "cpu"):
            x = x.detach().cpu().numpy()
        if not isinstance(x, np.ndarray):
            return x  # check_input names the problem
        want = self.user_input_shape
        if self.taken_as_it_is(x):
            return x
        if x.ndim != len(self.layout):
            nhw = self.layout == "NHW"
            also = " (or (N, 1, H, W)): one-channel images without a channel axis" if nhw else ""
            hint = rank_hint(x.shape, want) if x.ndim == 2 else ""
            raise InputValidationError(
                f"{name} has shape {x.shape}; this {self.layout} model takes "
                f"({', '.join(self.layout)}) batches {want}{also}{hint}"
            )
        for axis, (got, need) in enumerate(zip(x.shape[1:], (want or ())[1:]), start=1):
            if isinstance(need, int) and need > 0 and got != need:
                raise InputValidationError(
                    f"{name} has shape {x.shape} but the model input {self.input_name!r} expects "
                    f"{want} in its {self.layout} layout (axis {axis}: {got} != {need})"
                )
        if self.layout == "NHW":
            return x[:, None]
        return np.moveaxis(x, -1, 1)

    def taken_as_it_is(self, x: Any) -> bool:
        """Whether ``x`` is already in the layout methods compute in although the model's is
        another: an NHW model's (N, 1, H, W) arrays."""
        shape = np.shape(as_array(x)) if x is not None else ()
        return self.layout == "NHW" and len(shape) == 4 and shape[1] == 1

    def to_user(self, a: np.ndarray) -> np.ndarray:
        """An input-shaped (N, C, H, W) array back to the user's layout (NHW: (N, 1, H, W)
        → (N, H, W))."""
        if self.layout == "NCHW" or np.ndim(a) != 4:
            return a
        if self.layout == "NHW":
            return a[:, 0] if a.shape[1] == 1 else a
        return np.ascontiguousarray(np.moveaxis(a, 1, -1))

    # -- outputs -----------------------------------------------------------------------
    def logits(self) -> str | None:
        """The pre-softmax tensor of the model output, or None.

        When the explained output is computed by a final ``Softmax`` or ``LogSoftmax``, its
        input (the logits) is returned; gradient and CAM methods explain it by default
        (``use_logits``, see :class:`~onnxplain.methods.base.Attribution`), because the
        gradient of a probability mixes in every other class.
        """
        found = self._softmax_tail()
        return found.inputs[0].name if found is not None else None

    def output_softmax(self) -> str | None:
        """``"Softmax"`` or ``"LogSoftmax"`` when the explained output is computed by a final
        one (see :meth:`logits`), else None."""
        found = self._softmax_tail()
        return found.op_type if found is not None else None

    def _softmax_tail(self) -> ir.Node | None:
        """The final Softmax or LogSoftmax node, looked for through reshapes after it
        (Caffe2's (N, K, 1, 1) Softmax, which the opset upgrade writes as Flatten → Softmax →
        Reshape) where each example keeps its own scores."""
        value = self._values.get(self.output_name)
        producer = value.producer() if value is not None else None
        while producer is not None and producer.op_type in _SHAPE_ONLY | {"Unsqueeze"} \
                and producer.domain in ("", "ai.onnx") and producer.inputs and producer.inputs[0] is not None:
            producer = producer.inputs[0].producer()
        if producer is None or producer.op_type not in ("Softmax", "LogSoftmax") \
                or producer.domain not in ("", "ai.onnx") or producer.inputs[0] is None:
            return None
        logits = producer.inputs[0]
        if producer.outputs[0] is not value:  # reshaped after: each example keeps its own scores
            batch_in, batch_out = (_dims(v)[0] if _dims(v) else None for v in (logits, value))
            if batch_in is None or batch_in != batch_out:
                return None
        return producer

    def with_targets(self, targets: Sequence[Any], default_output: str | None = None) -> tuple[Model, str]:
        """A model whose output is the scores of ``targets`` (compiled output targets such
        as :class:`~onnxplain.core.outputs.SegmentationTarget`), one column each, and the
        name of that output. Built once per set of targets (the last ``MAX_DERIVED`` sets are
        kept, each with its own backends); see :mod:`onnxplain.core.outputs`."""
        from onnxplain.core.outputs import compile_targets, target_key

        default = default_output or self.output_name
        key = (default, *(target_key(t) for t in targets))
        with self._lock:
            found = self._derived.pop(key, None)
            if found is None:
                found = compile_targets(self, list(targets), default)
            self._derived[key] = found  # most recent last; the oldest go (each holds backends)
            while len(self._derived) > MAX_DERIVED:
                self._derived.pop(next(iter(self._derived)))
            return found

    # -- graph queries -----------------------------------------------------------------
    def tensor_shape(self, name: str) -> tuple[Dim, ...] | None:
        self.check_tensors([name])
        return _dims(self._values[name])

    def check_tensors(self, names: Iterable[str]) -> None:
        missing = [n for n in names if n not in self._values]
        if missing:
            raise LayerNotFoundError(
                f"no tensor named {missing} in the model; model.layers() lists the feature maps"
            )

    def producer_inputs(self, name: str) -> list[str]:
        """The input tensors of the node that computes tensor ``name`` ([] for a graph input
        or an initializer)."""
        self.check_tensors([name])
        producer = self._values[name].producer()
        return [] if producer is None else [v.name for v in producer.inputs if v is not None]

    def layers(self) -> list[LayerSpec]:
        """Every 4-D float tensor computed by the graph, in topological order."""
        out = []
        for node in self.ir.graph:
            for v in node.outputs:
                dims = _dims(v)
                if v.name and dims is not None and len(dims) == 4 and not _is_integer(v):
                    out.append(LayerSpec(v.name, node.op_type, node.name or "", dims))
        return out

    def find_layer(self, layer: str = "auto") -> LayerSpec:
        """A feature map by tensor name or node name, or ``"auto"``.

        ``"auto"`` is the last spatial feature map before global pooling: the input of the
        last global pooling (GlobalAveragePool, a mean/max over both spatial axes, or the
        mean over the tokens of a (N, tokens, C) tensor, as MLP mixers and transformers with
        average pooling end). In a
        vision transformer without one (attention: a product of two tensors computed from
        the input), it is the (N, tokens, C) output of the last LayerNormalization before
        the last attention, the last block's first normalisation, which CAMs read as the
        grid of its patch tokens. In other models, the last 4-D tensor with spatial extent
        and the batch dim first before the output (never one computed from an attention's
        product, such as its heads × tokens × tokens weights).

        For torchvision's resnet18 and mobilenet_v2 this is the output of the layer
        pytorch-grad-cam recommends (``layer4[-1]``, ``features[-1]``). For densenet121 it
        is ``relu(features[-1])``: pytorch-grad-cam hooks ``features[-1]`` (norm5) because a
        module hook cannot see the functional ReLU before the pooling; the pooling's input
        is the tensor the class scores are linear in, which CAM needs. Name norm5's output
        to get pytorch-grad-cam's choice.
        """
        layers = self.layers()
        if layer != "auto":
            for spec in layers:
                if layer in (spec.name, spec.node):
                    return spec
            if layer in self._values:
                return _spec(self._values[layer])
            raise LayerNotFoundError(
                f"no layer {layer!r}; choose one of model.layers(), e.g. "
                f"{[s.name for s in layers[-3:]]}"
            )
        by_name = {s.name: s for s in layers}
        pooled = None
        for node in self.ir.graph:
            source = self._pooled_map(node)
            if source is not None and (source.name in by_name or source.name in self._values):
                pooled = by_name.get(source.name) or _spec(source)
        if pooled is not None:
            return pooled
        batch = self.batch_dim
        mixing, after = self._token_mixing()
        if mixing:
            token = self._token_layer(mixing[-1])
            if token is not None:
                return token
        spatial = [
            s for s in layers
            if all(not isinstance(d, int) or d > 1 for d in s.shape[2:])
            and (s.shape[0] is None or batch is None or s.shape[0] == batch)  # one map per example
            and s.name not in after  # not a tensor of attention (heads × tokens × tokens)
        ]
        if spatial:
            return spatial[-1]
        if mixing:
            raise LayerNotFoundError(
                "layer='auto' found no feature map: the layers before the output mix tokens by "
                "attention (a transformer), and no LayerNormalization feeds the last attention; "
                "pass the name of a (N, tokens, C) tensor, such as the input or output of the last "
                "block's first normalisation"
            )
        raise LayerNotFoundError(
            "found no spatial feature map for layer='auto' (no 4-D tensor with height and "
            "width > 1); pass a layer name from model.layers()"
        )

    def _token_mixing(self) -> tuple[list[ir.Node], set[str]]:
        """The nodes that multiply two tensors computed from the input (attention's
        Q·Kᵀ and A·V), in topological order, and the names of every tensor after them."""
        from_input = {self.input_name}
        mixing, after = [], set()
        for node in self.ir.graph:
            ins = [v.name for v in node.inputs if v is not None]
            if not any(name in from_input for name in ins):
                continue
            outs = {v.name for v in node.outputs if v.name}
            from_input |= outs
            if node.op_type in ("MatMul", "Einsum") and len(ins) >= 2 and all(
                    name in from_input for name in ins[:2]):
                mixing.append(node)
                after |= outs
            elif any(name in after for name in ins):
                after |= outs
        return mixing, after

    def _token_layer(self, attention: ir.Node) -> LayerSpec | None:
        """The (N, tokens, C) output of the last LayerNormalization before ``attention``:
        for a vision transformer, the last block's first normalisation (the layer
        pytorch-grad-cam's ViT examples take), whose patch tokens a CAM reads as a grid."""
        before = _computed_by(attention.inputs)
        batch = self.batch_dim
        found = None
        for node in self.ir.graph:  # topological order: the last match is the last one
            dims = _dims(node.outputs[0]) if node.outputs else None
            if (node.op_type == "LayerNormalization" and id(node) in before and dims is not None
                    and len(dims) == 3 and (batch is None or dims[0] in (batch, None))):
                found = node
        if found is None:
            return None
        out = found.outputs[0]
        return LayerSpec(out.name, found.op_type, found.name or "", _dims(out) or ())

    def channels_first_layer(self, spec: LayerSpec) -> LayerSpec:
        """``spec``, or for a channels-last feature map (the output of a
        ``Transpose(perm=[0, 2, 3, 1])``, as Keras/tf2onnx exports leave them after
        :class:`~onnxplain.core.canonical.SinkChannelsLastTransposePass`) its channels-first
        twin, which CAMs read as (N, K, h, w)."""
        value = self._values.get(spec.name)
        source = _channels_first_source(value) if value is not None else None
        if source is None or source is value or not source.name or source.name not in self._values:
            return spec
        producer = source.producer()
        return LayerSpec(source.name, producer.op_type if producer else "Input",
                         producer.name if producer else "", _dims(source) or ())

    @staticmethod
    def _pooled_map(node: ir.Node) -> ir.Value | None:
        """The feature map a global pooling ``node`` averages, as CAMs read it: a map
        (N, C, h, w) channels first, or tokens (N, T, C); None when ``node`` pools none.
        Tokens moved channels first for the pooling (Transpose(0, 2, 1), maybe with a unit
        axis added: Hugging Face's Swin pools them with AdaptiveAvgPool1d) are read as the
        tokens; any other (N, C, L) is no map."""
        if Model._token_mean(node):
            return node.inputs[0]
        if not Model._is_global_pool(node) or not node.inputs or node.inputs[0] is None:
            return None
        x = node.inputs[0]
        producer = x.producer()
        if producer is not None and producer.op_type == "Unsqueeze" and len(_dims(x) or ()) == 4:
            axes = _reduce_axes(producer)  # an Unsqueeze's axes are read as a Reduce's
            if axes is not None and all(a % 4 >= 2 for a in axes) and producer.inputs[0] is not None:
                producer = producer.inputs[0].producer()
        if producer is not None and producer.op_type == "Transpose" and _perm(producer) == (0, 2, 1):
            return producer.inputs[0]
        if len(_dims(x) or ()) == 3:
            return None
        return _channels_first_source(x)

    @staticmethod
    def _is_global_pool(node: ir.Node) -> bool:
        return Model._global_pool_reduction(node) is not None

    @staticmethod
    def _global_pool_reduction(node: ir.Node) -> str | None:
        """How ``node`` reduces a 4-D map over both spatial axes: ``"mean"``, ``"sum"``,
        ``"max"``, ... or None when it is not a global pooling."""
        if node.op_type in _GLOBAL_POOLS:
            return {"GlobalAveragePool": "mean", "GlobalMaxPool": "max"}.get(node.op_type, "lp")
        if node.op_type in _SPATIAL_REDUCES and node.inputs:
            rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else 4
            axes = _reduce_axes(node)
            spatial = {1, 2} if _channels_first_source(node.inputs[0]) is not node.inputs[0] else {2, 3}
            if axes is None or rank != 4 or {a % 4 for a in axes} != spatial:
                return None
            return node.op_type[len("Reduce"):].lower()
        return None  # an AveragePool over the whole map is a GlobalAveragePool by now (canonical)

    @staticmethod
    def _token_mean(node: ir.Node) -> bool:
        """``node`` averages the tokens of a (N, tokens, C) tensor (MLP-Mixer, ResMLP,
        Twins, a ViT with average pooling)."""
        if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx") or not node.inputs:
            return False
        dims = _dims(node.inputs[0])
        axes = _reduce_axes(node)
        return dims is not None and len(dims) == 3 and axes is not None and {a % 3 for a in axes} == {1}

    def classifier_head(self) -> ClassifierHead | None:
        """The global-average-pooling classifier head, or None when the graph has none.

        Found where the explained scores (:meth:`logits`, else the output) are
        ``W · GAP(A) + b`` for a global average pooling (GlobalAveragePool, also an
        AveragePool over the whole map, or a mean over both spatial axes; or the mean over the
        tokens of a (N, tokens, C) tensor) and constants W, b: see :meth:`_linear_after` for
        what may lie between. When several qualify, the last one in the graph.
        """
        target = self._values.get(self.logits() or self.output_name)
        head = None
        for node in self.ir.graph:
            pools = self._global_pool_reduction(node) == "mean" or self._token_mean(node)
            if pools and node.inputs[0].name in self._values and target is not None:
                found = self._linear_after(node, target)
                if found is not None:
                    head = found
        return head

    def attention_gates(self) -> list:
        """The squeeze-and-excitation and CBAM gates of the graph, in topological order:
        a list of :class:`~onnxplain.core.attention.AttentionGate` (name, kind, gate and
        gated tensors). :mod:`onnxplain.core.attention` lists the patterns recognised."""
        from onnxplain.core.attention import find_attention_gates

        return find_attention_gates(self)

    def _linear_after(self, pool: ir.Node, target: ir.Value) -> ClassifierHead | None:
        """The head from ``pool`` to ``target`` (the explained logits), when ``target`` is an
        affine function of the pooled features alone (see :func:`_affine_step`): one linear
        layer, maybe with per-feature affine maps around it (LeViT's and EfficientViT's
        BatchNorm1d, a temperature), several heads on the same features summed or averaged
        (LeViT's, EfficientFormer's and SwiftFormer's distillation heads), or none (the pooled
        maps are the class scores, as in SqueezeNet). A monotone Sigmoid on the output is
        looked through, and a binary classifier's squeeze of its one score to (N,), before or
        after that Sigmoid. None when ``target`` also depends on anything else, or on the pooled
        features non-linearly (MobileNetV3's GAP → Linear → Hardswish → Linear)."""
        feature_map = self._pooled_map(pool)
        if feature_map is None:
            return None
        dims = _dims(feature_map) or (None, None)
        channels = dims[-1] if len(dims) == 3 else dims[1]  # tokens (N, T, C) or a map (N, C, h, w)
        features, rounded = pool.outputs[0], False
        while True:  # the pooled features as the head reads them (a Shape reads no values)
            consumers = [c for c in features.consumers() if c.op_type != "Shape"]
            if len(consumers) != 1 or consumers[0].inputs[0] is not features \
                    or consumers[0].op_type not in _SHAPE_ONLY | ROUNDING_OPS:
                break
            rounded |= consumers[0].op_type in ROUNDING_OPS
            features = consumers[0].outputs[0]
        k = channels if isinstance(channels, int) else _per_example(features)
        maps = {id(features): _Affine(None, np.zeros(1), rounded)}
        for node in self.ir.graph:  # topological order
            if node.outputs and any(v is not None and id(v) in maps for v in node.inputs):
                step = _affine_step(node, maps, k)
                if step is not None:
                    maps[id(node.outputs[0])] = step
        logits = target
        if id(target) not in maps:  # a Sigmoid on the scores, a single score squeezed (y[:, 0]), or both
            behind, sigmoid, reshaped = target, False, False
            while id(behind) not in maps and behind.producer() is not None:
                producer = behind.producer()
                if _keeps_the_elements(producer):
                    reshaped = True
                elif producer.op_type == "Sigmoid" and producer.domain in ("", "ai.onnx") and not sigmoid:
                    sigmoid = True
                else:
                    break
                behind = producer.inputs[0]
            if not reshaped or _per_example(behind) == 1:
                logits = behind
        found = maps.get(id(logits))
        weight = found.dense(k) if found is not None else None
        if weight is None or (isinstance(channels, int) and weight.shape[1] != channels):
            return None
        classes = weight.shape[0]
        if found.c.size not in (1, classes):
            return None
        bias = np.broadcast_to(found.c, (classes,)).copy() if found.c.any() else None
        return ClassifierHead(
            feature_map=feature_map.name, pool=pool.name or "", linear="+".join(found.linears),
            logits=logits.name, weight=weight, bias=bias, features=features.name, rounded=found.rounded,
        )

    def tail(self, tensor: str, outputs: Sequence[str] | None = None) -> Model:
        """The part of the graph after ``tensor``: a Model whose one input is ``tensor``
        and whose outputs are this model's outputs, or the tensors ``outputs`` (for
        re-running the head on modified feature maps, as Ablation-CAM does).

        Raises :class:`InputValidationError` when the layers after ``tensor`` also need
        tensors computed before it (a skip connection crosses it; see
        :meth:`tail_with_skips`).
        """
        self.check_tensors([tensor, *(outputs or ())])
        if tensor == self.input_name and outputs is None:
            return self
        from onnx_ir import convenience

        outputs = list(outputs) if outputs is not None else [o.name for o in self.outputs]
        try:
            graph = convenience.extract(self.ir.graph, [tensor], outputs)
        except ValueError as exc:
            # Exports with a dynamic batch read the batch size from the input (Shape(input)
            # → Range/Expand/Reshape after the layer); read it from `tensor` instead.
            graph = self._batch_from(tensor)
            if graph is not None:
                try:
                    graph = convenience.extract(graph, [tensor], outputs)
                except ValueError:
                    graph = None
            if graph is None:
                raise InputValidationError(
                    f"the graph after {tensor!r} also depends on tensors computed before it, so it "
                    f"cannot be re-run from {tensor!r} alone ({exc}); choose a layer that every "
                    "path to the output goes through, e.g. the input of the global pooling"
                ) from None
        sub = ir.Model(graph, ir_version=self.ir.ir_version, producer_name="onnxplain")
        return Model(sub, source=f"{self.source} after {tensor}",
                     custom_op_libraries=self.custom_op_libraries)

    def tail_with_skips(self, tensor: str, outputs: Sequence[str] | None = None) -> tuple[Model, list[str]]:
        """:meth:`tail`, also where skip connections cross ``tensor``: then the part after it
        takes the tensors computed before it that those connections carry past it, and the
        second item names them (``[]`` where none do, and the first item is :meth:`tail`'s).

        The returned model keeps one input: per example, ``tensor`` and then each carried
        tensor, flattened and concatenated (N, total), in that order. Ablation-CAM fills it
        with ablated copies of the layer beside the example's own carried tensors.
        """
        try:
            return self.tail(tensor, outputs), []
        except InputValidationError as exc:
            refused = exc
        outputs = list(outputs) if outputs is not None else [o.name for o in self.outputs]
        graph = self._batch_from(tensor) or self.ir.graph.clone()
        values = ir.convenience.create_value_mapping(graph, include_subgraphs=False)
        anchor = values[tensor]
        needed = _computed_by(values[o] for o in outputs)
        after, from_input = _computed_from([anchor]), _computed_from(graph.inputs)
        crossing: dict[int, ir.Value] = {}  # what the layers after `tensor` read from before it
        for node in graph:
            ins = [v for v in node.inputs if v is not None]
            if id(node) in needed and any(id(v) in after for v in ins):
                crossing.update((id(v), v) for v in ins if id(v) in from_input and id(v) not in after)
        carried = list(crossing.values())
        batch, dims = self.batch_dim, [_dims(v) for v in (anchor, *carried)]
        bad = [v.name for v, d in zip((anchor, *carried), dims) if v.dtype != anchor.dtype or not d
               or d[0] != batch or not all(isinstance(i, int) for i in d[1:])]
        if bad:
            raise InputValidationError(
                f"{refused}; the tensors it would also need, {bad}, are not {anchor.dtype} tensors of "
                "known shape with the batch first"
            ) from None
        names = [v.name for v in carried]
        sub = ir.convenience.extract(graph, [tensor, *names], outputs)
        packed = ir.Value(name=f"{tensor}+carried", type=ir.TensorType(anchor.dtype),
                          shape=ir.Shape([batch, sum(int(np.prod(d[1:])) for d in dims)]))
        made, start = [], 0
        for value, d in zip(list(sub.inputs), dims):
            size = int(np.prod(d[1:]))
            consts = [ir.node("Constant", [], attributes={"value": ir.tensor(np.array(c, np.int64))})
                      for c in ([start], [start + size], [1], [-1, *d[1:]])]
            cut = ir.node("Slice", [packed, *(c.outputs[0] for c in consts[:3])])
            shaped = ir.node("Reshape", [cut.outputs[0], consts[3].outputs[0]])
            made += [*consts, cut, shaped]
            ir.convenience.replace_all_uses_with(value, shaped.outputs[0])
            start += size
        sub.inputs.clear()
        sub.inputs.append(packed)
        sub.insert_before(sub[0], made)
        sub.sort()
        model = ir.Model(sub, ir_version=self.ir.ir_version, producer_name="onnxplain")
        return Model(model, source=f"{self.source} after {tensor} with {len(names)} carried tensor(s)",
                     custom_op_libraries=self.custom_op_libraries), names

    def _batch_from(self, tensor: str) -> ir.Graph | None:
        """A copy of the graph in which every ``Shape`` of a (batch, fixed dims...) tensor is
        built from ``tensor``'s batch size and those fixed dims, so that the layers after
        ``tensor`` no longer reach back for the batch size; None when nothing was rewritten
        or ``tensor`` itself has no leading batch dim."""
        batch = self.batch_dim
        target = _dims(self._values[tensor])
        if not isinstance(batch, str) or not target or target[0] != batch:
            return None
        graph = self.ir.graph.clone()
        values = ir.convenience.create_value_mapping(graph, include_subgraphs=False)
        anchor = values[tensor]
        before = _computed_by([anchor])  # these keep reading the input's batch size
        rewritten = False
        for node in list(graph):
            picked = batch_shape(node, batch)
            if picked is None or node.inputs[0] is anchor or id(node) in before:
                continue
            dims = _dims(node.inputs[0]) or ()
            made = []
            if picked and picked[0] == 0:
                made.append(ir.node("Shape", [anchor], attributes={"start": 0, "end": 1}))
            if [i for i in picked if i]:
                fixed = np.array([dims[i] for i in picked if i], dtype=np.int64)
                made.append(ir.node("Constant", [], attributes={"value": ir.tensor(fixed)}))
            if not made:
                continue
            if len(made) == 2:
                made.append(ir.node("Concat", [m.outputs[0] for m in made], attributes={"axis": 0}))
            if anchor.producer() is not None:
                graph.insert_after(anchor.producer(), made)
            else:
                graph.insert_before(graph[0], made)
            ir.convenience.replace_all_uses_with(node.outputs[0], made[-1].outputs[0])
            rewritten = True
        if not rewritten:
            return None
        graph.sort()
        return graph

    # -- serialisation -----------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the canonical model, with its metadata, to ``path``.

        The metadata records the user's layout (``onnxplain.layout``), that the graph input
        is already channels first (``onnxplain.graph_layout``), the :attr:`preprocess`
        spec (``onnxplain.preprocess``, JSON) and :attr:`converted_from`
        (``onnxplain.converted_from``), so ``onnxplain.load(path)`` gives back the same model.
        Weights go to ``<path>.data`` beside it when the model exceeds 1.5 GiB.
        """
        path = Path(path)
        proto = ir.to_proto(self.ir if self.runtime_ir is None else self.runtime_ir)
        props = {p.key: p.value for p in proto.metadata_props}
        props.update(save_metadata(self))
        del proto.metadata_props[:]
        for key, value in props.items():
            proto.metadata_props.add(key=key, value=value)
        if proto.ByteSize() > 1536 * 1024**2:
            onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                      location=path.name + ".data")
        else:
            onnx.save(proto, str(path))
        return path

    def proto(self) -> onnx.ModelProto:
        """The canonical model as an ``onnx.ModelProto`` (a fresh copy; for a quantized model,
        its float simulation)."""
        return onnx.load_from_string(self.serialized(simulated=True))

    @property
    def quantized(self) -> bool:
        """Whether the model is quantized (then ``ir`` is its float simulation)."""
        return self.runtime_ir is not None

    def serialized(self, extra_outputs: Sequence[str] = (), simulated: bool = False) -> bytes:
        """The canonical model as bytes, with intermediate tensors added as outputs.

        A quantized model is the graph as written, unless ``simulated`` or an extra output
        exists only in the simulation."""
        runtime = self.runtime_ir is not None and not simulated and all(
            name in self._runtime_values for name in extra_outputs)
        key = (runtime, *extra_outputs)
        with self._lock:
            data = self._serialized.get(key)
            if data is not None:
                return data
            proto = ir.to_proto(self.runtime_ir if runtime else self.ir)
            for name in extra_outputs:
                v = self._values[name]
                elem = v.dtype.value if v.dtype is not None else onnx.TensorProto.FLOAT
                proto.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
            data = proto.SerializeToString()
            self._serialized[key] = data
            return data

    # -- backends ----------------------------------------------------------------------
    def backend(self, name: str | Backend = "onnxruntime", **options: Any) -> Backend:
        """The backend ``name`` for this model, created once per name and options."""
        from onnxplain.backends import registry
        from onnxplain.backends.base import Backend

        if isinstance(name, Backend):
            return name
        key = (name, tuple(sorted((k, repr(v)) for k, v in options.items())))
        with self._lock:
            be = self._backends.get(key)
            if be is None:
                be = registry.create(name, self, **options)
                self._backends[key] = be
            return be

    def backend_for(
        self, needs: frozenset[Capability], backend: str | Backend = "auto", what: str = "this method",
        **options: Any,
    ) -> Backend:
        """The backend a method with ``needs`` runs on: ``"auto"`` picks the first fit."""
        from onnxplain.backends import registry
        from onnxplain.backends.base import Backend

        if isinstance(backend, Backend):
            backend.require(needs, what)
            return backend
        if backend == "auto":
            names = registry.choose(needs)
            return self.backend(names[0], **options)
        if not isinstance(backend, str):
            raise InputValidationError(f"backend must be a name or a Backend, got {backend!r}")
        registry.entry(backend)  # clear error for unknown names
        be = self.backend(backend, **options)
        be.require(needs, what)
        return be

    def predict(self, x: np.ndarray, batch_size: int | None = None, device: str | None = None) -> np.ndarray:
        """The model output for ``x`` (N, ...) in the model's layout, on ONNX Runtime
        (``device``: as the backend's; by default its ``"auto"``)."""
        from onnxplain.core.validation import check_input

        x = check_input(self, self.to_internal(x))
        be = self.backend("onnxruntime") if device is None else self.backend("onnxruntime", device=device)
        if batch_size is None:
            return be.predict(x)
        return np.concatenate([be.predict(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
