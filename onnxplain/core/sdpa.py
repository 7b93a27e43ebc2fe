"""ONNX's ``Attention`` operator (opset 23 on) written out as the operators it is made of.

torch's dynamo exporter writes ``F.scaled_dot_product_attention`` as one ``Attention``
node from opset 23 on: every timm and torchvision ViT, DeiT, EVA exported with
``opset_version=23``. onnx2torch converts no ``Attention``, LRP has no rule for it and
the attention probabilities are hidden inside it. Written out it is what the ONNX
specification (and its reference implementation) defines::

    Q, K, V     (3-D inputs: reshaped to (batch, heads, sequence, head size))
    S = (Q·√scale) (K·√scale)ᵀ            scale defaults to 1 / √(Q's head size)
    S = softcap · tanh(S / softcap)        when softcap > 0
    P = Softmax(S + bias)                  bias: attn_mask (a boolean one as 0 / -inf),
                                           the causal and sliding-window masks
    Y = P · V                              (3-D: back to (batch, sequence, hidden))

with K and V's heads repeated for grouped-query attention (each KV head serves
q_num_heads / kv_num_heads query heads in turn). This is how torch's legacy exporter and
the dynamo exporter before opset 23 write the same call, so LRP's attention rule, CAM's
token maps and every gradient method read the graph as they read those exports. ONNX
Runtime runs the written-out graph to within float rounding of its fused kernel.

A query row that the masks exclude entirely gives zeros, as the specification says (a
plain Softmax would give NaN): the bias is made finite on such rows and the
probabilities zeroed. This guard is written only when a row can be excluded, i.e. for a
mask computed at run time or a constant one that excludes a row.

A node is left as it is (forward-only methods still run it on ONNX Runtime) when it uses
a KV cache (``past_key``/``past_value``) or opset 24's ``nonpad_kv_seqlen``, when its
``qk_matmul_output`` is used, or when a size the writing needs is not known from the
graph's shapes: the head sizes (for the default scale and grouped-query heads), and the
sequence lengths for a causal or windowed mask or a mask shorter than the keys.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from onnxplain.core.canonical import _const_array, add_initializer, take_place
from onnxplain.core.contrib import _attr
from onnxplain.core.contrib import _present as _input


def _dims(value: ir.Value) -> list[int | None] | None:
    """``value``'s dims, None for each one not known as a number; None if the rank is unknown."""
    if value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape]


class _Plan:
    """What writing ``node`` out needs, read (and checked) before any node is made."""

    def __init__(self, node: ir.Node) -> None:
        q, k, v = node.inputs[0], node.inputs[1], node.inputs[2]
        dq, dk, dv = _dims(q), _dims(k), _dims(v)
        if dq is None or dk is None or dv is None or not len(dq) == len(dk) == len(dv) in (3, 4):
            raise ValueError("Q, K and V's ranks are not known, or not both 3 or both 4")
        self.rank = len(dq)
        if self.rank == 3:
            self.q_heads, self.kv_heads = _attr(node, "q_num_heads"), _attr(node, "kv_num_heads")
            if self.q_heads is None or self.kv_heads is None:
                raise ValueError("3-D inputs without q_num_heads and kv_num_heads")
            sizes = (dq[2], dk[2], dv[2])
            heads = (self.q_heads, self.kv_heads, self.kv_heads)
            self.head_q, self.head_k, self.head_v = (n and n // h for n, h in zip(sizes, heads))
            self.q_len, self.kv_len = dq[1], dk[1]
        else:
            self.q_heads, self.kv_heads = dq[1], dk[1]
            self.head_q, self.head_k, self.head_v = dq[3], dk[3], dv[3]
            self.q_len, self.kv_len = dq[2], dk[2]
        scale = _attr(node, "scale")
        if scale is None:
            if self.head_q is None:
                raise ValueError("the default scale needs Q's head size")
            scale = 1.0 / math.sqrt(self.head_q)
        self.scale = float(scale)
        self.softcap = float(_attr(node, "softcap", 0.0) or 0.0)
        self.causal = bool(_attr(node, "is_causal", 0))
        self.window = (int(_attr(node, "left_window_size", -1)), int(_attr(node, "right_window_size", -1)))
        self.repeats = 1
        if self.q_heads != self.kv_heads:  # grouped-query attention
            if self.q_heads is None or self.kv_heads is None or self.head_k is None or self.head_v is None:
                raise ValueError("grouped-query attention needs the head counts and sizes")
            if self.q_heads % self.kv_heads:
                raise ValueError("q_num_heads is not a multiple of kv_num_heads")
            self.repeats = self.q_heads // self.kv_heads
        self.mask = _input(node, 3)
        self.positional = self.causal or self.window != (-1, -1)
        if self.positional and (self.q_len is None or self.kv_len is None):
            raise ValueError("a causal or windowed mask needs the sequence lengths")
        self.mask_array = _const_array(self.mask) if self.mask is not None else None
        if self.mask is not None:
            dm = _dims(self.mask)
            last = dm[-1] if dm else None
            if last != self.kv_len or last is None:
                if self.mask_array is None or self.kv_len is None or self.mask_array.shape[-1] > self.kv_len:
                    raise ValueError("the mask's length is not known to equal the keys'")

    def constant_bias(self, dtype: np.dtype) -> np.ndarray | None:
        """The whole additive bias as an array, when nothing in it is computed at run time."""
        if self.mask is not None and self.mask_array is None:
            return None
        bias = np.zeros((), dtype)
        if self.mask_array is not None:
            mask = self.mask_array
            pad = self.kv_len - mask.shape[-1] if self.kv_len is not None else 0
            if pad > 0:  # a shorter mask is padded with masked keys
                fill = False if mask.dtype == np.bool_ else -np.inf
                mask = np.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, pad)], constant_values=fill)
            bias = np.where(mask, dtype.type(0), dtype.type(-np.inf)) if mask.dtype == np.bool_ else mask
        positional = self.positional_bias(dtype)
        return (bias + positional).astype(dtype) if positional is not None else np.asarray(bias, dtype)

    def positional_bias(self, dtype: np.dtype) -> np.ndarray | None:
        """The causal and sliding-window masks, (q_len, kv_len) of 0 / -inf; None if neither."""
        if not self.positional:
            return None
        i = np.arange(self.q_len)[:, None]
        j = np.arange(self.kv_len)[None, :]
        allowed = np.ones((self.q_len, self.kv_len), bool)
        if self.causal:
            allowed &= j <= i
        left, right = self.window
        if left >= 0:
            allowed &= i - j <= left
        if right >= 0:
            allowed &= j - i <= right
        return np.where(allowed, dtype.type(0), dtype.type(-np.inf))


class _Writer:
    """New nodes before ``anchor``, named after it."""

    def __init__(self, graph: ir.Graph, anchor: ir.Node, index: int, dtype: ir.DataType) -> None:
        self.graph, self.nodes, self.dtype = graph, [], dtype
        self.prefix = f"{anchor.name or anchor.outputs[0].name}__sdpa{index}"

    def const(self, tag: str, value: object, dtype: np.dtype | type | None = None) -> ir.Value:
        array = np.asarray(value, dtype=dtype or self.dtype.numpy())
        return add_initializer(self.graph, f"{self.prefix}__{tag}", array)

    def op(self, op_type: str, inputs: list[ir.Value], tag: str, dtype: ir.DataType | None = None,
           **attrs: object) -> ir.Value:
        node = ir.node(op_type, inputs, attrs, name=f"{self.prefix}__{tag}")
        node.outputs[0].name = f"{self.prefix}__{tag}"
        node.outputs[0].dtype = dtype or self.dtype
        self.nodes.append(node)
        return node.outputs[0]

    def heads(self, x: ir.Value, heads: int, tag: str) -> ir.Value:
        """(batch, sequence, heads·size) → (batch, heads, sequence, size)."""
        shape = self.const(f"{tag}_shape", [0, 0, heads, -1], np.int64)
        split = self.op("Reshape", [x, shape], f"{tag}_split")
        return self.op("Transpose", [split], f"{tag}_heads", perm=[0, 2, 1, 3])

    def repeat(self, x: ir.Value, repeats: int, heads: int, size: int, tag: str) -> ir.Value:
        """(batch, kv heads, sequence, size) with each head repeated ``repeats`` times in turn."""
        axis = self.const(f"{tag}_axis", [2], np.int64)
        reps = self.const(f"{tag}_reps", [1, 1, repeats, 1, 1], np.int64)
        spread = self.op("Expand", [self.op("Unsqueeze", [x, axis], f"{tag}_unsq"), reps], f"{tag}_expand")
        return self.op("Reshape", [spread, self.const(f"{tag}_gqa_shape", [0, heads, -1, size], np.int64)],
                       f"{tag}_gqa")


def _write(node: ir.Node, plan: _Plan, w: _Writer) -> dict[int, ir.Value]:
    """The values that replace ``node``'s outputs (index → value)."""
    q, k, v = node.inputs[0], node.inputs[1], node.inputs[2]
    if plan.rank == 3:
        q = w.heads(q, plan.q_heads, "q")
        k, v = w.heads(k, plan.kv_heads, "k"), w.heads(v, plan.kv_heads, "v")
    present = {1: k, 2: v}
    if plan.repeats > 1:
        k = w.repeat(k, plan.repeats, plan.q_heads, plan.head_k, "k")
        v = w.repeat(v, plan.repeats, plan.q_heads, plan.head_v, "v")
    root = w.const("sqrt_scale", math.sqrt(plan.scale))
    k_t = w.op("Transpose", [k], "k_t", perm=[0, 1, 3, 2])
    scores = w.op("MatMul", [w.op("Mul", [q, root], "q_scaled"), w.op("Mul", [k_t, root], "k_scaled")], "qk")
    if plan.softcap > 0:
        cap = w.const("softcap", plan.softcap)
        squashed = w.op("Tanh", [w.op("Div", [scores, cap], "capped")], "tanh")
        scores = w.op("Mul", [squashed, cap], "softcapped")
    dtype = w.dtype.numpy()
    constant = plan.constant_bias(dtype)
    dead = None
    if constant is not None:
        if plan.mask is not None or plan.positional:
            rows = np.isneginf(constant.max(axis=-1, keepdims=True))
            if rows.any():  # rows excluded entirely: finite bias there, zero probabilities
                dead = w.const("dead_rows", rows, np.bool_)
                constant = np.where(rows, dtype.type(0), constant)
            scores = w.op("Add", [scores, w.const("bias", constant)], "biased")
    else:
        mask = plan.mask
        if mask.dtype == ir.DataType.BOOL:
            mask = w.op("Where", [mask, w.const("zero", 0.0), w.const("neg_inf", -np.inf)], "mask_bias")
        positional = plan.positional_bias(dtype)
        if positional is not None:
            mask = w.op("Add", [mask, w.const("positional", positional)], "mask_positional")
        top = w.op("ReduceMax", [mask, w.const("last", [-1], np.int64)], "row_max", keepdims=1)
        dead = w.op("Equal", [top, w.const("neg_inf_row", -np.inf)], "dead_rows", dtype=ir.DataType.BOOL)
        finite = w.op("Where", [dead, w.const("zero_bias", 0.0), mask], "finite_bias")
        scores = w.op("Add", [scores, finite], "biased")
    probs = w.op("Softmax", [scores], "softmax", axis=-1)
    if dead is not None:
        probs = w.op("Where", [dead, w.const("zero_probs", 0.0), probs], "guarded")
    y = w.op("MatMul", [probs, v], "pv")
    if plan.rank == 3:
        y = w.op("Transpose", [y], "y_t", perm=[0, 2, 1, 3])
        y = w.op("Reshape", [y, w.const("y_shape", [0, 0, -1], np.int64)], "y")
    return {0: y, **present}


def write_out(model: ir.Model) -> int:
    """Write each standard ``Attention`` node of ``model`` that can be written out (module
    docstring) as the operators it is made of, in place; the number written out."""
    graph = model.graph
    count = 0
    for node in list(graph):
        if node.op_type != "Attention" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 3:
            continue
        if any(_input(node, i) is None for i in (0, 1, 2)):
            continue
        if any(_input(node, i) is not None for i in (4, 5, 6)):  # a KV cache, or opset 24's lengths
            continue
        if len(node.outputs) > 3 and (node.outputs[3].uses() or node.outputs[3].is_graph_output()):
            continue
        dtype = node.inputs[0].dtype if node.inputs[0] is not None else None
        if dtype is None or not dtype.is_floating_point():
            continue
        try:
            plan = _Plan(node)
        except ValueError:
            continue
        writer = _Writer(graph, node, count, dtype)
        replaced = _write(node, plan, writer)
        graph.insert_before(node, writer.nodes)
        for index, out in enumerate(node.outputs):
            if index in replaced and (out.uses() or out.is_graph_output()):
                take_place(out, replaced[index])
        graph.remove(node, safe=True)
        count += 1
    return count
