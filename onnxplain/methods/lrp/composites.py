"""Composites: which LRP rule each node of the graph gets.

A :class:`Composite` is an ordered list of ``(selector, rule)`` entries; a node gets the
rule of the **last** entry whose selector matches it, so later entries override earlier
ones. Selectors are properties of IR nodes (:class:`Select`: op type, name pattern,
position), which makes a composite explicit and testable without running a model:

>>> from onnxplain.methods.lrp import Composite, Select, Epsilon, ZPlus, ZBox
>>> composite = Composite([
...     ("Conv", ZPlus()),                                   # every Conv
...     (("Gemm", "MatMul"), Epsilon(0.25)),                 # dense layers
...     (Select(position="first"), ZBox(low=0.0, high=1.0)),  # the layer seeing pixels
...     (Select(name=r".*layer4.*", op_type="Conv"), Epsilon(1e-3)),
... ])

Every composite starts from :data:`BASE` (unless ``base=False``), the rules for nodes
without weights, as zennit's ``layer_map_base``: element-wise activations pass
relevance through, Add/Sub/Sum and average pooling split it in proportion to each
input's contribution, a Mul or Div by a gate or constant passes it to the signal (SE
blocks: nothing to the gate), max pooling, Concat, Resize and shape operations route it as the
gradient does, a BatchNormalization that could not be folded into its Conv is an
affine layer with the ε rule, and a LayerNormalization (ConvNeXt, transformers) or an
InstanceNormalization (GroupNorm: PoolFormer, NF and ResNet-GN variants) gets the
ε rule with its standard deviation held constant, which makes it linear (the LN-rule of
Ali et al., "XAI for Transformers", ICML 2022). A MatMul of a Softmax's output and a
computed tensor (attention weights A and values V) gets :class:`Norm` with ``signal`` V
whatever the composite maps to MatMul, as A is no constant weight: the ε rule of a linear
layer whose weights are A (the same paper's attention rule), also when the heads mix A by
constant weights before it weights V (CaiT's talking heads). A product of two computed
tensors neither of which is a gate — an element-wise Mul (gMLP's spatial gating, FocalNet's
modulation, gated MLPs, StarNet) or a MatMul without a softmax (linear attention) — gets
:class:`Uniform`, AttnLRP's uniform rule (each factor half), whatever the composite maps to
Mul or MatMul. The named composites then add the rules for layers with weights, exactly as
zennit's composites of the same name.

Unsupported nodes — anything on the relevance path from the input to the target that no
entry maps (ConvTranspose, Softmax, a Div of two computed tensors that is no
normalisation, ...) — raise :class:`~onnxplain.UnsupportedOperatorError` listing all of them before any
computation; map a rule to them (e.g. ``(Select(op_type="ConvTranspose"), Epsilon())``) to run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import onnx_ir as ir

from onnxplain.core.errors import InputValidationError, UnsupportedOperatorError
from onnxplain.core.quantized import ROUNDING_OPS
from onnxplain.methods.lrp.rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Gate,
    Gradient,
    Norm,
    Pass,
    Rule,
    Uniform,
    WSquare,
    ZBox,
    ZPlus,
)

#: Layers with weights: the "layers" of LRP, and what ``position`` counts.
LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
#: Ops whose weighted rules read a constant operand.
WEIGHTED_OPS = LAYER_OPS | {"BatchNormalization"}
#: Element-wise activations (zennit's ``Activation`` list): relevance passes through.
ACTIVATION_OPS = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "PRelu",
        "Elu",
        "Selu",
        "Celu",
        "Sigmoid",
        "HardSigmoid",
        "Tanh",
        "Softplus",
        "Softsign",
        "HardSwish",
        "Swish",
        "Gelu",
        "Mish",
        "Clip",
        "ThresholdedRelu",
        "Dropout",
        "Identity",
        "Erf",
        "Shrink",
        # local response normalisation (AlexNet, GoogLeNet as Caffe trained them): the LRP
        # toolbox passes relevance through it unchanged (Lapuschkin et al., JMLR 2016)
        "LRN",
        # a sign flip (Keras' LayerNorm: −μ·γ/σ): the ε-rule of −x gives x·(−1)/(−x) · R = R
        "Neg",
    }
    # a quantized model's rounding (a staircase Clip): relevance passes through
    | ROUNDING_OPS
)
#: Nodes whose relevance is split in proportion to each input's contribution.
PROPORTIONAL_OPS = frozenset(
    {
        "Add",
        "Sub",
        "Sum",
        "AveragePool",
        "GlobalAveragePool",
        "ReduceMean",
        "ReduceSum",
        # fold (VOLO's outlook attention, MobileViT-v2's patches back to the map): a sum of
        # overlapping patches
        "Col2Im",
    }
)
#: Nodes that only route values: the ordinary backward pass is exact (max pooling:
#: winner-take-all).
ROUTING_OPS = frozenset(
    {
        "Flatten",
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Concat",
        "Split",
        "Slice",
        "Pad",
        "Gather",
        "GatherElements",
        "GatherND",
        "Where",
        "Expand",
        "Tile",
        "DepthToSpace",
        "SpaceToDepth",
        "MaxPool",
        "GlobalMaxPool",
        "ReduceMax",
        "Cast",
        # an assignment into a slice, x[:, :c] = y (dynamo's slice_scatter): each element's
        # relevance goes to the tensor it was copied from, x or y
        "ScatterND",
        "ScatterElements",
        # upsampling (HRNet, FPNs): zennit has no rule for it and passes the relevance back as
        # the gradient, R_in = Aᵀ R_out (nearest: each copy's relevance to its source; linear
        # modes: by the interpolation weights, which sum to 1 per output)
        "Resize",
    }
)
_GATE_PRODUCERS = frozenset({"Sigmoid", "HardSigmoid", "Tanh", "Softmax", "Erf"})
#: Nodes that only reshape or broadcast a tensor, looked through when finding a gate.
_RESHAPING = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Identity")


Position = Literal["first", "last"]


@dataclass(frozen=True)
class Select:
    """Which nodes an entry applies to; every field given must match.

    ``op_type``: an ONNX op type or a tuple of them; ``name``: a regular expression the
    whole node name must match (``re.fullmatch``); ``position``: ``"first"`` — the
    layers with weights (Conv, ConvTranspose, Gemm, MatMul) that see the input with no
    other such layer in between (zennit's first layer), ``"last"`` — those the target
    is reached from with no other such layer in between (the classifier).
    """

    op_type: str | tuple[str, ...] | None = None
    name: str | None = None
    position: Position | None = None

    def __post_init__(self) -> None:
        if isinstance(self.op_type, (list, set, frozenset)):
            object.__setattr__(self, "op_type", tuple(self.op_type))
        if self.position not in (None, "first", "last"):
            raise InputValidationError(
                f"Select: position must be 'first', 'last' or None, got {self.position!r}"
            )
        if self.name is not None:
            try:
                re.compile(self.name)
            except re.error as exc:
                raise InputValidationError(
                    f"Select: name {self.name!r} is not a regular expression: {exc}"
                ) from None

    def matches(self, node: ir.Node, first: set[str], last: set[str]) -> bool:
        if self.op_type is not None:
            ops = (self.op_type,) if isinstance(self.op_type, str) else self.op_type
            if node.op_type not in ops:
                return False
        if self.name is not None and not re.fullmatch(self.name, node.name or ""):
            return False
        if self.position == "first" and node.name not in first:
            return False
        return not (self.position == "last" and node.name not in last)


Selector = Select | str | tuple[str, ...]


def _selector(s: Any) -> Select:
    if isinstance(s, Select):
        return s
    if isinstance(s, str):
        return Select(op_type=s)
    if isinstance(s, (tuple, list, frozenset, set)) and all(isinstance(o, str) for o in s):
        return Select(op_type=tuple(s))
    raise InputValidationError(
        f"a composite selector must be a Select, an op type or a tuple of op types, got {s!r}"
    )


def _entries(rules: Any) -> list[tuple[Select, Rule]]:
    if rules is None:
        return []
    if not isinstance(rules, (Mapping, Iterable)) or isinstance(rules, (str, bytes)):
        raise InputValidationError(
            f"rules must be (selector, rule) pairs or a mapping of selectors to rules, got {rules!r}"
        )
    items = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
    out = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise InputValidationError(f"composite entries are (selector, rule) pairs, got {item!r}")
        selector, rule = item
        if not isinstance(rule, Rule):
            raise InputValidationError(
                f"the rule for {selector!r} must be an LRP rule (Epsilon(), ZPlus(), ...), got {rule!r}"
            )
        out.append((_selector(selector), rule))
    return out


def base_entries(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> list[tuple[Select, Rule]]:
    """The rules for nodes without weights (see the module docstring)."""
    return [
        (Select(op_type=tuple(sorted(ACTIVATION_OPS))), Pass()),
        (Select(op_type=tuple(sorted(PROPORTIONAL_OPS))), Norm(stabilizer)),
        (Select(op_type=("Mul", "Div")), Gate()),
        (Select(op_type=tuple(sorted(ROUTING_OPS))), Gradient()),
        # a spatial transformer's resampling: linear in the image for a given grid, which is
        # held constant (no relevance into the localisation net that computed it)
        (Select(op_type="GridSample"), Norm(stabilizer, signal=0)),
        (Select(op_type="BatchNormalization"), Epsilon(epsilon)),
        # held linear by a constant standard deviation (Ali et al. 2022's LN-rule; for
        # InstanceNormalization, and GroupNorm exported as one, over the spatial axes; for
        # GroupNormalization over each group; for RMSNormalization by a constant RMS)
        (Select(op_type=("GroupNormalization", "InstanceNormalization", "LayerNormalization",
                         "RMSNormalization")), Epsilon(epsilon)),
    ]


@dataclass(frozen=True)
class Assignment:
    """The rule of every node on the relevance path (node name → rule) and the names of
    the first and last layers; what :meth:`Composite.assign` returns."""

    rules: dict[str, Rule]
    first: frozenset[str]
    last: frozenset[str]


class Composite:
    """An ordered mapping from node selectors to LRP rules; later entries override.

    ``rules``: ``(selector, rule)`` pairs or a dict; a selector is a :class:`Select`, an
    op type (``"Conv"``) or a tuple of op types. ``base``: start from the rules for
    nodes without weights (:func:`base_entries`).
    """

    def __init__(
        self,
        rules: Iterable[tuple[Selector, Rule]] | Mapping[Selector, Rule] | None = None,
        base: bool = True,
        epsilon: float = 1e-6,
        stabilizer: float = 1e-6,
    ) -> None:
        self.stabilizer = stabilizer
        self.entries: list[tuple[Select, Rule]] = (
            (base_entries(epsilon, stabilizer) if base else []) + self.own_entries() + _entries(rules)
        )

    def own_entries(self) -> list[tuple[Select, Rule]]:
        """The entries a named composite adds between the base and the user's entries."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.entries)} entries)"

    def rule_for(self, node: ir.Node, first: set[str], last: set[str]) -> Rule | None:
        found = None
        for selector, rule in self.entries:
            if selector.matches(node, first, last):
                found = rule
        return found

    def assign(self, model: Any, tensor: str | None = None) -> Assignment:
        """The rule of each node on the relevance path from the input to ``tensor`` (the
        model output by default); raises UnsupportedOperatorError naming every node that
        has none, before anything runs."""
        return assign(self, model, tensor)


class EpsilonPlus(Composite):
    """zennit's ``EpsilonPlus``: z⁺ for Conv/ConvTranspose, ε for Gemm/MatMul."""

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, rules: Any = None) -> None:
        self.epsilon, self.stabilizer = epsilon, stabilizer
        super().__init__(rules, epsilon=epsilon, stabilizer=stabilizer)

    def own_entries(self) -> list[tuple[Select, Rule]]:
        return [
            (Select(op_type="Conv"), ZPlus(self.stabilizer)),
            (Select(op_type=("Gemm", "MatMul")), Epsilon(self.epsilon)),
        ]


class EpsilonAlpha2Beta1(Composite):
    """zennit's ``EpsilonAlpha2Beta1``: α2β1 for Conv, ε for Gemm/MatMul."""

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, rules: Any = None) -> None:
        self.epsilon, self.stabilizer = epsilon, stabilizer
        super().__init__(rules, epsilon=epsilon, stabilizer=stabilizer)

    def own_entries(self) -> list[tuple[Select, Rule]]:
        return [
            (Select(op_type="Conv"), AlphaBeta(2.0, 1.0, self.stabilizer)),
            (Select(op_type=("Gemm", "MatMul")), Epsilon(self.epsilon)),
        ]


class EpsilonPlusFlat(EpsilonPlus):
    """zennit's ``EpsilonPlusFlat``: flat for the first layer with weights (Conv or
    dense), z⁺ for the other Convs, ε for Gemm/MatMul."""

    def own_entries(self) -> list[tuple[Select, Rule]]:
        return super().own_entries() + [(Select(position="first"), Flat(self.stabilizer))]


class EpsilonAlpha2Beta1Flat(EpsilonAlpha2Beta1):
    """zennit's ``EpsilonAlpha2Beta1Flat``: flat for the first layer with weights, α2β1
    for the other Convs, ε for Gemm/MatMul."""

    def own_entries(self) -> list[tuple[Select, Rule]]:
        return super().own_entries() + [(Select(position="first"), Flat(self.stabilizer))]


class EpsilonGammaBox(Composite):
    """zennit's ``EpsilonGammaBox``: z^B with pixel bounds ``low``/``high`` for the first
    Conv, γ for the other Convs, ε for Gemm/MatMul."""

    def __init__(
        self,
        low: Any,
        high: Any,
        epsilon: float = 1e-6,
        gamma: float = 0.25,
        stabilizer: float = 1e-6,
        rules: Any = None,
    ) -> None:
        self.low, self.high, self.epsilon, self.gamma, self.stabilizer = low, high, epsilon, gamma, stabilizer
        super().__init__(rules, epsilon=epsilon, stabilizer=stabilizer)

    def own_entries(self) -> list[tuple[Select, Rule]]:
        return [
            (Select(op_type="Conv"), Gamma(self.gamma, self.stabilizer)),
            (Select(op_type=("Gemm", "MatMul")), Epsilon(self.epsilon)),
            (Select(op_type="Conv", position="first"), ZBox(self.low, self.high, self.stabilizer)),
        ]


class DeepTaylorComposite(Composite):
    """Deep Taylor decomposition (Montavon et al. 2017): z⁺ for every layer with
    weights, z^B at the first layer when pixel bounds are given, w² when not."""

    def __init__(
        self, low: Any = None, high: Any = None, stabilizer: float = 1e-6, rules: Any = None
    ) -> None:
        if (low is None) != (high is None):
            raise InputValidationError("DeepTaylor: give both low and high (pixel bounds) or neither")
        self.low, self.high, self.stabilizer = low, high, stabilizer
        super().__init__(rules, stabilizer=stabilizer)

    def own_entries(self) -> list[tuple[Select, Rule]]:
        first: Rule = (
            WSquare(self.stabilizer) if self.low is None else ZBox(self.low, self.high, self.stabilizer)
        )
        return [
            (Select(op_type=tuple(sorted(LAYER_OPS - {"ConvTranspose"}))), ZPlus(self.stabilizer)),
            (Select(position="first"), first),
        ]


# -- the relevance path ------------------------------------------------------------------
_NOT_REAL = frozenset({ir.DataType.BOOL, ir.DataType.STRING, ir.DataType.COMPLEX64, ir.DataType.COMPLEX128})


def _carries_relevance(v: ir.Value) -> bool:
    """A real-valued tensor: integer and bool ones (the batch size read by ``Shape``, the
    indices of a ``Range``, masks) are bookkeeping, through which no relevance flows."""
    dtype = v.dtype
    if dtype is None:
        return True
    return dtype not in _NOT_REAL and "INT" not in dtype.name


def _live_values(graph: ir.Graph, source: ir.Value) -> set[int]:
    """The real-valued tensors computed from ``source``: those relevance flows through
    (with a quantized model's rounded activations, integers that stand for reals)."""
    live = {id(source)}
    for node in graph:
        if any(v is not None and id(v) in live for v in node.inputs):
            if node.op_type in ("QuantizeLinear", "DynamicQuantizeLinear"):  # integers for reals
                live.add(id(node.outputs[0]))  # not a dynamic one's scale and zero point
                continue
            live.update(id(o) for o in node.outputs if _carries_relevance(o))
    return live


def _is_const(v: ir.Value | None, live: set[int]) -> bool:
    return v is None or id(v) not in live


def _same_shape(a: ir.Value, b: ir.Value) -> bool:
    """The shapes of ``a`` and ``b`` are known to the rank and equal where both dims are
    numbers (a symbolic or unknown dim, such as the batch, matches any: exporters name the
    same batch dim differently on different tensors)."""
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
        return False
    return all(not isinstance(x, int) or not isinstance(y, int) or x == y for x, y in zip(a.shape, b.shape))


def _gate_signal(node: ir.Node, live: set[int]) -> int | None:
    """Which input of Mul/Div is the signal (None: ambiguous).

    A Div by a computed, broadcast divisor (a decomposed LayerNorm's (x − μ) / σ, an L2
    normalisation) passes all relevance to the numerator: with the divisor held constant it
    scales the numerator, the LN-rule. A Mul by a reciprocal (1/σ, scaled by constants) is
    that Div. A Mul's gate is the broadcast input (SE blocks), else
    the one computed by a squashing function, possibly scaled and shifted by constants (a
    decomposed GELU's 0.5 · (1 + erf(x / √2)))."""
    ins = list(node.inputs)
    computed = [i for i, v in enumerate(ins[:2]) if not _is_const(v, live)]
    if len(computed) == 1:
        return computed[0] if node.op_type == "Mul" or computed[0] == 0 else None
    if len(computed) != 2:
        return None
    inverses = [i for i in range(2) if node.op_type == "Mul" and _inverse(ins[i], live)]
    if len(inverses) == 1:  # a product by 1/σ is the Div by σ (below), whatever broadcasts
        return 1 - inverses[0]
    if node.op_type == "Div" and _statistic(ins[1], live):  # by σ, whatever the shapes tell
        return 0
    known = all(v.shape is not None for v in (*ins[:2], node.outputs[0]))
    full = [i for i in range(2) if _same_shape(_unexpanded(ins[i]), node.outputs[0])] if known else []
    if len(full) == 1:  # the gate is the broadcast one (a shape not known tells nothing)
        if node.op_type == "Div":
            return 0 if full == [0] else None
        return full[0]
    if node.op_type == "Div":
        return None
    gates = [i for i in range(2) if _squashed(ins[i], live)]
    return 1 - gates[0] if len(gates) == 1 else None


def _inverse(value: ir.Value, live: set[int]) -> bool:
    """``value`` is a ``Reciprocal``'s output, or a constant divided by a computed tensor,
    possibly scaled by constants or reshaped: the 1/σ of a LayerNorm written as products
    (Keras' ``x·γ/σ − μ·γ/σ + β``, whose ``Rsqrt`` tf2onnx writes as ``Sqrt`` then
    ``Reciprocal`` and jax2onnx as ``Sqrt`` then ``Div(1, ·)``)."""
    producer = value.producer()
    while producer is not None and producer.op_type in ("Mul", *_RESHAPING):
        computed = [v for v in producer.inputs[:2] if not _is_const(v, live)]
        if producer.op_type == "Mul" and len(computed) != 1:
            return False
        following = computed[0] if producer.op_type == "Mul" else producer.inputs[0]
        producer = following.producer() if following is not None else None
    if producer is not None and producer.op_type == "Div":  # c / σ, a constant over σ (jax2onnx's rsqrt)
        return _is_const(producer.inputs[0], live) and not _is_const(producer.inputs[1], live)
    return producer is not None and producer.op_type == "Reciprocal"


#: Reductions whose output, scaled, shifted or rooted, is a divisor that normalises.
_STATISTICS = frozenset({"ReduceMean", "ReduceSum", "ReduceL2", "ReduceSumSquare", "ReduceL1"})


def _statistic(value: ir.Value, live: set[int]) -> bool:
    """``value`` is a reduction over the tensor it divides, possibly shifted or scaled by
    constants, rooted, clipped away from zero or broadcast: a decomposed LayerNorm's σ,
    an L2 normalisation's norm, found where shape inference cannot tell the broadcast
    (swin's patch-merging norm after strided slices)."""
    producer = value.producer()
    while producer is not None and producer.op_type in ("Sqrt", "Add", "Mul", "Max", "Clip", *_RESHAPING):
        computed = [v for v in producer.inputs if v is not None and not _is_const(v, live)]
        if producer.op_type == "Expand":
            computed = computed[:1]
        if len(computed) != 1:
            return False
        producer = computed[0].producer()
    return producer is not None and producer.op_type in _STATISTICS


def _unexpanded(value: ir.Value) -> ir.Value:
    """``value`` before the ``Expand`` that made it (F.normalize's divisor is its norm
    expanded to the numerator's shape: broadcast all the same)."""
    producer = value.producer()
    while producer is not None and producer.op_type == "Expand" and producer.inputs[0] is not None:
        value = producer.inputs[0]
        producer = value.producer()
    return value


def _squashed(value: ir.Value, live: set[int]) -> bool:
    """``value`` is a squashing function's output (Sigmoid, Tanh, Softmax, Erf, ...), or that
    output scaled or shifted by constants, reshaped, or rounded by a quantized model. A Clip
    to constant bounds counts when the constant factors after it bring its range within
    [−1, 1]: hard-swish written out, x · relu6(x + 3) / 6 (Keras exports it so), has its
    gate found; a bare ReLU6 times another map (StarNet) is no gate."""
    producer = value.producer()
    walked = ("Add", "Sub", "Mul", "Div", *_RESHAPING, *ROUNDING_OPS)
    scale: float | None = 1.0  # the scalar factor applied after the node reached (None: other)
    while producer is not None and producer.op_type in walked:
        if producer.op_type in _RESHAPING:  # a gate reshaped or expanded (ECA's ``expand_as``)
            producer = producer.inputs[0].producer() if producer.inputs[0] is not None else None
            continue
        computed = [v for v in producer.inputs[:2] if not _is_const(v, live)]
        if len(computed) != 1:
            return False
        if producer.op_type in ("Mul", "Div") and scale is not None:
            const = next((v for v in producer.inputs[:2] if v is not computed[0]), None)
            c = const.const_value.numpy() if const is not None and const.const_value is not None else None
            ok = c is not None and c.size == 1 and not (producer.op_type == "Div" and (
                const is producer.inputs[0] or float(c.reshape(())) == 0))
            factor = float(c.reshape(())) if ok else None
            scale = None if factor is None else scale * (factor if producer.op_type == "Mul" else 1 / factor)
        producer = computed[0].producer()
    if producer is not None and producer.op_type == "Clip":
        bounds = [b.const_value.numpy() if b is not None and b.const_value is not None else None
                  for b in producer.inputs[1:3]]
        if scale is None or len(bounds) != 2 or any(b is None or b.size != 1 for b in bounds):
            return False
        return max(abs(float(b.reshape(())) * scale) for b in bounds) <= 1.0 + 1e-6
    return producer is not None and producer.op_type in _GATE_PRODUCERS


def _receivers(node: ir.Node, rule: Rule, live: set[int]) -> list[ir.Value]:
    ins = [v for v in node.inputs if not _is_const(v, live)]
    signal = rule.signal if isinstance(rule, (Gate, Norm)) else None
    if isinstance(rule, Gate) or signal is not None:
        return [node.inputs[signal]] if signal is not None and signal < len(node.inputs) else []
    return ins


def _attention_values(node: ir.Node, live: set[int]) -> int | None:
    """For a MatMul of attention weights and values, A·V (both computed, exactly one of
    them a Softmax's output, possibly through Dropout, reshapes, a NaN guard or a mixing of
    the heads by constant weights: CaiT's talking heads), the input index of V."""
    if node.op_type != "MatMul" or any(_is_const(v, live) for v in node.inputs[:2]):
        return None
    from_softmax, passing = [], ROUTING_OPS | {"Dropout", "Identity"} | ROUNDING_OPS
    for i, v in enumerate(node.inputs[:2]):
        producer = v.producer()
        while producer is not None and (producer.op_type in passing or _nan_guard(producer, live)
                                        or _constant_affine(producer, live)):
            if producer.op_type in _AFFINE:
                data = next(v for v in producer.inputs[:2] if not _is_const(v, live))
            else:
                data = producer.inputs[2] if producer.op_type == "Where" else producer.inputs[0]
            producer = data.producer() if data is not None else None
        if producer is not None and producer.op_type == "Softmax":
            from_softmax.append(i)
    return 1 - from_softmax[0] if len(from_softmax) == 1 else None


_AFFINE = ("MatMul", "Gemm", "Add", "Sub", "Mul", "Div")


def _constant_affine(node: ir.Node, live: set[int]) -> bool:
    """``node`` applies constant weights, a constant bias or a constant scale to one
    computed tensor (a Div only by a constant)."""
    if node.op_type not in _AFFINE:
        return False
    computed = [i for i, v in enumerate(node.inputs) if not _is_const(v, live)]
    return computed == [0] or (computed == [1] and node.op_type not in ("Div", "Gemm"))


def _nan_guard(node: ir.Node, live: set[int]) -> bool:
    """``node`` is Where(IsNaN(a), c, a) with c constant: the guard torch's exporter puts
    after the softmax of a masked ``scaled_dot_product_attention`` (a fully masked row's
    NaN weights read as 0). Everywhere else it passes ``a`` through."""
    if node.op_type != "Where" or len(node.inputs) != 3 or not _is_const(node.inputs[1], live):
        return False
    check = node.inputs[0].producer() if node.inputs[0] is not None else None
    return check is not None and check.op_type == "IsNaN" and check.inputs[0] is node.inputs[2]


def _product(node: ir.Node, live: set[int], op_type: str) -> bool:
    """``node`` is an ``op_type`` of two computed tensors."""
    return node.op_type == op_type and not any(_is_const(v, live) for v in node.inputs[:2])


def _weighted_ok(node: ir.Node, live: set[int]) -> bool:
    ins = list(node.inputs)
    if node.op_type == "MatMul":
        return sum(not _is_const(v, live) for v in ins[:2]) == 1
    return not _is_const(ins[0], live) and all(_is_const(v, live) for v in ins[1:])


def _positions(
    graph: ir.Graph, source: ir.Value, target: ir.Value, live: set[int]
) -> tuple[set[str], set[str]]:
    nodes = list(graph)
    clean, first = {id(source)}, set()
    for node in nodes:  # along the relevance path only: not the input's Shape, read as a batch size
        if any(v is not None and id(v) in clean for v in node.inputs):
            if node.op_type in LAYER_OPS and _weighted_ok(node, live):
                first.add(node.name)
            else:
                clean.update(id(o) for o in node.outputs if id(o) in live)
    tail, last = {id(target)}, set()
    for node in reversed(nodes):
        if any(id(o) in tail for o in node.outputs):
            if node.op_type in LAYER_OPS and _weighted_ok(node, live):
                last.add(node.name)
            else:
                tail.update(id(v) for v in node.inputs if v is not None and id(v) in live)
    return first, last


def assign(composite: Composite, model: Any, tensor: str | None = None) -> Assignment:
    """See :meth:`Composite.assign`."""
    graph = model.ir.graph
    values = {v.name: v for v in graph.inputs}
    for node in graph:
        values.update({o.name: o for o in node.outputs if o.name})
    source = values[model.input_name]
    name = tensor or model.output_name
    if name not in values:
        model.check_tensors([name])
    target = values[name]
    live = _live_values(graph, source)
    first, last = _positions(graph, source, target, live)
    rules: dict[str, Rule] = {}
    problems: list[str] = []
    ops: set[str] = set()
    order = {n.name: i for i, n in enumerate(graph)}
    todo, seen = [target], set()
    while todo:
        value = todo.pop()
        node = value.producer()
        if node is None or id(node) in seen or id(value) not in live:
            continue
        seen.add(id(node))
        rule = composite.rule_for(node, first, last)
        values = _attention_values(node, live)
        if values is not None and (rule is None or rule.weighted):
            # attention weights are no constant weights: the attention rule (see Norm)
            rule = Norm(composite.stabilizer, signal=values)
        why = None
        if rule is None:
            why = "no rule"
        elif isinstance(rule, Gate):
            signal = rule.signal if rule.signal is not None else _gate_signal(node, live)
            if signal is None and rule.signal is None and _product(node, live, "Mul"):
                rule = Uniform(composite.stabilizer)  # neither factor is a gate: AttnLRP's rule
            elif signal is None or signal >= len(node.inputs) or _is_const(node.inputs[signal], live):
                why = "Gate: cannot tell the signal from the gate; map Gate(signal=i)"
            else:
                rule = Gate(signal)
        elif rule.weighted and node.op_type in WEIGHTED_OPS and not _weighted_ok(node, live):
            if _product(node, live, "MatMul"):  # no constant weights: AttnLRP's rule
                rule = Uniform(composite.stabilizer)
            else:
                why = f"{type(rule).__name__} needs constant weights"
        elif rule.weighted and node.op_type not in WEIGHTED_OPS and not isinstance(rule, Epsilon):
            why = f"{type(rule).__name__} needs a layer with weights"
        if why is not None:
            problems.append(f"{node.name!r} ({node.op_type}: {why})")
            ops.add(node.op_type)
            todo.extend(v for v in node.inputs if not _is_const(v, live))
            continue
        rules[node.name] = rule
        todo.extend(_receivers(node, rule, live))
    if problems:
        problems.sort()
        raise UnsupportedOperatorError(
            f"LRP has no rule for {len(problems)} node(s) on the path from the input to {name!r}: "
            + ", ".join(problems)
            + ". Map a rule to them in the composite, e.g. Composite(rules=[(Select(op_type='Resize'), "
            "Norm())]) or EpsilonPlus(rules=[(Select(name='...'), Epsilon())])",
            sorted(ops),
        )
    rules = dict(sorted(rules.items(), key=lambda kv: order.get(kv[0], 0)))
    return Assignment(rules, frozenset(first), frozenset(last))


__all__: Sequence[str] = [
    "Assignment",
    "Composite",
    "DeepTaylorComposite",
    "EpsilonAlpha2Beta1",
    "EpsilonAlpha2Beta1Flat",
    "EpsilonGammaBox",
    "EpsilonPlus",
    "EpsilonPlusFlat",
    "Select",
    "base_entries",
]
