"""Sentinel-1 SAFE products: the geolocation grid of a measurement from its annotation XML.

A GRD measurement GeoTIFF is geolocated by the annotation's ``geolocationGrid`` (about 10x21
points: ``line``, ``pixel``, ``latitude``, ``longitude``, ``height``). ESA's convention: a
point's ``pixel``/``line`` is the index of a pixel and its latitude/longitude is the centre of
that pixel (see :mod:`costack.io.georef`, which adds the half pixel before any warp).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from rasterio.control import GroundControlPoint


def read_geolocation_grid(annotation_xml: str | Path) -> list[GroundControlPoint]:
    """The annotation's geolocation grid as GCPs (col = pixel, row = line; lon, lat, height).

    Pixel/line are returned as written (pixel-centre indices), not yet in GDAL's convention.
    """
    root = ET.parse(annotation_xml).getroot()
    points = root.findall(".//geolocationGrid/geolocationGridPointList/geolocationGridPoint")
    gcps = []
    for i, p in enumerate(points, start=1):
        gcps.append(
            GroundControlPoint(
                row=float(p.findtext("line")),
                col=float(p.findtext("pixel")),
                x=float(p.findtext("longitude")),
                y=float(p.findtext("latitude")),
                z=float(p.findtext("height") or 0.0),
                id=str(i),
            )
        )
    return gcps


def annotation_for(measurement: str | Path) -> Path | None:
    """The annotation XML of a SAFE measurement file (``measurement/x.tiff`` ->
    ``annotation/x.xml``), or None when the file is not inside a SAFE product."""
    path = Path(measurement)
    if path.parent.name != "measurement":
        return None
    candidate = path.parent.parent / "annotation" / (path.stem + ".xml")
    return candidate if candidate.exists() else None
