"""The torch implementations of the LRP rules (:data:`~onnxplain.backends.base.LRP_RULE_NAMES`).

The relevance travels through the graph as the "gradient" of the backward pass (as in
zennit): each ruled node receives the relevance R of its output as ``grad_output`` and
returns the relevance of its inputs. Layers with weights are re-evaluated from the
graph IR (a Conv, ConvTranspose, Gemm, MatMul with a constant operand or an unfolded
BatchNormalization becomes a function z = f(x, W, b)), so a rule only has to say how it
modifies inputs and parameters; the vector-Jacobian products of the modified forward
passes do the rest (zennit's ``BasicHook`` scheme). The formulas are in
:mod:`onnxplain.methods.lrp.rules`.
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


# -- stabilised division -------------------------------------------------------------
def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + ε·sign(z), sign(0) = 1 (zennit's ``Stabilizer``)."""
    return z + eps * (z.sign() + (z == 0).to(z.dtype))


def divide(r: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """r / stab(z); with ε = 0, units with z = 0 get 0 instead of inf."""
    if eps > 0:
        return r / stabilize(z, eps)
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


def _conv(node: Any, w: np.ndarray) -> Fn:
    d = w.ndim - 2
    strides = list(_attr(node, "strides", [1] * d))
    dilations = list(_attr(node, "dilations", [1] * d))
    groups = int(_attr(node, "group", 1))
    kernel = list(w.shape[2:])
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d]

    def fn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        pads = _same_pads(node, x, kernel, strides, dilations)
        if any(pads):
            x = F.pad(x, _torch_pad(pads))
        return conv(x, weight, bias, strides, 0, dilations, groups)

    return fn


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
            fn = _conv(node, w) if op == "Conv" else _conv_transpose(node, w)
            return Layer(node.name, 0, w, b, fn)
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


def _weighted(
    kind: str, p: Mapping[str, Any], layer: Layer, x: torch.Tensor, r: torch.Tensor
) -> torch.Tensor:
    w, b = layer.params(x)
    f = layer.fn
    with torch.enable_grad():
        if kind == "lrp.epsilon":
            xi = _leaf(x)
            z = f(xi, w, b)
            (g,) = _vjp([z], [xi], [divide(r, z, float(p.get("epsilon", 1e-6)))])
            return x * g
        eps = float(p.get("stabilizer", 1e-6))
        if kind in ("lrp.zplus", "lrp.alphabeta"):
            wp, wn, bp, bn = w.clamp(min=0), w.clamp(max=0), _clamp(b, lo=0), _clamp(b, hi=0)
            xp, xn = _leaf(x.clamp(min=0)), _leaf(x.clamp(max=0))
            z = f(xp, wp, bp) + f(xn, wn, None)
            gp, gn = _vjp([z], [xp, xn], [divide(r, z, eps)])
            positive = xp.detach() * gp + xn.detach() * gn
            if kind == "lrp.zplus":
                return positive
            alpha, beta = float(p.get("alpha", 2.0)), float(p.get("beta", 1.0))
            if beta == 0:
                return alpha * positive
            xp2, xn2 = _leaf(x.clamp(min=0)), _leaf(x.clamp(max=0))
            z2 = f(xp2, wn, bn) + f(xn2, wp, None)
            gp2, gn2 = _vjp([z2], [xp2, xn2], [divide(r, z2, eps)])
            return alpha * positive - beta * (xp2.detach() * gp2 + xn2.detach() * gn2)
        if kind == "lrp.gamma":
            gamma = float(p.get("gamma", 0.25))
            w_up, w_dn = w + gamma * w.clamp(min=0), w + gamma * w.clamp(max=0)
            b_up = None if b is None else b + gamma * b.clamp(min=0)
            b_dn = None if b is None else b + gamma * b.clamp(max=0)
            z = f(x, w, b)
            xs = [_leaf(x.clamp(min=0)), _leaf(x.clamp(max=0)), _leaf(x.clamp(min=0)), _leaf(x.clamp(max=0))]
            outs = [f(xs[0], w_up, b_up), f(xs[1], w_dn, None), f(xs[2], w_dn, b_dn), f(xs[3], w_up, None)]
            s_pos = (z > 0).to(r.dtype) * divide(r, outs[0] + outs[1], eps)
            s_neg = (z < 0).to(r.dtype) * divide(r, outs[2] + outs[3], eps)
            grads = _vjp(outs, xs, [s_pos, s_pos, s_neg, s_neg])
            return sum(xi.detach() * g for xi, g in zip(xs, grads))
        if kind == "lrp.zbox":
            lo, hi = _leaf(_bound(p["low"], x)), _leaf(_bound(p["high"], x))
            xi = _leaf(x)
            outs = [
                f(xi, w, b),
                f(lo, w.clamp(min=0), _clamp(b, lo=0)),
                f(hi, w.clamp(max=0), _clamp(b, hi=0)),
            ]
            s = divide(r, outs[0] - outs[1] - outs[2], eps)
            gx, gl, gh = _vjp(outs, [xi, lo, hi], [s, s, s])
            return x * gx - lo.detach() * gl - hi.detach() * gh
        if kind in ("lrp.flat", "lrp.wsquare"):
            ones = _leaf(torch.ones_like(x))
            if kind == "lrp.flat":
                z = f(ones, torch.ones_like(w), None)
            else:
                z = f(ones, w * w, None if b is None else b * b)
            (g,) = _vjp([z], [ones], [divide(r, z, eps)])
            return g
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
        return _result(ctx, {layer.data: _weighted(kind, params, layer, x, _relevance(ctx))})

    return fn


def _norm_rule(eps: float) -> Rule:
    def fn(ctx: RuleContext) -> tuple[torch.Tensor | None, ...]:
        diff = _diff(ctx)
        if not diff:
            return _result(ctx, {})
        # the node's own Jacobian: re-run it on detached inputs (autograd on the recorded
        # graph would also follow paths between its inputs, e.g. a skip connection whose
        # other branch starts from the same tensor); .forward skips the module's hooks
        args = list(ctx.inputs)
        for i in diff:
            args[i] = ctx.inputs[i].detach().requires_grad_(True)
        with torch.enable_grad():
            out = ctx.module.forward(*args, **ctx.kwargs)
        out = out if isinstance(out, torch.Tensor) else out[0]
        leaves = [args[i] for i in diff]
        grads = _vjp([out], leaves, [divide(_relevance(ctx), out.detach(), eps)])
        return _result(ctx, {i: a.detach() * g for i, a, g in zip(diff, leaves, grads)})

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
                raise InputValidationError(
                    f"LRP Gate rule on node {ctx.node!r}: the signal input {signal} has shape "
                    f"{tuple(x.shape)}, the output {tuple(r.shape)}; choose the other input as signal"
                )
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
        return _norm_rule(float(params.get("stabilizer", 1e-6)))
    if rule.name == "lrp.gate":
        if params.get("signal") is None:
            raise InputValidationError("lrp.gate needs the signal's input index")
        return _gate_rule(int(params["signal"]))
    if backend is None or node is None:
        raise InputValidationError(f"backward rule {rule.name!r} needs the node it applies to")
    if rule.name == "lrp.epsilon":
        ir_node = next((n for n in backend.model.ir.graph if n.name == node), None)
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
