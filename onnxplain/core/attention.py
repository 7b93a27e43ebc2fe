"""The model's own attention: squeeze-and-excitation and CBAM gates found on the graph IR.

A gate is a multiplication ``y = f ⊙ g`` of a feature map ``f`` (N, C, H, W) by a
tensor ``g`` in (0, 1) that the network computed from ``f`` itself:

- ``"se"``, squeeze-and-excitation (Hu et al., CVPR 2018)::

      g = σ(W₂ · δ(W₁ · GAP(f)))            (N, C, 1, 1): one weight per channel

  GAP is GlobalAveragePool, a ReduceMean over both spatial axes or a full-size
  AveragePool; W₁, W₂ are 1×1 Conv, Gemm or MatMul (+ Add); δ a rectifier (Relu,
  LeakyRelu, Clip, HardSwish, SiLU, ...); σ is Sigmoid or a hard sigmoid (HardSigmoid, or
  ``relu6(x + 3) / 6`` written out as Add → Clip → Div/Mul, as MobileNetV3 exports may be).
  Its one-layer forms are found as ``"se"`` too: ``σ(W · GAP(f))`` (VoVNet's effective SE,
  Lee & Park, CVPR 2020) and ``σ(conv1d(GAP(f)))``, a 1-D convolution across the channels
  (ECA-Net, Wang et al., CVPR 2020).
- ``"cbam_channel"``, CBAM's channel attention (Woo et al., ECCV 2018)::

      g = σ(MLP(AvgPool(f)) + MLP(MaxPool(f)))      (N, C, 1, 1)

- ``"cbam_spatial"``, CBAM's spatial attention::

      g = σ(conv([mean_c(f); max_c(f)]))            (N, 1, H, W): one weight per position

  (the channel mean and max concatenated, a k×k Conv with one output channel, optionally
  BatchNormalization, then σ).

Reshapes between the parts (Flatten, Reshape, Squeeze, Unsqueeze, Expand, ...) are
looked through, so both torch exporters' graphs and hand-written ``view``/``expand_as``
code are recognised. :func:`find_attention_gates` (``model.attention_gates()``) lists
them; :class:`onnxplain.AttentionMaps` reads their values.
"""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from onnxplain.core.model import _channels_first_source, _reduce_axes
from onnxplain.core.quantized import ROUNDING_OPS

if TYPE_CHECKING:
    from onnxplain.core.model import Model

#: Gate kinds, in the order they are documented.
GATE_KINDS = ("se", "cbam_channel", "cbam_spatial")

# Nodes that only move values around (or, in a quantized model, round them); looked
# through when following a gate backwards.
_PASS_THROUGH = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Expand", "Cast",
                 *ROUNDING_OPS}
# Element-wise nonlinearities allowed between the two layers of a gate's MLP.
_HIDDEN_ACTIVATIONS = {
    "Relu",
    "LeakyRelu",
    "PRelu",
    "Clip",
    "HardSwish",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "Mish",
    "Softplus",
    "Tanh",
}


@dataclass(frozen=True)
class AttentionGate:
    """One attention gate ``output = gated ⊙ gate`` found in the graph.

    ``name``: the scope of the module that computes it when the exporter recorded one
    (``"features.1.block.1"`` for torchvision's MobileNetV3, either exporter), else the
    ``Mul`` node's name; unique within a model. ``kind``: ``"se"``, ``"cbam_channel"`` or
    ``"cbam_spatial"``. ``gate``: the tensor of gate values (the sigmoid's output;
    (N, C, 1, 1), (N, C) or (N, 1, H, W)). ``gated``: the feature map it multiplies.
    ``output``: the product. ``node``: the ``Mul`` node. ``activation``: ``"Sigmoid"`` or
    ``"HardSigmoid"`` (also when written out as Add → Clip → Div).
    """

    name: str
    kind: str
    gate: str
    gated: str
    output: str
    node: str
    activation: str

    @property
    def spatial(self) -> bool:
        """True for gates with one weight per position, False for one per channel."""
        return self.kind == "cbam_spatial"


# -- small queries on the IR -----------------------------------------------------------
def _producer(value: ir.Value | None) -> ir.Node | None:
    return value.producer() if value is not None else None


def _moves_unit_dims(node: ir.Node) -> bool:
    """``node`` is a Transpose that keeps the batch first and moves only dims of size 1:
    a reshape in effect, (N, 1, 1, C) → (N, C, 1, 1) as a channels-last gate is moved
    channels first."""
    if node.op_type != "Transpose" or not node.inputs or node.inputs[0] is None:
        return False
    dims, perm = node.inputs[0].shape, _ints(node, "perm")
    if dims is None or perm is None or perm[0] != 0:
        return False
    moved = [d for d in list(dims)[1:] if d != 1]
    return len(moved) <= 1


def _through(value: ir.Value | None) -> ir.Value | None:
    """``value`` with shape-only producers looked through (backwards)."""
    while value is not None:
        node = value.producer()
        if node is None or not node.inputs or not (node.op_type in _PASS_THROUGH or _moves_unit_dims(node)):
            return value
        value = node.inputs[0]
    return value


def _same(a: ir.Value, b: ir.Value) -> bool:
    """One tensor, up to shape-only nodes, a quantized model's rounding (its gate may pool
    the float map and multiply its rounded copy), and its channels-last copy (a Keras gate
    pools the map channels last and multiplies it channels first)."""
    return a is b or _through(a) is _through(b) or _channels_first_source(a) is _through(b)


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    try:
        return np.asarray(value.const_value.numpy())
    except Exception:  # pragma: no cover - exotic tensor types
        return None


def _scalar(value: ir.Value | None) -> float | None:
    arr = _const(value)
    if arr is None or arr.size != 1:
        return None
    return float(arr.reshape(-1)[0])


def _ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else None


def _int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def _clip_bounds(node: ir.Node) -> tuple[float | None, float | None]:
    if "min" in node.attributes or "max" in node.attributes:  # Clip-6
        lo = node.attributes.get("min")
        hi = node.attributes.get("max")
        return (lo.as_float() if lo is not None else None, hi.as_float() if hi is not None else None)
    lo = _scalar(node.inputs[1]) if len(node.inputs) > 1 else None
    hi = _scalar(node.inputs[2]) if len(node.inputs) > 2 else None
    return lo, hi


def _split_const(node: ir.Node) -> tuple[ir.Value, float] | None:
    """For a binary node with one scalar-constant input: (the other input, the constant)."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    cb, ca = _scalar(b), _scalar(a)
    if cb is not None and a is not None:
        return a, cb
    if ca is not None and b is not None and node.op_type in ("Add", "Mul"):
        return b, ca
    return None


# -- the parts of a gate ----------------------------------------------------------------
def _gate_activation(value: ir.Value) -> tuple[ir.Value, str] | None:
    """(input, name) when ``value`` is a sigmoid-like function of its input."""
    node = _producer(value)
    if node is None or not node.inputs:
        return None
    if node.op_type == "Sigmoid":
        return node.inputs[0], "Sigmoid"
    if node.op_type == "HardSigmoid":
        return node.inputs[0], "HardSigmoid"
    # relu6(x + 3) / 6 or relu6(x + 3) * (1/6)
    if node.op_type in ("Div", "Mul"):
        split = _split_const(node)
        if split is None:
            return None
        inner, c = split
        factor = 1.0 / c if node.op_type == "Div" and c != 0 else c
        clip = _producer(inner)
        if clip is None or not np.isclose(factor, 1 / 6, rtol=1e-3):
            return None
        if clip.op_type == "Clip" and _clip_bounds(clip) == (0.0, 6.0):
            add = _producer(clip.inputs[0])
            if add is not None and add.op_type == "Add":
                split = _split_const(add)
                if split is not None and np.isclose(split[1], 3.0):
                    return split[0], "HardSigmoid"
        return None
    # clip(alpha * x + beta, 0, 1): HardSigmoid written out as in its ONNX definition
    if node.op_type == "Clip" and _clip_bounds(node) == (0.0, 1.0):
        add = _producer(node.inputs[0])
        if add is not None and add.op_type == "Add" and _split_const(add) is not None:
            mul = _producer(_split_const(add)[0])
            if mul is not None and mul.op_type == "Mul" and _split_const(mul) is not None:
                return _split_const(mul)[0], "HardSigmoid"
    return None


def _hidden_activation(value: ir.Value) -> ir.Value | None:
    """The input of an element-wise nonlinearity producing ``value`` (SiLU ``x·σ(x)`` too)."""
    node = _producer(value)
    if node is None or not node.inputs:
        return None
    if node.op_type in _HIDDEN_ACTIVATIONS:
        return node.inputs[0]
    if node.op_type == "Mul" and len(node.inputs) == 2:
        for x, g in (node.inputs, node.inputs[::-1]):
            act = _gate_activation(_through(g)) if g is not None else None
            if act is not None and x is not None and _same(act[0], x):
                return x
    return None


def _linear(value: ir.Value) -> ir.Value | None:
    """The input ``x`` when ``value`` = W·x (+ b): 1×1 Conv, Gemm, or MatMul (+ Add; for a
    Conv too, as ``quantize_dynamic`` adds the bias after its integer convolution)."""
    node = _producer(value)
    if node is None or not node.inputs:
        return None
    if node.op_type == "Conv":
        w = node.inputs[1] if len(node.inputs) > 1 else None
        shape = w.shape if w is not None else None
        if shape is None or len(shape) != 4 or any(d != 1 for d in list(shape)[2:]):
            return None
        return node.inputs[0]
    if node.op_type == "Gemm":
        return node.inputs[0]
    if node.op_type == "MatMul" and len(node.inputs) == 2 and node.inputs[1].const_value is not None:
        return node.inputs[0]
    if node.op_type == "Add" and len(node.inputs) == 2:
        for a, b in (node.inputs, node.inputs[::-1]):
            mm = _producer(a)
            layer = mm is not None and mm.op_type in ("MatMul", "Conv")
            if layer and b is not None and b.const_value is not None:
                return _linear(a)
    return None


def _mlp(value: ir.Value) -> ir.Value | None:
    """The input of a two-layer perceptron W₂·δ(W₁·x) producing ``value``."""
    hidden = _linear(_through(value))
    if hidden is None:
        return None
    pre = _hidden_activation(_through(hidden))
    if pre is None:
        return None
    x = _linear(_through(pre))
    return _through(x) if x is not None else None


def _one_layer(value: ir.Value) -> ir.Value | None:
    """The input of W·x (effective SE) or of a one-channel 1-D convolution across the
    channels (ECA) producing ``value``."""
    v = _through(value)
    x = _linear(v)
    node = _producer(v)
    if x is None and node is not None and node.op_type == "Conv" and len(node.inputs) > 1:
        w = node.inputs[1].shape
        if w is not None and len(w) == 3 and tuple(w[:2]) == (1, 1):
            x = node.inputs[0]
    return _through(x) if x is not None else None


def _global_pool(model: Model, value: ir.Value | None) -> tuple[str, ir.Value] | None:
    """(``"mean"`` or ``"max"``, input) when ``value`` pools its input over both spatial axes."""
    node = _producer(value)
    if node is None:
        return None
    if node.op_type == "MaxPool" and node.inputs[0].shape is not None:
        kernel = tuple(_ints(node, "kernel_shape") or ())
        dims = tuple(node.inputs[0].shape)
        if len(dims) == 4 and kernel == tuple(dims[2:]):
            return "max", node.inputs[0]
        return None
    reduction = model._global_pool_reduction(node)
    if reduction in ("mean", "max"):
        return reduction, node.inputs[0]
    return None


def _channel_reduction(value: ir.Value) -> tuple[str, ir.Value] | None:
    """(``"mean"``/``"max"``, input) when ``value`` reduces its 4-D input over channels."""
    node = _producer(_through(value))
    if node is None or node.op_type not in ("ReduceMean", "ReduceMax"):
        return None
    axes = _reduce_axes(node)
    if axes is None or [a % 4 for a in axes] != [1]:
        return None
    return ("mean" if node.op_type == "ReduceMean" else "max"), node.inputs[0]


# -- gates ------------------------------------------------------------------------------
def _channel_gate_kind(model: Model, pre: ir.Value, gated: ir.Value) -> str | None:
    """``"se"`` or ``"cbam_channel"`` when ``pre`` (the gate before σ) fits one of them."""
    pre = _through(pre)
    node = _producer(pre)
    if node is not None and node.op_type == "Add" and len(node.inputs) == 2:
        pools = []
        for branch in node.inputs:
            x = _mlp(branch) if branch is not None else None
            pooled = _global_pool(model, x) if x is not None else None
            if pooled is None or not _same(pooled[1], gated):
                break
            pools.append(pooled[0])
        else:
            if sorted(pools) == ["max", "mean"]:
                return "cbam_channel"
    for x in (_mlp(pre), _one_layer(pre)):
        pooled = _global_pool(model, x) if x is not None else None
        if pooled is not None and pooled[0] == "mean" and _same(pooled[1], gated):
            return "se"
    return None


def _is_spatial_gate(pre: ir.Value, gated: ir.Value) -> bool:
    value = _through(pre)
    node = _producer(value)
    if node is not None and node.op_type == "BatchNormalization":
        value = _through(node.inputs[0])
        node = _producer(value)
    if node is None or node.op_type != "Conv" or len(node.inputs) < 2 or node.inputs[1].shape is None:
        return False
    if len(node.inputs[1].shape) != 4 or node.inputs[1].shape[0] != 1:
        return False
    source = _through(node.inputs[0])
    cat = _producer(source)
    parts = [source]
    if cat is not None and cat.op_type == "Concat" and _int(cat, "axis", 0) % 4 == 1:
        parts = list(cat.inputs)
    reductions = [_channel_reduction(p) if p is not None else None for p in parts]
    return all(r is not None and _same(r[1], gated) for r in reductions)


def _scope(node: ir.Node) -> str | None:
    """The module path the exporter recorded for ``node``, if any.

    The dynamo exporter stores ``pkg.torch.onnx.name_scopes`` (['', 'features',
    'features.1', ..., op]); the TorchScript exporter names nodes
    ``/features/features.1/block/block.1/Mul``, each part the child's name prefixed by its
    parent's last part.
    """
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            names = [s for s in ast.literal_eval(scopes)[:-1] if s]
        except (ValueError, SyntaxError):
            names = []
        if names:
            return str(names[-1])
    name = node.name or ""
    if name.startswith("/"):
        parts = name.strip("/").split("/")[:-1]
        path: list[str] = []
        previous = ""
        for part in parts:
            if previous and part.startswith(previous + "."):
                path.append(part[len(previous) + 1 :])
            else:
                path.append(part)
            previous = part
        if path:
            return ".".join(path)
    return None


def find_attention_gates(model: Model) -> list[AttentionGate]:
    """Every SE and CBAM gate of ``model``'s graph, in topological order.

    See the module docstring for the patterns recognised.
    """
    found: list[tuple[str, str, ir.Value, ir.Value, ir.Node, str]] = []
    for node in model.ir.graph:
        if node.op_type != "Mul" or len(node.inputs) != 2 or None in node.inputs:
            continue
        for gate_in, gated in (node.inputs, node.inputs[::-1]):
            gate = _through(gate_in)
            act = _gate_activation(gate) if gate is not None else None
            if act is None or gated.shape is None or len(gated.shape) != 4:
                continue
            pre, activation = act
            kind = _channel_gate_kind(model, pre, gated)
            if kind is None and _is_spatial_gate(pre, gated):
                kind = "cbam_spatial"
            if kind is not None:
                scope = _scope(node) or node.name or gate.name
                found.append((scope, kind, gate, gated, node, activation))
                break
    counts = Counter(f[0] for f in found)
    gates: list[AttentionGate] = []
    used: set[str] = set()
    for scope, kind, gate, gated, node, activation in found:
        name = scope if counts[scope] == 1 else f"{scope}:{kind}"
        base, i = name, 2
        while name in used:
            name, i = f"{base}#{i}", i + 1
        used.add(name)
        gates.append(
            AttentionGate(
                name=name,
                kind=kind,
                gate=gate.name,
                gated=gated.name,
                output=node.outputs[0].name,
                node=node.name or "",
                activation=activation,
            )
        )
    return gates


__all__ = ["GATE_KINDS", "AttentionGate", "find_attention_gates"]
