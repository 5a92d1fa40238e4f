"""Raster helpers of costack.io.rasters."""

import math

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin

from costack.io.rasters import read_average


def _masked_reference(src, shape, band=1) -> np.ndarray:
    """What read_average returned before its fast path: GDAL's average read with the mask."""
    data = src.read(band, out_shape=shape, resampling=Resampling.average, masked=True)
    return np.ma.filled(data.astype(np.float32), np.nan)


def _write(path, data: np.ndarray, nodata, mask: np.ndarray | None = None) -> None:
    profile = dict(driver="GTiff", height=data.shape[0], width=data.shape[1], count=1,
                   dtype=data.dtype, crs="EPSG:32631", transform=from_origin(0, 0, 10, 10),
                   nodata=nodata, tiled=True, blockxsize=64, blockysize=64)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
        if mask is not None:
            dst.write_mask(mask)


@pytest.mark.parametrize("case", ["nan", "minus9999", "uint16_zero", "no_nodata", "own_mask"])
def test_a_reduced_read_is_the_masked_average(tmp_path, case):
    """The reduced read without GDAL's mask band gives the masked read's values, with holes,
    blocks with no valid pixel, ratios that are not whole and every kind of nodata; a band
    with a mask of its own is still read with it."""
    rng = np.random.default_rng(3)
    h, w = 301, 277
    values = rng.normal(100, 20, (h, w)).astype(np.float32)
    holes = np.zeros((h, w), bool)
    holes[40:120, 30:200] = True  # whole reduced blocks without data
    holes[rng.random((h, w)) < 0.2] = True  # scattered nodata in the others
    mask = None
    if case == "nan":
        data, nodata = np.where(holes, np.nan, values).astype(np.float32), float("nan")
    elif case == "minus9999":
        data, nodata = np.where(holes, -9999, values).astype(np.float32), -9999.0
    elif case == "uint16_zero":
        data, nodata = np.where(holes, 0, values.round() + 1000).astype(np.uint16), 0
    elif case == "no_nodata":
        data, nodata = values, None
    else:  # an internal mask: the fill values under it are not a nodata value
        data, nodata = np.where(holes, 12345, values).astype(np.float32), None
        mask = np.where(holes, 0, 255).astype(np.uint8)
    path = tmp_path / f"{case}.tif"
    _write(path, data, nodata, mask)
    with rasterio.open(path) as src:
        for f in (2, 3, 7, 16):
            shape = (math.ceil(h / f), math.ceil(w / f))
            got, want = read_average(src, shape), _masked_reference(src, shape)
            assert got.dtype == np.float32 and got.shape == shape
            np.testing.assert_array_equal(got, want)
            if case in ("nan", "minus9999", "uint16_zero", "own_mask"):
                assert np.isnan(got).any() and np.isfinite(got).any()
            if case == "own_mask":  # the masked fill (12345) is in no block's average
                assert np.nanmax(got) < 1000
