"""Co-location: warp one asset onto the common grid with GDAL's warper.

Nodata is carried as nodata: the source's declared nodata (and NaN for floating-point data) is
excluded from every interpolation kernel, and grid pixels with no valid source get the output
fill value. The output is Float32 with the input's fill value (NaN when the input declares
none). Sigma nought in dB is resampled in the linear power domain and converted back, so a
kernel averages power rather than decibels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject

from costack.georef import GCP_WARP_OPTIONS, read_georef
from costack.grid import Grid
from costack.rasterio_io import write_float32

log = logging.getLogger(__name__)


def output_nodata(src_nodata: float | None) -> float:
    """The Float32 fill value of an output: the input's if it has one, else NaN."""
    if src_nodata is None or np.isnan(src_nodata):
        return float("nan")
    return float(np.float32(src_nodata))


def db_to_linear(db: np.ndarray) -> np.ndarray:
    """10^(dB/10), element-wise."""
    return np.power(np.float32(10.0), db / np.float32(10.0), dtype=np.float32)


def linear_to_db(power: np.ndarray) -> np.ndarray:
    """10 log10(power), with non-positive power as NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.float32(10.0) * np.log10(power)
    out[~np.isfinite(out)] = np.nan
    return out.astype(np.float32)


#: Largest GCP-georeferenced source warped through exact geolocation arrays (2 float64 arrays
#: of the source's size); larger ones use GDAL's GCP transformer, approximated to 0.125 px.
GEOLOC_MAX_PIXELS = 64_000_000


def geolocation_arrays(georef) -> np.ndarray:
    """Map coordinates of every source pixel from the GCP grid (thin-plate spline).

    rasterio's ``reproject`` approximates GDAL's transformation to 0.125 source pixels, which
    left 0.06 px mean errors on a curved GCP grid; with geolocation arrays GDAL uses no
    approximation (errors under 2e-4 px on the same test). GDAL reads element (i, j) of the
    arrays as the position of area coordinate (line i, pixel j), i.e. the pixel's upper-left
    corner, so the arrays are evaluated there (the GCPs being already in GDAL's convention).
    """
    from rasterio.transform import GCPTransformer

    rows, cols = np.mgrid[0 : georef.height, 0 : georef.width].astype(np.float64)
    with GCPTransformer(georef.gcps, tps=True) as tr:
        xs, ys = tr.xy(rows.ravel(), cols.ravel(), offset="ul")
    shape = (georef.height, georef.width)
    return np.stack([np.asarray(xs).reshape(shape), np.asarray(ys).reshape(shape)])


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
) -> tuple[np.ndarray, float]:
    """Warp a single-band raster onto ``grid``.

    Args:
        path: GDAL path of the source (``/vsicurl/`` for URLs).
        grid: the target grid.
        resampling: GDAL resampling name.
        db: the data are decibels; resample in the linear power domain.
        pixel_center: GCPs refer to pixel centres (see :mod:`costack.georef`).
        threads: warper threads.
        scale, offset: physical value = stored value * scale + offset, applied before the
            warp (see :mod:`costack.radiometry`); fill values are masked first.
        nodata: the source's fill value when the file has no tag (the item's
            ``raster:bands`` nodata); the file's own tag wins.
        extra_nodata: a second fill value to mask (the item's, where it disagrees with the
            file's).

    Returns:
        (Float32 array with NaN where there is no data, output fill value). The fill value is
        the source's when its numbers are kept, NaN when they were scaled (a fill value of 0
        DN is a valid reflectance).
    """
    with rasterio.open(path) as src:
        georef = read_georef(src, pixel_center)
        src_nodata = src.nodata if src.nodata is not None else nodata
        raw = src.read(1, masked=False)
    invalid = np.zeros(raw.shape, dtype=bool)
    for fill in (src_nodata, extra_nodata):
        if fill is not None and not np.isnan(fill):
            invalid |= raw == (np.float32(fill) if raw.dtype.kind == "f" else fill)
    scaled = (scale, offset) != (1.0, 0.0)
    if scaled:
        data = raw.astype(np.float32)
        data *= np.float32(scale)
        data += np.float32(offset)
        src_nodata = None
    else:
        data = raw.astype(np.float32)
    del raw
    invalid |= ~np.isfinite(data)
    if db:
        data = db_to_linear(data)
        invalid |= ~np.isfinite(data)
    data[invalid] = np.nan
    out = np.full(grid.shape, np.nan, dtype=np.float32)
    kwargs: dict = {}
    if georef.gcps and data.size <= GEOLOC_MAX_PIXELS:
        kwargs.update(src_geoloc_array=geolocation_arrays(georef))
    elif georef.gcps:
        log.warning("%s: %d px is too large for geolocation arrays; GCP warp approximated to "
                    "0.125 px by GDAL", path, data.size)  # fmt: skip
        kwargs.update(gcps=georef.gcps, **GCP_WARP_OPTIONS)
    else:
        kwargs.update(src_transform=georef.transform)
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
        **kwargs,
    )
    if db:
        out = linear_to_db(out)
    return out, output_nodata(src_nodata)


def colocate_asset(
    path: str,
    grid: Grid,
    out_path: str | Path,
    resampling: str = "bilinear",
    db: bool = False,
    pixel_center: bool = True,
    threads: int = 1,
    tags: dict[str, str] | None = None,
    **radiometry: float | None,
) -> None:
    """Warp one asset onto the grid and write it as a Float32 GeoTIFF.

    ``radiometry`` takes ``scale``, ``offset``, ``nodata`` and ``extra_nodata`` as in
    :func:`colocate_array`.
    """
    data, nodata = colocate_array(path, grid, resampling, db, pixel_center, threads, **radiometry)
    valid = np.isfinite(data)
    log.info("colocated %s: %d of %d grid pixels valid", path, int(valid.sum()), data.size)
    meta = {"costack_resampling": resampling}
    if db:
        meta["costack_resampling_domain"] = "linear power (dB converted before and after)"
    meta.update(tags or {})
    write_float32(out_path, data, grid, nodata, tags=meta)
