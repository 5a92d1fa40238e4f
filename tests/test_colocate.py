"""Co-location with GDAL's warper: geometry, nodata carried, dB in the linear domain."""

import numpy as np
from conftest import write_raster
from rasterio.crs import CRS
from rasterio.transform import Affine

from costack.io.grids import Grid
from costack.io.rasters import read_float32
from costack.stages.colocate import colocate_array, colocate_asset

UTM = CRS.from_epsg(32631)


def _ramp(transform: Affine, rows: int, cols: int) -> np.ndarray:
    r, c = np.mgrid[0:rows, 0:cols] + 0.5
    x, y = transform @ (c, r)
    return (0.01 * (x - 500_000) + 0.02 * (5_000_000 - y)).astype(np.float32)


def test_bilinear_upsampling_of_a_ramp_is_exact(tmp_path):
    src_t = Affine(20, 0, 500_000, 0, -20, 5_000_000)
    path = write_raster(tmp_path / "a.tif", _ramp(src_t, 40, 40), transform=src_t)
    grid = Grid(UTM, Affine(10, 0, 500_100, 0, -10, 4_999_900), 50, 50)
    out, nodata = colocate_array(str(path), grid)
    assert np.isnan(nodata)
    np.testing.assert_allclose(out, _ramp(grid.transform, 50, 50), atol=1e-4)


def test_nodata_carried_not_smeared(tmp_path):
    src_t = Affine(20, 0, 500_000, 0, -20, 5_000_000)
    data = _ramp(src_t, 40, 40)
    data[10:20, 10:20] = -9999.0
    path = write_raster(tmp_path / "a.tif", data, transform=src_t, nodata=-9999.0)
    grid = Grid(UTM, Affine(10, 0, 500_000, 0, -10, 5_000_000), 80, 80)
    colocate_asset(str(path), grid, tmp_path / "out.tif")
    out, _, nodata = read_float32(tmp_path / "out.tif")
    assert nodata == -9999.0
    hole = np.isnan(out[20:40, 20:40])
    assert hole[2:-2, 2:-2].all()  # the hole stays a hole
    truth = _ramp(grid.transform, 80, 80)
    valid = np.isfinite(out)
    # no fill value leaks into valid pixels next to the hole or the edges (a leak of -9999
    # would be huge; the kernel renormalised over valid pixels is off by under a source step)
    assert np.abs(out[valid] - truth[valid]).max() < 0.5
    interior = np.zeros_like(valid)
    interior[2:-2, 2:-2] = True
    interior[18:42, 18:42] = False
    np.testing.assert_allclose(out[interior], truth[interior], atol=1e-3)
    # pixels beyond the source extent are nodata, not replicated edges
    grid2 = Grid(UTM, Affine(10, 0, 500_700, 0, -10, 5_000_000), 20, 10)
    out2, _ = colocate_array(str(path), grid2)
    assert np.isnan(out2[:, 10:]).all() and np.isfinite(out2[:, :9]).all()


def test_db_resampled_in_linear_power(tmp_path):
    src_t = Affine(10, 0, 500_000, 0, -10, 5_000_000)
    db = np.where((np.indices((8, 8)).sum(0) % 2) == 0, -10.0, -20.0).astype(np.float32)
    path = write_raster(tmp_path / "s0_db.tif", db, transform=src_t)
    grid = Grid(UTM, Affine(20, 0, 500_000, 0, -20, 5_000_000), 4, 4)
    out_db, _ = colocate_array(str(path), grid, resampling="average", db=True)
    out_naive, _ = colocate_array(str(path), grid, resampling="average", db=False)
    np.testing.assert_allclose(out_db, 10 * np.log10((0.1 + 0.01) / 2), atol=1e-4)
    np.testing.assert_allclose(out_naive, -15.0, atol=1e-4)


def test_streamed_colocation_writes_the_in_memory_values(tmp_path):
    """Co-location streams (GDAL's warper file to file on the physical source window): on the
    demo's sources (UTM 31 geotransform, UTM 32 reprojected, SAR dB on GCPs) it writes the
    very values of the whole in-memory warp, and leaves no scratch file."""
    from conftest import demo_config

    from costack.plan import preflight

    plan = preflight(demo_config())
    manifest, grid = plan.manifest, plan.grid
    manifest = manifest.set_index("key")
    for key in ("1.nir", "2.nir", "3.s0_db_c_vv"):
        row = manifest.loc[key]
        whole, nodata = colocate_array(str(row["href"]), grid, db=bool(row["db"]))
        # small strips: the scratch source is written in several passes
        colocate_asset(str(row["href"]), grid, tmp_path / f"{key}.tif", db=bool(row["db"]),
                       strip_bytes=1)  # fmt: skip
        streamed, _, written_nodata = read_float32(tmp_path / f"{key}.tif")
        np.testing.assert_array_equal(streamed, whole)
        assert np.isfinite(streamed).mean() > 0.5
        assert written_nodata == nodata or (np.isnan(written_nodata) and np.isnan(nodata))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_streamed_colocation_of_a_grid_beside_the_source(tmp_path):
    """Grid rows that miss the source are nodata, not an error; fill values carried."""
    src_t = Affine(10, 0, 500_000, 0, -10, 5_000_000)
    data = _ramp(src_t, 300, 300)
    data[:20] = -9999
    path = write_raster(tmp_path / "a.tif", data, transform=src_t, nodata=-9999)
    grid = Grid(UTM, Affine(10, 0, 501_000, 0, -10, 5_000_000), 300, 700)
    a, nd_a = colocate_array(str(path), grid)
    colocate_asset(str(path), grid, tmp_path / "s.tif", strip_bytes=1)
    b, _, nd_b = read_float32(tmp_path / "s.tif")
    assert nd_a == nd_b == -9999
    np.testing.assert_array_equal(a, b)
    assert np.isnan(b[:20]).all() and np.isnan(b[300:]).all() and np.isfinite(b[25:290, :150]).all()


def test_streamed_colocation_of_a_large_gcp_source_shifts_its_gcps(tmp_path, monkeypatch):
    """A GCP source whose window is too large for geolocation arrays is warped from its GCPs,
    shifted to the window: the SAR demo source gives the in-memory GCP warp's values (to
    float rounding of the shifted GCPs)."""
    from conftest import demo_config

    import costack.stages.colocate as colocate
    from costack.plan import preflight

    plan = preflight(demo_config())
    manifest, grid = plan.manifest, plan.grid
    href = str(manifest.set_index("key").loc["3.s0_db_c_vv", "href"])
    monkeypatch.setattr(colocate, "GEOLOC_MAX_PIXELS", 0)
    whole, _ = colocate_array(href, grid, db=True)
    colocate_asset(href, grid, tmp_path / "sar.tif", db=True, strip_bytes=1)
    streamed = read_float32(tmp_path / "sar.tif")[0]
    np.testing.assert_allclose(streamed, whole, atol=1e-4, equal_nan=True)
    assert np.isfinite(streamed).mean() > 0.9


def test_a_grid_on_the_source_pixels_is_copied_with_the_warpers_values(tmp_path, monkeypatch):
    """A grid on the source's own pixels (a time series of one tile) is co-located by copying
    the source window, not warping it: for every resampling that keeps a pixel unchanged, with
    fill values, a declared scale and offset, dB, and a grid running past the source, the copy
    writes GDAL's warper's very values (colocate_array warps in memory). A grid half a pixel
    off is warped."""
    import rasterio

    import costack.stages.colocate as C

    copies, copy = [], C._copy_aligned
    monkeypatch.setattr(C, "_copy_aligned", lambda *a, **k: copies.append(1) or copy(*a, **k))
    src_t = Affine(10, 0, 500_000, 0, -10, 5_000_000)
    rng = np.random.default_rng(4)
    raw = (rng.random((300, 260)) * 4000).astype(np.uint16)
    raw[40:70, 30:90] = 0  # fill value
    raw[:5] = 65535  # the item's extra fill value
    path = write_raster(tmp_path / "a.tif", raw, transform=src_t, nodata=0)
    grid = Grid(UTM, Affine(10, 0, 500_000 + 10 * 37, 0, -10, 5_000_000 + 10 * 11), 256, 300)
    radiometry = {"scale": 1e-4, "offset": -0.1, "extra_nodata": 65535.0}
    for resampling in sorted(C.IDENTITY_RESAMPLINGS):
        for db in (False, True):
            whole, nodata = colocate_array(str(path), grid, resampling=resampling, db=db,
                                           **radiometry)  # fmt: skip
            out = tmp_path / f"{resampling}-{db}.tif"
            colocate_asset(str(path), grid, out, resampling=resampling, db=db, strip_bytes=1,
                           **radiometry)  # fmt: skip
            copied, _, _ = read_float32(out)
            np.testing.assert_array_equal(copied, whole, err_msg=f"{resampling}, dB {db}")
            assert np.isnan(copied[:11]).all() and np.isnan(copied[:, -33:]).all()
            assert np.isfinite(copied).mean() > 0.6
    assert len(copies) == 2 * len(C.IDENTITY_RESAMPLINGS)
    half = Grid(UTM, Affine(10, 0, 500_005, 0, -10, 5_000_000), 100, 100)
    with rasterio.open(path) as src:
        assert C.grid_offset(C.read_georef(src), half) is None
    colocate_asset(str(path), half, tmp_path / "half.tif")
    assert len(copies) == 2 * len(C.IDENTITY_RESAMPLINGS)
