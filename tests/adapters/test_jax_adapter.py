"""The JAX adapter exports a Flax nnx CNN and a plain JAX function (channels-last); the
explanations equal the ones JAX computes itself (jax.grad, occlusion by hand)."""


import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("jax2onnx")
nnx = pytest.importorskip("flax.nnx")
import jax.numpy as jnp  # noqa: E402
from helpers import ConvLayerNormNHWC, max_rel_err, occluded_by_hand_nhwc  # noqa: E402

import onnxplain as ox  # noqa: E402

SIZE = 16
#: float32 on both sides, different operation orders: 1e-4 of each map's largest value.
TOL = 1e-4


class FlaxCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(3, 8, (3, 3), padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(8, 12, (3, 3), padding="SAME", rngs=rngs)
        self.fc = nnx.Linear(12, 5, rngs=rngs)

    def features(self, x):
        x = nnx.max_pool(nnx.relu(self.conv1(x)), window_shape=(2, 2), strides=(2, 2))
        return nnx.relu(self.conv2(x))  # (N, 8, 8, 12)

    def head(self, a):
        return self.fc(a.mean(axis=(1, 2)))

    def __call__(self, x):
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def flax_pair():
    net = FlaxCNN(nnx.Rngs(0))
    x = np.random.default_rng(0).random((2, SIZE, SIZE, 3), dtype=np.float32)
    return net, ox.adapters.jax.export(net, x), x


def test_the_export_keeps_the_layout_and_a_dynamic_batch(flax_pair):
    net, model, _ = flax_pair
    assert getattr(model, "user_input_shape", model.inputs[0].shape)[1:] == (SIZE, SIZE, 3)
    x5 = np.random.default_rng(1).random((5, SIZE, SIZE, 3), dtype=np.float32)
    np.testing.assert_allclose(model.predict(x5), np.asarray(net(jnp.asarray(x5))), atol=1e-5)


def test_saliency_equals_jax_grad(flax_pair):
    net, model, x = flax_pair
    ours = ox.Saliency(model).attribute(x, target=1, abs=False)
    ref = np.asarray(jax.grad(lambda v: net(v)[:, 1].sum())(jnp.asarray(x)))
    assert max_rel_err(ours, ref) < TOL


def test_occlusion_equals_occluding_by_hand(flax_pair):
    net, model, x = flax_pair
    ours = ox.Occlusion(model).attribute(
        x, target=4, sliding_window_shapes=(8, 8, 3), strides=(8, 8, 3), show_progress=False
    )
    predict = lambda images: np.asarray(net(jnp.asarray(images)))  # noqa: E731
    assert max_rel_err(ours, occluded_by_hand_nhwc(predict, x, 4)) < TOL


def test_grad_cam_equals_grad_cam_computed_in_jax(flax_pair):
    net, model, x = flax_pair
    layer = [n.outputs[0].name for n in model.ir.graph if n.op_type == "Relu"][-1]
    ours = ox.GradCAM(model, layer=layer).attribute(x, target=2, upsample=False)
    a = net.features(jnp.asarray(x))
    grads = jax.grad(lambda v: net.head(v)[:, 2].sum())(a)
    ref = np.maximum(np.asarray((grads.mean(axis=(1, 2), keepdims=True) * a).sum(-1)), 0)  # (N, 8, 8)
    assert ours.shape == ref.shape
    assert max_rel_err(ours, ref) < TOL


def test_a_plain_function_with_params_exports_with_its_weights_as_constants():
    rng = np.random.default_rng(2)
    params = {"w": rng.standard_normal((3, 3, 3, 4)).astype(np.float32), "d": rng.standard_normal((4, 3))}
    params["d"] = params["d"].astype(np.float32)

    def f(p, x):
        h = jax.lax.conv_general_dilated(
            x, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jax.nn.relu(h).mean(axis=(1, 2)) @ p["d"]

    x = rng.random((3, 8, 8, 3), dtype=np.float32)
    model = ox.adapters.jax.export(f, x, params=params)
    assert len(model.ir.graph.inputs) == 1
    np.testing.assert_allclose(model.predict(x), np.asarray(f(params, x)), atol=1e-5)


def test_a_linen_module_needs_its_variables():
    linen = pytest.importorskip("flax.linen")
    dense = linen.Dense(2)
    with pytest.raises(ox.InputValidationError, match="variables"):
        ox.adapters.jax.export(dense, np.zeros((1, 3), np.float32))


def test_a_function_that_resizes_its_images_first_exports_with_a_batch_made_dynamic():
    """``jax.image.resize`` cannot be traced with a symbolic batch: the example's batch is
    exported, load makes it dynamic, and the graph (a Resize of NHWC axes, no transpose to
    read the layout from) leaves the layout to be named. Occlusion equals occluding by hand
    in JAX, and saliency equals jax.grad (the torch backend resizes channels-last axes)."""
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.standard_normal((3, 4)).astype(np.float32))

    def fn(x):
        small = jax.image.resize(x, (x.shape[0], 8, 8, 3), method="linear", antialias=False)
        return jnp.tanh(small @ w).mean(axis=(1, 2))

    x = rng.random((2, 12, 10, 3), dtype=np.float32)
    model = ox.adapters.jax.export(fn, x, layout="NHWC")
    assert model.layout == "NHWC" and model.fixed_batch is None
    x3 = np.concatenate([x, x[:1]])
    np.testing.assert_allclose(model.predict(x3), np.asarray(fn(jnp.asarray(x3))), atol=1e-5)
    ours = ox.Occlusion(model).attribute(x, target=1, sliding_window_shapes=(4, 5, 3), strides=(4, 5, 3))
    expected = occluded_by_hand_nhwc(lambda images: np.asarray(fn(jnp.asarray(images))), x, 1, window=(4, 5))
    assert max_rel_err(ours, expected) < TOL
    grad = jax.grad(lambda v: fn(v)[:, 1].sum())(jnp.asarray(x))
    assert max_rel_err(ox.Saliency(model).attribute(x, target=1), np.abs(np.asarray(grad))) < TOL


@pytest.mark.parametrize("method", ["linear", "nearest", "cubic"])
def test_a_cnn_that_resizes_its_images_first_is_read_as_channels_last(method):
    """A Resize before the transpose to NCHW that jax2onnx writes for a convolution: the
    layout is read through it, and saliency equals jax.grad. Nearest and cubic compute
    JAX's rounding and edge weights (jax2onnx's own attributes missed them by 1 % and 2e-4
    of the output)."""
    rng = np.random.default_rng(4)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 4)).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((4, 5)).astype(np.float32))

    def fn(x):
        small = jax.image.resize(x, (x.shape[0], 6, 5, 3), method=method, antialias=False)  # ties
        h = jax.lax.conv_general_dilated(small, kernel, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(h).mean(axis=(1, 2)) @ w

    x = rng.random((2, 12, 10, 3), dtype=np.float32)
    model = ox.adapters.jax.export(fn, x)
    assert model.layout == "NHWC"
    grad = jax.grad(lambda v: fn(v)[:, 1].sum())(jnp.asarray(x))
    assert max_rel_err(ox.Saliency(model).attribute(x, target=1), np.abs(np.asarray(grad))) < TOL


def test_a_function_computing_in_float16_loads_in_float32_and_has_jax_grads_saliency():
    """jax2onnx types some float16 values of a float16 computation as float32 (invalid ONNX
    before the model is computed all in float32); the export loads, and saliency equals
    jax.grad of the same function in float32 on the float16 weights (1e-4)."""
    rng = np.random.default_rng(6)
    kernel = rng.standard_normal((3, 3, 3, 4)).astype(np.float16)
    w = rng.standard_normal((4, 5)).astype(np.float16)

    def fn(x, dtype=jnp.float16):
        h = jax.lax.conv_general_dilated(x.astype(dtype), jnp.asarray(kernel, dtype), (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return (jax.nn.relu(h).mean(axis=(1, 2)) @ jnp.asarray(w, dtype)).astype(jnp.float32)

    x = rng.random((2, 12, 10, 3), dtype=np.float32)
    model = ox.adapters.jax.export(fn, x)
    assert model.converted_from == "float16" and model.layout == "NHWC"
    grad = jax.grad(lambda v: fn(v, jnp.float32)[:, 1].sum())(jnp.asarray(x))
    assert max_rel_err(ox.Saliency(model).attribute(x, target=1), np.abs(np.asarray(grad))) < TOL


@pytest.mark.parametrize("method", ["linear", "lanczos3"])
def test_an_antialiased_or_lanczos_resize_jax2onnx_refuses_is_exported_as_matrix_products(method):
    """jax.image.resize antialiases by default, which jax2onnx does not convert, nor Lanczos
    kernels: the resize is traced as one matrix product per axis (JAX's own weights), behind
    a transpose that shows the NHWC layout. Predictions (another batch size) and saliency
    equal JAX's."""
    rng = np.random.default_rng(7)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 4)).astype(np.float32))
    w = jnp.asarray(rng.standard_normal((4, 5)).astype(np.float32))

    def fn(x):
        small = jax.image.resize(x, (x.shape[0], 8, 7, 3), method=method)  # antialias=True
        h = jax.lax.conv_general_dilated(small, kernel, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(h).mean(axis=(1, 2)) @ w

    x = rng.random((2, 20, 18, 3), dtype=np.float32)
    original = jax.image.resize
    model = ox.adapters.jax.export(fn, x)
    assert jax.image.resize is original  # patched while tracing only
    assert model.layout == "NHWC" and model.fixed_batch is None
    x3 = np.concatenate([x, x[:1]])
    assert max_rel_err(model.predict(x3), np.asarray(fn(jnp.asarray(x3)))) < TOL
    grad = jax.grad(lambda v: fn(v)[:, 1].sum())(jnp.asarray(x))
    assert max_rel_err(ox.Saliency(model).attribute(x, target=1), np.abs(np.asarray(grad))) < TOL


def test_a_model_without_convolutions_takes_nhwc_images_jax_s_convention(recwarn):
    """Patches → one self-attention (``jax.nn.dot_product_attention``) → head: no convolution,
    so no transpose shows the layout; the adapter takes JAX's channels-last images (load
    alone would read them as NCHW and warn), and occlusion windows are (h, w, c)."""
    rng = np.random.default_rng(0)
    params = {k: (rng.standard_normal(shape) * 0.3).astype(np.float32)
              for k, shape in (("patch", (48, 16)), ("q", (16, 16)), ("k", (16, 16)), ("v", (16, 16)),
                               ("fc", (16, 5)))}

    def fn(p, x):  # (N, 16, 16, 3) → 16 patches of 4 × 4 × 3
        n = x.shape[0]
        t = x.reshape(n, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, 16, 48) @ p["patch"]
        q, k, v = (jnp.reshape(t @ p[w], (n, 16, 4, 4)) for w in "qkv")
        y = jax.nn.dot_product_attention(q, k, v).reshape(n, 16, 16)
        return jax.nn.gelu(t + y).mean(1) @ p["fc"]

    x = rng.standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)
    model = ox.adapters.jax.export(fn, x, params=params)
    assert model.layout == "NHWC"
    assert not [w for w in recwarn if "channels-last" in str(w.message)]
    ours = ox.Occlusion(model).attribute(x, target=2, sliding_window_shapes=(8, 8, 3), strides=(8, 8, 3),
                                         show_progress=False)
    predict = lambda images: np.asarray(fn(params, jnp.asarray(images)))  # noqa: E731
    assert max_rel_err(ours, occluded_by_hand_nhwc(predict, x, 2)) < TOL


def test_lrp_through_a_layer_norm_written_as_keras_writes_it_under_jax_is_the_ln_rule():
    """Keras' LayerNorm under JAX, x·(γ·rsqrt(σ² + ε)) + (β − μ·γ·rsqrt(σ² + ε)), whose rsqrt
    jax2onnx writes as Div(1, Sqrt): 1/σ is a gate (it was refused as one LRP could not
    place), and LRP equals LRP of the same network with a LayerNormalization node (the ε
    LN-rule), exported by torch."""
    import torch

    rng = np.random.default_rng(6)
    w = rng.standard_normal((3, 3, 3, 6)).astype(np.float32) * 0.5
    gamma, beta = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    fc = rng.standard_normal((6, 4)).astype(np.float32)

    def fn(x):
        h = jax.nn.relu(jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC")))
        mean = h.mean(-1, keepdims=True)
        inverse = jax.lax.rsqrt(((h - mean) ** 2).mean(-1, keepdims=True) + 1e-6) * gamma
        return (h * inverse + (beta - mean * inverse)).mean((1, 2)) @ fc

    x = rng.random((2, SIZE, SIZE, 3), dtype=np.float32)
    model = ox.adapters.jax.export(fn, x)
    twin = ConvLayerNormNHWC(w, gamma, beta, fc).eval()
    fused = ox.adapters.torch.export(twin, torch.from_numpy(x), exporter="legacy", opset=17)
    assert "LayerNormalization" in {n.op_type for n in fused.ir.graph}
    np.testing.assert_allclose(model.predict(x), fused.predict(x), rtol=1e-5, atol=1e-5)
    ours, reference = (ox.LRP(m).attribute(x, target=1) for m in (model, fused))
    assert max_rel_err(ours, reference) < 1e-4
