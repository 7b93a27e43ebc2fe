"""Identities LRP must satisfy: conservation, LRP-0 = gradient × input, gates, batching."""

from __future__ import annotations

import numpy as np
import pytest
from lrp_models import export, he_init, vgg_style

import onnxplain as ox
from onnxplain.methods import lrp

torch = pytest.importorskip("torch")


def _zero_biases(net):
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
                m.bias.zero_()
    return net.eval()


def test_conservation_with_zero_biases_and_lrp0_zplus_on_vgg_style_net(images):
    # no bias absorbs relevance: z+ on Convs and LRP-0 on the dense layers conserve it
    # exactly (up to the 1e-6 stabiliser), so Σ R = S_c(x)
    torch.manual_seed(2)
    net = _zero_biases(he_init(vgg_style(batch_norm=False)))
    model = export(net, torch.from_numpy(images))
    composite = lrp.Composite([("Conv", lrp.ZPlus()), (("Gemm", "MatMul"), lrp.LRP0())])
    relevance, delta = lrp.LRP(model, composite).attribute(images, target=4, return_convergence_delta=True)
    logits = model.predict(images)[:, 4]
    np.testing.assert_allclose(relevance.reshape(2, -1).sum(1), logits, rtol=1e-4)
    np.testing.assert_allclose(delta, relevance.reshape(2, -1).sum(1, dtype=np.float64) - logits, atol=1e-6)


def test_lrp0_equals_gradient_times_input_on_resnet18(resnet18, images):
    # For LRP-0 with the bias-absorbing convention (z_k includes b_k in every
    # denominator) and no stabiliser anywhere (stabilizer=0 for the proportional Add and
    # average-pooling nodes), R_j = x_j ∂S_c/∂x_j holds exactly, layer by layer, on a
    # network of ReLUs (Pass), max pooling (gradient), average pooling and residual Adds
    # (proportional), biases included: each bias keeps b_k ∂S_c/∂z_k. Measured: 9e-7 of
    # max |x ⊙ ∇S_c| in float32, 1e-15 in float64. Tolerance: 1e-5.
    _, model = resnet18
    composite = lrp.Composite([(("Conv", "Gemm", "MatMul"), lrp.LRP0())], stabilizer=0.0)
    relevance = lrp.LRP(model, composite).attribute(images, target=2)
    gxi = ox.InputXGradient(model).attribute(images, target=2)
    np.testing.assert_allclose(relevance, gxi, atol=1e-5 * np.abs(gxi).max())


class _SENet(torch.nn.Module):
    """Conv → ReLU → squeeze-and-excitation (x · sigmoid(fc(relu(fc(GAP(x)))))) → GAP → Linear."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.reduce = nn.Conv2d(8, 2, 1)
        self.expand = nn.Conv2d(2, 8, 1)
        self.fc = nn.Linear(8, 5, bias=False)

    def forward(self, x):
        a = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(a.mean((2, 3), keepdim=True)))))
        return self.fc((a * gate).mean((2, 3)))


def test_squeeze_excitation_gate_gets_no_relevance_and_conserves(images):
    torch.manual_seed(3)
    net = _SENet().eval()
    model = export(net, torch.from_numpy(images))
    method = lrp.LRP(model, lrp.Composite([("Conv", lrp.ZPlus()), (("Gemm", "MatMul"), lrp.LRP0())]))
    gates = [n for n, r in method.rules().items() if r.startswith("Gate")]
    assert len(gates) == 1
    relevance, delta = method.attribute(images, target=1, return_convergence_delta=True)
    logits = model.predict(images)[:, 1]
    # the SE branch's biases do not matter: no relevance enters the gate
    np.testing.assert_allclose(relevance.reshape(2, -1).sum(1), logits, rtol=1e-4)
    assert np.abs(delta).max() <= 1e-4 * np.abs(logits).max()


def test_bundled_shapes_model_with_batchnorm_and_se_block_runs():
    model = ox.examples.shapes_model()
    images, _, _ = ox.examples.shapes_dataset(4, seed=5)
    method = lrp.LRP(model, lrp.EpsilonGammaBox(low=0.0, high=1.0))
    relevance, delta = method.attribute(images, return_convergence_delta=True)
    assert relevance.shape == images.shape and np.isfinite(relevance).all()
    assert np.isfinite(delta).all()
    # BatchNorm was folded into a copy used by LRP only; the model itself keeps it
    assert any(n.op_type == "BatchNormalization" for n in model.ir.graph)
    assert not any(op == "BatchNormalization" for op in (n.op_type for n in method.model.ir.graph))
    assert any(r.startswith("Gate") for r in method.rules().values())


def test_unfolded_batchnorm_is_an_affine_layer_with_the_epsilon_rule():
    # BatchNorm directly on the input cannot be folded into a Conv: LRP-0 over it keeps
    # the gradient × input identity, which holds for any affine layer
    nn = torch.nn
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )
    with torch.no_grad():
        net[0].running_mean.uniform_(-0.5, 0.5)
        net[0].running_var.uniform_(0.5, 2.0)
    net.eval()
    x = np.random.default_rng(1).random((2, 3, 8, 8), dtype=np.float32)
    model = export(net, torch.from_numpy(x))
    composite = lrp.Composite([(("Conv", "Gemm", "BatchNormalization"), lrp.LRP0())], stabilizer=0.0)
    method = lrp.LRP(model, composite)
    assert "BatchNormalization" in {n.op_type for n in method.model.ir.graph}
    relevance = method.attribute(x, target=0)
    gxi = ox.InputXGradient(model).attribute(x, target=0)
    np.testing.assert_allclose(relevance, gxi, atol=1e-5 * np.abs(gxi).max())


def test_batch_size_does_not_change_the_result(vgg, images):
    _, model = vgg
    method = lrp.LRP(model, lrp.EpsilonPlusFlat())
    whole = method.attribute(images, target=[1, 2])
    one_by_one = method.attribute(images, target=[1, 2], batch_size=1)
    np.testing.assert_allclose(whole, one_by_one, rtol=1e-5, atol=1e-9)


class _ConvNeXtStyle(torch.nn.Module):
    """A ConvNeXt block with ReLU for GELU: depthwise 7×7 conv → channels-last LayerNorm →
    pointwise Linear → ReLU → Linear → residual Add; then GAP → LayerNorm → Linear. With
    ``detach_std`` each LayerNorm's standard deviation is held constant (the LN-rule)."""

    def __init__(self, detach_std: bool = False) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.norm, self.up, self.down = nn.LayerNorm(8), nn.Linear(8, 32), nn.Linear(32, 8)
        self.head_norm, self.fc = nn.LayerNorm(8), nn.Linear(8, 5)
        self.detach_std = detach_std

    def _ln(self, ln: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        if not self.detach_std:
            return ln(x)
        centred = x - x.mean(-1, keepdim=True)
        std = (centred.square().mean(-1, keepdim=True) + ln.eps).sqrt().detach()
        return centred / std * ln.weight + ln.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self._ln(self.norm, self.dw(x).permute(0, 2, 3, 1))
        x = x + self.down(torch.relu(self.up(y))).permute(0, 3, 1, 2)
        return self.fc(self._ln(self.head_norm, x.mean((2, 3))))


def test_layer_norm_gets_the_ln_rule_lrp0_equals_gradient_times_input_with_its_std_held(images):
    """The LN-rule (Ali et al. 2022) holds a LayerNormalization's standard deviation
    constant, which makes the network piecewise linear: LRP-0 (no stabiliser) then equals
    x ⊙ ∇S_c of the same module with each std detached, computed by torch autograd."""
    torch.manual_seed(4)
    model = _lrp0_is_gradient_times_input_of(_ConvNeXtStyle(), _ConvNeXtStyle(detach_std=True), images, 2)
    assert "LayerNormalization" in {node.op_type for node in model.ir.graph}
    # the default composite runs through them too, with a finite map
    assert np.isfinite(lrp.LRP(model).attribute(images, target=2)).all()


def _lrp0_is_gradient_times_input_of(net, held, images, target: int, tol: float = 1e-5,
                                     **export) -> ox.Model:
    """Export ``net`` (its LayerNorms given non-trivial affine parameters) and assert that
    LRP-0 without stabilisers on the export equals x ⊙ ∇S_c of ``held``, the same module
    with the quantities the rules hold constant detached; ``tol`` of max |x ⊙ ∇S_c|."""
    from onnxplain.adapters.torch import export as _export

    with torch.no_grad():
        for ln in (m for m in net.modules() if isinstance(m, torch.nn.LayerNorm)):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.normal_(0, 0.1)
    model = _export(net.eval(), torch.from_numpy(images), **export)
    held.load_state_dict(net.state_dict())
    xt = torch.from_numpy(images).requires_grad_(True)
    (grad,) = torch.autograd.grad(held.eval()(xt)[:, target].sum(), xt)
    reference = (xt * grad).detach().numpy()
    composite = lrp.Composite([(("Conv", "Gemm", "MatMul"), lrp.LRP0())], epsilon=0.0, stabilizer=0.0)
    relevance = lrp.LRP(model, composite).attribute(images, target=target)
    np.testing.assert_allclose(relevance, reference, atol=tol * np.abs(reference).max())
    return model


class _L2Normalized(torch.nn.Module):
    """Conv → tokens → Linear → ``F.normalize`` over the features (SwiftFormer's queries and
    keys, cosine attention) → mean over the tokens → Linear. ``detach``: the norm held."""

    def __init__(self, detach: bool = False) -> None:
        super().__init__()
        self.embed, self.fc = torch.nn.Conv2d(3, 8, 8, stride=8), torch.nn.Linear(8, 12)
        self.head, self.detach = torch.nn.Linear(12, 5), detach

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.fc(self.embed(x).flatten(2).transpose(1, 2))
        if self.detach:
            t = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12).detach()
        else:
            t = torch.nn.functional.normalize(t, dim=-1)
        return self.head(t.mean(1))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_an_l2_normalisation_holds_its_norm_lrp0_equals_gradient_times_input_with_it_held(images, exporter):
    """F.normalize divides by its norm expanded to the numerator's shape: the divisor is
    still the broadcast one, held constant (the LN-rule), so LRP-0 equals x ⊙ ∇S_c of the
    module with the norm detached."""
    torch.manual_seed(6)
    model = _lrp0_is_gradient_times_input_of(_L2Normalized(), _L2Normalized(detach=True), images, 1,
                                             exporter=exporter)
    assert {"Expand", "Div"} <= {node.op_type for node in model.ir.graph}


class _Folded(torch.nn.Module):
    """Conv → ReLU → unfold → scaled → fold (ONNX ``Col2Im``: a sum of overlapping patches,
    as VOLO's outlook attention and MobileViT-v2 write patches back) → ReLU → GAP → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = torch.nn.functional.unfold(torch.relu(self.conv(x)), 3, padding=1, stride=2)
        folded = torch.nn.functional.fold(cols * 0.5, (16, 16), 3, padding=1, stride=2)
        return self.fc(torch.relu(folded).mean((2, 3)))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_col2im_splits_relevance_in_proportion_lrp0_equals_gradient_times_input(images, exporter):
    """A fold sums overlapping patches: the proportional rule (z-rule of a sum) on it keeps
    LRP-0 of this ReLU network equal to x ⊙ ∇S_c (nothing needs holding)."""
    torch.manual_seed(7)
    model = _lrp0_is_gradient_times_input_of(_Folded(), _Folded(), images[:, :, :16, :16], 2,
                                             exporter=exporter)
    assert "Col2Im" in {node.op_type for node in model.ir.graph}


class _TinyViT(torch.nn.Module):
    """Patch embedding, class token, position embedding, one pre-norm block with two-head
    self-attention (written out: softmax(QKᵀ/√d)·V) and a ReLU MLP, final LayerNorm, head
    on the class token. ``detach``: each LayerNorm's std and the attention weights held
    constant (the LN and attention rules of Ali et al. 2022). ``attention="sdpa"``: by
    ``scaled_dot_product_attention`` with an all-True boolean mask over the tokens, as Hugging
    Face's models call it (the exporter adds the mask and guards the softmax against NaN);
    ``"einsum"``: both products as ``torch.einsum``, as CvT writes them; ``"talking"``: the
    attention weights mixed across the heads by a linear layer before they weight the values
    (CaiT's talking heads), held constant after it."""

    def __init__(self, detach: bool = False, attention: str = "matmul") -> None:
        super().__init__()
        nn, d = torch.nn, 16
        self.embed = nn.Conv2d(3, d, 16, stride=16)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, 17, d) * 0.5)
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down, self.head = nn.Linear(d, 32), nn.Linear(32, d), nn.Linear(d, 5)
        self.talk = nn.Linear(2, 2) if attention == "talking" else None
        self.detach, self.attention = detach, attention

    def _ln(self, ln: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        if not self.detach:
            return ln(x)
        centred = x - x.mean(-1, keepdim=True)
        std = (centred.square().mean(-1, keepdim=True) + ln.eps).sqrt()
        return centred / std.detach() * ln.weight + ln.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        n, s, d = t.shape
        q, k, v = self.qkv(self._ln(self.ln1, t)).reshape(n, s, 3, 2, d // 2).permute(2, 0, 3, 1, 4)
        if self.attention == "sdpa" and not self.detach:
            keep = torch.ones(1, 1, s, 1, dtype=torch.bool).expand(n, 1, s, s)
            mixed = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        elif self.attention == "einsum" and not self.detach:
            attn = torch.softmax(torch.einsum("bhlk,bhtk->bhlt", q, k) / (d // 2) ** 0.5, dim=-1)
            mixed = torch.einsum("bhlt,bhtv->bhlv", attn, v)
        else:
            attn = torch.softmax(q @ k.transpose(-2, -1) / (d // 2) ** 0.5, dim=-1)
            if self.talk is not None:
                attn = self.talk(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            mixed = (attn.detach() if self.detach else attn) @ v
        t = t + self.proj(mixed.transpose(1, 2).reshape(n, s, d))
        t = t + self.down(torch.relu(self.up(self._ln(self.ln2, t))))
        return self.head(self._ln(self.ln3, t)[:, 0])


@pytest.mark.parametrize("attention", ["matmul", "sdpa", "einsum", "talking"])
@pytest.mark.parametrize("export", [{}, {"exporter": "legacy", "opset": 14}], ids=["fused", "opset14"])
def test_attention_gets_the_attention_rule_lrp0_equals_gradient_times_input_with_it_held(
    images, export, attention
):
    """A vision transformer: the product of attention weights and values is a linear layer
    whose weights are the attention (no relevance enters the softmax), LayerNorms get the
    LN-rule. LRP-0 (no stabiliser) then equals x ⊙ ∇S_c of the same module with the
    attention weights and each std detached (torch autograd). At opset 14 the exporter
    writes each LayerNorm out (ReduceMean, Sub, Pow, Sqrt, Div): the Div by σ passes all
    relevance to x − μ, and the proportional Sub and ReduceMean give the LN-rule exactly.
    ``sdpa``: the exporter's NaN guard after the softmax, Where(IsNaN(A), 0, A), is looked
    through, and the mask added before it (Where(mask, 0, −∞)) never receives relevance.
    ``einsum``: the products, exported as Einsum, are loaded as MatMuls. ``talking``: the
    heads' linear mixing of the weights is looked through to the softmax."""
    torch.manual_seed(5)
    net = _TinyViT(attention=attention)
    held = _TinyViT(detach=True, attention=attention)
    model = _lrp0_is_gradient_times_input_of(net, held, images, 3, **export)
    ops = [node.op_type for node in model.ir.graph]
    assert "Softmax" in ops and ops.count("MatMul") >= 2 and "Einsum" not in ops
    assert ("LayerNormalization" in ops) == (not export)
    for composite in (lrp.EpsilonPlusFlat(), lrp.EpsilonGammaBox(low=0.0, high=1.0)):
        assert np.isfinite(lrp.LRP(model, composite).attribute(images, target=3)).all()


class _GroupNormNet(torch.nn.Module):
    """Conv → GroupNorm(1 group, as PoolFormer) → ReLU → Conv → GroupNorm(2 groups) → ReLU →
    GAP → Linear. With ``detach_std`` each GroupNorm's standard deviation is held constant."""

    def __init__(self, detach_std: bool = False) -> None:
        super().__init__()
        nn = torch.nn
        self.c1, self.g1 = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GroupNorm(1, 8)
        self.c2, self.g2 = nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.GroupNorm(2, 8)
        self.fc = nn.Linear(8, 5)
        self.detach_std = detach_std
        with torch.no_grad():
            for g in (self.g1, self.g2):
                g.weight.uniform_(0.5, 1.5)
                g.bias.normal_(0, 0.1)

    def _gn(self, gn: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        if not self.detach_std:
            return gn(x)
        grouped = x.reshape(len(x), gn.num_groups, -1)
        centred = grouped - grouped.mean(-1, keepdim=True)
        std = (centred.square().mean(-1, keepdim=True) + gn.eps).sqrt().detach()
        return (centred / std).reshape(x.shape) * gn.weight[:, None, None] + gn.bias[:, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self._gn(self.g1, self.c1(x)))
        x = torch.relu(self._gn(self.g2, self.c2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_group_norm_gets_the_ln_rule_over_its_groups(images, exporter):
    """GroupNorm, exported as an InstanceNormalization of the grouped tensor, holds its
    standard deviation constant like a LayerNorm: LRP-0 then equals x ⊙ ∇S_c of the module
    with each std detached."""
    torch.manual_seed(5)
    net = _GroupNormNet()
    # 1e-4: the grouped statistics are summed in another order than torch's GroupNorm (measured 1.4e-5)
    model = _lrp0_is_gradient_times_input_of(net, _GroupNormNet(detach_std=True), images, 2, tol=1e-4,
                                             exporter=exporter)
    assert "InstanceNormalization" in {node.op_type for node in model.ir.graph}
    assert np.isfinite(lrp.LRP(model).attribute(images, target=2)).all()


class _GatedProduct(torch.nn.Module):
    """(W_a x) ⊙ (W_b x) → W_c, no biases: a product of two computed tensors (gMLP's
    spatial gating, gated MLPs); ``tokens``: (x W_q)(x W_k)ᵀ flattened → W_c instead, a
    matrix product of two computed tensors (attention scores without a softmax)."""

    def __init__(self, tokens: bool = False) -> None:
        super().__init__()
        self.tokens = tokens
        self.a, self.b = torch.nn.Linear(12, 6, bias=False), torch.nn.Linear(12, 6, bias=False)
        self.q, self.k = torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 4, bias=False)
        self.c = torch.nn.Linear(9 if tokens else 6, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            t = x.reshape(len(x), 3, 4)
            return self.c((self.q(t) @ self.k(t).transpose(1, 2)).flatten(1))
        f = x.flatten(1)
        return self.c(self.a(f) * self.b(f))


def _product_node(model: ox.Model, op: str) -> str:
    """The name of the ``op`` node whose two inputs are both computed."""
    return next(node.name for node in model.ir.graph if node.op_type == op
                and all(v is not None and v.const_value is None and v.producer() is not None
                        for v in node.inputs[:2]))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_the_uniform_rule_halves_a_products_relevance_between_its_factors_as_computed_by_hand(exporter):
    """AttnLRP's uniform rule on a ⊙ b: R_a = R_b = R_p / 2, with LRP-0 on the linear layers;
    the relevance of x computed in numpy. Composites map it to a product in which neither
    factor is a gate, as AttnLRP does, and so give the same relevance without it."""
    torch.manual_seed(8)
    net = _GatedProduct().eval()
    x = np.random.default_rng(3).standard_normal((2, 3, 2, 2)).astype(np.float32)
    model = ox.adapters.torch.export(net, torch.from_numpy(x), exporter=exporter)
    mul = _product_node(model, "Mul")
    mapped = lrp.Composite([(("Gemm", "MatMul"), lrp.LRP0()), (lrp.Select(name=mul), lrp.Uniform(0.0))],
                           epsilon=0.0, stabilizer=0.0)
    ours = lrp.LRP(model, mapped).attribute(x, target=1)
    default = lrp.Composite([(("Gemm", "MatMul"), lrp.LRP0())], epsilon=0.0, stabilizer=0.0)
    assert isinstance(default.assign(model).rules[mul], lrp.Uniform)  # no factor is a gate
    np.testing.assert_array_equal(lrp.LRP(model, default).attribute(x, target=1), ours)
    f = x.reshape(2, 12).astype(np.float64)
    wa, wb, wc = (m.weight.detach().numpy().astype(np.float64) for m in (net.a, net.b, net.c))
    a, b = f @ wa.T, f @ wb.T
    r_p = a * b * wc[1]  # the z-rule of W_c from R = y_1
    r_a = r_b = r_p / 2
    expected = (f * ((r_a / a) @ wa) + f * ((r_b / b) @ wb)).reshape(x.shape)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    np.testing.assert_allclose(ours.reshape(2, -1).sum(1), (a * b) @ wc[1], rtol=1e-4)  # conserved


def test_the_uniform_rule_on_a_matrix_product_of_two_computed_tensors_conserves_relevance():
    """(x W_q)(x W_k)ᵀ: each term's ε-share goes half to each factor; with LRP-0 elsewhere and
    no biases, the input's relevance sums to the score."""
    torch.manual_seed(9)
    net = _GatedProduct(tokens=True).eval()
    x = np.random.default_rng(4).standard_normal((2, 3, 2, 2)).astype(np.float32)
    model = ox.adapters.torch.export(net, torch.from_numpy(x))
    scores = _product_node(model, "MatMul")
    composite = lrp.Composite([(("Gemm", "MatMul"), lrp.LRP0()), (lrp.Select(name=scores), lrp.Uniform(0.0))],
                              epsilon=0.0, stabilizer=0.0)
    relevance = lrp.LRP(model, composite).attribute(x, target=2)
    np.testing.assert_allclose(relevance.reshape(2, -1).sum(1), model.predict(x)[:, 2], rtol=1e-4)
    # LRP0 on MatMul needs constant weights; with none, composites map the uniform rule
    default = lrp.Composite([(("Gemm", "MatMul"), lrp.LRP0())], epsilon=0.0, stabilizer=0.0)
    assert isinstance(default.assign(model).rules[scores], lrp.Uniform)
    np.testing.assert_array_equal(lrp.LRP(model, default).attribute(x, target=2), relevance)


class _SliceAssign(torch.nn.Module):
    """Two bias-free conv branches; the first two channels of one overwritten by the
    other's (``a[:, :2] = b[:, :2]``, exported as ScatterND); GAP → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.b = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.fc = torch.nn.Linear(4, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.relu(self.a(x)), torch.relu(self.b(x))
        a = a.clone()
        a[:, :2] = b[:, :2]
        return self.fc(a.mean((2, 3)))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_an_assignment_into_a_slice_routes_relevance_to_where_each_value_came_from(images, exporter):
    """ScatterND passes each element's relevance to the tensor it was copied from (the
    gradient's routing), so LRP-0 on this bias-free network equals x ⊙ ∇S_c."""
    torch.manual_seed(6)
    model = _lrp0_is_gradient_times_input_of(_SliceAssign(), _SliceAssign(), images[:, :, :16, :16], 2,
                                             exporter=exporter)
    assert "ScatterND" in {node.op_type for node in model.ir.graph}


class _PatchMerging(torch.nn.Module):
    """Conv → channels-last map → swin's patch merging (padded to even sides by pads the
    graph computes, the four strided quarters concatenated, reshaped to tokens) → LayerNorm
    → Linear → mean → Linear. The legacy exporter at opset 14 writes the LayerNorm out, and
    shape inference cannot tell the shapes after the computed pad. ``detach``: each std
    held."""

    def __init__(self, detach: bool = False) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.norm, self.reduce = torch.nn.LayerNorm(16), torch.nn.Linear(16, 8)
        self.head = torch.nn.Linear(8, 5)
        self.detach = detach

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).permute(0, 2, 3, 1)
        h, w = x.shape[-3], x.shape[-2]
        x = torch.nn.functional.pad(x, (0, 0, 0, w % 2, 0, h % 2))  # as torchvision's swin
        quarters = [x[:, i::2, j::2, :] for j in (0, 1) for i in (0, 1)]
        t = torch.cat(quarters, -1)
        t = t.reshape(t.shape[0], -1, t.shape[-1])
        if self.detach:
            centred = t - t.mean(-1, keepdim=True)
            std = (centred.square().mean(-1, keepdim=True) + self.norm.eps).sqrt()
            t = centred / std.detach() * self.norm.weight + self.norm.bias
        else:
            t = self.norm(t)
        return self.head(self.reduce(t).mean(1))


def test_a_layer_norm_written_out_where_shapes_are_unknown_still_gets_the_ln_rule(images):
    """The Div by σ is told by σ being a reduction, not by the shapes (which shape inference
    leaves unknown here): LRP-0 equals x ⊙ ∇S_c with the std detached."""
    torch.manual_seed(7)
    model = _lrp0_is_gradient_times_input_of(_PatchMerging(), _PatchMerging(detach=True), images, 2,
                                             exporter="legacy", opset=14)
    assert "LayerNormalization" not in [node.op_type for node in model.ir.graph]
