"""Models whose input is flattened images, (N, F): the graph reshapes them into images
(``x.view(-1, C, H, W)``, detected), or it reads the features as they are (scikit-learn
pipelines, pixel MLPs: ``load(..., image_shape=...)``). The model then takes the images,
and methods equal Captum on the module fed the images flattened."""

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, Occlusion, Saliency

import onnxplain as ox

C, H, W = 3, 8, 8
F = C * H * W


class Reshaping(torch.nn.Module):
    """(N, F) → normalise → view (N, C, H, W) → conv-ReLU → global average → linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(C, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.5) * 2
        return self.fc(torch.relu(self.conv(x.reshape(x.shape[0], C, H, W))).mean((2, 3)))


class PixelMLP(torch.nn.Module):
    """(N, F) → linear-ReLU → linear: nothing in the graph says the features are an image."""

    def __init__(self, features: int = F) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.hidden = torch.nn.Linear(features, 16)
        self.out = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


class OnImages(torch.nn.Module):
    """``net`` fed images flattened in C order: the reference for image-shaped attributions."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def _export(net: torch.nn.Module, exporter: str, path, dynamic: bool = True, **load_options):
    kwargs = {}
    if exporter == "legacy":
        kwargs["dynamo"] = False
        if dynamic:
            kwargs.update(input_names=["x"], dynamic_axes={"x": {0: "n"}})
    else:
        kwargs["dynamo"] = True
        if dynamic:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("n")},)
    torch.onnx.export(net, (torch.rand(2, F),), path, **kwargs)
    return ox.load(path, **load_options)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(2).random((3, C, H, W), dtype=np.float32)


@pytest.fixture(scope="module", params=["legacy", "dynamo"])
def reshaping(request, tmp_path_factory):
    net = Reshaping().eval()
    path = tmp_path_factory.mktemp("flat") / f"reshaping_{request.param}.onnx"
    return net, _export(net, request.param, path)


def test_a_flattened_input_the_graph_reshapes_into_images_takes_the_images(reshaping, images, tmp_path):
    net, model = reshaping
    assert model.layout == "NCHW" and model.input_spec.shape[1:] == (C, H, W)
    with torch.no_grad():
        want = net(torch.from_numpy(images.reshape(3, F))).numpy()
    for backend in ("onnxruntime", "torch"):
        np.testing.assert_allclose(model.backend(backend).predict(images), want, rtol=1e-5, atol=1e-6)
    again = ox.load(model.save(tmp_path / "images.onnx"))
    assert again.input_spec.shape[1:] == (C, H, W)
    np.testing.assert_allclose(again.predict(images), want, rtol=1e-5, atol=1e-6)


def test_methods_equal_captum_on_the_module_fed_the_images_flattened(reshaping, images):
    net, model = reshaping
    reference = OnImages(net).eval()
    x = torch.from_numpy(images)
    for ours, theirs, kwargs in (
        (ox.Saliency(model), Saliency(reference), {"abs": False}),
        (ox.IntegratedGradients(model), IntegratedGradients(reference), {"n_steps": 16}),
        (ox.Occlusion(model), Occlusion(reference), {"sliding_window_shapes": (C, 4, 4), "strides": 4}),
    ):
        got = ours.attribute(images, target=2, **kwargs)
        want = theirs.attribute(x, target=2, **kwargs).detach().numpy()
        assert got.shape == images.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=type(ours).__name__)
    cam = ox.GradCAM(model).attribute(images, target=2)
    assert cam.shape == (3, H, W) and np.isfinite(cam).all() and cam.max() > 0


def test_a_fixed_batch_flattened_input_is_detected_and_made_dynamic(images, tmp_path):
    net = Reshaping().eval()
    model = _export(net, "legacy", tmp_path / "fixed.onnx", dynamic=False)
    assert model.input_spec.shape[1:] == (C, H, W)
    with torch.no_grad():
        want = net(torch.from_numpy(images.reshape(3, F))).numpy()
    np.testing.assert_allclose(model.predict(images), want, rtol=1e-5, atol=1e-6)


def test_flat_arrays_are_refused_with_the_reshape_that_makes_them_images(reshaping, images):
    _, model = reshaping
    with pytest.raises(ox.InputValidationError, match=r"flattened images: pass x\.reshape\(-1, 3, 8, 8\)"):
        ox.Saliency(model).attribute(images.reshape(3, F), target=0)
    with pytest.raises(ox.InputValidationError, match=r"flattened images"):
        model.predict(images.reshape(3, F))


@pytest.mark.parametrize(
    ("image_shape", "layout", "user_shape"),
    [((C, H, W), "auto", (C, H, W)), ((H, W, C), "NHWC", (H, W, C)), ((H, W * C), "auto", (H, W * C))],
)
def test_image_shape_reads_the_features_of_a_pixel_mlp_as_images(image_shape, layout, user_shape, tmp_path):
    """A C-order flattening of (C, H, W), of (H, W, C) (channels last: the model takes and
    returns NHWC arrays), or of one-channel (H, W) images (NHW)."""
    net = PixelMLP().eval()
    model = _export(net, "legacy", tmp_path / "mlp.onnx", image_shape=image_shape, layout=layout)
    assert model.user_input_shape[1:] == user_shape
    assert model.layout == ({"auto": "NCHW", "NHWC": "NHWC"}[layout] if len(image_shape) == 3 else "NHW")
    x = np.random.default_rng(3).random((2, *user_shape), dtype=np.float32)
    flat = torch.from_numpy(x.reshape(2, F))
    with torch.no_grad():
        np.testing.assert_allclose(model.predict(x), net(flat).numpy(), rtol=1e-5, atol=1e-6)
    got = ox.Saliency(model).attribute(x, target=1, abs=False)
    want = Saliency(net).attribute(flat, target=1, abs=False).numpy().reshape(x.shape)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_a_window_occludes_the_pixels_it_covers_in_the_users_layout(tmp_path):
    """(H, W, C) features: a 4×4 window over every channel hides the features the pixels
    (y, x, c) with y, x < 4 flattened into; its attribution is the score change."""
    net = PixelMLP().eval()
    model = _export(net, "legacy", tmp_path / "hwc.onnx", image_shape=(H, W, C), layout="NHWC")
    x = np.random.default_rng(4).random((2, H, W, C), dtype=np.float32)
    got = ox.Occlusion(model).attribute(x, target=3, sliding_window_shapes=(4, 4, C), strides=(4, 4, C))
    hidden = x.copy()
    hidden[:, :4, :4, :] = 0
    with torch.no_grad():
        before, after = (net(torch.from_numpy(a.reshape(2, F)))[:, 3] for a in (x, hidden))
        score = before - after
    assert got.shape == x.shape
    np.testing.assert_allclose(got[:, 0, 0, 0], score.numpy(), rtol=1e-4, atol=1e-6)


def test_wrong_image_shapes_and_layouts_are_refused_before_anything_runs(reshaping, tmp_path):
    net = PixelMLP().eval()
    path = tmp_path / "mlp.onnx"
    _export(net, "legacy", path)
    with pytest.raises(ox.ModelLoadError, match="holds 48 values.*takes 192 features"):
        ox.load(path, image_shape=(3, 4, 4))
    with pytest.raises(ox.ModelLoadError, match="image_shape=.*one-channel.*not layout='NHWC'"):
        ox.load(path, image_shape=(H, W * C), layout="NHWC")
    with pytest.raises(ox.ModelLoadError, match="layout='NHW' takes image_shape=\\(H, W\\)"):
        ox.load(path, image_shape=(C, H, W), layout="NHW")
    for bad in ((F,), (0, 8, 24), (1, 2, 3, 32), "8x8", (2.5, 8, 8)):
        with pytest.raises(ox.InputValidationError, match="image_shape must be the shape of one image"):
            ox.load(path, image_shape=bad)
    with pytest.raises(ox.ModelLoadError, match="is for a model whose input is flattened images"):
        ox.load(ox.examples.tiny_cnn(), image_shape=(3, 64, 64))
    detected = tmp_path / "reshaping.onnx"
    _export(Reshaping().eval(), "legacy", detected)
    with pytest.raises(ox.ModelLoadError, match="reshaped into NCHW images .*not layout='NHWC'"):
        ox.load(detected, layout="NHWC")


def test_a_tabular_input_nothing_reshapes_keeps_its_shape(tmp_path):
    model = _export(PixelMLP().eval(), "legacy", tmp_path / "tabular.onnx")
    assert model.layout == "NCHW" and model.input_spec.shape == ("n", F)
    x = np.random.default_rng(5).random((2, F), dtype=np.float32)
    assert ox.Saliency(model).attribute(x, target=0).shape == x.shape


def test_a_scikit_learn_file_loads_as_the_images_it_was_fitted_on():
    """A digits-style classifier exported by skl2onnx (ai.onnx.ml operators): its file takes
    (N, 64); with image_shape=(8, 8) it takes the 8×8 images, predicts what scikit-learn
    predicts and an occluded patch's attribution is the change of predict_proba."""
    pytest.importorskip("skl2onnx")
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(6)
    images = rng.random((60, 8, 8), dtype=np.float32)
    labels = (images[:, :4].mean((1, 2)) > images[:, 4:].mean((1, 2))).astype(int)
    clf = LogisticRegression(max_iter=300).fit(images.reshape(60, -1), labels)
    proto = to_onnx(clf, images[:1].reshape(1, -1), options={id(clf): {"zipmap": False}})
    model = ox.load(proto, image_shape=(8, 8))
    assert model.layout == "NHW" and model.user_input_shape[1:] == (8, 8)
    x = images[:3]
    np.testing.assert_allclose(model.predict(x), clf.predict_proba(x.reshape(3, -1)), atol=1e-6)
    got = ox.Occlusion(model).attribute(x, target=1, sliding_window_shapes=(4, 4), strides=(4, 4))
    hidden = x.copy()
    hidden[:, 4:, :4] = 0
    change = clf.predict_proba(x.reshape(3, -1))[:, 1] - clf.predict_proba(hidden.reshape(3, -1))[:, 1]
    np.testing.assert_allclose(got[:, 4, 0], change, atol=1e-6)
    shap = ox.KernelShap(model).attribute(x[:1], target=1, n_samples=64, show_progress=False)
    assert shap.shape == (1, 8, 8) and np.isfinite(shap).all()
