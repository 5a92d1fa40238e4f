"""Tie points after Yan et al. (2016): known affine recovered, safe fallbacks, file contract."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from skimage import data

from costack.errors import CostackError
from costack.evaluation import displace
from costack.tiepoints import (
    CSV_COLUMNS,
    TiePointParams,
    apply_model,
    fit_models,
    match_tiepoints,
    model_init,
    rmse,
)

SHIFT, LIN = (2.3, -1.6), (0.002, -0.001, 0.0015, 0.001)


def _affine_pair(img):
    h, w = img.shape

    def e(c, r):
        return (SHIFT[0] + LIN[0] * (c - w / 2) + LIN[1] * (r - h / 2),
                SHIFT[1] + LIN[2] * (c - w / 2) + LIN[3] * (r - h / 2))  # fmt: skip

    return displace(img, e, order=5)


@pytest.fixture(scope="module")
def camera_affine():
    img = data.camera().astype(np.float32)
    sec, truth = _affine_pair(img)
    return img, sec, truth


def test_known_affine_is_recovered(camera_affine):
    img, sec, truth = camera_affine
    df = match_tiepoints(img, sec, TiePointParams())
    assert len(df) >= 50
    model, df = fit_models(df)
    assert model["chosen"] == "affine"
    h, w = img.shape
    rr, cc = np.mgrid[0:h, 0:w] + 0.5
    px, py = apply_model("affine", np.array(model["coefficients"]), cc, rr)
    err = np.hypot(px - cc - truth[0], py - rr - truth[1])
    assert np.sqrt(np.mean(err**2)) < 0.05  # measured 0.022 px
    # translation is worse than affine on an affine field (paper's Table 2 pattern)
    assert model["models"]["translation"]["rmse"] > model["models"]["affine"]["rmse"]
    init = model_init(model, img.shape)
    assert abs(float(np.mean(init[0])) - SHIFT[0]) < 0.1


def test_rmse_uses_n_minus_t():
    src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    dst = src + [[0.1, 0.0], [-0.1, 0.0], [0.1, 0.0], [-0.1, 0.0]]
    coef = np.array([[0.0], [0.0]])
    assert rmse(src, dst, "translation", coef) == pytest.approx(np.sqrt(0.04 / 3))


def test_few_points_fall_back_with_a_warning(caplog):
    df = pd.DataFrame(
        [(10.5, 10.5, 12.5, 9.5, 2, -1, 1, 0), (50.5, 20.5, 52.6, 19.5, 2.1, -1, 1, 0)],
        columns=CSV_COLUMNS[:8],
    )
    with caplog.at_level(logging.WARNING):
        model, _ = fit_models(df, label="dataset 7")
    assert model["chosen"] == "translation"
    assert "dataset 7: only 2 tie points" in caplog.text


def test_flat_image_gives_no_points_not_a_crash(tmp_path, caplog):
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    from costack.grid import Grid
    from costack.rasterio_io import write_float32
    from costack.tiepoints import run_tiepoints

    grid = Grid(CRS.from_epsg(32631), Affine(10, 0, 0, 0, -10, 0), 200, 200)
    write_float32(tmp_path / "a.tif", np.full((200, 200), 0.2, np.float32), grid)
    write_float32(tmp_path / "b.tif", np.full((200, 200), 0.3, np.float32), grid)
    with caplog.at_level(logging.WARNING):
        model = run_tiepoints(
            tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "t.csv", tmp_path / "t.json",
            tmp_path / "t.png", label="dataset 2",
        )  # fmt: skip
    assert model["chosen"] == "none" and "dataset 2: 0 tie points" in caplog.text
    assert list(pd.read_csv(tmp_path / "t.csv").columns) == CSV_COLUMNS
    assert json.loads((tmp_path / "t.json").read_text())["chosen"] == "none"
    assert (tmp_path / "t.png").stat().st_size > 0


def test_all_nodata_is_an_error():
    with pytest.raises(CostackError, match="no valid pixel"):
        match_tiepoints(np.full((64, 64), np.nan), np.ones((64, 64)))
