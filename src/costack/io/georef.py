"""Georeferencing of source rasters: geotransforms and GCP (tie-point) geolocation grids.

Sentinel-1 GRD measurement rasters carry no geotransform, only a geolocation grid of about
10x21 points. ESA's convention for that grid (see the Sentinel-1 annotation and ESA's answer on
the STEP forum, and SNAP's tie-point grids, which use an offset of 0.5): a point's ``pixel`` and
``line`` are the index of a pixel and its latitude/longitude is the *centre* of that pixel. GDAL
reads GCP pixel/line as area coordinates, in which (0, 0) is the upper-left corner of the first
pixel and (0.5, 0.5) its centre. Without a correction every GRD lands half a pixel off in both
directions, so :func:`gdal_gcps` adds 0.5 to pixel and line when ``pixel_center`` is true.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.transform import GCPTransformer
from rasterio.warp import transform_geom
from shapely.geometry import Polygon, mapping, shape

WGS84 = CRS.from_epsg(4326)

# GDAL transformer options for GCP-georeferenced sources. A polynomial of order 2 (GDAL's default
# for many GCPs) leaves tens of metres at the points of a whole S1 scene; a thin-plate spline
# passes through every point and follows the grid between them.
GCP_WARP_OPTIONS = {"SRC_METHOD": "GCP_TPS"}


def gdal_gcps(
    gcps: list[GroundControlPoint], pixel_center: bool = True
) -> list[GroundControlPoint]:
    """Express GCPs in GDAL's area convention.

    Args:
        gcps: the points as stored (pixel = ``col``, line = ``row``).
        pixel_center: True if ``(col, row)`` is the index of the pixel whose centre is at the
            point (Sentinel-1 geolocation grid); 0.5 is then added to both.

    Returns:
        New points whose ``(col, row)`` are GDAL area coordinates.
    """
    offset = 0.5 if pixel_center else 0.0
    return [
        GroundControlPoint(
            row=g.row + offset, col=g.col + offset, x=g.x, y=g.y, z=g.z, id=g.id, info=g.info
        )
        for g in gcps
    ]


@dataclass
class SourceGeoref:
    """How a source raster is placed on the Earth."""

    crs: CRS
    transform: rasterio.Affine | None
    gcps: list[GroundControlPoint] | None
    width: int
    height: int

    @property
    def kind(self) -> str:
        """``"transform"`` or ``"gcps"``."""
        return "gcps" if self.gcps else "transform"

    def boundary(self, densify: int = 16) -> Polygon:
        """The raster's outline in its CRS, with ``densify`` points per edge."""
        t = np.linspace(0.0, 1.0, densify + 1)[:-1]
        w, h = float(self.width), float(self.height)
        cols = np.concatenate([t * w, np.full_like(t, w), (1 - t) * w, np.zeros_like(t)])
        rows = np.concatenate([np.zeros_like(t), t * h, np.full_like(t, h), (1 - t) * h])
        if self.gcps:
            with GCPTransformer(self.gcps, tps=True) as tr:
                xs, ys = tr.xy(rows, cols, offset="ul")
        else:
            xs, ys = self.transform @ (cols, rows)
        return Polygon(zip(np.asarray(xs, float), np.asarray(ys, float), strict=True))

    def footprint(self, crs: CRS = WGS84) -> Polygon:
        """The outline transformed to ``crs`` (EPSG:4326 by default)."""
        geom = self.boundary()
        if crs == self.crs:
            return geom
        return shape(transform_geom(self.crs, crs, mapping(geom)))

    def pixel_size(self) -> tuple[float, float]:
        """(x, y) pixel size in CRS units; for GCPs in a geographic CRS, metres (local UTM)."""
        if self.transform is not None and not self.gcps:
            return abs(self.transform.a), abs(self.transform.e)
        b = self.boundary(densify=1)
        if self.crs.is_geographic:
            from pyproj.aoi import AreaOfInterest
            from pyproj.database import query_utm_crs_info

            c = b.centroid
            code = query_utm_crs_info(
                datum_name="WGS 84", area_of_interest=AreaOfInterest(c.x, c.y, c.x, c.y)
            )[0].code
            b = shape(transform_geom(self.crs, CRS.from_epsg(int(code)), mapping(b)))
        (x0, y0), (x1, y1), _, (x3, y3) = list(b.exterior.coords)[:4]
        return (
            float(np.hypot(x1 - x0, y1 - y0) / self.width),
            float(np.hypot(x3 - x0, y3 - y0) / self.height),
        )


def read_georef(src: rasterio.io.DatasetReader, pixel_center: bool = True) -> SourceGeoref | None:
    """Georeferencing of an open dataset, or None if it has neither geotransform nor GCPs."""
    gcps, gcp_crs = src.gcps
    if src.crs is not None and not src.transform.is_identity:
        return SourceGeoref(src.crs, src.transform, None, src.width, src.height)
    if not gcps:
        # a Sentinel-1 SAFE measurement without GCPs in the TIFF: its annotation's grid
        from costack.io.safe import annotation_for, read_geolocation_grid

        annotation = annotation_for(src.name)
        if annotation is not None:
            gcps, gcp_crs = read_geolocation_grid(annotation), WGS84
    if gcps and gcp_crs is not None:
        return SourceGeoref(gcp_crs, None, gdal_gcps(gcps, pixel_center), src.width, src.height)
    return None
