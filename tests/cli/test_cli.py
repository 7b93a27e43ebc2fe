"""The command line, driven through subprocesses as a user would run it."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import onnxplain as ox
from onnxplain.cli import main
from onnxplain.cli.methods import available, kebab, resolve

NO_NETWORK = '''
import os, socket
def _blocked(*args, **kwargs):
    raise OSError("network access is disabled in this test")
socket.socket.connect = _blocked
socket.socket.connect_ex = _blocked
socket.create_connection = _blocked
open(os.environ["ONNXPLAIN_NO_NETWORK_MARKER"], "w").write("loaded")
'''


def cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxplain.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_one_line_error(out: subprocess.CompletedProcess, *words: str) -> None:
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("onnxplain") and "error" in lines[0]
    assert "Traceback" not in out.stderr + out.stdout
    for word in words:
        assert word in lines[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Three generated pictures as PNG files, a text file posing as one, and the model."""
    root = tmp_path_factory.mktemp("cli")
    batch = ox.examples.shapes_dataset(3, seed=77)
    paths = []
    for i, image in enumerate(batch.images):
        path = root / f"shape{i}.png"
        Image.fromarray(np.rint(image.transpose(1, 2, 0) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    (root / "notes.png").write_text("this is not a picture\n")
    return {"root": root, "images": paths, "labels": batch.labels, "model": ox.examples.shapes_model_path()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``onnxplain demo --out DIR`` with every socket connection refused."""
    root = tmp_path_factory.mktemp("demo")
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_NETWORK)
    marker = root / "no-network-loaded"
    env = {**__import__("os").environ, "PYTHONPATH": str(site), "ONNXPLAIN_NO_NETWORK_MARKER": str(marker)}
    out = cli("demo", "--out", str(root / "out"), "--n", "3", env=env)  # 3 images: quicker than 5
    return out, root / "out", marker


def test_demo_writes_the_figure_and_prints_where_it_is(demo):
    out, folder, marker = demo
    assert out.returncode == 0, out.stderr
    assert marker.read_text() == "loaded"  # it ran with the network cut off
    figure = folder / "demo.png"
    assert f"wrote {figure}" in out.stdout
    with Image.open(figure) as img:
        methods = len(json.loads((folder / "demo.json").read_text())["methods"])
        bands = -(-methods // 8)  # at most 8 methods side by side (--columns)
        assert img.width >= (min(methods, 8) + 1) * 128 and img.height >= bands * 3 * 128
        pixels = np.asarray(img.convert("RGB")).astype(np.int64)
    colours = np.unique((pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2])
    assert pixels.std() > 30 and len(colours) > 5000


def test_demo_scores_show_which_methods_point_at_the_object(demo):
    _, folder, _ = demo
    record = json.loads((folder / "demo.json").read_text())
    baseline = record["even_spread_baseline"]
    assert 0.03 < baseline < 0.3 and len(record["images"]) == 3
    assert all(img["label"] == img["prediction"] for img in record["images"])
    means = {name: m["mean_energy_in_box"] for name, m in record["methods"].items()}
    assert set(means) == {m.name for m in resolve("all")} - set(record["skipped"])
    for name in ("gradcam", "occlusion"):
        assert means[name] > 2 * baseline, means
    assert "energy in box" in demo[0].stdout


def test_inspect_lists_layers_head_gate_backends_and_methods(workdir, capsys):
    out = cli("inspect", workdir["model"])
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for expected in ("input  float32  [batch, 3, 64, 64]", "BatchNormalization", "GAP -> FC",
                     "squeeze-and-excitation", "onnxruntime", "torch", "gradcam", "circle, square"):
        assert expected in text
    assert main(["inspect", workdir["model"], "--json"]) == 0  # in-process: the same code, quicker
    info = json.loads(capsys.readouterr().out)
    assert info["head"]["channels"] == 48 and info["attention_gates"][0]["kind"].startswith("channel")
    assert info["backends"]["torch"]["status"] == "ok"
    assert "torch" in info["methods"]["saliency"]["backends"]
    assert info["methods"]["occlusion"]["backends"][0] == "onnxruntime"
    assert info["preprocess"]["size"] == [64, 64]


def test_explain_writes_overlays_attributions_and_a_json_record(workdir):
    out_dir = workdir["root"] / "explained"
    out = cli("explain", workdir["model"], *workdir["images"][:2], "--method", "gradcam", "--target", "star",
              "--out", str(out_dir), "--html")
    assert out.returncode == 0, out.stderr
    record = json.loads((out_dir / "explain.json").read_text())
    assert record["method"]["class"] == "GradCAM" and record["method"]["backend"] == "torch"
    assert [r["target_name"] for r in record["images"]] == ["star", "star"]
    assert record["preprocess"]["source"] == "stored next to the model"
    for r in record["images"]:
        with Image.open(out_dir / r["overlay"]) as img:
            assert img.size == (64, 64)
        assert np.load(out_dir / r["attribution"]).shape == (64, 64)
    assert (out_dir / "explain.html").read_text().startswith("<!DOCTYPE html>")


def test_compare_draws_one_grid_of_methods_by_images(workdir):
    grid = workdir["root"] / "grid.png"
    out = cli("compare", workdir["model"], *workdir["images"], "--methods", "saliency,gradcam,occlusion",
              "--out", str(grid), "--engine", "pillow", "--cell-size", "96")
    assert out.returncode == 0, out.stderr
    assert f"wrote {grid}" in out.stdout
    with Image.open(grid) as img:
        assert img.width >= 4 * 96 and img.height >= 3 * 96


@pytest.mark.parametrize("case", ["model", "method", "image", "target"])
def test_mistakes_are_one_line_errors_without_traceback(workdir, case):
    model, image = workdir["model"], workdir["images"][0]
    out_dir = str(workdir["root"] / "errors")
    if case == "model":
        missing = str(workdir["root"] / "missing.onnx")
        out = cli("explain", missing, image, "--method", "saliency", "--out", out_dir)
        assert_one_line_error(out, "missing.onnx")
    elif case == "method":
        out = cli("explain", model, image, "--method", "no-such-method", "--out", out_dir)
        assert_one_line_error(out, "no-such-method", "saliency")
    elif case == "image":
        out = cli("compare", model, str(workdir["root"] / "notes.png"), "--out", out_dir + "/g.png")
        assert_one_line_error(out, "notes.png", "not an image")
    else:
        out = cli("explain", model, image, "--method", "saliency", "--target", "hexagon", "--out", out_dir)
        assert_one_line_error(out, "hexagon")


def test_a_model_on_flattened_images_is_explained_with_image_shape(workdir, tmp_path, capsys):
    """A pixel MLP's file takes (N, 64·64·3) features: --image-shape makes it an image model
    (an error names a shape that does not hold its features)."""
    import torch

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(3 * 64 * 64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5)).eval()
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(mlp, (torch.rand(1, 3 * 64 * 64),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}})
    assert main(["inspect", str(path), "--image-shape", "3,64,64", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preprocess"]["size"] == [64, 64]
    out_dir = tmp_path / "explained"
    assert main(["explain", str(path), workdir["images"][0], "--method", "occlusion", "--image-shape",
                 "3,64,64", "--out", str(out_dir)]) == 0
    record = json.loads((out_dir / "explain.json").read_text())
    assert np.load(out_dir / record["images"][0]["attribution"]).shape[-2:] == (64, 64)
    assert main(["inspect", str(path), "--image-shape", "3x32x32"]) != 0
    assert "holds 3072 values" in capsys.readouterr().err


def test_a_model_with_a_side_input_is_explained_with_it_fixed(workdir, tmp_path, capsys):
    import torch

    class Side(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(6, 5)

        def forward(self, x, meta):
            return self.fc(torch.cat([torch.relu(self.conv(x)).mean((2, 3)), meta], 1))

    path = tmp_path / "side.onnx"
    torch.onnx.export(Side().eval(), (torch.rand(1, 3, 64, 64), torch.rand(1, 2)), str(path), dynamo=False,
                      input_names=["x", "meta"], dynamic_axes={"x": {0: "n"}, "meta": {0: "n"}})
    assert main(["inspect", str(path)]) != 0
    assert "fixed_inputs" in capsys.readouterr().err
    out_dir = tmp_path / "explained"
    assert main(["explain", str(path), workdir["images"][0], "--method", "gradcam", "--fixed-input",
                 "meta=0.5,-1", "--out", str(out_dir)]) == 0
    record = json.loads((out_dir / "explain.json").read_text())
    assert np.load(out_dir / record["images"][0]["attribution"]).shape == (64, 64)
    assert main(["inspect", str(path), "--fixed-input", "meta=0.5,-1", "--model-output", "nothing"]) != 0
    assert "one of the model's outputs" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["demo"], ["inspect"], ["explain"], ["compare"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: onnxplain" in capsys.readouterr().out


def test_the_registry_finds_what_onnxplain_exports_and_skips_the_rest():
    methods = available()
    for name, cls in [("saliency", ox.Saliency), ("integrated-gradients", ox.IntegratedGradients),
                      ("gradcam", ox.GradCAM), ("occlusion", ox.Occlusion)]:
        assert methods[name].cls is cls
    assert all(hasattr(ox, m.cls.__name__) for m in methods.values())
    assert kebab("GradCAMPlusPlus") == "grad-cam-plus-plus" and kebab("RISE") == "rise"
    with pytest.raises(ox.InputValidationError, match="unknown method"):
        resolve("saliency,nope")


def test_all_leaves_out_slow_methods_and_all_plus_slow_adds_them(monkeypatch):
    from onnxplain.cli import methods as registry

    class Slowish(ox.Saliency):
        pass

    monkeypatch.setattr(ox, "MeaningfulPerturbation", Slowish, raising=False)
    names = [m.name for m in resolve("all")]
    assert "meaningful-perturbation" not in names
    assert "meaningful-perturbation" in [m.name for m in resolve("all+slow")]
    assert [m.name for m in resolve("meaningful-perturbation")] == ["meaningful-perturbation"]
    assert registry.available()["meaningful-perturbation"].entry.slow


def test_unlisted_exports_are_found_only_when_they_need_nothing_but_model_and_inputs(monkeypatch):
    from onnxplain.methods.base import Attribution

    class PlainMethod(Attribution):
        def attribute(self, inputs, target=None):
            return inputs

    class NeedsWindow(Attribution):
        def attribute(self, inputs, window, target=None):
            return inputs

    class Wrapper(Attribution):
        def __init__(self, attribution_method):
            self.inner = attribution_method

        def attribute(self, inputs, target=None):
            return inputs

    for cls in (PlainMethod, NeedsWindow, Wrapper):
        monkeypatch.setattr(ox, cls.__name__, cls, raising=False)
        monkeypatch.setattr(ox, "__all__", [*ox.__all__, cls.__name__])
    found = available()
    assert found["plain-method"].cls is PlainMethod and found["plain-method"].entry.family == "other"
    assert "needs-window" not in found and "wrapper" not in found


def test_default_keyword_arguments_are_filtered_by_signature():
    methods = available()
    occlusion = methods["occlusion"].attribute_kwargs((2, 3, 64, 64), "NCHW", seed=3, show_progress=False)
    assert occlusion["sliding_window_shapes"] == (3, 8, 8) and occlusion["strides"] == (3, 4, 4)
    assert occlusion["seed"] == 3
    saliency = methods["saliency"]
    # constructors take **backend_options: a layer for CAMs must not reach them
    assert saliency.init_kwargs((2, 3, 64, 64), "NCHW", layer="conv") == {}
    assert methods["gradcam"].init_kwargs((2, 3, 64, 64), "NCHW", layer="conv") == {"layer": "conv"}
    assert "seed" not in saliency.attribute_kwargs((2, 3, 64, 64), "NCHW", seed=3)


def test_energy_in_mask_is_the_share_of_attribution_inside():
    from onnxplain.cli.common import box_masks, energy_in_mask

    masks = np.zeros((2, 8, 8), bool)
    masks[:, 2:4, 2:6] = True
    uniform = np.ones((2, 3, 8, 8))
    np.testing.assert_allclose(energy_in_mask(uniform, masks), masks.mean())
    inside = masks[:, None].repeat(3, axis=1) * -2.0  # magnitudes count, whatever the sign
    np.testing.assert_allclose(energy_in_mask(inside, masks), 1.0)
    assert energy_in_mask(inside, masks, sign="positive").tolist() == [0.0, 0.0]
    offset = np.where(masks, 2.0, 1.0)  # (N, H, W) map on an offset, as RISE gives
    np.testing.assert_allclose(energy_in_mask(offset, masks, subtract_min=True), 1.0)
    ring = np.zeros((1, 8, 8), bool)
    ring[0, 1, 1:7] = ring[0, 6, 1:7] = ring[0, 1:7, 1] = ring[0, 1:7, 6] = True
    assert box_masks(ring)[0, 1:7, 1:7].all() and box_masks(ring).sum() == 36
