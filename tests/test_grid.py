"""The common grid: reference lattice, common area, AOI, errors."""

import pytest
from rasterio.warp import transform as warp_transform

from costack.config import parse_config
from costack.errors import CostackError
from costack.stages.discover import discover
from costack.stages.grid import compute_grid


def test_common_area_snapped_to_reference_lattice(two_datasets):
    m = discover(parse_config(two_datasets["config"]))
    g = compute_grid(m, "1.nir")
    # d1 covers x 500000..500640, y 4999360..5000000; d2 x 500050..500690, y 4999310..4999950
    assert g.crs.to_epsg() == 32631
    assert tuple(g.transform)[:6] == (10.0, 0.0, 500_050.0, 0.0, -10.0, 4_999_950.0)
    assert (g.width, g.height) == (59, 59)


def _aoi(x0, y0, x1, y1):
    (lon0, lon1), (lat0, lat1) = warp_transform("EPSG:32631", "EPSG:4326", [x0, x1], [y0, y1])
    return f"POLYGON(({lon0} {lat0}, {lon1} {lat0}, {lon1} {lat1}, {lon0} {lat1}, {lon0} {lat0}))"


def test_aoi_overrides_common_area(two_datasets):
    m = discover(parse_config(two_datasets["config"]))
    g = compute_grid(m, "1.nir", _aoi(500_103, 4_999_497, 500_301, 4_999_699), min_overlap_px=16)
    left, bottom, right, top = g.bounds
    assert left <= 500_103 and right >= 500_301 and bottom <= 4_999_497 and top >= 4_999_699
    assert (left - 500_000) % 10 == 0 and (top - 5_000_000) % 10 == 0
    assert g.width <= 22 and g.height <= 22


def test_aoi_outside(two_datasets):
    m = discover(parse_config(two_datasets["config"]))
    with pytest.raises(CostackError, match="^aoi: the AOI does not overlap"):
        compute_grid(m, "1.nir", "POLYGON((10 10, 11 10, 11 11, 10 11, 10 10))")


def test_unparsable_wkt(two_datasets):
    m = discover(parse_config(two_datasets["config"]))
    with pytest.raises(CostackError, match="^aoi: cannot parse WKT"):
        compute_grid(m, "1.nir", "POLYGON((3 45, 4 45")


def test_aoi_smaller_than_min_overlap_is_refused_with_sizes(two_datasets):
    m = discover(parse_config(two_datasets["config"]))
    aoi = _aoi(500_103, 4_999_497, 500_301, 4_999_699)  # about 20 x 20 grid px
    with pytest.raises(CostackError, match=r"^aoi: the AOI overlaps 1.nir over 2\d x 2\d grid "
                       r"pixels, under 64 px along each axis \(min_overlap_px\)"):  # fmt: skip
        compute_grid(m, "1.nir", aoi)


def test_tiny_common_area_is_refused(tmp_path):
    """A 3x3 px secondary cannot be matched: refused, not published all-NaN."""
    import numpy as np
    from conftest import scene, write_item, write_raster
    from rasterio.transform import Affine

    write_raster(tmp_path / "a.tif", scene(), transform=Affine(10, 0, 500_000, 0, -10, 5_000_000))
    write_raster(tmp_path / "b.tif", np.ones((3, 3), np.float32),
                 transform=Affine(10, 0, 500_100, 0, -10, 4_999_900))  # fmt: skip
    i1 = write_item(tmp_path / "1", "a", {"nir": {"href": str(tmp_path / "a.tif")}})
    i2 = write_item(tmp_path / "2", "b", {"nir": {"href": str(tmp_path / "b.tif")}})
    cfg = parse_config({"inputs": [str(i1), str(i2)], "assets": "1.nir,2.nir",
                        "reference": "1.nir", "allowed_paths": [str(tmp_path)]})  # fmt: skip
    with pytest.raises(CostackError, match=r"^assets: the common area .* over 3 x 3 grid pix"):
        compute_grid(discover(cfg), "1.nir")
