"""The shortcuts of the torch LRP rules compute what the plain formulas compute.

- a convolution's vector-Jacobian product (``convolution_backward``) equals autograd's,
  for strided, dilated, grouped and asymmetrically padded convolutions (exactly);
- z⁺, αβ and γ skip the x⁻ passes when the layer input has no negative entry: the result
  equals the two-pass formula (zennit's ``BasicHook``) evaluated with autograd;
- the rule assignment cached across method instances is the one a fresh walk gives.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain.methods import lrp

torch = pytest.importorskip("torch")

from onnxplain.backends import torch_lrp  # noqa: E402

CONVS = {
    "same_upper": dict(auto_pad="SAME_UPPER", kernel=(2, 3), strides=[2, 1], group=1),
    "same_lower_grouped": dict(auto_pad="SAME_LOWER", kernel=(4, 4), strides=[3, 2], group=2),
    "asymmetric_dilated": dict(pads=[0, 1, 2, 1], kernel=(3, 3), strides=[1, 2], dilations=[2, 1], group=1),
    "strided_grouped": dict(pads=[1, 1, 1, 1], kernel=(3, 3), strides=[2, 2], group=4),
}


def _layer(config: dict, seed: int = 0) -> torch_lrp.Layer:
    config = dict(config)
    kernel, group = config.pop("kernel"), config["group"]
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, 4 // group, *kernel)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **config)
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 11, 13])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = ir.from_proto(helper.make_model(graph))
    return torch_lrp.build_layer(next(iter(model.graph)))


@pytest.mark.parametrize("name", list(CONVS))
def test_conv_vjp_equals_autograd(name):
    layer = _layer(CONVS[name])
    x = torch.randn(2, 4, 11, 13, generator=torch.Generator().manual_seed(1))
    w, b = layer.params(x)
    leaf = x.clone().requires_grad_(True)
    z = layer.fn(leaf, w, b)
    s = torch.randn(z.shape, generator=torch.Generator().manual_seed(2))
    (expected,) = torch.autograd.grad(z, leaf, s)
    assert torch.equal(layer.vjp(s, x, w), expected)  # the same kernel: exactly equal


def _two_pass(layer, x, r, w_pos, w_neg, b, eps, mask=None):
    """x⁺ through w_pos (with b) and x⁻ through w_neg, one normaliser, autograd's VJPs."""
    xp, xn = x.clamp(min=0).requires_grad_(True), x.clamp(max=0).requires_grad_(True)
    z = layer.fn(xp, w_pos, b) + layer.fn(xn, w_neg, None)
    s = r / (z + eps * torch.where(z >= 0, 1.0, -1.0)).detach()
    s = s if mask is None else s * mask
    gp, gn = torch.autograd.grad(z, [xp, xn], s)
    return (xp * gp + xn * gn).detach()


@pytest.mark.parametrize("signs", ["nonnegative", "mixed"])
@pytest.mark.parametrize("kind", ["zplus", "alphabeta", "gamma"])
def test_rules_equal_the_two_pass_formula(kind, signs):
    layer = _layer(CONVS["strided_grouped"])
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 11, 13, generator=g)
    x = x.clamp(min=0) if signs == "nonnegative" else x
    w, b = layer.params(x)
    out = layer.fn(x, w, b)
    r = torch.randn(out.shape, generator=g)
    eps = 1e-6
    wp, wn, bp, bn = w.clamp(min=0), w.clamp(max=0), b.clamp(min=0), b.clamp(max=0)
    if kind == "zplus":
        ours = torch_lrp._weighted("lrp.zplus", {"stabilizer": eps}, layer, x, r, out)
        expected = _two_pass(layer, x, r, wp, wn, bp, eps)
    elif kind == "alphabeta":
        params = {"alpha": 3.0, "beta": 2.0, "stabilizer": eps}
        ours = torch_lrp._weighted("lrp.alphabeta", params, layer, x, r, out)
        expected = 3.0 * _two_pass(layer, x, r, wp, wn, bp, eps) - 2.0 * _two_pass(
            layer, x, r, wn, wp, bn, eps
        )
    else:
        gamma = 0.5
        ours = torch_lrp._weighted("lrp.gamma", {"gamma": gamma, "stabilizer": eps}, layer, x, r, out)
        w_up, w_dn = w + gamma * wp, w + gamma * wn
        b_up, b_dn = b + gamma * bp, b + gamma * bn
        expected = _two_pass(layer, x, r, w_up, w_dn, b_up, eps, mask=(out > 0).float()) + _two_pass(
            layer, x, r, w_dn, w_up, b_dn, eps, mask=(out < 0).float()
        )
    # float32 rounding at most (measured on CPU: exactly equal)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))


def test_cached_assignment_is_a_fresh_walk(vgg):
    _, model = vgg
    first = lrp.LRP(model, lrp.EpsilonPlusFlat())
    again = lrp.LRP(model, lrp.EpsilonPlusFlat())  # from the cache
    fresh = lrp.EpsilonPlusFlat().assign(first.model, first.model.output_name)
    assert first.rules() == again.rules() == {n: repr(r) for n, r in fresh.rules.items()}
    # bounds given as arrays cannot be a cache key: assigned afresh, and it still runs
    box = lrp.EpsilonGammaBox(low=np.zeros(3, np.float32), high=np.ones(3, np.float32))
    assert lrp.LRP(model, box).rules() == {n: repr(r) for n, r in box.assign(first.model).rules.items()}
