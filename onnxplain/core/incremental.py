"""Incremental inference for occlusion-style perturbations: graph analysis and planning.

Occlusion and feature ablation evaluate many copies of ``x`` that differ from it only
inside a small box. In a CNN, a change inside an input box changes only a bounded region
of each early feature map, so (Nakandala, Kumar & Papakonstantinou, "Incremental and
Approximate Inference for Faster Occlusion-based Deep CNN Explanations", SIGMOD 2019 —
Krypton) most of each forward pass recomputes values that the perturbation cannot
reach. This module finds where that can be exploited *exactly* over the ONNX graph:

- the **head**: the nodes from the input to a cut tensor ``T`` that are all spatially
  local (Conv, pools, BatchNormalization, element-wise ops with per-channel constants,
  channel Concat, Transpose), so that position ``j`` of every head tensor depends on the
  input interval ``[j·S + O, j·S + O + R)`` per spatial axis (``S`` the cumulative
  stride, ``O`` the offset, negative from padding, ``R`` the receptive field including
  padded positions). Through a convolution or pooling of kernel ``k``, stride ``s``,
  dilation ``d`` and leading padding ``p``:

      S' = S·s,    O' = O − p·S,    R' = R + d·(k − 1)·S;

  element-wise ops of two head tensors take the hull of their intervals (equal ``S``).
- the **tail**: the rest of the graph, which depends on the input through ``T`` only
  (:meth:`onnxplain.Model.tail`).

For a box ``[u, v)`` on an axis, the affected positions of ``T`` are the ``j`` whose
interval meets the box; the head re-runs on the input crop that covers their intervals
(clamped to the image, its start a multiple of ``S`` so that the crop's grid coincides
with the full one at every head layer), the affected positions are pasted into ``T(x)``
and the tail runs on the result. Positions spoiled by the crop's interior edges are never
used, and where the crop meets the image border the head's own padding is the model's,
so the scores equal the full pass up to float rounding.

As in Krypton, the head is split further into **stages** at intermediate cuts
``T_1, …, T_k = T``: stage ``i`` re-runs on a crop of ``T_{i−1}(x)`` (the cached
unperturbed tensor with the positions the box changed written over it) that covers the
positions of ``T_i`` the box changes, so each layer recomputes about the region the box
reaches there instead of the whole receptive field of ``T``. Unchanged positions are the
cached values exactly (their receptive field misses the box), so the chain is as exact
as one cut.

:func:`plan` chooses the chain by estimated cost (FLOPs from shape inference; per stage
its FLOPs × crop area / source area, plus a fixed overhead; then the tail's FLOPs and the
copy of ``T``), the cheapest by dynamic programming over the cuts in topological order,
and returns None where incremental evaluation would not pay (no local prefix, boxes
covering about everything): the caller then makes full passes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxplain.core.canonical import same_pads
from onnxplain.core.model import batch_shape

if TYPE_CHECKING:
    from onnxplain.core.model import Model

logger = logging.getLogger(__name__)

#: Element-wise ops with one spatial input (other inputs, if any, constants).
UNARY = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "PRelu",
        "Clip",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Elu",
        "Selu",
        "Celu",
        "Softplus",
        "Softsign",
        "Erf",
        "Gelu",
        "Identity",
        "Cast",
        "Neg",
        "Abs",
        "Sqrt",
        "Exp",
        "Log",
        "Reciprocal",
        "Floor",
        "Ceil",
        "Round",
        "Sign",
        "Sin",
        "Cos",
        "Mish",
        "ThresholdedRelu",
        "Dropout",
        "BatchNormalization",
        "LRN",
        "Not",
        "IsNaN",
        "IsInf",
    }
)
#: Element-wise ops with several inputs, each a head tensor or a constant.
NARY = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Max",
        "Min",
        "Pow",
        "Sum",
        "Mean",
        "Where",
        "Equal",
        "Greater",
        "Less",
        "GreaterOrEqual",
        "LessOrEqual",
        "And",
        "Or",
        "Xor",
        "Mod",
    }
)
POOLS = frozenset({"MaxPool", "AveragePool", "LpPool"})
#: Keep incremental evaluation only when it costs less than this share of a full pass.
GAIN = 0.8
_MAX_PLANS = 8


@dataclass(frozen=True)
class Axis:
    """The input interval ``[j·stride + offset, j·stride + offset + size)`` of position ``j``."""

    stride: int
    offset: int
    size: int

    def affected(self, u: Any, v: Any, length: int) -> tuple[Any, Any]:
        """The positions ``[lo, hi)`` (of ``length``) whose interval meets ``[u, v)``
        (scalars or arrays; ``hi == lo`` when none)."""
        lo = np.maximum(0, (np.asarray(u) - self.offset - self.size) // self.stride + 1)
        hi = np.minimum(length, -((self.offset - np.asarray(v)) // self.stride))  # ceil((v − O) / S)
        return lo, np.maximum(lo, hi)

    def cover(self, lo: Any, hi: Any, dim: int) -> tuple[Any, Any]:
        """The input range covering the intervals of positions ``[lo, hi)``, clamped to
        ``[0, dim)``, its start rounded down to a multiple of the stride."""
        a = np.maximum(0, np.asarray(lo) * self.stride + self.offset)
        b = np.minimum(dim, (np.asarray(hi) - 1) * self.stride + self.offset + self.size)
        return a - a % self.stride, b


@dataclass(frozen=True)
class Geometry:
    """Where a tensor keeps its axes (``axes``: positions of N, C, H, W) and the
    interval of each spatial axis (relative to some source tensor)."""

    axes: tuple[int, int, int, int]
    h: Axis
    w: Axis


IDENTITY = Geometry((0, 1, 2, 3), Axis(1, 0, 1), Axis(1, 0, 1))


@dataclass
class Candidate:
    """A cut tensor that every path from the input to the outputs goes through, with a
    local prefix: its geometry (relative to the input), shape (batch 1, its own layout),
    the nodes it depends on and the FLOPs of the nodes after it."""

    name: str
    geometry: Geometry
    shape: tuple[int, ...]
    ancestors: frozenset[int] = field(repr=False)
    tail_flops: float = 0.0

    def spatial(self) -> tuple[int, int]:
        return self.shape[self.geometry.axes[2]], self.shape[self.geometry.axes[3]]


@dataclass
class Stage:
    """Part of the head: from ``source`` (the input or a cut) to the cut ``target``.
    ``relative``: the target's geometry relative to the source; ``source_geometry`` and
    ``target_geometry``: relative to the model input (where a box changes them)."""

    source: str
    target: str
    relative: Geometry
    source_geometry: Geometry
    target_geometry: Geometry
    source_shape: tuple[int, ...]
    target_shape: tuple[int, ...]
    model: Model | None = field(default=None, repr=False)

    def windows(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For input boxes (B, 4: h0, h1, w0, w1): the target positions they change
        (B, 4: lo/hi per axis) and the source crop to compute them from (B, 4), widened
        to a common size (see :func:`crop_lengths`)."""
        pos, crop = [], []
        for i, (absolute, rel) in enumerate(
            ((self.target_geometry.h, self.relative.h), (self.target_geometry.w, self.relative.w))
        ):
            length = self.target_shape[self.target_geometry.axes[2 + i]]
            dim = self.source_shape[self.source_geometry.axes[2 + i]]
            lo, hi = absolute.affected(boxes[:, 2 * i], boxes[:, 2 * i + 1], length)
            empty = (boxes[:, 1] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 2])
            hi = np.where(empty, lo, hi)  # an empty box changes nothing
            pos.append(np.stack([lo, hi], axis=1))
            crop.append(crop_lengths(rel, lo, hi, dim))
        return np.concatenate(pos, axis=1), np.concatenate(crop, axis=1)


@dataclass
class Analysis:
    """The graph analysis of one model at one input size (see :func:`analyse`)."""

    size: tuple[int, int]
    total_flops: float
    candidates: list[Candidate]
    geometry: dict[str, Geometry]
    why: str = ""
    nodes: list[ir.Node] = field(default_factory=list, repr=False)
    flops: list[float] = field(default_factory=list, repr=False)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    _relative: dict[str, dict[str, Geometry]] = field(default_factory=dict, repr=False)

    def relative(self, source: str) -> dict[str, Geometry]:
        """The geometry of every tensor that depends on ``source`` locally, relative to it."""
        found = self._relative.get(source)
        if found is None:
            axes = self.geometry[source].axes if source in self.geometry else IDENTITY.axes
            found = _propagate(self.nodes, source, Geometry(axes, IDENTITY.h, IDENTITY.w), self.shapes)
            self._relative[source] = found
        return found


@dataclass
class Plan:
    """A chosen chain of cuts: the stages from the input to the last cut (sub-models
    with dynamic spatial dims) and the tail after it, with the estimated costs."""

    stages: list[Stage]
    tail: Model
    cost: float
    full_cost: float

    @property
    def tensor(self) -> str:
        """The last cut, which the tail runs from."""
        return self.stages[-1].target

    @property
    def geometry(self) -> Geometry:
        return self.stages[-1].target_geometry

    @property
    def shape(self) -> tuple[int, ...]:
        return self.stages[-1].target_shape


def _ints(node: ir.Node, name: str, default: Sequence[int] | None) -> list[int] | None:
    attr = node.attributes.get(name)
    if attr is None:
        return None if default is None else list(default)
    return list(attr.as_ints())


def _int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else int(attr.as_int())


def _string(node: ir.Node, name: str, default: str) -> str:
    attr = node.attributes.get(name)
    return default if attr is None else str(attr.as_string())


def _window(
    node: ir.Node, shapes: dict[str, tuple[int, ...]]
) -> tuple[list[int], list[int], list[int], list[int]] | None:
    """Kernel, strides, dilations and pads (h0, w0, h1, w1) of a 2-D Conv or pool, or None.
    ``auto_pad="SAME_*"`` becomes the explicit pads it means at the input's full size
    (:func:`sub_model` writes them into the stage, so crops keep the full grid)."""
    if node.op_type == "Conv":
        if len(node.inputs) < 2 or node.inputs[1] is None:
            return None
        kernel = _ints(node, "kernel_shape", None)
        if kernel is None:
            w = shapes.get(node.inputs[1].name)
            kernel = list(w[2:]) if w is not None else None
    else:
        kernel = _ints(node, "kernel_shape", None)
    if kernel is None or len(kernel) != 2:
        return None
    strides = _ints(node, "strides", (1, 1)) or [1, 1]
    dilations = _ints(node, "dilations", (1, 1)) or [1, 1]
    pads = _ints(node, "pads", (0, 0, 0, 0)) or [0, 0, 0, 0]
    auto = _string(node, "auto_pad", "NOTSET")
    if auto == "VALID":
        pads = [0, 0, 0, 0]
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        x = shapes.get(node.inputs[0].name)
        if x is None or len(x) != 4:
            return None
        pads = same_pads(x[2:], kernel, strides, dilations, upper=auto == "SAME_UPPER")
    elif auto != "NOTSET":
        return None
    if len(pads) != 4 or min(pads) < 0:
        return None
    return kernel, strides, dilations, pads


def _pad_geometry(node: ir.Node, first: Geometry, shapes: dict[str, tuple[int, ...]]) -> Geometry | None:
    """A constant ``Pad`` of the spatial axes only: the grid moves by the leading pad."""
    if _string(node, "mode", "constant") != "constant":
        return None
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        return None  # axes given: rare; not worth the bookkeeping
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        const = node.inputs[1].const_value
        pads = const.numpy().tolist() if const is not None else None
    else:
        pads = _ints(node, "pads", None)
    if pads is None or len(pads) != 8:
        return None
    for axis in (first.axes[0], first.axes[1]):
        if pads[axis] != 0 or pads[axis + 4] != 0:
            return None
    if min(pads) < 0:
        return None
    ph, pw = pads[first.axes[2]], pads[first.axes[3]]
    return Geometry(
        first.axes,
        Axis(first.h.stride, first.h.offset - ph * first.h.stride, first.h.size),
        Axis(first.w.stride, first.w.offset - pw * first.w.stride, first.w.size),
    )


def _spatial_ones(shape: tuple[int, ...] | None, geometry: Geometry, rank: int) -> bool:
    """Whether a constant of ``shape``, broadcast against a rank-``rank`` head tensor, has
    size 1 on the head tensor's spatial axes."""
    if shape is None:
        return False
    if len(shape) > rank:
        return False
    aligned = (1,) * (rank - len(shape)) + tuple(shape)
    return (
        aligned[geometry.axes[2]] == 1 and aligned[geometry.axes[3]] == 1 and aligned[geometry.axes[0]] == 1
    )


def _node_geometry(
    node: ir.Node, geometry: dict[str, Geometry], dep: set[str], shapes: dict[str, tuple[int, ...]]
) -> Geometry | None:
    """The geometry of ``node``'s output, or None when the node is not spatially local."""
    if node.domain not in ("", "ai.onnx") or not node.outputs or not node.outputs[0].name:
        return None
    if any(list(v.consumers()) or v.is_graph_output() for v in node.outputs[1:]):
        return None  # e.g. MaxPool's indices, BatchNormalization's training statistics
    inputs = [v for v in node.inputs if v is not None]
    spatial = [v for v in inputs if v.name in dep]
    if not spatial or any(v.name not in geometry for v in spatial):
        return None
    first = geometry[spatial[0].name]
    out_shape = shapes.get(node.outputs[0].name)
    rank = len(out_shape) if out_shape is not None else 4
    op = node.op_type
    if op in UNARY:
        if len(spatial) != 1 or spatial[0] is not node.inputs[0]:
            return None
        if op in ("BatchNormalization", "LRN") and first.axes[1] != 1:
            return None
        for v in inputs[1:]:  # PRelu's slope, Clip's bounds, BatchNorm's statistics
            if op == "BatchNormalization":
                continue
            if not _spatial_ones(shapes.get(v.name), first, rank):
                return None
        return first
    if op in NARY:
        geos = [geometry[v.name] for v in spatial]
        if any(g.axes != first.axes for g in geos):
            return None
        for v in inputs:
            if v.name not in dep and not _spatial_ones(shapes.get(v.name), first, rank):
                return None
        for v in spatial:  # no broadcasting along a spatial axis
            shape = shapes.get(v.name)
            if (
                shape is None
                or out_shape is None
                or len(shape) != rank
                or any(shape[first.axes[i]] != out_shape[first.axes[i]] for i in (2, 3))
            ):
                return None
        return _hull(geos)
    if op == "Concat":
        geos = [geometry[v.name] for v in spatial]
        if len(spatial) != len(inputs) or any(g.axes != first.axes for g in geos):
            return None
        axis = _int(node, "axis", 1) % rank
        if axis != first.axes[1]:
            return None
        return _hull(geos)
    if op in ("LayerNormalization", "MatMul"):
        # over the channel axis only, when it is the last one (a ConvNeXt block's LayerNorm
        # and pointwise Linear layers between its permutes): one position at a time
        if len(spatial) != 1 or spatial[0] is not node.inputs[0] or first.axes[1] != rank - 1:
            return None
        if op == "LayerNormalization":
            if _int(node, "axis", -1) % rank != rank - 1:
                return None
            return first
        weight = shapes.get(inputs[1].name) if len(inputs) == 2 else None
        if weight is None or len(weight) != 2 or inputs[1].name in dep:  # a weight, not a feature map
            return None
        return first
    if op == "Transpose":
        perm = _ints(node, "perm", None)
        if perm is None or len(perm) != 4:
            return None
        axes = tuple(perm.index(a) for a in first.axes)
        if axes[0] != 0:
            return None
        return Geometry(axes, first.h, first.w)  # type: ignore[arg-type]
    if op == "Pad":
        if len(spatial) != 1 or spatial[0] is not node.inputs[0]:
            return None
        return _pad_geometry(node, first, shapes)
    if op == "Conv" or op in POOLS:
        if first.axes != (0, 1, 2, 3) or spatial[0] is not node.inputs[0] or len(spatial) != 1:
            return None
        window = _window(node, shapes)
        if window is None:
            return None
        kernel, strides, dilations, pads = window
        axes_geo = []
        pads = pads[:2]
        for g, k, s, d, p in zip((first.h, first.w), kernel, strides, dilations, pads):
            axes_geo.append(Axis(g.stride * s, g.offset - p * g.stride, g.size + d * (k - 1) * g.stride))
        return Geometry((0, 1, 2, 3), axes_geo[0], axes_geo[1])
    return None


def _hull(geos: list[Geometry]) -> Geometry | None:
    out = []
    for pick in (lambda g: g.h, lambda g: g.w):
        axes = [pick(g) for g in geos]
        if len({a.stride for a in axes}) != 1:
            return None
        lo = min(a.offset for a in axes)
        hi = max(a.offset + a.size for a in axes)
        out.append(Axis(axes[0].stride, lo, hi - lo))
    return Geometry(geos[0].axes, out[0], out[1])


def _shapes(model: Model, size: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor at batch 1 and input ``size`` (onnx shape inference)."""
    proto = model.proto()
    del proto.graph.value_info[:]
    for vi in proto.graph.input:
        if vi.name == model.input_name:
            dims = vi.type.tensor_type.shape.dim
            if len(dims) == 4:
                for d, value in zip(dims, (1, None, *size)):
                    if value is not None:
                        d.Clear()
                        d.dim_value = value
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - analysis is optional
        logger.debug("incremental: shape inference failed: %s", exc)
        inferred = proto
    out: dict[str, tuple[int, ...]] = {}
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            out[vi.name] = tuple(int(d.dim_value) for d in t.shape.dim)
    for init in g.initializer:
        out[init.name] = tuple(int(d) for d in init.dims)
    for node in model.ir.graph:  # constants the IR knows (e.g. lifted initializers)
        for v in node.inputs:
            if v is not None and v.name not in out and v.const_value is not None:
                out[v.name] = tuple(int(d) for d in v.const_value.shape)
    for v in model.ir.graph.initializers.values():
        if v.name not in out and v.const_value is not None:
            out[v.name] = tuple(int(d) for d in v.const_value.shape)
    return out


def node_flops(node: ir.Node, shapes: dict[str, tuple[int, ...]]) -> float:
    """A rough cost of ``node`` at batch 1: multiply-adds ×2 for Conv/Gemm/MatMul, the
    output's element count otherwise."""
    out = shapes.get(node.outputs[0].name) if node.outputs and node.outputs[0].name else None
    numel = float(np.prod(out)) if out is not None else 0.0
    op = node.op_type
    if op in ("Conv", "ConvTranspose") and len(node.inputs) > 1 and node.inputs[1] is not None:
        w = shapes.get(node.inputs[1].name)
        if w is not None:
            if op == "Conv":
                return 2.0 * numel * float(np.prod(w[1:]))
            x = shapes.get(node.inputs[0].name)
            return 2.0 * float(np.prod(x)) * float(np.prod(w[1:])) if x is not None else numel
    if op in ("Gemm", "MatMul") and node.inputs[0] is not None:
        a = shapes.get(node.inputs[0].name)
        if a is not None:
            k = a[0] if op == "Gemm" and _int(node, "transA", 0) else a[-1]
            return 2.0 * numel * float(k)
    return numel


def _ancestors(
    inputs: Sequence[Sequence[str]], producer: dict[str, int], name: str, stop: str | None = None
) -> frozenset[int]:
    """The nodes (indices; ``inputs[i]``: node i's input names) that ``name`` is computed
    by, back to the graph inputs or to ``stop``."""
    seen: set[int] = set()
    stack = [name]
    done: set[str] = set() if stop is None else {stop}
    while stack:
        t = stack.pop()
        if t in done:
            continue
        done.add(t)
        i = producer.get(t)
        if i is None or i in seen:
            continue
        seen.add(i)
        stack.extend(inputs[i])
    return frozenset(seen)


def _tail_nodes(
    nodes: list[ir.Node],
    producer: dict[str, int],
    outputs: list[str],
    cut: str,
    source: str,
    batch_only: frozenset[int] = frozenset(),
) -> list[int] | None:
    """The nodes the outputs need when ``cut`` is given, or None when they also need
    ``source`` by another path. ``batch_only``: nodes that read only the batch size and
    fixed dims (:func:`onnxplain.core.model.batch_shape`), which :meth:`Model.tail`
    reads from the cut instead: the path through them does not count."""
    seen: set[int] = set()
    stack = list(outputs)
    done: set[str] = set()
    while stack:
        t = stack.pop()
        if t in done or t == cut:
            continue
        done.add(t)
        if t == source:
            return None
        i = producer.get(t)
        if i is None or i in seen:
            continue
        seen.add(i)
        if i not in batch_only:
            stack.extend(v.name for v in nodes[i].inputs if v is not None and v.name)
    return sorted(seen)


def _propagate(
    nodes: list[ir.Node], source: str, start: Geometry, shapes: dict[str, tuple[int, ...]]
) -> dict[str, Geometry]:
    """The geometry, relative to ``source``, of every tensor computed from it by local ops."""
    dep = {source}
    geometry = {source: start}
    for node in nodes:
        if not any(v is not None and v.name in dep for v in node.inputs):
            continue
        dep.update(v.name for v in node.outputs if v.name)
        geo = _node_geometry(node, geometry, dep, shapes)
        if geo is not None:
            geometry[node.outputs[0].name] = geo
    return geometry


def analyse(model: Model, size: tuple[int, int]) -> Analysis:
    """The geometry of every local tensor and the valid cuts of ``model`` at input ``size``
    (H, W), with the FLOPs of each node."""
    shapes = _shapes(model, size)
    nodes = list(model.ir.graph)
    source = model.input_name
    geometry = _propagate(nodes, source, IDENTITY, shapes)
    flops = [node_flops(n, shapes) for n in nodes]
    total = float(sum(flops))
    producer = {v.name: i for i, n in enumerate(nodes) for v in n.outputs if v.name}
    names = [[v.name for v in n.inputs if v is not None and v.name] for n in nodes]
    outputs = [o.name for o in model.outputs]
    batch_only = frozenset(i for i, n in enumerate(nodes) if batch_shape(n, model.batch_dim) is not None)
    candidates = []
    for name, geo in geometry.items():
        shape = shapes.get(name)
        if name == source or shape is None or len(shape) != 4 or name in outputs or geo.axes[0] != 0:
            continue
        if shape[geo.axes[2]] < 2 and shape[geo.axes[3]] < 2:
            continue
        consumers = list(model._values[name].consumers()) if name in model._values else []
        if (
            len(consumers) == 1
            and consumers[0].op_type in UNARY | {"Transpose"}
            and consumers[0].outputs[0].name in geometry
        ):
            continue  # the element-wise op's output is as good a cut
        tail = _tail_nodes(nodes, producer, outputs, name, source, batch_only)
        if tail is None:
            continue
        candidates.append(
            Candidate(name, geo, shape, _ancestors(names, producer, name), float(sum(flops[i] for i in tail)))
        )
    candidates.sort(key=lambda c: max(c.ancestors, default=-1))
    why = "" if candidates else "no tensor that every path goes through has a spatially local prefix"
    return Analysis(size, total, candidates, geometry, why, nodes, flops, shapes)


def crop_lengths(axis: Axis, lo: np.ndarray, hi: np.ndarray, dim: int) -> np.ndarray:
    """Source crops (B, 2) that compute positions ``[lo, hi)`` (arrays (B,)) of a tensor
    whose intervals on a source axis of size ``dim`` are ``axis``; (0, 0) where hi == lo.

    Each crop covers its positions' intervals with a start aligned to the stride; then all
    are widened to one length ``L`` (the longest, rounded up so that ``dim − L`` is a
    multiple of the stride): towards the axis end, or, where that would pass it, as the
    aligned crop ``[dim − L, dim)``. So all crops have the same size and run as one batch."""
    lo, hi = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
    empty = hi <= lo
    a, b = axis.cover(lo, np.maximum(hi, lo + 1), dim)
    a, b = np.where(empty, 0, a), np.where(empty, 0, b)
    common = int((b - a).max()) if len(a) else 0
    if common <= 0:
        return np.zeros((len(lo), 2), dtype=np.int64)
    common += (dim - common) % axis.stride
    late = a + common > dim
    start = np.where(late, dim - common, a)
    stop = start + common
    start[empty], stop[empty] = 0, 0
    return np.stack([start, stop], axis=1)


#: A fixed cost per stage and perturbation (backend calls, copies), in FLOPs.
STAGE_OVERHEAD = 1e6


def _stage(found: Analysis, source: str, target: Candidate) -> Stage | None:
    rel = found.relative(source).get(target.name)
    if rel is None:
        return None
    src_geo = found.geometry.get(source, IDENTITY)
    src_shape = found.shapes.get(source)
    if src_shape is None or len(src_shape) != 4:
        return None
    return Stage(source, target.name, rel, src_geo, target.geometry, src_shape, target.shape)


def stage_cost(found: Analysis, stage: Stage, flops: float, boxes: np.ndarray) -> float:
    """The estimated cost per box of a stage: its FLOPs × the mean crop area / the source
    area, plus copying the crops and a fixed overhead."""
    _, crop = stage.windows(boxes)
    area = (crop[:, 1] - crop[:, 0]) * (crop[:, 3] - crop[:, 2])
    geo, shape = stage.source_geometry, stage.source_shape
    full = shape[geo.axes[2]] * shape[geo.axes[3]]
    channels = shape[geo.axes[1]]
    mean = float(area.mean()) if len(area) else 0.0
    return flops * mean / max(full, 1) + channels * mean + STAGE_OVERHEAD


def choose(found: Analysis, boxes: np.ndarray, source: str) -> tuple[list[Stage], float] | None:
    """The cheapest chain of stages from ``source`` (the model input) through cuts, and its
    estimated cost per box (stages + tail + the copy of the last cut)."""
    by_name = {c.name: c for c in found.candidates}
    order = [source, *by_name]
    best: dict[str, tuple[float, list[Stage]]] = {source: (0.0, [])}
    ancestors = {source: frozenset(), **{c.name: c.ancestors for c in found.candidates}}
    for j, name in enumerate(order[1:], start=1):
        target = by_name[name]
        for prev in order[:j]:
            if prev not in best:
                continue
            stage = _stage(found, prev, target)
            if stage is None:
                continue
            flops = float(sum(found.flops[i] for i in target.ancestors - ancestors[prev]))
            cost = best[prev][0] + stage_cost(found, stage, flops, boxes)
            if name not in best or cost < best[name][0]:
                best[name] = (cost, [*best[prev][1], stage])
    options = [
        (cost + by_name[n].tail_flops + float(np.prod(by_name[n].shape)), stages)
        for n, (cost, stages) in best.items()
        if n != source
    ]
    if not options:
        return None
    cost, stages = min(options, key=lambda o: o[0])
    return stages, cost


def _cache(model: Model) -> dict:
    return model._incremental


def _remember(cache: dict, key: tuple, make: Any, limit: int) -> Any:
    """``cache[key]``, made by ``make()`` when missing; of the keys of ``key[0]``'s kind,
    the oldest go beyond ``limit``."""
    if key in cache:
        return cache[key]
    value = cache[key] = make()
    same = [k for k in cache if k[0] == key[0]]
    while len(same) > limit:
        cache.pop(same.pop(0))
    return value


def analysis(model: Model, size: tuple[int, int]) -> Analysis:
    """:func:`analyse`, cached on the model per input size."""
    cache = _cache(model)
    with model._lock:
        key = ("analysis", tuple(size))
        found = cache.get(key)
        if found is None:
            found = cache[key] = analyse(model, tuple(size))
            sizes = [k for k in cache if k[0] == "analysis"]
            while len(sizes) > _MAX_PLANS:
                cache.pop(sizes.pop(0))
        return found


def sub_model(
    model: Model,
    source: str,
    target: str,
    channel_axis: int = 1,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> Model:
    """The sub-model that computes ``target`` from ``source`` (the input or a cut whose
    channels are on ``channel_axis``), with symbolic batch and spatial dims on its input
    and no intermediate shapes, so that it runs on crops. ``shapes``: the full-size
    shapes (:class:`Analysis`), which turn ``auto_pad="SAME_*"`` into explicit pads."""
    from onnxplain.core.model import Model as _Model

    proto = model.proto()
    g = proto.graph
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    keep = _ancestors([[x for x in n.input if x] for n in g.node], producer, target, stop=source)
    nodes = [g.node[i] for i in sorted(keep)]
    explicit = {}
    for node in model.ir.graph:  # auto_pad SAME_* as the explicit pads it means at full size
        if node.op_type in ("Conv", *POOLS) and _string(node, "auto_pad", "NOTSET").startswith("SAME"):
            window = _window(node, shapes or {})
            if window is not None and node.outputs[0].name:
                explicit[node.outputs[0].name] = window[3]
    for i, n in enumerate(nodes):
        if n.output and n.output[0] in explicit:
            n = nodes[i] = onnx.NodeProto.FromString(n.SerializeToString())
            attrs = [a for a in n.attribute if a.name not in ("auto_pad", "pads")]
            del n.attribute[:]
            n.attribute.extend([*attrs, onnx.helper.make_attribute("pads", explicit[n.output[0]])])
    used = {x for n in nodes for x in n.input}
    inits = [t for t in g.initializer if t.name in used]
    value = model._values[source]
    elem = value.dtype.value if value.dtype is not None else onnx.TensorProto.FLOAT
    dims = [d if isinstance(d, int) else None for d in (model.tensor_shape(source) or (None,) * 4)]
    shape: list[int | str] = ["N", "D1", "D2", "D3"]
    if len(dims) == 4 and isinstance(dims[channel_axis], int):
        shape[channel_axis] = dims[channel_axis]  # the channel count stays fixed
    inp = onnx.helper.make_tensor_value_info(source, elem, shape)
    t_value = model._values[target]
    t_elem = t_value.dtype.value if t_value.dtype is not None else elem
    out = onnx.helper.make_tensor_value_info(target, t_elem, None)
    graph = onnx.helper.make_graph(nodes, "onnxplain_stage", [inp], [out], initializer=inits)
    sub = onnx.helper.make_model(graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    return _Model(
        ir.from_proto(sub),
        source=f"{model.source} from {source} to {target}",
        custom_op_libraries=model.custom_op_libraries,
    )


def plan(model: Model, size: tuple[int, int], boxes: np.ndarray, gain: float | None = None) -> Plan | None:
    """The cheapest chain of cuts for evaluating ``boxes`` (B, 4: h0, h1, w0, w1, input
    coordinates, end exclusive) on inputs of ``size`` (H, W), or None when it is not
    estimated to cost less than ``gain`` × a full pass (the reason is logged at debug
    level). ``gain``: default :data:`GAIN`."""
    gain = GAIN if gain is None else gain
    found = analysis(model, size)
    if not found.candidates:
        logger.debug("incremental: no plan: %s", found.why)
        return None
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    if not len(boxes):
        return None
    cache = _cache(model)
    digest = hashlib.sha1(boxes.tobytes()).hexdigest()
    with model._lock:
        chosen = _remember(
            cache,
            ("choice", tuple(size), gain, STAGE_OVERHEAD, digest),
            lambda: choose(found, boxes, model.input_name),
            _MAX_PLANS,
        )
    if chosen is None:
        logger.debug("incremental: no plan: no chain of local stages")
        return None
    stages, cost = chosen
    share = cost / max(found.total_flops, 1.0)
    if cost >= gain * found.total_flops:
        logger.debug(
            "incremental: no plan: the best chain (to %s) costs %.3g of a full pass", stages[-1].target, share
        )
        return None
    built: list[Stage] = []
    try:
        with model._lock:
            for st in stages:
                sub = _remember(
                    cache,
                    ("stage", tuple(size), st.source, st.target),
                    lambda st=st: sub_model(
                        model, st.source, st.target, st.source_geometry.axes[1], found.shapes
                    ),
                    64,
                )
                built.append(dataclasses.replace(st, model=sub))
            tail = _remember(cache, ("tail", stages[-1].target), lambda: model.tail(stages[-1].target), 64)
    except Exception as exc:  # noqa: BLE001 - fall back to full passes
        logger.debug("incremental: no plan: cannot split the graph: %s", exc)
        return None
    logger.debug("incremental: cuts %s, estimated %.2f of a full pass", [st.target for st in stages], share)
    return Plan(built, tail, cost, found.total_flops)


def describe(p: Plan | None) -> dict[str, Any]:
    """A summary of a plan for logs and benchmarks."""
    if p is None:
        return {"cut": None}
    return {
        "cut": p.tensor,
        "stages": [st.target for st in p.stages],
        "receptive_field": (p.geometry.h.size, p.geometry.w.size),
        "stride": (p.geometry.h.stride, p.geometry.w.stride),
        "estimated_share": round(p.cost / max(p.full_cost, 1.0), 3),
    }
