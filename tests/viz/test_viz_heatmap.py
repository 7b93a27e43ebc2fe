"""Heat maps: sign handling, percentile clipping, smoothing, colour maps, overlays."""

import numpy as np
import pytest

import onnxplain as ox
from onnxplain import viz
from onnxplain.preprocess import Preprocess
from onnxplain.viz import colormaps, heatmap


@pytest.fixture(scope="module")
def attr():
    return np.random.default_rng(0).standard_normal((2, 3, 16, 16))


def test_signs_keep_what_they_say(attr):
    summed = attr.sum(axis=1)
    pos = viz.attribution_map(attr, sign="positive", outlier_perc=0)
    neg = viz.attribution_map(attr, sign="negative", outlier_perc=0)
    both = viz.attribution_map(attr, sign="all", outlier_perc=0)
    absolute = viz.attribution_map(attr, sign="absolute", outlier_perc=0)
    assert np.all(pos[summed <= 0] == 0) and np.all(pos[summed > 0] > 0)
    assert np.all(neg[summed >= 0] == 0) and np.all(neg[summed < 0] > 0)
    assert both.min() < 0 < both.max() and np.abs(both).max() == 1
    np.testing.assert_allclose(absolute, np.abs(both))
    np.testing.assert_array_equal(viz.attribution_map(attr, sign="absolute_value", outlier_perc=0), absolute)
    for m in (pos, neg, absolute):
        assert m.min() >= 0 and m.max() == 1


def test_outlier_perc_saturates_the_largest_share_of_the_mass():
    m = np.ones((1, 10, 10))
    m[0, 0, 0] = 1000.0  # one value holds most of the mass
    plain = viz.attribution_map(m, outlier_perc=0)
    clipped = viz.attribution_map(m, outlier_perc=95)
    assert plain[0, 5, 5] == pytest.approx(1 / 1000)
    assert clipped[0, 0, 0] == 1 and clipped[0, 5, 5] == 1  # 95 % of the mass may saturate


def test_cumulative_sum_threshold_is_captums():
    values = np.array([1.0, 2.0, 3.0, 4.0])  # cumulative sums 1, 3, 6, 10
    assert heatmap.cumulative_sum_threshold(values, 50) == 3.0  # first sum >= 5 is 6, at value 3
    assert heatmap.cumulative_sum_threshold(values, 100) == 4.0


def test_matches_captum_normalisation(attr):
    visualization = pytest.importorskip("captum.attr._utils.visualization")
    for sign in ("absolute", "positive", "negative", "all"):
        ours = viz.attribution_map(attr, sign=sign, outlier_perc=2)
        for i in range(len(attr)):
            captum_sign = "absolute_value" if sign == "absolute" else sign
            ref = visualization._normalize_attr(attr[i].sum(axis=0), captum_sign, 2)  # channels summed
            np.testing.assert_allclose(ours[i], ref if sign != "negative" else np.abs(ref), atol=1e-12)


def test_nchw_and_nhwc_give_the_same_map(attr):
    np.testing.assert_array_equal(viz.attribution_map(attr, layout="NCHW"),
                                  viz.attribution_map(attr.transpose(0, 2, 3, 1), layout="NHWC"))
    assert viz.to_nhwc(attr).shape == (2, 16, 16, 3)
    assert viz.to_nhwc(attr[:, 0]).shape == (2, 16, 16, 1)  # (N, H, W) maps


def test_maps_without_channels_pass_through_and_reductions_differ(attr):
    cam = np.abs(attr[:, 0])
    expected = cam / cam.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(viz.attribution_map(cam, outlier_perc=0), expected)
    assert viz.reduce_channels(attr, channel_reduce="max_abs").min() >= 0
    with pytest.raises(ox.InputValidationError, match="channel_reduce"):
        viz.reduce_channels(attr, channel_reduce="median")


def test_smoothing_keeps_constants_and_spreads_peaks():
    flat = np.full((1, 9, 9), 3.0)
    np.testing.assert_allclose(viz.gaussian_blur(flat, 1.5), flat)
    peak = np.zeros((1, 9, 9))
    peak[0, 4, 4] = 1
    blurred = viz.gaussian_blur(peak, 1.0)
    assert blurred.sum() == pytest.approx(1.0) and blurred[0, 4, 4] < 0.2 and blurred[0, 4, 5] > 0.05


@pytest.mark.parametrize("bad", [{"sign": "both"}, {"outlier_perc": 100}, {"smooth": -1}])
def test_bad_options_are_input_validation_errors(attr, bad):
    with pytest.raises(ox.InputValidationError):
        viz.attribution_map(attr, **bad)


def test_colour_maps_work_without_matplotlib():
    for name in colormaps.COLORMAPS:
        table = colormaps.lookup_table(name)
        assert table.shape == (256, 3) and table.dtype == np.uint8
    np.testing.assert_array_equal(colormaps.apply(np.array([0.0, 1.0]), "gray"), [[0, 0, 0], [255, 255, 255]])
    assert colormaps.lookup_table("VIRIDIS") is colormaps.lookup_table("VIRIDIS")
    with pytest.raises(ox.InputValidationError, match="colour map"):
        colormaps.lookup_table("no-such-map")


def test_our_tables_follow_matplotlibs():
    matplotlib = pytest.importorskip("matplotlib")
    for name in ("viridis", "inferno", "Reds", "bwr"):
        ref = matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255
        assert np.abs(colormaps.lookup_table(name) - ref).max() <= 6


def test_signed_maps_put_zero_in_the_middle_of_a_diverging_map():
    rgb = viz.colorize(np.array([[[-1.0, 0.0, 1.0]]]), sign="all")
    assert tuple(rgb[0, 0, 0]) == (0, 0, 255) and tuple(rgb[0, 0, 2]) == (255, 0, 0)
    assert rgb[0, 0, 1].min() > 240  # white


def test_overlay_blends_by_alpha():
    images = np.full((1, 4, 4, 3), 200, np.uint8)
    maps = np.ones((1, 4, 4))
    np.testing.assert_array_equal(viz.overlay(images, maps, cmap="gray", alpha=0.0), images)
    white = np.full_like(images, 255)
    np.testing.assert_array_equal(viz.overlay(images, maps, cmap="gray", alpha=1.0), white)
    half = viz.overlay(images, np.zeros((1, 2, 2)), cmap="gray", alpha=0.5)  # maps are resized
    assert half.shape == images.shape and np.all(half == 100)
    weighted = viz.overlay(images, np.zeros((1, 4, 4)), cmap="gray", alpha=1.0, weighted=True)
    np.testing.assert_array_equal(weighted, images)  # zero attribution shows the image


def test_image_to_uint8_handles_unit_floats_other_ranges_and_preprocessing():
    unit = np.random.default_rng(1).random((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(viz.image_to_uint8(unit), np.rint(unit.transpose(0, 2, 3, 1) * 255))
    wide = unit * 10 - 5
    out = viz.image_to_uint8(wide)
    assert out.min() == 0 and out.max() == 255
    spec = Preprocess(mean=(0.5,), std=(0.2,))
    pixels = (unit.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(viz.image_to_uint8(spec.apply(list(pixels)), preprocess=spec), pixels)
    assert viz.image_to_uint8(unit[0]).shape == (1, 8, 8, 3)  # one image
    assert viz.image_to_uint8(unit[:, :1]).shape == (2, 8, 8, 3)  # grey


def test_mask_outline_is_the_boundary():
    mask = np.zeros((7, 7), bool)
    mask[2:5, 2:5] = True
    outline = heatmap.mask_outline(mask)
    assert outline.sum() == 8 and not outline[3, 3]
    drawn = viz.draw_outline(np.zeros((14, 14, 3), np.uint8), mask)
    assert (drawn[..., 1] == 255).any() and drawn[7, 7, 1] == 0


def test_subtract_min_removes_an_offset():
    maps = np.full((1, 4, 4), 5.0)
    maps[0, 0, 0] = 6.0
    shifted = viz.attribution_map(maps, outlier_perc=0, subtract_min=True)
    assert shifted[0, 0, 0] == 1 and shifted[0, 1, 1] == 0
    with pytest.raises(ox.InputValidationError, match="subtract_min"):
        viz.attribution_map(maps, sign="all", subtract_min=True)
