"""The common target grid: the reference asset's CRS and pixel size over the AOI or common area.

The extent is the AOI if the user gave one (it overrides the automatic maximum common area, as
in the service), else the intersection of all listed assets' footprints. Either way it is
snapped outward to the reference's pixel lattice, so the grid's pixels coincide with the
reference's own pixels and the reference is never resampled by a fraction of a pixel.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
import rasterio
from pyproj import CRS as ProjCRS
from pyproj.aoi import AreaOfInterest
from pyproj.database import query_utm_crs_info
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import transform_geom
from shapely import wkt as shapely_wkt
from shapely.errors import ShapelyError
from shapely.geometry import Polygon, box, mapping, shape

from costack.errors import CostackError
from costack.io.georef import WGS84
from costack.io.grids import Grid

log = logging.getLogger(__name__)


def parse_aoi(text: str) -> Polygon:
    """Parse the AOI WKT (EPSG:4326, lon/lat) into a polygonal geometry."""
    try:
        geom = shapely_wkt.loads(text)
    except (ShapelyError, ValueError, TypeError) as err:
        raise CostackError(
            "aoi",
            f"cannot parse WKT {text[:80]!r}",
            "give a polygon such as POLYGON((lon lat, lon lat, ...)) in EPSG:4326",
        ) from err
    if geom.is_empty or geom.area == 0:
        raise CostackError(
            "aoi", f"WKT {text[:80]!r} has no area", "give a POLYGON or MULTIPOLYGON in EPSG:4326"
        )
    minx, miny, maxx, maxy = geom.bounds
    if minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
        raise CostackError(
            "aoi",
            f"WKT {text[:80]!r} is outside longitude/latitude ranges",
            "give the AOI in EPSG:4326, longitude first",
        )
    if 180 < maxx - minx < 359.9:
        raise CostackError(
            "aoi",
            f"WKT {text[:80]!r} spans {maxx - minx:.0f} degrees of longitude: it crosses the "
            "antimeridian (read as going the long way round) or covers most of the globe",
            "split it at 180 degrees and run each side, or draw it within one side",
        )
    return geom


def _to_crs(geom_wgs84, crs: CRS):
    return shape(transform_geom(WGS84, crs, mapping(geom_wgs84.segmentize(0.01))))


def reference_lattice(row: pd.Series) -> tuple[CRS, float, float, float, float]:
    """CRS, origin and pixel size of the reference asset's pixel lattice.

    A reference georeferenced by GCPs (e.g. a SAR GRD) has no lattice of its own: it is gridded
    in the UTM zone of its centre at its mean pixel size, with the origin on a multiple of it.
    """
    if row["georef"] == "transform":
        with rasterio.open(row["gdal_path"]) as src:
            t = src.transform
            if src.crs.is_geographic:
                raise CostackError(
                    "reference",
                    f"{row['key']} is in a geographic CRS ({src.crs.to_string()}), whose pixels "
                    "are degrees, not metres: the grid, resolution ratios and flow windows "
                    "would mix units",
                    "pick a reference asset in a projected CRS (e.g. its UTM zone), or "
                    "reproject it first (gdalwarp -t_srs EPSG:326NN)",
                )
            if t.b != 0 or t.d != 0:
                raise CostackError(
                    "reference",
                    f"{row['key']} has a rotated geotransform",
                    "pick a north-up asset as the reference",
                )
            return src.crs, t.c, t.f, t.a, t.e
    foot = shapely_wkt.loads(row["footprint"])
    c = foot.centroid
    info = query_utm_crs_info(
        datum_name="WGS 84", area_of_interest=AreaOfInterest(c.x, c.y, c.x, c.y)
    )
    crs = CRS.from_wkt(ProjCRS.from_epsg(int(info[0].code)).to_wkt())
    local = _to_crs(foot, crs)
    res = float(round(math.sqrt(local.area / (row["width"] * row["height"])), 3))
    return crs, 0.0, 0.0, res, -res


def native_footprint(row: pd.Series, crs: CRS) -> Polygon:
    """An asset's outline in ``crs``, transformed once from the asset's own CRS.

    Going through EPSG:4326 and back (as the manifest's ``footprint`` is stored) moves a
    straight UTM edge by centimetres, enough to add a row to a grid snapped outward; an asset
    already in ``crs`` keeps its exact outline.
    """
    text = str(row.get("footprint_native", "") or "")
    if not text:
        return _to_crs(shapely_wkt.loads(row["footprint"]), crs)
    geom = shapely_wkt.loads(text)
    src_crs = CRS.from_wkt(row["crs"])
    if src_crs == crs:
        return geom
    return shape(transform_geom(src_crs, crs, mapping(geom)))


def compute_grid(
    manifest: pd.DataFrame, reference: str, aoi: str | None = None, min_overlap_px: int = 64
) -> Grid:
    """The common grid for the manifest's assets.

    Args:
        manifest: discovery manifest (one row per asset, ``footprint`` as WKT in EPSG:4326).
        reference: key of the reference asset (``1.nir``).
        aoi: optional WKT in EPSG:4326 that overrides the common area.
        min_overlap_px: the AOI's intersection with every listed asset must span at least this
            many grid pixels along each axis (without an AOI, the common area at least 16); a
            smaller one is refused with the sizes: the matching steps could not see a window.
    """
    manifest = manifest.set_index("key", drop=False)
    from costack.io.manifest import manifest_row

    crs, x0, y0, rx, ry = reference_lattice(manifest_row(manifest, reference))
    common = None
    feet = {}
    for key, row in manifest.iterrows():
        foot = feet[key] = native_footprint(row, crs)
        common = foot if common is None else common.intersection(foot)
    if common is None or common.is_empty or common.area == 0:
        raise CostackError(
            "assets",
            "the footprints of the listed assets have no common area",
            "list assets that overlap, or set aoi inside their overlap",
        )
    if aoi is not None:
        region = parse_aoi(aoi)
        # an AOI beyond the reference CRS's area of use (a whole-world AOI in UTM) cannot be
        # projected: clip it there first, in EPSG:4326
        epsg = crs.to_epsg()
        use = (ProjCRS.from_epsg(epsg) if epsg else ProjCRS.from_wkt(crs.to_wkt())).area_of_use
        if use is not None:  # with a margin: the nominal area is narrower than what projects
            margin = box(max(-180, use.west - 10), max(-90, use.south - 10),
                         min(180, use.east + 10), min(90, use.north + 10))  # fmt: skip
            region = region.intersection(margin)
        if region.is_empty:
            raise CostackError(
                "aoi",
                "the AOI does not overlap the common area of the listed assets",
                "draw the AOI where all listed assets overlap",
            )
        area = _to_crs(region, crs)
        if not area.intersects(common) or area.intersection(common).area == 0:
            raise CostackError(
                "aoi",
                "the AOI does not overlap the common area of the listed assets",
                "draw the AOI where all listed assets overlap",
            )
    else:
        area = common
    for key, foot in feet.items():
        part = area.intersection(foot)
        b = part.bounds if not part.is_empty else (0.0, 0.0, 0.0, 0.0)
        w, h = (b[2] - b[0]) / abs(rx), (b[3] - b[1]) / abs(ry)
        if min(w, h) < (min_overlap_px if aoi is not None else min(min_overlap_px, 16)):
            what = "the AOI" if aoi is not None else "the common area of the listed assets"
            raise CostackError(
                "aoi" if aoi is not None else "assets",
                f"{what} overlaps {key} over {w:.0f} x {h:.0f} grid pixels, under "
                f"{min_overlap_px if aoi is not None else min(min_overlap_px, 16)} px along each "
                "axis (min_overlap_px)"
                + (f" (AOI {aoi[:60]!r})" if aoi is not None else ""),
                "enlarge the AOI or move it onto the data" if aoi is not None
                else "list assets that overlap more",
            )  # fmt: skip
    left, bottom, right, top = area.bounds
    c0 = math.floor((left - x0) / rx + 1e-9)
    c1 = math.ceil((right - x0) / rx - 1e-9)
    r0 = math.floor((top - y0) / ry + 1e-9)
    r1 = math.ceil((bottom - y0) / ry - 1e-9)
    width, height = c1 - c0, r1 - r0
    if width < 1 or height < 1:
        raise CostackError("aoi", "the common area is smaller than a pixel", "enlarge the AOI")
    transform = Affine(rx, 0.0, x0 + c0 * rx, 0.0, ry, y0 + r0 * ry)
    return Grid(crs, transform, width, height)


def run_grid(
    manifest_csv: str | Path,
    reference: str,
    aoi: str | None,
    out_json: str | Path,
    min_overlap_px: int = 64,
) -> Grid:
    """The grid stage (rule ``define_grid``, ``costack grid``): the common grid from the
    manifest (AOI, else the common area)."""
    from costack.io.manifest import read_manifest

    manifest = read_manifest(manifest_csv)
    grid = compute_grid(manifest, reference, aoi, min_overlap_px)
    grid.save(out_json)
    log.info(
        "grid %s: %d x %d px, transform %s",
        grid.crs.to_string(),
        grid.width,
        grid.height,
        tuple(grid.transform)[:6],
    )
    return grid
