"""The torch implementations of the LRP rules (:data:`~onnxplain.backends.base.LRP_RULE_NAMES`).

The relevance travels through the graph as the "gradient" of the backward pass (as in
zennit): each ruled node receives the relevance R of its output as ``grad_output`` and
returns the relevance of its inputs. Layers with weights are re-evaluated from the
graph IR (a Conv, ConvTranspose, Gemm, MatMul with a constant operand or an unfolded
BatchNormalization becomes a function z = f(x, W, b)), so a rule only has to say how it
modifies inputs and parameters; the vector-Jacobian products of the modified forward
passes do the rest (zennit's ``BasicHook`` scheme). The formulas are in
:mod:`onnxplain.methods.lrp.rules`.

What keeps a rule's cost near one backward pass of the layer: a convolution's
vector-Jacobian product is its input gradient (``convolution_backward``, no autograd
graph); the modified parameters (W⁺, W⁻, γ-weights, 1, W²) are computed once per layer,
device and dtype; the normaliser of a rule whose modified forward pass is the layer's own
(ε, the sign mask of γ) is the node's forward output; flat and w² see a ones input, whose
forward pass is cached per input shape; and when the layer input has no negative entry
(after a ReLU), the x⁻ passes of z⁺, αβ and γ are skipped, as they are exactly 0.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from onnxplain.backends.base import LRP_RULE_NAMES, BackwardRule
from onnxplain.core.errors import InputValidationError

if TYPE_CHECKING:
    from onnxplain.backends.torch_backend import Rule, RuleContext, TorchBackend

Fn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
Vjp = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# -- stabilised division -------------------------------------------------------------
def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + ε·sign(z), sign(0) = 1 (zennit's ``Stabilizer``); a new tensor."""
    z = z.detach()
    return z.sign().masked_fill_(z == 0, 1).mul_(eps).add_(z)  # in place: no temporaries


def divide(r: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """r / stab(z); with ε = 0, units with z = 0 get 0 instead of inf."""
    if eps > 0:
        d = stabilize(z, eps)
        if d.shape == r.shape and d.dtype == r.dtype:
            return torch.div(r.detach(), d, out=d)
        return r / d
    zero = z == 0
    return torch.where(zero, torch.zeros_like(r), r / torch.where(zero, torch.ones_like(z), z))


# -- layers with weights, from the IR ------------------------------------------------
def _attr(node: Any, name: str, default: Any) -> Any:
    a = node.attributes.get(name)
    return default if a is None else a.value


def _const(value: Any) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return np.asarray(value.const_value.numpy())


@dataclass
class Layer:
    """A layer with weights as z = fn(x, W, b); ``data``: the input index of x."""

    node: str
    data: int
    weight: np.ndarray
    bias: np.ndarray | None
    fn: Fn
    #: ∂⟨s, fn(x, W, ·)⟩/∂x as vjp(s, x, W) without autograd (None: autograd on fn)
    vjp: Vjp | None = None
    _cache: dict = field(default_factory=dict)

    def params(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = (like.device, like.dtype)
        found = self._cache.get(key)
        if found is None:
            w = torch.as_tensor(np.array(self.weight), device=like.device, dtype=like.dtype)
            b = (
                None
                if self.bias is None
                else torch.as_tensor(np.array(self.bias), device=like.device, dtype=like.dtype)
            )
            found = self._cache[key] = (w, b)
        return found

    def modified(
        self, like: torch.Tensor, name: str, make: Callable[[torch.Tensor, torch.Tensor | None], Any]
    ) -> Any:
        """``make(W, b)`` (parameters modified by a rule: W⁺, W⁻, 1, ...), computed once per
        device and dtype: the rules run on every call, the weights do not change."""
        key = (like.device, like.dtype, name)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = make(*self.params(like))
        return found


def _same_pads(
    node: Any, x: torch.Tensor, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
) -> list[int]:
    auto = _attr(node, "auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    d = len(kernel)
    if auto in ("NOTSET", ""):
        return list(_attr(node, "pads", [0] * (2 * d)))
    if auto == "VALID":
        return [0] * (2 * d)
    begin, end = [], []
    for i in range(d):
        size = x.shape[2 + i]
        out = -(-size // strides[i])
        total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(large if auto == "SAME_LOWER" else small)
        end.append(small if auto == "SAME_LOWER" else large)
    return begin + end


def _torch_pad(pads: Sequence[int]) -> list[int]:
    d = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(d)):  # F.pad lists the last dimension first
        out += [pads[i], pads[i + d]]
    return out


def _conv(node: Any, w: np.ndarray) -> tuple[Fn, Vjp]:
    d = w.ndim - 2
    strides = list(_attr(node, "strides", [1] * d))
    dilations = list(_attr(node, "dilations", [1] * d))
    groups = int(_attr(node, "group", 1))
    kernel = list(w.shape[2:])
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d]

    def fn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        pads = _same_pads(node, x, kernel, strides, dilations)
        if pads[:d] == pads[d:]:  # symmetric: the convolution pads (no padded copy of x)
            return conv(x, weight, bias, strides, pads[:d], dilations, groups)
        return conv(F.pad(x, _torch_pad(pads)), weight, bias, strides, 0, dilations, groups)

    def vjp(s: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # the input gradient of the convolution, as autograd computes it (x: only its shape)
        pads = _same_pads(node, x, kernel, strides, dilations)
        symmetric = pads[:d] == pads[d:]
        xp = x if symmetric else F.pad(x, _torch_pad(pads))
        g = torch.ops.aten.convolution_backward(
            s, xp, weight, None, strides, pads[:d] if symmetric else [0] * d, dilations,
            False, [0] * d, groups, [True, False, False],
        )[0]  # fmt: skip
        if symmetric:
            return g
        return g[
            (slice(None), slice(None)) + tuple(slice(pads[i], pads[i] + x.shape[2 + i]) for i in range(d))
        ]

    return fn, vjp


def _conv_transpose(node: Any, w: np.ndarray) -> Fn:
    d = w.ndim - 2
    if _attr(node, "output_shape", None) is not None:
        raise InputValidationError(
            f"LRP: ConvTranspose node {node.name!r} sets output_shape, which is not supported; "
            "export it with explicit pads"
        )
    strides = list(_attr(node, "strides", [1] * d))
    dilations = list(_attr(node, "dilations", [1] * d))
    out_pad = list(_attr(node, "output_padding", [0] * d))
    groups = int(_attr(node, "group", 1))
    pads = list(_attr(node, "pads", [0] * (2 * d)))
    conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[d]

    def fn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        y = conv(x, weight, bias, strides, 0, out_pad, groups, dilations)
        index = [slice(None), slice(None)]
        for i in range(d):
            index.append(slice(pads[i], y.shape[2 + i] - pads[i + d]))
        return y[tuple(index)]

    return fn


def _gemm(node: Any) -> tuple[Fn, float, float]:
    trans_a = int(_attr(node, "transA", 0))
    alpha = float(_attr(node, "alpha", 1.0))
    beta = float(_attr(node, "beta", 1.0))

    def fn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        a = x.transpose(0, 1) if trans_a else x
        y = a @ weight
        return y if bias is None else y + bias

    return fn, alpha, beta


def _batch_norm(node: Any, channels: int) -> Fn:
    def fn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        shape = (1, channels) + (1,) * (x.dim() - 2)
        y = x * weight.reshape(shape)
        return y if bias is None else y + bias.reshape(shape)

    return fn


def build_layer(node: Any) -> Layer:
    """The weighted layer of an IR node, or InputValidationError when it has none."""
    op = node.op_type
    ins = list(node.inputs)
    if op in ("Conv", "ConvTranspose"):
        w = _const(ins[1]) if len(ins) > 1 else None
        b = _const(ins[2]) if len(ins) > 2 and ins[2] is not None else None
        if w is not None and (len(ins) < 3 or ins[2] is None or b is not None):
            if op == "Conv":
                fn, vjp = _conv(node, w)
                return Layer(node.name, 0, w, b, fn, vjp)
            return Layer(node.name, 0, w, b, _conv_transpose(node, w))
    elif op == "Gemm":
        w = _const(ins[1])
        c = _const(ins[2]) if len(ins) > 2 and ins[2] is not None else None
        if w is not None and (len(ins) < 3 or ins[2] is None or c is not None):
            fn, alpha, beta = _gemm(node)
            w = alpha * (w.T if int(_attr(node, "transB", 0)) else w)
            return Layer(node.name, 0, w.astype(np.float32), None if c is None else beta * c, fn)
    elif op == "MatMul":
        right, left = _const(ins[1]), _const(ins[0])
        if right is not None and left is None:
            return Layer(node.name, 0, right, None, lambda x, w, b: x @ w)
        if left is not None and right is None:
            return Layer(node.name, 1, left, None, lambda x, w, b: w @ x)
    elif op == "BatchNormalization":
        consts = [_const(v) for v in ins[1:5]]
        if all(c is not None for c in consts):
            scale, shift, mean, var = (c.astype(np.float64) for c in consts)
            eps = float(_attr(node, "epsilon", 1e-5))
            s = scale / np.sqrt(var + eps)
            return Layer(
                node.name,
                0,
                s.astype(np.float32),
                (shift - mean * s).astype(np.float32),
                _batch_norm(node, len(s)),
            )
    raise InputValidationError(
        f"LRP rule on node {node.name!r} ({op}): the rule needs a layer with constant weights "
        "(Conv, ConvTranspose, Gemm, MatMul with a constant operand, BatchNormalization)"
    )


_LAYERS: weakref.WeakKeyDictionary[Any, dict[str, Layer]] = weakref.WeakKeyDictionary()


def _layer(backend: TorchBackend, node: str) -> Layer:
    model = backend.model
    layers = _LAYERS.setdefault(model, {})
    found = layers.get(node)
    if found is None:
        ir_node = next((n for n in model.ir.graph if n.name == node), None)
        if ir_node is None:
            raise InputValidationError(f"no node named {node!r} in the model")
        found = layers[node] = build_layer(ir_node)
    return found


# -- the rules -------------------------------------------------------------------------
def _vjp(
    outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    got = torch.autograd.grad(list(outputs), list(inputs), list(grads), allow_unused=True)
    return tuple(torch.zeros_like(i) if g is None else g for i, g in zip(inputs, got))


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(True)


def _clamp(t: torch.Tensor | None, lo: float | None = None, hi: float | None = None) -> torch.Tensor | None:
    return None if t is None else t.clamp(min=lo, max=hi)


def _bound(value: Any, x: torch.Tensor) -> torch.Tensor:
    """ZBox bounds as x's shape: scalar, per channel (C,) or per example shape (C, ...)."""
    t = torch.as_tensor(np.asarray(value), device=x.device, dtype=x.dtype)
    if t.dim() == 1 and x.dim() > 2 and t.numel() == x.shape[1]:
        t = t.reshape((1, -1) + (1,) * (x.dim() - 2))
    try:
        return t.expand_as(x).clone()
    except RuntimeError:
        raise InputValidationError(
            f"ZBox bounds of shape {tuple(t.shape)} do not fit the layer input {tuple(x.shape)}; "
            "give a scalar, one value per channel or the input's (C, H, W) shape"
        ) from None


def _nonnegative(x: torch.Tensor) -> bool:
    """No entry of x is negative (x⁻ = 0: the x⁻ terms of a rule vanish exactly)."""
    return x.numel() == 0 or bool(x.min() >= 0)  # NaN: False, the general path


def _ratio(
    layer: Layer,
    terms: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]],
    r: torch.Tensor,
    eps: float,
    z: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ_i ±x_i ⊙ J_iᵀ s with s = mask · r / stab(z) and z = Σ_i ±fn(x_i, W_i, b_i).

    ``terms``: (x_i, W_i, b_i, negated) (zennit's ``BasicHook``: one modified forward pass
    per term, all sharing the normaliser z, which ``z`` gives when it is already known).
    The products J_iᵀ s come from the layer's own ``vjp`` (a convolution's input
    gradient) where it has one, otherwise from autograd on the modified forward passes.
    """
    f = layer.fn
    if layer.vjp is not None:
        if z is None:
            for i, (x, w, b, neg) in enumerate(terms):
                out = f(x, w, b)
                z = out if i == 0 else (z - out if neg else z + out)
        s = divide(r, z, eps)
        if mask is not None:
            s = s.mul_(mask) if s.shape == mask.shape else s * mask
        # x ⊙ (Jᵀs) in place: the convolution's gradient is a new tensor
        parts = [layer.vjp(s, x, w).mul_(x) for x, w, _, _ in terms]
        result = parts[0]
        for (_, _, _, neg), part in zip(terms[1:], parts[1:]):
            result = result.sub_(part) if neg else result.add_(part)
        return result
    with torch.enable_grad():
        leaves = [_leaf(x) for x, _, _, _ in terms]
        outs = [f(xi, w, b) for xi, (_, w, b, _) in zip(leaves, terms)]
        if z is None:
            for i, (out, (_, _, _, neg)) in enumerate(zip(outs, terms)):
                z = out if i == 0 else (z - out if neg else z + out)
        s = divide(r, z, eps)
        if mask is not None:
            s = mask * s
        grads = _vjp(outs, leaves, [s] * len(outs))
    result = None
    for (x, _, _, neg), g in zip(terms, grads):
        part = x * g
        result = part if result is None else (result - part if neg else result + part)
    return result


def _positive(layer: Layer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """W⁺, b⁺ (cached on the layer)."""
    return layer.modified(x, "+", lambda w, b: (w.clamp(min=0), _clamp(b, lo=0)))


def _negative(layer: Layer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """W⁻, b⁻ (cached on the layer)."""
    return layer.modified(x, "-", lambda w, b: (w.clamp(max=0), _clamp(b, hi=0)))


def _split(
    layer: Layer, x: torch.Tensor, positive: bool, r: torch.Tensor, eps: float, nonnegative: bool
) -> torch.Tensor:
    """z⁺ (``positive``: x⁺ through W⁺ with b⁺ and x⁻ through W⁻) or z⁻ (x⁺ through W⁻
    with b⁻ and x⁻ through W⁺), one normaliser."""
    first, second = (_positive, _negative) if positive else (_negative, _positive)
    w1, b1 = first(layer, x)
    if nonnegative:  # x⁻ = 0: its forward pass is exactly 0 and its relevance too
        return _ratio(layer, [(x, w1, b1, False)], r, eps)
    w2, _ = second(layer, x)
    return _ratio(layer, [(x.clamp(min=0), w1, b1, False), (x.clamp(max=0), w2, None, False)], r, eps)


def _weighted(
    kind: str,
    p: Mapping[str, Any],
    layer: Layer,
    x: torch.Tensor,
    r: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The relevance of x for the rule ``kind``; ``out``: the layer's forward output fn(x, W, b)."""
    w, b = layer.params(x)
    if out is not None and (tuple(out.shape) != tuple(r.shape) or out.dtype != r.dtype):
        out = None
    if kind == "lrp.epsilon":
        return _ratio(layer, [(x, w, b, False)], r, float(p.get("epsilon", 1e-6)), z=out)
    eps = float(p.get("stabilizer", 1e-6))
    if kind in ("lrp.zplus", "lrp.alphabeta"):
        nonneg = _nonnegative(x)
        positive = _split(layer, x, True, r, eps, nonneg)
        if kind == "lrp.zplus":
            return positive
        alpha, beta = float(p.get("alpha", 2.0)), float(p.get("beta", 1.0))
        if beta == 0:
            return alpha * positive
        return alpha * positive - beta * _split(layer, x, False, r, eps, nonneg)
    if kind == "lrp.gamma":
        gamma = float(p.get("gamma", 0.25))

        def make(w: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
            return (
                w + gamma * w.clamp(min=0),
                w + gamma * w.clamp(max=0),
                None if b is None else b + gamma * b.clamp(min=0),
                None if b is None else b + gamma * b.clamp(max=0),
            )

        w_up, w_dn, b_up, b_dn = layer.modified(x, ("gamma", gamma), make)
        z = out if out is not None else layer.fn(x, w, b)
        pos, neg = (z > 0).to(r.dtype), (z < 0).to(r.dtype)
        if _nonnegative(x):
            return _ratio(layer, [(x, w_up, b_up, False)], r, eps, mask=pos) + _ratio(
                layer, [(x, w_dn, b_dn, False)], r, eps, mask=neg
            )
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        return _ratio(layer, [(xp, w_up, b_up, False), (xn, w_dn, None, False)], r, eps, mask=pos) + _ratio(
            layer, [(xp, w_dn, b_dn, False), (xn, w_up, None, False)], r, eps, mask=neg
        )
    if kind == "lrp.zbox":
        (wp, bp), (wn, bn) = _positive(layer, x), _negative(layer, x)
        lo, hi = _bound(p["low"], x), _bound(p["high"], x)
        return _ratio(layer, [(x, w, b, False), (lo, wp, bp, True), (hi, wn, bn, True)], r, eps)
    if kind in ("lrp.flat", "lrp.wsquare"):
        if kind == "lrp.flat":
            w1, b1 = layer.modified(x, "flat", lambda w, b: (torch.ones_like(w), None))
        else:
            w1, b1 = layer.modified(x, "wsquare", lambda w, b: (w * w, None if b is None else b * b))
        # the modified forward pass of a ones input: the same for every example and call
        key = (x.device, x.dtype, "ones", kind)
        shape, z = layer._cache.get(key, (None, None))
        if shape != tuple(x.shape[1:]):
            z = layer.fn(x.new_ones((1, *x.shape[1:])), w1, b1)
            layer._cache[key] = (tuple(x.shape[1:]), z)
        if layer.vjp is not None:  # the relevance is Jᵀs itself (x: only its shape counts)
            return layer.vjp(divide(r, z, eps), x, w1)
        return _ratio(layer, [(torch.ones_like(x), w1, b1, False)], r, eps, z=z)
    raise InputValidationError(f"unknown LRP rule {kind!r}; the torch backend knows {list(LRP_RULE_NAMES)}")


def _diff(ctx: RuleContext) -> list[int]:
    return [i for i, a in enumerate(ctx.inputs) if isinstance(a, torch.Tensor) and a.requires_grad]


def _result(ctx: RuleContext, values: Mapping[int, torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    """Relevance for every differentiable input: ``values`` or zeros (never autograd's)."""
    out: list[torch.Tensor | None] = [None] * len(ctx.inputs)
    for i in _diff(ctx):
        out[i] = values[i] if i in values else torch.zeros_like(ctx.inputs[i])
    return tuple(out)


def _relevance(ctx: RuleContext) -> torch.Tensor:
    r = ctx.grad_output[0]
    if r is None:
        return torch.zeros_like(ctx.output if isinstance(ctx.output, torch.Tensor) else ctx.output[0])
    return r


def _weighted_rule(rule: BackwardRule, backend: TorchBackend, node: str) -> Rule:
    layer = _layer(backend, node)
    kind, params = rule.name, dict(rule.params or {})

    def fn(ctx: RuleContext) -> tuple[torch.Tensor | None, ...]:
        x = ctx.inputs[layer.data].detach()
        out = ctx.output.detach() if isinstance(ctx.output, torch.Tensor) else None
        return _result(ctx, {layer.data: _weighted(kind, params, layer, x, _relevance(ctx), out)})

    return fn


def _norm_rule(eps: float, signal: int | None = None, shared: bool = False) -> Rule:
    """The proportional split; ``shared``: each computed input's share divided by their
    number (AttnLRP's uniform rule)."""

    def fn(ctx: RuleContext) -> tuple[torch.Tensor | None, ...]:
        diff = [i for i in _diff(ctx) if signal is None or i == signal]
        if not diff:
            return _result(ctx, {})
        # the node's own Jacobian: re-run it on detached inputs (autograd on the recorded
        # graph would also follow paths between its inputs, e.g. a skip connection whose
        # other branch starts from the same tensor); .forward skips the module's hooks
        args = [a.detach() if isinstance(a, torch.Tensor) else a for a in ctx.inputs]
        for i in diff:
            args[i] = args[i].requires_grad_(True)
        with torch.enable_grad():
            out = ctx.module.forward(*args, **ctx.kwargs)
        out = out if isinstance(out, torch.Tensor) else out[0]
        leaves = [args[i] for i in diff]
        grads = _vjp([out], leaves, [divide(_relevance(ctx), out.detach(), eps)])
        share = 1.0 / len(diff) if shared else 1.0
        return _result(ctx, {i: a.detach() * g * share for i, a, g in zip(diff, leaves, grads)})

    fn.needs_grad_input = False  # type: ignore[attr-defined]
    return fn


#: Normalisations the ε rule holds linear by a constant standard deviation (or RMS).
_NORMALIZATIONS = ("LayerNormalization", "InstanceNormalization", "GroupNormalization", "RMSNormalization")


def _layer_norm_rule(eps: float, node: Any) -> Rule:
    """ε on a LayerNormalization made linear by holding its standard deviation constant
    (the LN-rule of Ali et al., ICML 2022): z = γ ⊙ (x − μ(x)) / σ̂ + β with σ̂ detached,
    R_x = x ⊙ Jᵀ(R / stab(z)). The centring stays in the Jacobian, so relevance is conserved
    up to what β absorbs, as a layer's bias does. An InstanceNormalization (and GroupNorm,
    which exporters write as one on the grouped tensor) gets the same rule over its spatial
    axes, with its per-channel γ and β; a GroupNormalization over each group of channels; an
    RMSNormalization (no centring, no β) over its axes, where the rule passes R unchanged."""
    op = node.op_type
    instance = op in ("InstanceNormalization", "GroupNormalization")
    axis = 2 if instance else int(_attr(node, "axis", -1))
    groups = int(_attr(node, "num_groups", 0)) if op == "GroupNormalization" else 0
    norm_eps = float(_attr(node, "epsilon", 1e-5))
    consts = ([_const(v) for v in list(node.inputs)[1:3]] + [None, None])[:2]  # γ, β (RMS: no β)

    def fn(ctx: RuleContext) -> tuple[torch.Tensor | None, ...]:
        if 0 not in _diff(ctx):
            return _result(ctx, {})
        x = _leaf(ctx.inputs[0])
        params = []
        for i, c in enumerate(consts):
            if c is not None:
                params.append(torch.as_tensor(np.array(c), device=x.device, dtype=x.dtype))
            elif i + 1 < len(ctx.inputs) and isinstance(ctx.inputs[i + 1], torch.Tensor):
                params.append(ctx.inputs[i + 1].detach())
            else:
                params.append(None)
        dims = tuple(range(axis % x.ndim, x.ndim))
        if instance:  # (C,) → (C, 1, ..., 1): one scale and shift per channel
            params = [q.reshape(-1, *[1] * (x.ndim - 2)) if q is not None else None for q in params]
        with torch.enable_grad():
            grouped = x.reshape(x.shape[0], groups, -1) if groups else x
            if groups:
                dims = (2,)
            centred = grouped if op == "RMSNormalization" else grouped - grouped.mean(dims, keepdim=True)
            std = (centred.detach().square().mean(dims, keepdim=True) + norm_eps).sqrt()
            z = (centred / std).reshape(x.shape)
            if params[0] is not None:
                z = z * params[0]
            if params[1] is not None:
                z = z + params[1]
        (g,) = _vjp([z], [x], [divide(_relevance(ctx), z.detach(), eps)])
        return _result(ctx, {0: x.detach() * g})

    fn.needs_grad_input = False  # type: ignore[attr-defined]
    return fn


def _pass_rule() -> Rule:
    def fn(ctx: RuleContext) -> tuple[torch.Tensor | None, ...]:
        diff = _diff(ctx)
        if not diff:
            return _result(ctx, {})
        r, x = _relevance(ctx), ctx.inputs[diff[0]]
        if tuple(r.shape) != tuple(x.shape):
            raise InputValidationError(
                f"LRP Pass rule on node {ctx.node!r} ({ctx.op_type}): its output {tuple(r.shape)} and "
                f"input {tuple(x.shape)} differ in shape; map Norm() or Gradient() to it instead"
            )
        return _result(ctx, {diff[0]: r})

    fn.needs_grad_input = False  # type: ignore[attr-defined]
    return fn


def _gate_rule(signal: int) -> Rule:
    def fn(ctx: RuleContext) -> tuple[torch.Tensor | None, ...]:
        r = _relevance(ctx)
        values = {}
        if signal in _diff(ctx):
            x = ctx.inputs[signal]
            if tuple(r.shape) != tuple(x.shape):
                try:
                    broadcast = tuple(torch.broadcast_shapes(x.shape, r.shape)) == tuple(r.shape)
                except RuntimeError:
                    broadcast = False
                if not broadcast:
                    raise InputValidationError(
                        f"LRP Gate rule on node {ctx.node!r}: the signal input {signal} has shape "
                        f"{tuple(x.shape)}, the output {tuple(r.shape)}; choose the other input as signal"
                    )
                # a broadcast signal (Keras' LayerNorm: μ times γ/σ) gets what its copies got:
                # the ε-rule of x·g_j over the outputs j it reaches, with g held constant
                r = r.sum_to_size(x.shape)
            values[signal] = r
        return _result(ctx, values)

    fn.needs_grad_input = False  # type: ignore[attr-defined]
    return fn


def resolve(rule: BackwardRule, backend: TorchBackend | None, node: str | None) -> Rule:
    """The torch rule for one of :data:`LRP_RULE_NAMES` on ``node`` of ``backend``'s model."""
    params = dict(rule.params or {})
    if rule.name == "lrp.pass":
        return _pass_rule()
    if rule.name == "lrp.norm":
        signal = params.get("signal")
        return _norm_rule(float(params.get("stabilizer", 1e-6)), None if signal is None else int(signal))
    if rule.name == "lrp.uniform":
        return _norm_rule(float(params.get("stabilizer", 1e-6)), shared=True)
    if rule.name == "lrp.gate":
        if params.get("signal") is None:
            raise InputValidationError("lrp.gate needs the signal's input index")
        return _gate_rule(int(params["signal"]))
    if backend is None or node is None:
        raise InputValidationError(f"backward rule {rule.name!r} needs the node it applies to")
    if rule.name == "lrp.epsilon":
        ir_node = next((n for n in backend.model.ir.graph if n.name == node), None)
        if ir_node is not None and ir_node.op_type in _NORMALIZATIONS:
            return _layer_norm_rule(float(params.get("epsilon", 1e-6)), ir_node)
        if ir_node is not None and ir_node.op_type not in (
            "Conv",
            "ConvTranspose",
            "Gemm",
            "MatMul",
            "BatchNormalization",
        ):
            return _norm_rule(float(params.get("epsilon", 1e-6)))
    fn = _weighted_rule(rule, backend, node)
    fn.needs_grad_input = False  # type: ignore[attr-defined]
    return fn
