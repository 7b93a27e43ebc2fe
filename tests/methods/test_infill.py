"""In-fill strategies: constants, blur against torch, seeded noise, ONNX in-painters."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import onnxplain as ox
import onnxplain.infill as infill
from onnxplain.methods.perturbation import RISE, FeatureAblation, Occlusion

FILL = 0.7  # what the test in-painters write into holes


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 3, 12, 10)).astype(np.float32)


def half_keep(shape):
    keep = np.ones((shape[0], 1, *shape[2:]), np.float32)
    keep[..., :, : shape[-1] // 2] = 0
    return keep


# -- constants -------------------------------------------------------------------------------


def test_constant_fills_blend_exactly(x):
    keep = half_keep(x.shape)
    out = infill.Constant(0.25)(x, keep)
    np.testing.assert_array_equal(out[..., :5], 0.25)
    np.testing.assert_array_equal(out[..., 5:], x[..., 5:])
    np.testing.assert_array_equal(infill.Zeros()(x, keep), x * keep)
    np.testing.assert_array_equal(infill.Gray()(x, keep)[..., :5], 0.5)


def test_boolean_blend_selects_exactly_like_where_with_broadcasting(x):
    rng = np.random.default_rng(3)
    keep = rng.random((4, 2, 1, 12, 10)) < 0.5  # shared by the channels
    fill = rng.standard_normal((3, 12, 10)).astype(np.float64)  # one example, another dtype
    got = infill.blend(np.broadcast_to(x, (4, *x.shape)), keep, fill)
    want = np.where(keep, x, fill).astype(np.float32)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)  # exact: x·1 + f·0 = x, x·0 + f·1 = f


def test_the_zero_fill_fast_path_equals_the_blend(x):
    from onnxplain.methods.perturbation.base import Filler

    keep = np.random.default_rng(4).random((2, 1, 12, 10)) < 0.5
    soft = np.random.default_rng(5).random((2, 1, 12, 10)).astype(np.float32)
    zero = Filler(infill.Constant(0.0), x, np.random.default_rng(0))
    assert zero.zero and not Filler(infill.Constant(0.1), x, np.random.default_rng(0)).zero
    rows = np.arange(2)
    for mask in (keep, soft):
        np.testing.assert_array_equal(zero(rows, x, mask), infill.blend(x, mask, np.zeros_like(x)))


def test_constant_accepts_one_example_or_one_per_example(x):
    one = np.arange(3 * 12 * 10, dtype=np.float32).reshape(3, 12, 10)
    np.testing.assert_array_equal(infill.Constant(one).fill(x)[1], one)
    both = np.stack([one, -one])
    np.testing.assert_array_equal(infill.Constant(both).fill(x)[1], -one)
    with pytest.raises(ox.InputValidationError, match="broadcast"):
        infill.Constant(np.zeros((4, 4))).fill(x)
    with pytest.raises(ox.InputValidationError, match="finite"):
        infill.Constant(np.nan)


def test_mean_fills_each_example_with_its_channel_means(x):
    fill = infill.Mean().fill(x)
    np.testing.assert_allclose(fill[1, 2], x[1, 2].astype(np.float64).mean(), rtol=1e-6)
    np.testing.assert_allclose(infill.Mean(per_channel=False).fill(x)[0], x[0].astype(np.float64).mean(),
                               rtol=1e-6)


# -- blur --------------------------------------------------------------------------------------


def torch_blur(x, sigma, mode):
    """A separable Gaussian (|i| ≤ ⌈4σ⌉) by torch.conv2d after torch's padding."""
    width = int(np.ceil(4 * sigma))
    i = torch.arange(-width, width + 1, dtype=torch.float64)
    k = torch.exp(-(i**2) / (2 * sigma**2))
    k = (k / k.sum()).reshape(1, 1, -1)
    t = torch.from_numpy(x.astype(np.float64))
    n, c, h, w = t.shape
    pad = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
    t = F.pad(t, (width, width, width, width), mode=pad)
    t = F.conv2d(t.reshape(n * c, 1, *t.shape[2:]), k[..., None]).reshape(n, c, h, -1)
    t = F.conv2d(t.reshape(n * c, 1, *t.shape[2:]), k[:, :, None]).reshape(n, c, h, w)
    return t.numpy()


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("sigma", [0.8, 2.0])
def test_gaussian_blur_equals_torch_convolution(x, mode, sigma):
    ours = infill.GaussianBlur(sigma, padding=mode).fill(x)
    np.testing.assert_allclose(ours, torch_blur(x, sigma, mode), atol=1e-5)


def test_gaussian_blur_wider_than_the_image_and_of_zero_sigma(x):
    wide = infill.GaussianBlur(20.0).fill(x)  # reflection repeats: a near-constant image per channel
    assert np.isfinite(wide).all() and wide[0, 0].std() < 0.1 * x[0, 0].std()
    np.testing.assert_array_equal(infill.GaussianBlur(0.0).fill(x), x)


# -- noise ----------------------------------------------------------------------------------------


def test_noise_is_seeded_and_fresh_on_every_call(x):
    u = infill.UniformNoise(-1.0, 2.0)
    a = u.fill(x, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, u.fill(x, rng=np.random.default_rng(3)))
    rng = np.random.default_rng(3)
    assert not np.array_equal(u.fill(x, rng=rng), u.fill(x, rng=rng))
    assert a.min() >= -1 and a.max() < 2 and u.stochastic


def test_gaussian_noise_replaces_or_adds(x):
    big = np.zeros((4, 3, 64, 64), np.float32)
    g = infill.GaussianNoise(std=2.0, mean=1.0).fill(big, rng=np.random.default_rng(0))
    assert g.mean() == pytest.approx(1.0, abs=0.05) and g.std() == pytest.approx(2.0, rel=0.03)
    added = infill.GaussianNoise(std=0.1, additive=True).fill(x, rng=np.random.default_rng(0))
    assert np.abs(added - x).max() < 1.0 and not np.array_equal(added, x)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: infill.GaussianBlur(-1.0), "sigma"),
        (lambda: infill.GaussianBlur(1.0, padding="wrap"), "padding"),
        (lambda: infill.UniformNoise(1.0, 1.0), "high"),
        (lambda: infill.GaussianNoise(0.0), "std"),
    ],
)
def test_infills_refuse_bad_arguments(make, match):
    with pytest.raises(ox.InputValidationError, match=match):
        make()


# -- generative in-filling ---------------------------------------------------------------------


def stacked_inpainter(channels=3):
    """One input (N, C+1, H, W) = [image, hole]: out_c = image_c + FILL·hole (a 1×1 Conv)."""
    w = np.zeros((channels, channels + 1, 1, 1), np.float32)
    for c in range(channels):
        w[c, c] = 1.0
        w[c, channels] = FILL
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["out"], name="conv")], "stacked",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", channels + 1, "h", "w"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", channels, "h", "w"])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def two_input_inpainter(channels=3, mask_first=False):
    """Two inputs, the hole mask (N, 1, H, W) and the image: out = image + FILL·hole."""
    nodes = [
        helper.make_node("Mul", ["hole", "fill"], ["scaled"], name="mul"),
        helper.make_node("Add", ["image", "scaled"], ["out"], name="add"),
    ]
    inputs = [
        helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", channels, "h", "w"]),
        helper.make_tensor_value_info("hole", TensorProto.FLOAT, ["n", 1, "h", "w"]),
    ]
    graph = helper.make_graph(
        nodes, "two_inputs", inputs[::-1] if mask_first else inputs,
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", channels, "h", "w"])],
        initializer=[numpy_helper.from_array(np.array(FILL, np.float32), "fill")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def expected(x, keep):
    return np.where(keep.astype(bool), x, FILL).astype(np.float32)


def test_generative_infill_with_a_stacked_input_model(x):
    keep = half_keep(x.shape)
    for model in (stacked_inpainter(), ox.load(stacked_inpainter()), stacked_inpainter().SerializeToString()):
        np.testing.assert_allclose(infill.Generative(model)(x, keep), expected(x, keep), atol=1e-6)


def test_generative_infill_with_an_image_and_a_mask_input(x, tmp_path):
    keep = half_keep(x.shape)
    plain = infill.Generative(two_input_inpainter())
    np.testing.assert_allclose(plain(x, keep), expected(x, keep), atol=1e-6)
    named = infill.Generative(two_input_inpainter(mask_first=True), image_input="image", mask_input="hole")
    np.testing.assert_allclose(named(x, keep), expected(x, keep), atol=1e-6)
    path = tmp_path / "inpainter.onnx"
    onnx.save(two_input_inpainter(), str(path))
    np.testing.assert_allclose(infill.Generative(str(path))(x, keep), expected(x, keep), atol=1e-6)


def test_generative_infill_sees_holes_zeroed_and_thresholds_soft_masks(x):
    seen = []

    def inpaint(image, hole):
        seen.append((image.copy(), hole.copy()))
        return np.full_like(image, FILL)

    keep = np.full((2, 1, 12, 10), 0.8, np.float32)
    keep[..., :3] = 0.2
    out = infill.Generative(inpaint, max_batch_size=1)(x, keep)
    image, hole = seen[0]
    assert len(seen) == 2 and hole.shape == (1, 1, 12, 10)
    np.testing.assert_array_equal(hole[..., :3], 1)
    np.testing.assert_array_equal(hole[..., 3:], 0)
    np.testing.assert_array_equal(image[..., :3], 0)
    np.testing.assert_allclose(out, keep * x + (1 - keep) * FILL, rtol=1e-6)  # the blend stays soft


def test_occlusion_with_a_generative_infill_equals_its_constant_fill(small_model, images):
    kwargs = dict(sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4), target=2)
    gen = Occlusion(small_model).attribute(images, infill=infill.Generative(stacked_inpainter()), **kwargs)
    const = Occlusion(small_model).attribute(images, baselines=FILL, **kwargs)
    np.testing.assert_allclose(gen, const, atol=1e-5)


def test_generative_infill_in_feature_ablation_and_rise(small_model, images):
    fm = np.arange(16).reshape(4, 4).repeat(8, 0).repeat(8, 1)
    fa = FeatureAblation(small_model).attribute(images, target=1, feature_mask=fm, show_progress=False,
                                                infill=infill.Generative(two_input_inpainter()))
    ref = FeatureAblation(small_model).attribute(images, target=1, feature_mask=fm, baselines=FILL,
                                                 show_progress=False)
    np.testing.assert_allclose(fa, ref, atol=1e-5)
    sal = RISE(small_model).attribute(images, target=1, n_masks=32, s=4, show_progress=False,
                                      infill=infill.Generative(stacked_inpainter()))
    assert sal.shape == (2, 32, 32) and np.isfinite(sal).all()


def test_generative_infill_refuses_what_it_cannot_run(x):
    with pytest.raises(ox.InputValidationError, match="returned shape"):
        infill.Generative(lambda image, hole: image[:, :1])(x, half_keep(x.shape))
    with pytest.raises(ox.InputValidationError, match="do not name"):
        infill.Generative(two_input_inpainter(), image_input="picture")
    with pytest.raises(ox.InputValidationError, match="threshold"):
        infill.Generative(stacked_inpainter(), threshold=0.0)
