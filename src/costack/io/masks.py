"""Masks of pixels that hold no stable ground: quality layers of catalogue items (Sentinel-2 L2A
scene classification, Landsat Collection 2 QA_PIXEL), a user's mask raster, a user's polygons.

A mask takes pixels out of the registration's data (tie points, the flow's data term, the QC);
the stacked values themselves are never altered. Every reader returns a bool array on the grid,
True where the pixel is excluded.

- ``scl``: Sentinel-2 L2A scene classification (ESA, Sentinel-2 Products Specification
  Document, L2A SCL): 0 no data, 1 saturated or defective, 2 dark area pixels, 3 cloud
  shadows, 4 vegetation, 5 not vegetated, 6 water, 7 unclassified, 8 cloud medium probability,
  9 cloud high probability, 10 thin cirrus, 11 snow or ice. Excluded by default:
  :data:`SCL_EXCLUDE`.
- ``qa_pixel``: Landsat Collection 2 Level-2 QA_PIXEL bits (USGS, Landsat 8-9 Collection 2
  Level 2 Science Product Guide, LSDS-1619, table 6-3): 0 fill, 1 dilated cloud, 2 cirrus,
  3 cloud, 4 cloud shadow, 5 snow, 6 clear, 7 water. Excluded by default:
  :data:`QA_PIXEL_EXCLUDE_BITS`.
- ``binary``: any non-zero value is excluded (a user's raster of a damage zone, a flood
  extent); its nodata pixels are not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from shapely.errors import ShapelyError

from costack.errors import CostackError
from costack.io.grids import Grid, grid_difference

#: Sentinel-2 L2A scene classes excluded by default: no data, saturated or defective, cloud
#: shadows, cloud medium and high probability, thin cirrus, snow or ice
SCL_EXCLUDE = (0, 1, 3, 8, 9, 10, 11)

#: Landsat C2 QA_PIXEL bits excluded by default: fill, dilated cloud, cirrus, cloud, cloud
#: shadow, snow
QA_PIXEL_EXCLUDE_BITS = (0, 1, 2, 3, 4, 5)

MASK_KINDS = ("scl", "qa_pixel", "binary")

#: the tag the workflow writes on a co-located mask raster: its kind
KIND_TAG = "costack_mask_kind"


def scl_mask(scl: np.ndarray, classes: tuple[int, ...] = SCL_EXCLUDE) -> np.ndarray:
    """True where a Sentinel-2 L2A SCL raster's class is one of ``classes``."""
    a = np.asarray(scl)
    if a.dtype.kind == "f":
        a = np.where(np.isfinite(a), a, 0)
    return np.isin(a.astype(np.int64), np.asarray(classes, np.int64))


def qa_pixel_mask(qa: np.ndarray, bits: tuple[int, ...] = QA_PIXEL_EXCLUDE_BITS) -> np.ndarray:
    """True where a Landsat C2 QA_PIXEL raster sets any of ``bits`` (NaN counts as fill)."""
    a = np.asarray(qa)
    if a.dtype.kind == "f":
        a = np.where(np.isfinite(a), a, 1)
    m = 0
    for b in bits:
        m |= 1 << int(b)
    return (a.astype(np.int64) & m) != 0


def interpret(
    values: np.ndarray,
    kind: str,
    nodata: float | None = None,
    scl_classes: tuple[int, ...] = SCL_EXCLUDE,
    qa_bits: tuple[int, ...] = QA_PIXEL_EXCLUDE_BITS,
) -> np.ndarray:
    """The excluded pixels of a mask layer's values, by its ``kind``."""
    if kind == "scl":
        return scl_mask(values, scl_classes)
    if kind == "qa_pixel":
        return qa_pixel_mask(values, qa_bits)
    if kind == "binary":
        a = np.asarray(values)
        keep = np.isfinite(a) if a.dtype.kind == "f" else np.ones(a.shape, bool)
        if nodata is not None and np.isfinite(nodata):
            keep &= a != nodata
        return keep & (np.where(keep, a, 0) != 0)
    raise CostackError("mask kind", f"{kind!r} is not one of {', '.join(MASK_KINDS)}",
                       "give scl, qa_pixel or binary")  # fmt: skip


def read_mask(
    path: str | Path,
    grid: Grid,
    kind: str = "auto",
    parameter: str = "mask",
    scl_classes: tuple[int, ...] = SCL_EXCLUDE,
    qa_bits: tuple[int, ...] = QA_PIXEL_EXCLUDE_BITS,
) -> np.ndarray:
    """The excluded pixels of a mask raster on ``grid`` (bool, True = excluded).

    ``kind`` ``auto`` takes the raster's ``costack_mask_kind`` tag (the workflow's co-located
    item masks carry it), else ``binary``. A raster that cannot be read or is not on the grid
    is a one-line error naming ``parameter``."""
    fix = "give a single-band raster on the flow's grid (co-located), or none"
    try:
        with rasterio.open(path) as src:
            on = Grid(src.crs, src.transform, src.width, src.height)
            why = grid_difference(grid, on)
            if why:
                raise CostackError(parameter, f"{path} is not on the grid ({why})", fix)
            if kind == "auto":
                kind = src.tags().get(KIND_TAG, "binary")
            values = src.read(1)
            nodata = src.nodata
    except CostackError:
        raise
    except (OSError, rasterio.errors.RasterioError) as err:
        text = " ".join(str(err).split())[:200]
        raise CostackError(parameter, f"{path} cannot be read as a mask ({text})", fix) from err
    if kind not in MASK_KINDS:
        raise CostackError(parameter, f"{path}: mask kind {kind!r} is not one of "
                           f"{', '.join(MASK_KINDS)}", "give scl, qa_pixel or binary")  # fmt: skip
    return interpret(values, kind, nodata, scl_classes, qa_bits)


@dataclass(frozen=True)
class Exclusions:
    """What to exclude from a pair's registration data: mask rasters of the reference and of
    the secondary (``(path, kind)``, kind ``auto``/``scl``/``qa_pixel``/``binary``) and polygons
    (GeoJSON geometries in EPSG:4326) excluded in both."""

    reference: tuple[str, str] | None = None
    secondary: tuple[str, str] | None = None
    polygons: tuple[dict, ...] = ()
    scl_classes: tuple[int, ...] = SCL_EXCLUDE
    qa_bits: tuple[int, ...] = QA_PIXEL_EXCLUDE_BITS

    def read(self, grid: Grid) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(reference excluded, secondary excluded) on ``grid``, None where nothing is."""
        area = rasterize_polygons(list(self.polygons), grid) if self.polygons else None
        out = []
        for given, name in ((self.reference, "reference"), (self.secondary, "secondary")):
            m = None
            if given is not None:
                m = read_mask(given[0], grid, given[1], f"mask ({name})", self.scl_classes,
                              self.qa_bits)  # fmt: skip
            if area is not None:
                m = area if m is None else (m | area)
            out.append(m)
        return out[0], out[1]

    def read_window(self, grid: Grid, window) -> tuple[np.ndarray | None, np.ndarray | None]:
        """:meth:`read` over a window of the grid (rasterio ``Window``, possibly beyond the
        grid: nothing is excluded there), for the flow by tiles."""
        from rasterio.features import geometry_mask
        from rasterio.warp import transform_geom
        from rasterio.windows import transform as window_transform

        h, w = int(window.height), int(window.width)
        area = None
        if self.polygons:
            on_grid = [transform_geom("EPSG:4326", grid.crs, g) for g in self.polygons]
            at = window_transform(window, grid.transform)
            area = geometry_mask(on_grid, out_shape=(h, w), transform=at, invert=True)
        out = []
        for given, name in ((self.reference, "reference"), (self.secondary, "secondary")):
            m = None
            if given is not None:
                path, kind = given
                try:
                    with rasterio.open(path) as src:
                        kind = src.tags().get(KIND_TAG, "binary") if kind == "auto" else kind
                        values = src.read(1, window=window, boundless=True, fill_value=0)
                        nodata = src.nodata
                except (OSError, rasterio.errors.RasterioError) as err:
                    text = " ".join(str(err).split())[:200]
                    why = f"{path} cannot be read as a mask ({text})"
                    raise CostackError(f"mask ({name})", why,
                                       "give a readable mask raster") from err  # fmt: skip
                m = interpret(values, kind, nodata, self.scl_classes, self.qa_bits)
            if area is not None:
                m = area if m is None else (m | area)
            out.append(m)
        return out[0], out[1]


def parse_polygons(text: str, parameter: str = "exclude") -> list[dict]:
    """GeoJSON geometries from ``text``: a path to a GeoJSON file, inline GeoJSON (a geometry,
    a Feature or a FeatureCollection) or WKT, in longitude/latitude (EPSG:4326) like the AOI."""
    fix = "give WKT, GeoJSON or a .geojson file of polygons in EPSG:4326 (lon/lat)"
    src = text.strip()
    if src and not src.startswith(("{", "POLYGON", "MULTIPOLYGON", "polygon", "multipolygon")):
        p = Path(src)
        if not p.is_file():
            raise CostackError(parameter, f"{src[:80]!r} is neither a file nor WKT/GeoJSON", fix)
        try:
            src = p.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise CostackError(parameter, f"{p} cannot be read ({err})", fix) from err
    try:
        if src.startswith("{"):
            obj = json.loads(src)
            if obj.get("type") == "FeatureCollection":
                geoms = [f["geometry"] for f in obj.get("features", [])]
            elif obj.get("type") == "Feature":
                geoms = [obj["geometry"]]
            else:
                geoms = [obj]
        else:
            from shapely import wkt
            from shapely.geometry import mapping

            geoms = [mapping(wkt.loads(src))]
    except (ShapelyError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CostackError(parameter, f"not WKT or GeoJSON ({' '.join(str(err).split())[:120]})",
                           fix) from err  # fmt: skip
    for g in geoms:
        if not isinstance(g, dict) or g.get("type") not in ("Polygon", "MultiPolygon"):
            kind = g.get("type") if isinstance(g, dict) else type(g).__name__
            raise CostackError(parameter, f"a {kind} is not a polygon", fix)
    return geoms


def rasterize_polygons(geoms: list[dict], grid: Grid) -> np.ndarray:
    """The grid's pixels whose centre lies in any of ``geoms`` (EPSG:4326; bool)."""
    from rasterio.features import geometry_mask
    from rasterio.warp import transform_geom

    if not geoms:
        return np.zeros((grid.height, grid.width), bool)
    on_grid = [transform_geom("EPSG:4326", grid.crs, g) for g in geoms]
    return geometry_mask(on_grid, out_shape=(grid.height, grid.width),
                         transform=grid.transform, invert=True)  # fmt: skip


#: asset keys of the items' quality layers (case-insensitive) and their kind: Earth Search and
#: Planetary Computer name Sentinel-2 L2A's scene classification ``scl``/``SCL`` and Landsat
#: Collection 2's pixel quality ``qa_pixel``/``QA_PIXEL``
MASK_ASSET_KEYS = {"scl": "scl", "qa_pixel": "qa_pixel"}


def find_mask_asset(assets: dict, item_id: str = "item") -> tuple[str, str] | None:
    """The item's quality-mask asset as (key, kind), or None when it has none (not an error).

    ``assets``: the item's assets (``pystac.Item.assets`` or the JSON's ``assets`` mapping).
    By key (``scl``/``SCL``, ``qa_pixel``/``QA_PIXEL``), a COG over other encodings
    (``scl`` over ``scl-jp2``); else by role: an asset with the roles ``cloud`` and
    ``cloud-shadow`` and classification bit fields is a Landsat-style ``qa_pixel``."""

    def fields(a) -> dict:
        return a if isinstance(a, dict) else {**a.extra_fields, "roles": a.roles or [],
                                              "type": a.media_type}  # fmt: skip

    for key in assets:
        kind = MASK_ASSET_KEYS.get(key.lower())
        if kind:
            return key, kind
    for key, a in assets.items():
        f = fields(a)
        roles = {r.lower() for r in f.get("roles") or []}
        if {"cloud", "cloud-shadow"} <= roles and f.get("classification:bitfields"):
            return key, "qa_pixel"
    return None


def warp_to_grid(path: str, grid: Grid, parameter: str = "mask") -> np.ndarray:
    """A mask layer's values on ``grid`` by nearest-neighbour resampling (classes and bit
    fields must not be interpolated); outside the layer its nodata, else 0. A layer that
    cannot be read is a one-line error naming ``parameter``."""
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    try:
        with rasterio.open(path) as src:
            nodata = src.nodata
            dtype = src.dtypes[0]
            out = np.full((grid.height, grid.width), 0 if nodata is None else nodata, dtype)
            reproject(
                rasterio.band(src, 1),
                out,
                dst_transform=grid.transform,
                dst_crs=grid.crs,
                dst_nodata=nodata,
                resampling=Resampling.nearest,
            )
    except (OSError, rasterio.errors.RasterioError) as err:
        text = " ".join(str(err).split())[:200]
        raise CostackError(parameter, f"{path} cannot be read as a mask ({text})",
                           "give a readable single-band raster, or none") from err  # fmt: skip
    return out


def is_polygons(text: str) -> bool:
    """Whether a user mask is given as polygons (WKT, GeoJSON, a .geojson/.json file) rather
    than a raster."""
    s = text.strip()
    return s.startswith(("{", "POLYGON", "MULTIPOLYGON", "polygon", "multipolygon")) or \
        s.lower().endswith((".geojson", ".json"))  # fmt: skip


def check_user_mask(text: str, parameter: str) -> None:
    """Refuse, in one line, a user mask that is neither an existing raster nor polygons."""
    if is_polygons(text):
        parse_polygons(text, parameter)
    elif not Path(text).is_file():
        raise CostackError(parameter, f"{text[:80]!r} is neither a raster file nor polygons",
                           "give a mask raster (non-zero = excluded) or WKT/GeoJSON polygons "
                           "in EPSG:4326")  # fmt: skip


def dataset_mask(
    grid: Grid,
    item_mask: dict[str, str] | None = None,
    user_mask: str | None = None,
    scl_classes: tuple[int, ...] = SCL_EXCLUDE,
    qa_bits: tuple[int, ...] = QA_PIXEL_EXCLUDE_BITS,
    dataset: int | str = "",
) -> tuple[np.ndarray, dict]:
    """A dataset's excluded pixels on ``grid`` (bool) from its item's quality layer
    (``{"href", "kind"}``: classes or bits resampled by nearest neighbour, then interpreted)
    and the user's mask (a raster, non-zero excluded, or polygons); and what each excluded."""
    out = np.zeros((grid.height, grid.width), bool)
    info: dict = {}
    if item_mask:
        values = warp_to_grid(item_mask["href"], grid, f"item mask of dataset {dataset}")
        m = interpret(values, item_mask["kind"], None, scl_classes, qa_bits)
        info["item"] = {"asset": item_mask.get("key"), "kind": item_mask["kind"],
                        "excluded_fraction": round(float(m.mean()), 4)}  # fmt: skip
        out |= m
    if user_mask:
        param = f"masks[{dataset}]"
        check_user_mask(user_mask, param)
        if is_polygons(user_mask):
            m = rasterize_polygons(parse_polygons(user_mask, param), grid)
        else:
            values = warp_to_grid(user_mask, grid, param)
            with rasterio.open(user_mask) as src:
                nodata = src.nodata
            m = interpret(values, "binary", nodata)
        info["user"] = {"excluded_fraction": round(float(m.mean()), 4)}
        out |= m
    return out, info


def rule_exclusions(ref_mask, sec_mask) -> Exclusions | None:
    """The :class:`Exclusions` of a rule's co-located masks (``results/masks/N.tif``; a path or
    an empty input each), or None when neither dataset is masked."""

    def one(x) -> str | None:
        if isinstance(x, str | Path):
            return str(x) or None
        return str(x[0]) if x else None

    ref, sec = one(ref_mask), one(sec_mask)
    if ref is None and sec is None:
        return None
    return Exclusions(reference=(ref, "binary") if ref else None,
                      secondary=(sec, "binary") if sec else None)  # fmt: skip
