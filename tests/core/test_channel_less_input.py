"""Models that take one-channel images without a channel axis, (N, H, W) (Keras MNIST
models, ``x.unsqueeze(1)`` first): layout ``"NHW"``. Methods take and return (N, H, W)
arrays and equal Captum on the module; the image methods (CAMs, RISE, ScoreCAM) compute
what they compute on the same network with a channel axis."""

import numpy as np
import pytest
import torch

import onnxplain as ox

SIZE = 16
#: 4×4 cells, numbered row by row: a feature mask without a channel axis
CELLS = (np.arange(SIZE)[:, None] // 4 * 4 + np.arange(SIZE)[None, :] // 4).astype(np.int64)


class ChannelLess(torch.nn.Module):
    """(N, H, W) → unsqueeze → conv-ReLU ×2 → global average → linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(6, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x.unsqueeze(1)).mean((2, 3)))


class WithChannel(torch.nn.Module):
    """The same network taking (N, 1, H, W)."""

    def __init__(self, net: ChannelLess) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.fc(self.net.features(x).mean((2, 3)))


@pytest.fixture(scope="module", params=["dynamo", "legacy"])
def models(request):
    net = ChannelLess().eval()
    x = torch.randn(2, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    model = ox.adapters.torch.export(net, x, exporter=request.param)
    twin = ox.adapters.torch.export(WithChannel(net).eval(), x[:, None], exporter=request.param)
    return net, model, twin


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(2).standard_normal((3, SIZE, SIZE)).astype(np.float32)


def test_the_layout_is_nhw_and_predictions_are_the_modules(models, x, tmp_path):
    net, model, _ = models
    assert model.layout == "NHW" and model.user_input_shape == ("batch", SIZE, SIZE)
    assert model.input_spec.shape == ("batch", 1, SIZE, SIZE)  # the graph computes channels first
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    for backend in ("onnxruntime", "torch"):
        np.testing.assert_allclose(model.backend(backend).predict(x[:, None]), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict(x[:, None]), want, rtol=1e-5, atol=1e-6)
    again = ox.load(model.save(tmp_path / "nhw.onnx"))
    assert again.layout == "NHW" and again.input_spec.shape == ("batch", 1, SIZE, SIZE)
    np.testing.assert_allclose(again.predict(x), want, rtol=1e-5, atol=1e-6)


def test_arrays_of_another_shape_are_refused_with_the_shape_it_takes(models, x):
    _, model, _ = models
    for bad in (np.repeat(x[:, None], 3, axis=1), x[0], x[:, :8]):
        with pytest.raises(ox.InputValidationError, match=r"\(N, H, W\)|expects"):
            ox.Saliency(model).attribute(bad, target=1)


def test_gradient_and_perturbation_methods_equal_captum_on_the_module(models, x):
    from captum.attr import FeatureAblation, IntegratedGradients, Occlusion, Saliency

    net, model, _ = models
    xt = torch.from_numpy(x)
    mask = CELLS
    cases = {
        "saliency": (ox.Saliency(model).attribute(x, target=1, abs=False),
                     Saliency(net).attribute(xt.clone().requires_grad_(True), target=1, abs=False)),
        "integrated-gradients": (
            ox.IntegratedGradients(model).attribute(
                x, target=1, baselines=np.full((SIZE, SIZE), 0.5, np.float32), n_steps=8),
            IntegratedGradients(net).attribute(xt, target=1, baselines=0.5, n_steps=8)),
        "occlusion": (
            ox.Occlusion(model).attribute(x, target=1, sliding_window_shapes=(4, 4), strides=(2, 2)),
            Occlusion(net).attribute(xt, target=1, sliding_window_shapes=(4, 4), strides=(2, 2))),
        "feature-ablation": (
            ox.FeatureAblation(model).attribute(x, target=1, feature_mask=mask),
            FeatureAblation(net).attribute(xt, target=1, feature_mask=torch.from_numpy(mask)[None])),
    }
    for name, (ours, ref) in cases.items():
        ref = ref.detach().numpy()
        assert ours.shape == x.shape and np.abs(ref).max() > 0, name
        # score differences of ONNX Runtime and torch: float32 rounding of scores near 1 (1e-6)
        atol = max(1e-5 * np.abs(ref).max(), 1e-6)
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=atol, err_msg=name)
    # (N, 1, H, W) in, (N, 1, H, W) out
    with_axis = ox.Saliency(model).attribute(x[:, None], target=1, abs=False)
    np.testing.assert_allclose(with_axis[:, 0], cases["saliency"][0], rtol=1e-6)


@pytest.mark.parametrize("method, kwargs", [
    ("GradCAM", {}), ("CAM", {}), ("ScoreCAM", {}), ("RISE", {"n_masks": 32, "seed": 0}),
    ("KernelShap", {"n_samples": 24, "seed": 0, "feature_mask": CELLS}), ("LRP", {}),
])
def test_image_methods_compute_what_they_compute_with_a_channel_axis(models, x, method, kwargs):
    _, model, twin = models
    ours = getattr(ox, method)(model).attribute(x, target=1, **kwargs)
    ref = getattr(ox, method)(twin).attribute(x[:, None], target=1, **kwargs)
    ref = ref[:, 0] if ref.ndim == 4 else ref  # input-shaped: (N, 1, H, W) for the twin
    assert ours.shape == x.shape and np.abs(ref).max() > 0
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def test_a_preprocessing_spec_is_guessed_for_one_channel_images(models):
    _, model, _ = models
    spec = ox.Preprocess.for_model(model)
    assert (spec.color, spec.size, spec.layout) == ("L", (SIZE, SIZE), "NCHW")


def test_overlays_draw_the_images_in_grey_under_their_maps(models, x):
    from onnxplain import viz

    _, model, _ = models
    pictures, panels = viz.overlays(x, {"gradcam": ox.GradCAM(model).attribute(x, target=1)}, layout="NHW")
    assert pictures.shape == panels["gradcam"].shape == (3, SIZE, SIZE, 3)
    assert (pictures[..., 0] == pictures[..., 2]).all() and pictures.std() > 0
    np.testing.assert_array_equal(pictures, viz.image_to_uint8(x[:, None], "NCHW"))


def test_inspect_names_the_layout_and_the_arrays_it_takes(models, tmp_path, capsys):
    from onnxplain.cli import main

    _, model, _ = models
    path = model.save(tmp_path / "nhw.onnx")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"[batch, 1, {SIZE}, {SIZE}]  (layout NHW: arrays [batch, {SIZE}, {SIZE}])" in out


def test_a_rank_3_input_the_graph_does_not_make_an_image_of_keeps_its_shape():
    """A sequence or a flattened input, (N, T, F) read by a Flatten: no channel axis is
    added, and methods take the arrays as they are (the LSTM case: test_conversion_coverage)."""

    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.fc = torch.nn.Linear(SIZE * SIZE, 3)

        def forward(self, x):
            return self.fc(x.flatten(1))

    x = np.random.default_rng(4).standard_normal((2, SIZE, SIZE)).astype(np.float32)
    model = ox.adapters.torch.export(Flat().eval(), torch.from_numpy(x), exporter="legacy")
    assert model.layout == "NCHW" and model.input_spec.shape == ("batch", SIZE, SIZE)
    assert ox.Saliency(model).attribute(x, target=1).shape == x.shape
