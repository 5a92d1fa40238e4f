"""Co-location: warp one asset onto the common grid with GDAL's warper.

Nodata is carried as nodata: the source's declared nodata (and NaN for floating-point data) is
excluded from every interpolation kernel, and grid pixels with no valid source get the output
fill value. The output is Float32 with the input's fill value (NaN when the input declares
none). Sigma nought in dB is resampled in the linear power domain and converted back, so a
kernel averages power rather than decibels.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.warp import reproject, transform
from rasterio.windows import Window

from costack.errors import CostackError, describe
from costack.io.files import scratch_path
from costack.io.georef import GCP_WARP_OPTIONS, read_georef
from costack.io.grids import Grid, resolution_ratio
from costack.io.manifest import manifest_row, read_manifest
from costack.io.rasters import (
    DB_DOMAIN,
    STREAM_CACHE_MB,
    atomic_raster,
    float32_profile,
    strip_rows,
    strips,
    to_nodata,
)
from costack.io.remote import SourcePolicy, source_path
from costack.registration.imaging import db_to_linear, linear_to_db

log = logging.getLogger(__name__)


def output_nodata(src_nodata: float | None) -> float:
    """The Float32 fill value of an output: the input's if it has one, else NaN."""
    if src_nodata is None or np.isnan(src_nodata):
        return float("nan")
    return float(np.float32(src_nodata))


#: Largest GCP-georeferenced source warped through exact geolocation arrays (2 float64 arrays
#: of the source's size); larger ones use GDAL's GCP transformer, approximated to 0.125 px.
GEOLOC_MAX_PIXELS = 64_000_000


def geolocation_arrays(georef, window: Window | None = None) -> np.ndarray:
    """Map coordinates of every source pixel (of ``window``, else of the whole source) from the
    GCP grid (thin-plate spline).

    rasterio's ``reproject`` approximates GDAL's transformation to 0.125 source pixels, which
    left 0.06 px mean errors on a curved GCP grid; with geolocation arrays GDAL uses no
    approximation (errors under 2e-4 px on the same test). GDAL reads element (i, j) of the
    arrays as the position of area coordinate (line i, pixel j), i.e. the pixel's upper-left
    corner, so the arrays are evaluated there (the GCPs being already in GDAL's convention).
    """
    from rasterio.transform import GCPTransformer

    r0, c0, h, w = (
        (0, 0, georef.height, georef.width)
        if window is None
        else (int(window.row_off), int(window.col_off), int(window.height), int(window.width))
    )
    rows, cols = np.mgrid[r0 : r0 + h, c0 : c0 + w].astype(np.float64)
    with GCPTransformer(georef.gcps, tps=True) as tr:
        xs, ys = tr.xy(rows.ravel(), cols.ravel(), offset="ul")
    shape = (h, w)
    return np.stack([np.asarray(xs).reshape(shape), np.asarray(ys).reshape(shape)])


def _physical(
    raw: np.ndarray,
    src_nodata: float | None,
    extra_nodata: float | None,
    scale: float,
    offset: float,
    db: bool,
) -> np.ndarray:
    """Stored values to the Float32 values the warper resamples: fill values masked (NaN),
    ``raw * scale + offset`` (see :mod:`costack.io.radiometry`), dB to linear power."""
    invalid = np.zeros(raw.shape, dtype=bool)
    for fill in (src_nodata, extra_nodata):
        if fill is not None and not np.isnan(fill):
            invalid |= raw == (np.float32(fill) if raw.dtype.kind == "f" else fill)
    data = raw.astype(np.float32)
    if (scale, offset) != (1.0, 0.0):
        data *= np.float32(scale)
        data += np.float32(offset)
    invalid |= ~np.isfinite(data)
    if db:
        data = db_to_linear(data)
        invalid |= ~np.isfinite(data)
    data[invalid] = np.nan
    return data


def _source_georef(georef, window: Window | None, label: str) -> dict:
    """How GDAL's warper is told where the source (or its ``window``) lies: exact geolocation
    arrays for GCP sources up to GEOLOC_MAX_PIXELS, else the GCPs shifted to the window with
    GDAL's thin-plate spline (approximated to 0.125 px); the geotransform shifted to the window
    for the others."""
    r0, c0 = (int(window.row_off), int(window.col_off)) if window is not None else (0, 0)
    pixels = (
        int(window.width) * int(window.height) if window is not None
        else georef.width * georef.height
    )  # fmt: skip
    if georef.gcps and pixels <= GEOLOC_MAX_PIXELS:
        return {"src_geoloc_array": geolocation_arrays(georef, window)}
    if georef.gcps:
        log.warning("%s: %d px is too large for geolocation arrays; GCP warp approximated to "
                    "0.125 px by GDAL", label, pixels)  # fmt: skip
        gcps = [GroundControlPoint(g.row - r0, g.col - c0, g.x, g.y, g.z) for g in georef.gcps]
        return {"gcps": gcps, **GCP_WARP_OPTIONS}
    return {"src_transform": georef.transform @ Affine.translation(c0, r0)}


def _warp(
    data: np.ndarray,
    georef,
    grid: Grid,
    resampling: str,
    threads: int,
    label: str,
) -> np.ndarray:
    """GDAL's warper from the whole source ``data`` onto ``grid``, in memory: NaN in and out
    for no data."""
    out = np.full(grid.shape, np.nan, dtype=np.float32)
    reproject(
        source=data,
        destination=out,
        src_crs=georef.crs,
        src_nodata=np.nan,
        dst_transform=grid.transform,
        dst_crs=grid.crs,
        dst_nodata=np.nan,
        resampling=Resampling[resampling],
        num_threads=max(1, threads),
        **_source_georef(georef, None, label),
    )
    return out


def colocate_array(
    path: str,
    grid: Grid,
    resampling: str = "bilinear",
    db: bool = False,
    pixel_center: bool = True,
    threads: int = 1,
    scale: float = 1.0,
    offset: float = 0.0,
    nodata: float | None = None,
    extra_nodata: float | None = None,
    driver: str | None = None,
) -> tuple[np.ndarray, float]:
    """Warp a single-band raster onto ``grid``, in memory.

    Args:
        path: GDAL path of the source (``/vsicurl/`` for URLs).
        grid: the target grid.
        resampling: GDAL resampling name.
        db: the data are decibels; resample in the linear power domain.
        pixel_center: GCPs refer to pixel centres (see :mod:`costack.io.georef`).
        threads: warper threads.
        scale, offset: physical value = stored value * scale + offset, applied before the
            warp (see :mod:`costack.io.radiometry`); fill values are masked first.
        nodata: the source's fill value when the file has no tag (the item's
            ``raster:bands`` nodata); the file's own tag wins.
        extra_nodata: a second fill value to mask (the item's, where it disagrees with the
            file's).
        driver: the only GDAL driver to open the source with (the gate's,
            :func:`costack.io.remote.source_path`); None: any.

    Returns:
        (Float32 array with NaN where there is no data, output fill value). The fill value is
        the source's when its numbers are kept, NaN when they were scaled (a fill value of 0
        DN is a valid reflectance).
    """
    with rasterio.open(path, driver=driver or None) as src:
        georef = read_georef(src, pixel_center)
        src_nodata = src.nodata if src.nodata is not None else nodata
        raw = src.read(1, masked=False)
    data = _physical(raw, src_nodata, extra_nodata, scale, offset, db)
    del raw
    out = _warp(data, georef, grid, resampling, threads, path)
    if db:
        out = linear_to_db(out)
    return out, _fill_value(src_nodata, scale, offset)


def _fill_value(src_nodata: float | None, scale: float, offset: float) -> float:
    """The output's fill value: the source's when its numbers are kept, NaN when scaled."""
    return output_nodata(None if (scale, offset) != (1.0, 0.0) else src_nodata)


#: Co-location streams (:func:`_colocate_streamed`): GDAL's warper chunks the grid itself, file
#: to file, with its block cache held to STREAM_CACHE_MB; our own passes go by strips of about
#: STRIP_BYTES.
STRIP_BYTES = 128_000_000
#: Bytes per source pixel of the two float64 geolocation arrays of a GCP source's window.
GEOLOC_BYTES_PER_PIXEL = 16


def source_window(
    georef, grid: Grid, rows: tuple[int, int], pad: int, samples: int = 32
) -> Window | None:
    """The source window that grid rows ``rows`` read, ``pad`` source pixels wider on every side
    (the resampling kernel's reach), clipped to the source; None if it misses the source.

    The strip's outline (``samples`` points per edge) is transformed to source pixels: through
    the inverse geotransform, or the inverse thin-plate spline of the GCPs.
    """
    r0, r1 = rows
    t = np.linspace(0.0, 1.0, samples + 1)
    w = float(grid.width)
    cols = np.concatenate([t * w, np.full_like(t, w), t * w, np.zeros_like(t)])
    rws = np.concatenate([np.full_like(t, r0), r0 + t * (r1 - r0), np.full_like(t, r1),
                          r0 + t * (r1 - r0)])  # fmt: skip
    xs, ys = grid.transform @ (cols, rws)
    if grid.crs != georef.crs:
        xs, ys = transform(grid.crs, georef.crs, xs, ys)
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    if georef.gcps:
        from rasterio.transform import GCPTransformer

        with GCPTransformer(georef.gcps, tps=True) as tr:
            src_rows, src_cols = tr.rowcol(xs, ys, op=lambda v: v)
    else:
        src_cols, src_rows = ~georef.transform @ (xs, ys)
    src_rows, src_cols = np.asarray(src_rows, float), np.asarray(src_cols, float)
    ok = np.isfinite(src_rows) & np.isfinite(src_cols)
    if not ok.any():
        return None
    top = max(0, int(np.floor(src_rows[ok].min())) - pad)
    bottom = min(georef.height, int(np.ceil(src_rows[ok].max())) + pad)
    left = max(0, int(np.floor(src_cols[ok].min())) - pad)
    right = min(georef.width, int(np.ceil(src_cols[ok].max())) + pad)
    if bottom <= top or right <= left:
        return None
    return Window(left, top, right - left, bottom - top)


def kernel_pad(georef, grid: Grid) -> int:
    """Source pixels a destination pixel's kernel can reach beyond its footprint: the widest of
    GDAL's kernels (Lanczos, 3 px) scaled by the downsampling factor, plus a margin."""
    src_res = min(georef.pixel_size())
    dst_res = max(abs(grid.transform.a), abs(grid.transform.e))
    factor = max(1.0, dst_res / src_res) if grid.crs.is_projected else 1.0
    return int(np.ceil(3 * factor)) + 4


def streamed_bytes(window_pixels: int, gcps: bool, strip_bytes: int = STRIP_BYTES) -> int:
    """Peak memory of :func:`_colocate_streamed`: GDAL's cache and warp chunk, our strips and,
    for GCP sources, the geolocation arrays of the source window."""
    geoloc = (
        GEOLOC_BYTES_PER_PIXEL * window_pixels if gcps and window_pixels <= GEOLOC_MAX_PIXELS else 0
    )
    return (STREAM_CACHE_MB + 64) * 1_000_000 + 2 * strip_bytes + geoloc


#: Resamplings whose kernel, on a grid that repeats the source's pixels, returns each source
#: pixel unchanged (GDAL's warper then writes the source values; checked by
#: tests/test_colocate.py against the warper, byte for byte)
IDENTITY_RESAMPLINGS = frozenset({"nearest", "bilinear", "cubic", "cubic_spline", "lanczos",
                                  "average", "mode"})  # fmt: skip


def grid_offset(georef, grid: Grid) -> tuple[int, int] | None:
    """(column, row) of the grid's first pixel in the source when the grid repeats the source's
    pixels (same CRS, the same pixel size and orientation, an origin a whole number of source
    pixels away, within 1e-6 px), else None. A time series of one Sentinel-2 or Landsat tile is
    such a case: co-location is then a copy of a window of the source, not a warp."""
    if georef.gcps or georef.crs is None or grid.crs != georef.crs:
        return None
    s, g = georef.transform, grid.transform
    if (s.b, s.d, g.b, g.d) != (0.0, 0.0, 0.0, 0.0) or (s.a, s.e) != (g.a, g.e):
        return None
    col, row = (g.c - s.c) / s.a, (g.f - s.f) / s.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(col), round(row)


def _copy_aligned(
    src: rasterio.io.DatasetReader,
    dst: rasterio.io.DatasetWriter,
    grid: Grid,
    offset: tuple[int, int],
    rows: int,
    physical,
    db: bool,
    fill: float,
) -> int:
    """Co-location on a grid that repeats the source's pixels (:func:`grid_offset`): the
    source's window, strip by strip, through the same conversions as the warp path
    (``physical``, then dB back from linear power), NaN outside the source. Returns the number
    of valid grid pixels."""
    col0, row0 = offset
    c0, c1 = max(0, -col0), min(grid.width, src.width - col0)
    valid = 0
    for r0, r1 in strips(grid.height, rows):
        out = np.full((r1 - r0, grid.width), np.nan, dtype=np.float32)
        s0, s1 = max(r0, -row0), min(r1, src.height - row0)
        if s1 > s0 and c1 > c0:
            part = Window(col0 + c0, row0 + s0, c1 - c0, s1 - s0)
            data = physical(src.read(1, window=part, masked=False))
            out[s0 - r0 : s1 - r0, c0:c1] = linear_to_db(data) if db else data
        valid += int(np.isfinite(out).sum())
        dst.write(to_nodata(out, fill), 1, window=Window(0, r0, grid.width, r1 - r0))
    return valid


def _colocate_streamed(
    path: str,
    grid: Grid,
    out_path: Path,
    tags: dict[str, str],
    resampling: str,
    db: bool,
    pixel_center: bool,
    threads: int,
    scale: float = 1.0,
    offset: float = 0.0,
    nodata: float | None = None,
    extra_nodata: float | None = None,
    strip_bytes: int = STRIP_BYTES,
    driver: str | None = None,
) -> int:
    """:func:`colocate_array` with bounded memory, into ``out_path``.

    On a grid that repeats the source's pixels (:func:`grid_offset`) and a resampling that
    keeps them (:data:`IDENTITY_RESAMPLINGS`), the warper's result is the source window itself:
    it is copied by strips (:func:`_copy_aligned`; the same bytes, in a third of the time on a
    10980 x 10980 tile). Otherwise:

    1. The source window the grid reads (:func:`source_window`) is converted to physical
       Float32 values (:func:`_physical`) strip by strip into a scratch GeoTIFF;
    2. GDAL's warper reprojects that file onto the grid file to file, chunking the grid itself;
    3. dB back from linear power and the fill value, strip by strip, into the output.

    Returns the number of valid grid pixels.
    """
    with rasterio.open(path, driver=driver or None) as src:
        georef = read_georef(src, pixel_center)
        src_nodata = src.nodata if src.nodata is not None else nodata
        fill = _fill_value(src_nodata, scale, offset)
        window = source_window(georef, grid, (0, grid.height), kernel_pad(georef, grid))
    aligned = grid_offset(georef, grid) if resampling in IDENTITY_RESAMPLINGS else None
    if aligned is not None and window is not None:
        rows = strip_rows(grid.width, grid.height, 12, strip_bytes)
        with (
            rasterio.Env(GDAL_CACHEMAX=STREAM_CACHE_MB),
            atomic_raster(out_path) as final,
            rasterio.open(path, driver=driver or None) as src,
            rasterio.open(final, "w", **float32_profile(grid, nodata=fill)) as dst,
        ):
            valid = _copy_aligned(
                src, dst, grid, aligned, rows,
                lambda raw: _physical(raw, src_nodata, extra_nodata, scale, offset, db),
                db, fill,
            )  # fmt: skip
            dst.update_tags(**tags)
        return valid
    valid = 0
    with (
        warnings.catch_warnings(),
        rasterio.Env(GDAL_CACHEMAX=STREAM_CACHE_MB),
        atomic_raster(out_path) as final,
        scratch_path(out_path) as physical,
        scratch_path(out_path) as warped,
    ):
        # a scratch source on geolocation arrays has no geotransform of its own
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        if window is not None:
            kwargs = _source_georef(georef, window, path)
            src_grid = Grid(georef.crs, kwargs.pop("src_transform", Affine.identity()),
                            window.width, window.height)  # fmt: skip
            profile = float32_profile(src_grid)
            gcps = kwargs.pop("gcps", None)  # a file source carries its GCPs itself
            if georef.gcps:
                del profile["transform"]
            rows = strip_rows(window.width, window.height, 16, strip_bytes)
            with (
                rasterio.open(path, driver=driver or None) as src,
                rasterio.open(physical, "w", **profile) as dst,
            ):
                if gcps is not None:
                    dst.gcps = (gcps, georef.crs)
                for r0, r1 in strips(window.height, rows):
                    part = Window(window.col_off, window.row_off + r0, window.width, r1 - r0)
                    raw = src.read(1, window=part, masked=False)
                    data = _physical(raw, src_nodata, extra_nodata, scale, offset, db)
                    dst.write(data, 1, window=Window(0, r0, window.width, r1 - r0))
            with (
                rasterio.open(physical) as src,
                rasterio.open(warped, "w", **float32_profile(grid)) as dst,
            ):
                reproject(rasterio.band(src, 1), rasterio.band(dst, 1), src_crs=georef.crs,
                          src_nodata=np.nan, dst_nodata=np.nan,
                          resampling=Resampling[resampling], num_threads=max(1, threads),
                          **kwargs)  # fmt: skip
        rows = strip_rows(grid.width, grid.height, 12, strip_bytes)
        with rasterio.open(final, "w", **float32_profile(grid, nodata=fill)) as dst:
            src = rasterio.open(warped) if window is not None else None
            try:
                for r0, r1 in strips(grid.height, rows):
                    part = Window(0, r0, grid.width, r1 - r0)
                    if src is None:
                        out = np.full((r1 - r0, grid.width), np.nan, dtype=np.float32)
                    else:
                        out = src.read(1, window=part)
                        if db:
                            out = linear_to_db(out)
                    valid += int(np.isfinite(out).sum())
                    dst.write(to_nodata(out, fill), 1, window=part)
            finally:
                if src is not None:
                    src.close()
            dst.update_tags(**tags)  # after the pixels, as write_float32 does (the same bytes)
    return valid


def colocate_asset(
    path: str,
    grid: Grid,
    out_path: str | Path,
    resampling: str = "bilinear",
    db: bool = False,
    pixel_center: bool = True,
    threads: int = 1,
    tags: dict[str, str] | None = None,
    strip_bytes: int = STRIP_BYTES,
    driver: str | None = None,
    **radiometry: float | None,
) -> None:
    """Warp one asset onto the grid and write it as a Float32 GeoTIFF, in bounded memory.

    ``radiometry`` takes ``scale``, ``offset``, ``nodata`` and ``extra_nodata`` as in
    :func:`colocate_array`, whose values it writes (the same bytes on the demo's sources; on
    scene-sized grids GDAL chunks a file destination differently from an array, which moves
    values within its 0.125 px transformer approximation). Peak memory:
    :func:`streamed_bytes`, whatever the AOI.
    """
    meta = {"costack_resampling": resampling}
    if db:
        meta["costack_resampling_domain"] = DB_DOMAIN
    meta.update(tags or {})
    valid = _colocate_streamed(path, grid, Path(out_path), meta, resampling, db, pixel_center,
                               threads, strip_bytes=strip_bytes, driver=driver,
                               **radiometry)  # fmt: skip
    log.info("colocated %s: %d of %d grid pixels valid", path, valid, grid.width * grid.height)


def run_colocate(
    manifest_csv: str | Path,
    grid_json: str | Path,
    key: str,
    out_tif: str | Path,
    resampling: str = "bilinear",
    pixel_center: bool = True,
    threads: int = 1,
    policy: SourcePolicy | Mapping[str, Any] | None = None,
) -> None:
    """The co-location stage (rule ``colocate_asset``, ``costack colocate``): warp asset ``key``
    of the manifest onto the grid (Float32 GeoTIFF in physical units, nodata carried).

    The source passes the same gate as in discovery (:func:`costack.io.remote.source_path`,
    with the config's ``policy``: allowed sources and paths, HTTP time limit and retries)
    before GDAL opens it, so a manifest or a server changed since then is checked again."""
    row = manifest_row(read_manifest(manifest_csv), key, manifest_csv)
    source = source_path(key, str(row["href"]), str(row["item_href"]), SourcePolicy.coerce(policy))
    grid = Grid.load(grid_json)
    start = time.perf_counter()
    ratio = resolution_ratio(row["res_x"], row["res_y"], grid)
    tags = {"costack_key": key, "costack_source": str(row["href_given"]),
            "costack_kind": str(row["kind"]), "costack_resolution_ratio": str(ratio)}  # fmt: skip
    file_nodata = row["nodata"]
    item_nodata = row["item_nodata"]
    radiometry = {
        "scale": float(row["scale"]),
        "offset": float(row["offset"]),
        "nodata": None if np.isnan(file_nodata) else float(file_nodata),
        "extra_nodata": None if np.isnan(item_nodata) else float(item_nodata),
    }
    if radiometry["scale"] != 1.0 or radiometry["offset"] != 0.0:
        tags["costack_radiometry"] = (
            f"physical = DN * {row['scale']:g} + {row['offset']:g} ({row['radiometry']})"
        )
    try:
        colocate_asset(
            source.path, grid, out_tif, resampling, bool(row["db"]),
            pixel_center, threads, tags, driver=source.driver, **radiometry,
        )  # fmt: skip
    except RasterioIOError as err:
        raise CostackError(
            "assets",
            f"{key}: cannot read {row['href']} ({describe(err, 160)})",
            "check that the file or URL is reachable (an HTTP read is retried http_retries "
            "times, each within http_timeout seconds), then rerun",
        ) from err
    log.info("colocated %s in %.2f s", key, time.perf_counter() - start)


def run_colocate_mask(
    grid_json: str | Path,
    out_tif: str | Path,
    dataset: int,
    item_mask: dict[str, str] | None = None,
    user_mask: str | None = None,
    scl_classes: tuple[int, ...] | None = None,
    qa_bits: tuple[int, ...] | None = None,
    policy: SourcePolicy | Mapping[str, Any] | None = None,
) -> dict:
    """A dataset's mask on the grid (rule ``colocate_mask``), once for its tie points, flow and
    QC: its item's quality layer (Sentinel-2 L2A SCL classes, Landsat C2 QA_PIXEL bits; nearest
    resampling) and the user's mask, as uint8 (1 excluded, 0 kept) tagged ``binary``. The
    stacked values are never altered: only the registration's data ignores these pixels. The
    item's layer passes the sources gate (:func:`costack.io.remote.source_path`, ``policy``)
    as the assets do."""
    from costack.io import masks as M

    grid = Grid.load(grid_json)
    if item_mask:
        key = f"{dataset}.{item_mask.get('key', 'mask')}"
        gated = source_path(key, item_mask["href"], item_mask.get("item_href", ""),
                            SourcePolicy.coerce(policy))  # fmt: skip
        item_mask = {**item_mask, "href": gated.path}
    excluded, info = M.dataset_mask(
        grid, item_mask, user_mask,
        tuple(scl_classes) if scl_classes is not None else M.SCL_EXCLUDE,
        tuple(qa_bits) if qa_bits is not None else M.QA_PIXEL_EXCLUDE_BITS, dataset,
    )  # fmt: skip
    profile = dict(driver="GTiff", dtype="uint8", count=1, height=grid.height,
                   width=grid.width, crs=grid.crs, transform=grid.transform, tiled=True,
                   compress="deflate")  # fmt: skip
    with atomic_raster(out_tif) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(excluded.astype(np.uint8), 1)
        dst.update_tags(**{M.KIND_TAG: "binary", "costack_mask_dataset": str(dataset),
                           "costack_mask_sources": json.dumps(info)})  # fmt: skip
        dst.set_band_description(1, "excluded (1) from the registration's data")
    log.info("mask of dataset %d: %.1f %% of the grid excluded (%s)", dataset,
             100 * excluded.mean(), info)  # fmt: skip
    return info
