"""SAR geolocation: GCP grids at the pixel centre (Sentinel-1 GRD), SAFE annotations."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from conftest import SHARED_DATA, write_raster
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.transform import Affine

from costack.io.grids import Grid
from costack.stages.colocate import colocate_array

UTM = CRS.from_epsg(32631)
SPACING = 20.0
THETA = np.deg2rad(-12.0)
X0, Y0 = 500_000.0, 5_000_000.0
W, H = 240, 200


def sar_geometry(col, row):
    """Map position of the centre of SAR pixel index (col, row): rotation and curvature."""
    s, line = np.asarray(col) * SPACING, np.asarray(row) * SPACING
    x = X0 + np.cos(THETA) * s + np.sin(THETA) * line + 2e-6 * s**2
    y = Y0 + np.sin(THETA) * s - np.cos(THETA) * line - 2e-6 * s * line
    return x, y


def invert(x, y):
    """Pixel-centre index (col, row) of map points, by Newton's method."""
    col = np.full_like(x, W / 2)
    row = np.full_like(x, H / 2)
    for _ in range(30):
        fx, fy = sar_geometry(col, row)
        e = 1e-3
        xc, yc = sar_geometry(col + e, row)
        xr, yr = sar_geometry(col, row + e)
        j11, j21, j12, j22 = (xc - fx) / e, (yc - fy) / e, (xr - fx) / e, (yr - fy) / e
        det = j11 * j22 - j12 * j21
        dx, dy = x - fx, y - fy
        col = col + (j22 * dx - j12 * dy) / det
        row = row + (-j21 * dx + j11 * dy) / det
    return col, row


@pytest.fixture(scope="module")
def grd_like(tmp_path_factory):
    """Index rasters (value = pixel index) georeferenced only by a 10x21 GCP grid."""
    folder = tmp_path_factory.mktemp("grd")
    gcps = []
    for line in np.linspace(0, H - 1, 10).round():
        for pixel in np.linspace(0, W - 1, 21).round():
            x, y = sar_geometry(pixel, line)
            gcps.append(GroundControlPoint(row=line, col=pixel, x=float(x), y=float(y), z=0.0))
    cols, rows = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    paths = {}
    for name, arr in (("col", cols), ("row", rows)):
        paths[name] = write_raster(folder / f"{name}.tif", arr, transform=None, gcps=(gcps, UTM))
    return paths


def _measure(paths, pixel_center: bool) -> tuple[np.ndarray, np.ndarray]:
    # a 10 m grid well inside the swath
    cx, cy = sar_geometry(W / 2, H / 2)
    grid = Grid(UTM, Affine(10, 0, cx - 1000, 0, -10, cy + 1000), 200, 200)
    col, _ = colocate_array(str(paths["col"]), grid, pixel_center=pixel_center)
    row, _ = colocate_array(str(paths["row"]), grid, pixel_center=pixel_center)
    r, c = np.mgrid[0:200, 0:200] + 0.5
    x, y = grid.transform @ (c, r)
    tc, tr = invert(x, y)
    return col - tc, row - tr


def test_pixel_centre_convention_lands_within_5_hundredths(grd_like):
    ec, er = _measure(grd_like, pixel_center=True)
    # the mapping is curved: an affine through the corners would be off by about 2 px
    assert np.isfinite(ec).all()
    assert np.abs(ec).max() < 0.05 and np.abs(er).max() < 0.05


def test_without_correction_the_half_pixel_shows(grd_like):
    ec, er = _measure(grd_like, pixel_center=False)
    # GDAL's area convention read literally puts every pixel half a pixel off
    assert abs(np.mean(ec) + 0.5) < 0.05 and abs(np.mean(er) + 0.5) < 0.05


SAFE = SHARED_DATA / "s1_grd_safe"


@pytest.mark.skipif(not SAFE.exists(), reason="shared Sentinel-1 SAFE not present")
def test_safe_annotation_210_points_land_where_annotated(tmp_path):
    from costack.io.safe import annotation_for, read_geolocation_grid

    measurement = next(SAFE.glob("*.SAFE/measurement/*vv*.tiff"))
    annotation = annotation_for(measurement)
    gcps = read_geolocation_grid(annotation)
    assert len(gcps) == 210
    with rasterio.open(measurement) as src:
        from costack.io.georef import read_georef

        georef = read_georef(src, pixel_center=True)
        assert georef.kind == "gcps" and len(georef.gcps) == 210
        assert (src.width, src.height) == (25788, 16685)
    # For every point: a small index raster carrying the whole grid (shifted to its window,
    # which leaves the thin-plate spline unchanged), co-located on a 10 m UTM grid around the
    # point; the co-located index at the annotated position must be the annotated pixel/line.
    from pyproj import Transformer

    utm = CRS.from_epsg(32633)
    to_utm = Transformer.from_crs(4326, 32633, always_xy=True)
    errors = []
    for g in gcps:
        # a window centred on the point (it may extend past the scene's edge: the index image
        # only carries the geometry, which the spline defines there too)
        c0 = int(g.col) - 8
        r0 = int(g.row) - 8
        shifted = [
            GroundControlPoint(row=p.row - r0, col=p.col - c0, x=p.x, y=p.y, z=p.z) for p in gcps
        ]
        cols, rows = np.meshgrid(np.arange(16, dtype=np.float32) + c0,
                                 np.arange(16, dtype=np.float32) + r0)  # fmt: skip
        x, y = to_utm.transform(g.x, g.y)
        grid = Grid(utm, Affine(10, 0, round(x) - 40, 0, -10, round(y) + 40), 8, 8)
        got = []
        for name, arr in (("c", cols), ("r", rows)):
            path = write_raster(tmp_path / f"{name}.tif", arr, transform=None,
                                gcps=(shifted, CRS.from_epsg(4326)))  # fmt: skip
            val, _ = colocate_array(str(path), grid)
            # bilinear read of the co-located index at the annotated point
            fc = (x - grid.transform.c) / 10 - 0.5
            fr = (grid.transform.f - y) / 10 - 0.5
            i, j = int(fr), int(fc)
            a, b = fr - i, fc - j
            got.append(
                (1 - a) * ((1 - b) * val[i, j] + b * val[i, j + 1])
                + a * ((1 - b) * val[i + 1, j] + b * val[i + 1, j + 1])
            )
        errors.append((got[0] - g.col, got[1] - g.row))
    err = np.abs(np.array(errors, dtype=float))
    assert np.isfinite(err).all()
    print(f"210 points, max error {err.max():.4f} px, mean {err.mean():.4f} px")
    assert err.max() < 0.1
