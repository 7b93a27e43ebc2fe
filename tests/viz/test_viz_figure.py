"""The comparison figure: methods × images with titles, as PNG, with or without matplotlib."""

import numpy as np
import pytest

import onnxplain as ox
from onnxplain import viz
from onnxplain.data import shapes
from onnxplain.viz import figure


@pytest.fixture(scope="module")
def batch():
    return shapes.generate(3, seed=21)


@pytest.fixture(scope="module")
def attributions(batch):
    rng = np.random.default_rng(0)
    return {
        "noise": rng.standard_normal(batch.images.shape),
        "mask": batch.masks.astype(np.float64),  # (N, H, W), like a CAM
    }


def _not_blank(img) -> None:
    arr = np.asarray(img.convert("RGB"), dtype=np.float64)
    assert arr.std() > 20
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 500


@pytest.mark.parametrize("engine", ["pillow", "matplotlib"])
def test_compare_draws_inputs_then_one_column_per_method(batch, attributions, engine, tmp_path):
    if engine == "matplotlib":
        pytest.importorskip("matplotlib")
    img = viz.compare(batch.images, attributions, row_titles=["a", "b", "c"],
                      scores={"mask": [1.0, 1.0, 1.0]}, score_name="on object", masks=batch.masks,
                      title="test figure", cell_size=96, engine=engine)
    assert img.width >= 3 * 96 and img.height >= 3 * 96
    assert img.width < 3 * 96 * 1.6 and img.height < 3 * 96 * 1.6
    _not_blank(img)
    img.save(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 10_000


def test_without_matplotlib_auto_uses_pillow(monkeypatch, batch, attributions):
    monkeypatch.setattr(figure, "_matplotlib_available", lambda: False)
    assert figure._engine("auto") == "pillow"
    _not_blank(viz.compare(batch.images, attributions, cell_size=64))
    with pytest.raises(ox.InputValidationError, match="matplotlib"):
        figure._engine("matplotlib")


def test_a_column_of_the_pillow_grid_is_the_overlay_itself(batch, attributions):
    img = viz.compare(batch.images[:1], {"mask": attributions["mask"][:1]}, cell_size=64, engine="pillow")
    _, panels = viz.overlays(batch.images[:1], {"mask": attributions["mask"][:1]}, size=64)
    arr = np.asarray(img)
    # find the panel in the canvas: it is pasted unchanged
    target = panels["mask"][0]
    ys, xs = np.nonzero(np.all(arr == target[0, 0], axis=-1))
    assert any(np.array_equal(arr[y:y + 64, x:x + 64], target) for y, x in zip(ys, xs))


def test_image_grid_checks_its_cells():
    cell = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ox.InputValidationError, match="same number"):
        viz.image_grid([[cell, cell], [cell]])
    with pytest.raises(ox.InputValidationError, match="column titles"):
        viz.image_grid([[cell]], col_titles=["a", "b"])
    with pytest.raises(ox.InputValidationError, match="uint8"):
        viz.image_grid([[cell.astype(float)]])
    assert viz.image_grid([[cell, None]], engine="pillow").size[0] > 2 * 128
    # a batch of pictures is one row of cells, not the rows themselves
    with pytest.raises(ox.InputValidationError, match=r"list\(batch\)"):
        viz.image_grid(np.zeros((2, 8, 8, 3), np.uint8))
    assert viz.image_grid([list(np.zeros((2, 8, 8, 3), np.uint8))], engine="pillow").size[0] > 2 * 128
    assert viz.image_grid(np.zeros((1, 2, 8, 8, 3), np.uint8), engine="pillow").size[0] > 2 * 128


def test_overlays_take_a_mapping_of_attributions(batch, attributions):
    name, maps = next(iter(attributions.items()))
    with pytest.raises(ox.InputValidationError, match="map names to attributions"):
        viz.overlays(batch.images, maps)
    pictures, out = viz.overlays(batch.images, {name: maps})
    assert out[name].shape == pictures.shape and out[name].dtype == np.uint8


def test_compare_refuses_mismatched_inputs(batch, attributions):
    with pytest.raises(ox.InputValidationError, match="attributions for"):
        viz.compare(batch.images[:2], attributions, engine="pillow")
    with pytest.raises(ox.InputValidationError, match="at least one"):
        viz.compare(batch.images, {}, engine="pillow")


def test_many_methods_wrap_into_bands_that_repeat_the_inputs(batch, attributions):
    many = {f"m{i}": attributions["mask"] for i in range(5)}
    one_band = viz.compare(batch.images, many, cell_size=64, engine="pillow")
    bands = viz.compare(batch.images, many, cell_size=64, max_columns=2, engine="pillow")
    assert bands.width < one_band.width and bands.height > 2.5 * one_band.height
