"""ONNX's ``Attention`` operator (opset 23, torch's dynamo exporter for
``F.scaled_dot_product_attention``) loads written out as MatMul → Softmax → MatMul.

The bare operator: the written-out graph gives ONNX Runtime's values for the fused node
(and the ONNX reference implementation's where ONNX Runtime refuses the node), on ONNX
Runtime and on the torch backend, within 1e-5 (values of order 1; measured ≤ 4e-7).
End to end: saliency equals Captum's on the torch module, and LRP and Grad-CAM equal their
maps on the same module exported at opset 18, where the exporter writes the attention out
itself.
"""

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from captum.attr import Saliency
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnxplain as ox
from onnxplain.backends import torch_converters
from onnxplain.core.canonical import canonicalize

RNG = np.random.default_rng(0)
Q4, K4, V4 = (2, 3, 5, 8), (2, 3, 6, 8), (2, 3, 6, 4)


def _bare(qs, ks, vs, mask=None, mask_is_input=False, opset=23, outputs=1, extra=(), **attrs):
    """One Attention node on graph inputs q, k, v (and the mask, a constant or an input)."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in zip("qkv", (qs, ks, vs))]
    feeds = {n: RNG.standard_normal([d if isinstance(d, int) else 8 for d in s]).astype(np.float32)
             for n, s in zip("qkv", (qs, ks, vs))}
    inits, names = [], ["q", "k", "v"]
    if mask is not None:
        names.append("m")
        if mask_is_input:
            kind = TensorProto.BOOL if mask.dtype == np.bool_ else TensorProto.FLOAT
            inputs.append(helper.make_tensor_value_info("m", kind, mask.shape))
            feeds["m"] = mask
        else:
            inits.append(numpy_helper.from_array(mask, "m"))
    for name, array in extra:  # past_key / past_value
        names += [""] * (4 - len(names)) if name == "past_key" else []
        names.append(name)
        inits.append(numpy_helper.from_array(array, name))
    outs = ["y", "present_key", "present_value", "qk"][:outputs]
    graph = helper.make_graph(
        [helper.make_node("Attention", names, outs, name="attention", **attrs)], "g", inputs,
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10), feeds


def _written_out(proto: onnx.ModelProto) -> onnx.ModelProto:
    return ir.to_proto(canonicalize(lambda: ir.from_proto(proto)))


_dead = RNG.random((5, 6)) > 0.3
_dead[2] = False  # query 2 may attend no key: its output is 0
_float = RNG.standard_normal((3, 5, 6)).astype(np.float32)

CASES = {
    "4d": dict(qs=Q4, ks=K4, vs=V4),
    "3d": dict(qs=(2, 5, 12), ks=(2, 6, 12), vs=(2, 6, 6), q_num_heads=3, kv_num_heads=3),
    "3d-grouped-query": dict(qs=(2, 5, 24), ks=(2, 6, 8), vs=(2, 6, 6), q_num_heads=6, kv_num_heads=2),
    "4d-grouped-query": dict(qs=(2, 6, 5, 4), ks=(2, 2, 6, 4), vs=(2, 2, 6, 3)),
    "scale-softcap": dict(qs=Q4, ks=K4, vs=V4, scale=0.7, softcap=2.0),
    "causal": dict(qs=Q4, ks=K4, vs=V4, is_causal=1),
    "bool-mask-constant": dict(qs=Q4, ks=K4, vs=V4, mask=_dead),
    "bool-mask-input": dict(qs=Q4, ks=K4, vs=V4, mask=_dead, mask_is_input=True),
    "float-mask-input": dict(qs=Q4, ks=K4, vs=V4, mask=_float, mask_is_input=True),
    "causal-and-bool-mask-input": dict(qs=Q4, ks=K4, vs=V4, mask=_dead, mask_is_input=True, is_causal=1),
    "short-float-mask": dict(qs=Q4, ks=K4, vs=V4, mask=np.ascontiguousarray(_float[..., :4])),
    "present-outputs": dict(qs=(2, 5, 12), ks=(2, 6, 12), vs=(2, 6, 6), outputs=3, q_num_heads=3,
                            kv_num_heads=3),
    "opset-24": dict(qs=Q4, ks=K4, vs=V4, opset=24),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_written_out_attention_gives_the_operators_values(case):
    proto, feeds = _bare(**CASES[case])
    if case == "short-float-mask":  # ONNX Runtime refuses a mask shorter than the keys
        expected = ReferenceEvaluator(proto).run(None, feeds)
    else:
        expected = ort.InferenceSession(proto.SerializeToString()).run(None, feeds)
        reference = ReferenceEvaluator(proto).run(None, feeds)
        for e, r in zip(expected, reference):
            np.testing.assert_allclose(e, r, atol=1e-5)
    written = _written_out(proto)
    ops = [node.op_type for node in written.graph.node]
    assert "Attention" not in ops and "Softmax" in ops, ops
    got = ort.InferenceSession(written.SerializeToString()).run(None, feeds)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e, atol=1e-5)
    if "mask" in case and "float" not in case:
        assert not got[0][:, :, 2].any()  # the query that attends no key
    # the torch backend: the same values, and finite gradients where a query attends no key
    torch_converters.install()
    import onnx2torch

    net = onnx2torch.convert(written)
    args = [torch.tensor(feeds[i.name], requires_grad=i.name == "q") for i in written.graph.input]
    out = net(*args)
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    for e, g in zip(expected, outs, strict=True):
        np.testing.assert_allclose(g.detach().numpy(), e, atol=1e-5)
    outs[0].sum().backward()
    assert torch.isfinite(args[0].grad).all()


@pytest.mark.parametrize("case", ["kv-cache", "qk-output-used", "unknown-head-size"])
def test_an_attention_that_cannot_be_written_out_is_left_to_onnx_runtime(case):
    if case == "kv-cache":
        proto, _ = _bare(Q4, K4, V4, extra=[("past_key", np.zeros((2, 3, 2, 8), np.float32)),
                                            ("past_value", np.zeros((2, 3, 2, 4), np.float32))])
    elif case == "qk-output-used":
        proto, _ = _bare(Q4, K4, V4, outputs=4)
    else:  # 4-D, no scale, and Q's last dim not known
        proto, _ = _bare((2, 3, 5, "d"), K4, V4)
    ops = [node.op_type for node in _written_out(proto).graph.node]
    assert ops == ["Attention"]


class _Block(torch.nn.Module):
    """Patches → one self-attention through ``F.scaled_dot_product_attention`` → head."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.variant = variant
        kv = 8 if variant == "grouped-query" else 16
        self.patch = torch.nn.Conv2d(3, 16, 4, stride=4)
        self.q, self.k, self.v = torch.nn.Linear(16, 16), torch.nn.Linear(16, kv), torch.nn.Linear(16, kv)
        self.head = torch.nn.Linear(16, 5)
        self.register_buffer("mask", torch.rand(16, 16) > 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)  # (B, 16 tokens, 16)
        b, n, _ = t.shape
        q = self.q(t).view(b, n, 4, 4).transpose(1, 2)
        k, v = (f(t).view(b, n, -1, 4).transpose(1, 2) for f in (self.k, self.v))
        kwargs = {"causal": {"is_causal": True}, "grouped-query": {"enable_gqa": True},
                  "mask": {"attn_mask": self.mask}, "scale": {"scale": 0.3}}.get(self.variant, {})
        y = F.scaled_dot_product_attention(q, k, v, **kwargs).transpose(1, 2).reshape(b, n, 16)
        return self.head(torch.nn.functional.gelu(t + y).mean(1))


def _export(module: torch.nn.Module, opset: int) -> ox.Model:
    x = torch.zeros(2, 3, 16, 16)
    program = torch.onnx.export(module, (x,), dynamo=True, opset_version=opset,
                                dynamic_shapes=({0: torch.export.Dim("batch")},))
    return ox.load(program.model_proto)


@pytest.mark.parametrize("variant", ["plain", "causal", "grouped-query", "mask", "scale"])
def test_saliency_through_an_opset_23_attention_equals_captums(variant):
    torch.manual_seed(0)
    module = _Block(variant).eval()
    model = _export(module, 23)
    assert "Attention" not in {node.op_type for node in model.ir.graph}
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        logits = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), logits, rtol=1e-5, atol=1e-5 * np.abs(logits).max())
    ours = ox.Saliency(model).attribute(x, target=2)
    theirs = Saliency(module).attribute(torch.from_numpy(x), target=2, abs=True).numpy()
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


def test_lrp_and_gradcam_of_an_opset_23_export_equal_the_opset_18_exports():
    """The dynamo exporter writes the attention out itself before opset 23, as we do."""
    torch.manual_seed(0)
    module = _Block("plain").eval()
    new, old = _export(module, 23), _export(module, 18)
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    for method in (lambda m: ox.LRP(m).attribute(x, target=1),
                   lambda m: ox.GradCAM(m).attribute(x, target=1)):
        a, b = method(new), method(old)
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
