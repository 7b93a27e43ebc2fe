"""Fused activations and linear layers, and cached shape arithmetic, for the torch
backend's plain passes.

Exporters write GELU, SiLU and Mish out as chains of elementwise nodes: torch's legacy
exporter writes ``0.5 · x · (1 + erf(x / √2))`` as Div, Erf, Add, Mul, Mul; tanh-GELU
takes nine nodes. onnx2torch turns each node into a module, so one activation costs
five to nine passes over its tensor forward and as many again backward, where torch has
one kernel each way (``F.gelu``). On the transformers it is the largest part of what the
converted module costs beyond the original (swin_t: about half).

:func:`find` recognises such chains by what they compute, not by how they are written:
a *cone* of elementwise nodes with scalar constants that depends on one tensor ``x`` is
evaluated in float64 on probe values of ``x`` and compared with each known activation.
Any order of the factors, ``Div(x, √2)`` or ``Mul(x, 1/√2)``, ``Pow(x, 3)`` or
``x · x · x``: all are found, and nothing that computes anything else is.

A linear layer on a sequence (B, L, C) is exported as MatMul with the weight, then Add
with the bias; torch's own layer is one ``addmm`` (the bias added inside the matrix
product), which :func:`find` restores. Below opset 17 a layer normalisation is written out
as ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add; :func:`find` makes it one
``F.layer_norm`` (over the last axis; any other is left alone).

Exports that keep the batch size dynamic compute shapes in the graph: ``Shape`` of an
activation, then Gather, Unsqueeze, Concat ... into a Reshape's shape (swin_t from torch's
legacy exporter: 477 Shape nodes, some 2000 such nodes in all, each a module call of
10–20 µs, and on a GPU each Reshape then reads its shape back from the device).
:func:`shape_arithmetic` finds the values computed from shapes and constants alone; the
plain module computes each once per set of input shapes and keeps it
(:class:`CachedValue`), on the device and, for the arguments that are read as numbers
(a Reshape's shape), on the host.

:func:`build` makes a second :class:`torch.fx.GraphModule` over the same submodules
and weights in which each chain is one call and each shape value is read from its
cache. The backend runs it for plain passes; a pass that hooks a node it changed (a layer
captured, a value overridden, a backward rule such as LRP's on a linear layer) runs the
node-by-node module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional as F

#: Nodes a cone may hold; the value is the float64 function of the node's inputs.
_ELEMENTWISE: dict[str, Callable[..., torch.Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": torch.div,
    "Pow": torch.pow,
    "Erf": torch.erf,
    "Tanh": torch.tanh,
    "Sigmoid": torch.sigmoid,
    "Exp": torch.exp,
    "Neg": torch.neg,
    "Softplus": F.softplus,
    "Identity": lambda x: x,
}


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """ONNX's ``MatMul(x, weight) + bias`` (weight (C, D)) as torch's linear layer."""
    return F.linear(x, weight.mT, bias.reshape(-1))


#: The activations a cone is compared with; each is also the function that replaces it.
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": _gelu_tanh,
    "silu": F.silu,
    "mish": F.mish,
}
def _layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                *, eps: float) -> torch.Tensor:
    """Layer normalisation over the last axis, as torch's layer (ONNX's before opset 17 writes
    it out as ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add)."""
    return F.layer_norm(x, x.shape[-1:], None if weight is None else weight.reshape(-1),
                        None if bias is None else bias.reshape(-1), eps)


#: What replaces each kind of fusion.
_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {**_ACTIVATIONS, "linear": _linear,
                                                       "layer_norm": _layer_norm}

_FLOATS = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                     onnx.TensorProto.BFLOAT16})
#: Largest cone looked at (tanh-GELU written out with x·x·x has 10 nodes).
MAX_NODES = 16
#: Probe values of x, and how close (relative to 1 + |f|) a cone must be to an activation:
#: float32 constants (√2 as 1.4142135) are within 1e-7, the nearest other activation
#: (tanh-GELU against GELU) is 5e-4 away.
_PROBE = torch.linspace(-8.0, 8.0, 1601, dtype=torch.float64)
TOLERANCE = 1e-6


@dataclass(frozen=True)
class Fusion:
    """Nodes ``nodes`` (``root`` last) compute ``function`` (a key of :data:`_FUNCTIONS`)
    of the tensors that ``operands`` point to: (node, input number) where a node of the
    chain reads each; ``keywords``: the function's other arguments."""

    function: str
    nodes: tuple[str, ...]
    operands: tuple[tuple[str, int], ...]
    keywords: tuple[tuple[str, float], ...] = ()

    @property
    def root(self) -> str:
        return self.nodes[-1]


class _Graph:
    """What :func:`find` reads of an ONNX graph: producers, consumers, constants, ranks."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes = list(graph.node)
        self.order = {n.name: i for i, n in enumerate(self.nodes)}
        self.producer = {out: n for n in self.nodes for out in n.output if out}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for name in set(n.input):
                if name:
                    self.consumers.setdefault(name, []).append(n)
        self.outputs = {o.name for o in graph.output}
        self.constants = {t.name: t for t in graph.initializer}
        self.ranks: dict[str, int] = {}
        for vi in [*graph.input, *graph.value_info, *graph.output]:
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                self.ranks[vi.name] = len(vi.type.tensor_type.shape.dim)

    def constant(self, name: str) -> np.ndarray | None:
        tensor = self.constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def elementwise(self, node: onnx.NodeProto) -> bool:
        """A node of :data:`_ELEMENTWISE` (in the default domain) with one output."""
        return (node.domain in ("", "ai.onnx") and node.op_type in _ELEMENTWISE
                and len(node.output) == 1 and node.output[0] not in self.outputs)


def find(graph: onnx.GraphProto, taken: Iterable[str] = ()) -> list[Fusion]:
    """The activations and linear layers of ``graph`` written out as several nodes, none
    overlapping another or a node of ``taken``, in graph order."""
    g = _Graph(graph)
    taken = set(taken)
    found = []
    for root in reversed(g.nodes):
        if root.name in taken:
            continue
        fusion = (_linear_layer(g, root) or _layer_norm_at(g, root)
                  or (_match(g, root) if g.elementwise(root) else None))
        if fusion is not None and taken.isdisjoint(fusion.nodes):
            found.append(fusion)
            taken.update(fusion.nodes)
    return sorted(found, key=lambda f: g.order[f.root])


def _linear_layer(g: _Graph, add: onnx.NodeProto) -> Fusion | None:
    """``add`` = MatMul(x, W) + b with constant W (C, D) and b holding D numbers on the
    last axis, the product used nowhere else."""
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
        return None
    for j, name in enumerate(add.input):
        mm = g.producer.get(name)
        if mm is None or mm.op_type != "MatMul" or mm.domain not in ("", "ai.onnx"):
            continue
        if name in g.outputs or len(g.consumers[name]) != 1 or mm.input[0] in g.constants:
            continue
        w, b = g.constants.get(mm.input[1]), g.constants.get(add.input[1 - j])
        if w is None or b is None or len(w.dims) != 2 or w.data_type != b.data_type:
            continue
        if w.data_type not in _FLOATS or math.prod(b.dims) != w.dims[1] or list(b.dims[-1:]) != w.dims[1:]:
            continue
        rank = g.ranks.get(mm.input[0])
        if len(b.dims) > 1 and (rank is None or len(b.dims) > rank):
            continue  # a bias of higher rank would change the output's shape
        return Fusion("linear", (mm.name, add.name), ((mm.name, 0), (mm.name, 1), (add.name, 1 - j)))
    return None


def _last_axis_mean(g: _Graph, node: onnx.NodeProto | None, x: str) -> bool:
    """``node`` is ReduceMean of ``x`` over its last axis alone, keeping the axis."""
    if node is None or node.op_type != "ReduceMean" or node.input[0] != x:
        return False
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    axes = attrs.get("axes")
    if len(node.input) > 1 and node.input[1]:
        const = g.constant(node.input[1])
        axes = None if const is None else const.reshape(-1).tolist()
    rank = g.ranks.get(x)
    return (attrs.get("keepdims", 1) == 1 and axes is not None and len(axes) == 1
            and (axes[0] == -1 or (rank is not None and axes[0] == rank - 1)))


def _per_channel(g: _Graph, name: str) -> bool:
    """A float constant of one axis (or ones before its last)."""
    t = g.constants.get(name)
    return t is not None and t.data_type in _FLOATS and len(t.dims) >= 1 and math.prod(t.dims[:-1]) == 1


def _layer_norm_at(g: _Graph, root: onnx.NodeProto) -> Fusion | None:
    """``root`` (Add of β, Mul by γ, or the Div) ends a layer normalisation over the last
    axis written out as (x - μ) / √(mean((x - μ)²) + ε), each inner value read only inside."""
    if root.domain not in ("", "ai.onnx"):
        return None
    node, tail, params = root, [], []  # tail: the affine nodes after the Div; params: (γ, β)
    for op in ("Add", "Mul"):
        if node.op_type != op or len(node.input) != 2:
            continue
        j = next((i for i in range(2) if _per_channel(g, node.input[i])), None)
        producer = g.producer.get(node.input[1 - j]) if j is not None else None
        if producer is None:
            return None
        tail.append(node)
        params.insert(0, (node.name, j))
        node = producer
    if tail and tail[0].op_type == "Add" and len(tail) == 1:
        return None  # β without γ
    if node.op_type != "Div" or len(node.input) != 2:
        return None
    div = node
    sub, sqrt = g.producer.get(div.input[0]), g.producer.get(div.input[1])
    if sub is None or sub.op_type != "Sub" or sqrt is None or sqrt.op_type != "Sqrt":
        return None
    x, mean = sub.input[0], g.producer.get(sub.input[1])
    plus = g.producer.get(sqrt.input[0])
    if not _last_axis_mean(g, mean, x) or plus is None or plus.op_type != "Add":
        return None
    k = next((i for i in range(2) if g.constant(plus.input[i]) is not None), None)
    eps = g.constant(plus.input[k]) if k is not None else None
    if eps is None or eps.size != 1:
        return None
    var = g.producer.get(plus.input[1 - k])
    square = g.producer.get(var.input[0]) if var is not None else None
    d = div.input[0]
    if not _last_axis_mean(g, var, square.output[0] if square is not None else ""):
        return None
    two = g.constant(square.input[1]) if square.op_type == "Pow" else None
    if not ((square.op_type == "Pow" and square.input[0] == d and two is not None and two.size == 1
             and float(two.reshape(())) == 2.0)
            or (square.op_type == "Mul" and list(square.input) == [d, d])):
        return None
    nodes = [mean, sub, square, var, plus, sqrt, div, *reversed(tail)]
    names = {n.name for n in nodes}
    for n in nodes[:-1]:
        out = n.output[0]
        if out in g.outputs or any(c.name not in names for c in g.consumers[out]):
            return None
    return Fusion("layer_norm", tuple(n.name for n in nodes), ((sub.name, 0), *params),
                  (("eps", float(eps.reshape(()))),))


def _cone(g: _Graph, root: onnx.NodeProto) -> list[onnx.NodeProto]:
    """``root`` and the elementwise nodes above it whose every consumer is in the cone."""
    cone = {root.name: root}
    grown = True
    while grown and len(cone) < MAX_NODES:
        grown = False
        for node in list(cone.values()):
            for name in node.input:
                p = g.producer.get(name)
                if p is None or p.name in cone or not g.elementwise(p):
                    continue
                if all(c.name in cone for c in g.consumers[p.output[0]]):
                    cone[p.name] = p
                    grown = True
    return sorted(cone.values(), key=lambda n: g.order[n.name])


#: Every known activation has one of these (a cone without one is not evaluated).
_SQUASHING = frozenset({"Erf", "Tanh", "Sigmoid", "Softplus"})


def _match(g: _Graph, root: onnx.NodeProto) -> Fusion | None:
    cone = _cone(g, root)
    if len(cone) < 2 or not any(n.op_type in _SQUASHING for n in cone):
        return None
    # candidate sources, the outermost first: inputs from outside, then inside the cone
    inside = {n.output[0] for n in cone}
    candidates = [name for n in cone for name in n.input
                  if name and name not in g.constants and name not in inside]
    candidates += [n.output[0] for n in cone[:-1]]
    for source in dict.fromkeys(candidates):
        nodes = _between(g, cone, source)
        if nodes is None or len(nodes) < 2:
            continue
        activation = _identify(g, nodes, source)
        if activation is not None:
            reader = nodes[0]  # the first node that depends on the source reads it
            return Fusion(activation, tuple(n.name for n in nodes),
                          ((reader.name, list(reader.input).index(source)),))
    return None


def _between(g: _Graph, cone: Sequence[onnx.NodeProto], source: str) -> list[onnx.NodeProto] | None:
    """The nodes of ``cone`` that depend on ``source``, if they form a function of it alone
    (every other input a constant, every value used only inside), else None."""
    reached = {source}
    nodes = []
    for n in cone:
        if any(i in reached for i in n.input):
            nodes.append(n)
            reached.add(n.output[0])
    if not nodes or nodes[-1] is not cone[-1]:
        return None
    names = {n.name for n in nodes}
    for n in nodes:
        if any(i and i not in reached and i not in g.constants for i in n.input):
            return None
        if n is not nodes[-1] and any(c.name not in names for c in g.consumers[n.output[0]]):
            return None
    return nodes


def _identify(g: _Graph, nodes: Sequence[onnx.NodeProto], source: str) -> str | None:
    """Which activation ``nodes`` compute of ``source``, by evaluation on probe values."""
    rank = g.ranks.get(source)
    values: dict[str, torch.Tensor] = {source: _PROBE}
    for n in nodes:
        args = []
        for name in n.input:
            if name in values:
                args.append(values[name])
                continue
            const = g.constant(name)
            if const is None or const.size != 1 or not np.issubdtype(const.dtype, np.floating):
                return None
            if const.ndim and (rank is None or const.ndim > rank):
                return None  # a constant of higher rank would change the output's shape
            args.append(torch.tensor(float(const.reshape(())), dtype=torch.float64))
        if n.attribute:
            return None  # Softplus and the rest have none; anything with one is not ours
        values[n.output[0]] = _ELEMENTWISE[n.op_type](*args)
    y = values[nodes[-1].output[0]]
    if y.shape != _PROBE.shape or not torch.isfinite(y).all():
        return None
    for name, fn in _ACTIVATIONS.items():
        ref = fn(_PROBE)
        if bool(((y - ref).abs() <= TOLERANCE * (1 + ref.abs())).all()):
            return name
    return None


#: Operators that are not a function of their inputs' values alone (random draws) or that
#: hold graphs: never part of shape arithmetic.
NOT_ARITHMETIC = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
    "Bernoulli", "If", "Loop", "Scan",
})
#: Bytes the cached shape arithmetic of one model may hold (values computed from shapes
#: are mostly a few numbers; masks and position tables built from shapes are larger).
CACHE_BYTES = 64 * 2**20
#: (operator, input number) that the torch modules read as Python numbers: a value there
#: is handed over from the host, so that a GPU pass does not wait to read it back.
READ_AS_NUMBERS = frozenset({
    ("Reshape", 1), ("Expand", 1), ("Tile", 1), ("Slice", 1), ("Slice", 2), ("Slice", 3),
    ("Slice", 4), ("Resize", 1), ("Resize", 2), ("Resize", 3),
})


@dataclass(frozen=True)
class ShapeValue:
    """Tensor ``name``, computed by ``nodes`` (in graph order, the value's own node last)
    from constants and the shapes of the tensors that its Shape nodes ``shapes`` read;
    ``numbers``: every reader reads it as Python numbers."""

    name: str
    nodes: tuple[str, ...]
    shapes: tuple[str, ...]
    numbers: bool


def shape_arithmetic(graph: onnx.GraphProto) -> list[ShapeValue]:
    """The values of ``graph`` computed from shapes and constants alone that other nodes
    read, in graph order."""
    g = _Graph(graph)
    computed: dict[str, onnx.NodeProto] = {}  # value -> its node
    for n in g.nodes:
        if n.domain not in ("", "ai.onnx") or n.op_type in NOT_ARITHMETIC or len(n.output) != 1:
            continue
        if n.output[0] in g.outputs:
            continue
        if n.op_type == "Shape" or (any(i in computed for i in n.input) and all(
                not i or i in g.constants or i in computed for i in n.input)):
            computed[n.output[0]] = n
    arithmetic = {n.name for n in computed.values()}
    found = []
    for value, node in computed.items():
        readers = [(c.op_type, i) for c in g.consumers.get(value, []) if c.name not in arithmetic
                   for i, name in enumerate(c.input) if name == value]
        if not readers:
            continue
        nodes: dict[str, onnx.NodeProto] = {}
        todo = [node]
        while todo:
            n = todo.pop()
            if n.name not in nodes:
                nodes[n.name] = n
                todo.extend(computed[i] for i in n.input if i in computed)
        order = sorted(nodes, key=g.order.__getitem__)
        reading = tuple(n for n in order if nodes[n].op_type == "Shape" and nodes[n].input[0] not in computed)
        found.append(ShapeValue(value, tuple(order), reading, all(r in READ_AS_NUMBERS for r in readers)))
    return found


class _Budget:
    """Bytes the cached values of one module may still hold."""

    def __init__(self, left: int) -> None:
        self.left = left


class CachedValue(nn.Module):
    """One :class:`ShapeValue` in the plain module: ``compute`` (the original nodes'
    modules) runs once for each set of shapes of the tensors the Shape nodes read (the
    arguments), and the value is kept, made outside inference mode so that gradient passes
    may use it too. A value the module's budget cannot hold is computed on every call."""

    #: Sets of shapes kept per value.
    MAX_ENTRIES = 8

    def __init__(self, compute: torch.fx.GraphModule, numbers: bool, budget: _Budget) -> None:
        super().__init__()
        self._compute = [compute]  # a list: its modules are the plain module's, not ours
        self._numbers, self._budget = numbers, budget
        self._cache: dict[tuple, torch.Tensor] = {}

    def forward(self, *leaves: torch.Tensor) -> torch.Tensor:
        key = tuple(t.shape for t in leaves)
        value = self._cache.get(key)
        if value is None:
            with torch.inference_mode(False), torch.no_grad():
                value = self._compute[0](*leaves)
                if self._numbers:
                    value = value.cpu()
            self._keep(key, value)
        return value

    def _keep(self, key: tuple, value: torch.Tensor) -> None:
        if len(self._cache) >= self.MAX_ENTRIES:
            self._budget.left += sum(_nbytes(v) for v in self._cache.values())
            self._cache.clear()
        if _nbytes(value) <= self._budget.left:
            self._budget.left -= _nbytes(value)
            self._cache[key] = value


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _computation(module: torch.fx.GraphModule, steps: Sequence[torch.fx.Node],
                 shapes: Sequence[torch.fx.Node]) -> tuple[torch.fx.GraphModule, list[torch.fx.Node]] | None:
    """``steps`` (fx nodes of a :class:`ShapeValue`, the value last) as a GraphModule of
    the tensors whose shapes they read (the first argument of each of ``shapes``), and
    those tensors' fx values."""
    leaves = list(dict.fromkeys(s.args[0] for s in shapes))
    graph = torch.fx.Graph()
    env = {leaf: graph.placeholder(f"shaped_{i}") for i, leaf in enumerate(leaves)}
    try:
        for step in steps:
            for a in step.all_input_nodes:
                if a not in env:
                    if a.op != "get_attr":
                        return None
                    env[a] = graph.node_copy(a)
            env[step] = graph.node_copy(step, env.__getitem__)
    except KeyError:
        return None
    graph.output(env[steps[-1]])
    return torch.fx.GraphModule(module, graph), leaves


def build(module: torch.fx.GraphModule, unique: Mapping[str, str], fusions: Iterable[Fusion],
          shapes: Iterable[ShapeValue] = ()) -> torch.fx.GraphModule | None:
    """A GraphModule over ``module``'s submodules and weights that computes each fusion in
    one call and takes each shape value from a :class:`CachedValue` (None when there is
    nothing to change). ``unique``: ONNX node name -> the submodule name onnx2torch gave
    it; onnx2torch passes the inputs of the nodes fused here in the ONNX order."""
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    out = graph.graph_copy(module.graph, env)
    graph.output(out)
    calls = {n.target: n for n in graph.nodes if n.op == "call_module"}
    fused = _cache_shapes(module, graph, [([calls[unique[n]] for n in v.nodes],
                                           [calls[unique[n]] for n in v.shapes], v.numbers)
                                          for v in shapes])
    for f in fusions:
        root, nodes = calls[unique[f.root]], [calls[unique[n]] for n in f.nodes]
        operands = [_arg(calls[unique[node]], i) for node, i in f.operands]
        if None in operands:
            continue
        with graph.inserting_before(root):
            call = graph.call_function(_FUNCTIONS[f.function], tuple(operands), dict(f.keywords))
        root.replace_all_uses_with(call)
        for node in reversed(nodes):
            _erase(graph, node)
        fused += 1
    if not fused:
        return None
    graph.lint()
    return torch.fx.GraphModule(module, graph)


def _cache_shapes(module: torch.fx.GraphModule, graph: torch.fx.Graph,
                  values: Sequence[tuple[list[torch.fx.Node], list[torch.fx.Node], bool]]) -> int:
    """Each value (its fx nodes, itself last; its Shape nodes; read as numbers) read from a
    :class:`CachedValue` by the nodes outside shape arithmetic; the shape arithmetic that
    nothing reads any more erased. The number of values cached."""
    plans = [(steps, _computation(module, steps, shapes), n) for steps, shapes, n in values]
    arithmetic = {s for steps, _, _ in values for s in steps}
    budget = _Budget(CACHE_BYTES)
    cached = 0
    for steps, plan, numbers_only in plans:
        if plan is None:
            continue
        compute, leaves = plan
        name = f"onnxplain_shape_{cached}"
        module.add_module(name, CachedValue(compute, numbers_only, budget))
        with graph.inserting_before(steps[-1]):
            call = graph.call_module(name, tuple(leaves))
        steps[-1].replace_all_uses_with(call, delete_user_cb=lambda user: user not in arithmetic)
        cached += 1
    for node in reversed(list(graph.nodes)):
        if node in arithmetic and not node.users:
            _erase(graph, node)
    return cached


def _erase(graph: torch.fx.Graph, node: torch.fx.Node) -> None:
    """``node`` out of ``graph``, and the constants it read that nothing else reads."""
    constants = [a for a in node.all_input_nodes if a.op == "get_attr"]
    graph.erase_node(node)
    for a in constants:
        if not a.users:
            graph.erase_node(a)


def _arg(node: torch.fx.Node, i: int) -> torch.fx.Node | None:
    arg = node.args[i] if i < len(node.args) else None
    return arg if isinstance(arg, torch.fx.Node) else None


def hooked(modules: Iterable[nn.Module]) -> bool:
    """Whether any of ``modules`` has a forward or backward hook, or any module has a
    global one (a pass that must see those modules runs the unfused module)."""
    from torch.nn.modules import module as torch_module

    for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks"):
        if getattr(torch_module, name, None):
            return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
               or m._backward_pre_hooks for m in modules)
