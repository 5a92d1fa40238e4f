"""The displacement figure's fixed scale and colour coding (costack.io.figures): one round
scale from the data (not an auto-scaled colour bar per figure), direction as hue and magnitude
as saturation (Baker et al. 2011), nodata grey; the same arrays give the same bytes."""

from __future__ import annotations

import numpy as np

from costack.io.figures import displacement_png, displacement_scale, flow_colours


def test_the_scale_is_the_round_number_above_the_99th_percentile():
    rng = np.random.default_rng(0)
    assert displacement_scale([np.full((10, 10), 0.3)]) == 0.5
    assert displacement_scale([np.full((10, 10), 2.4), np.full((5, 5), 2.9)]) == 5.0
    m = np.abs(rng.normal(1.0, 0.1, (100, 100)))
    m[0, :5] = 40.0  # a few outliers above the 99th percentile do not set the scale
    m[1, 0] = np.nan
    assert displacement_scale([m]) == 2.0
    assert displacement_scale([np.full((3, 3), np.nan)]) == 0.5
    assert displacement_scale([np.full((3, 3), 500.0)]) == 100.0


def test_direction_is_hue_and_magnitude_saturation():
    dx = np.array([[0.0, 2.0, 1.0, -2.0, np.nan]])
    dy = np.array([[0.0, 0.0, 0.0, 0.0, 1.0]])
    rgb = flow_colours(dx, dy, scale=2.0)
    np.testing.assert_allclose(rgb[0, 0], [1, 1, 1])  # no displacement: white
    np.testing.assert_allclose(rgb[0, 1], [1, 0, 0])  # +dx at full scale: red
    np.testing.assert_allclose(rgb[0, 2], [1, 0.5, 0.5])  # half the scale: half saturated
    np.testing.assert_allclose(rgb[0, 3], [0, 1, 1])  # -dx: the opposite hue, cyan
    np.testing.assert_allclose(rgb[0, 4], [0.6, 0.6, 0.6])  # nodata: grey
    down = flow_colours(np.array([[0.0]]), np.array([[2.0]]), scale=2.0)[0, 0]
    np.testing.assert_allclose(down, [0.5, 1, 0])  # +dy (down the rows): a quarter turn


def test_the_figure_is_reproducible_and_follows_its_scale():
    yy, xx = np.mgrid[0:40, 0:50].astype(float)
    dx, dy = 0.05 * xx, -0.03 * yy
    conf = np.clip(1 - 0.01 * xx, 0, 1)
    a = displacement_png(dx, dy, conf, 5.0, "t")
    assert a[:8] == b"\x89PNG\r\n\x1a\n"
    assert a == displacement_png(dx, dy, conf, 5.0, "t")
    assert a != displacement_png(dx, dy, conf, 2.0, "t")
