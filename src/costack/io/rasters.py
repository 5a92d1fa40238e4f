"""Small raster I/O helpers: Float32 GeoTIFFs on a grid, read back with NaN for nodata."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from costack.io.files import atomic_path, no_space_error
from costack.io.grids import Grid, grid_difference

#: GDAL block cache (MB) of the jobs that stream a raster by strips (co-location, band math)
STREAM_CACHE_MB = 128


#: Rows of a streamed strip are a multiple of this (the intermediates' block height), so each
#: compressed block is written once.
BLOCK = 256


def float32_profile(grid: Grid, count: int = 1, nodata: float = float("nan")) -> dict[str, Any]:
    """The GTiff profile of every Float32 intermediate (co-located, flow, warped, band math).

    ZSTD level 1 (2000x2000 flow, 2 bands: 0.1 s against 0.38 s for DEFLATE level 6, files 0.2 %
    larger), no predictor, 256 px tiles, BigTIFF when the uncompressed size could pass 4 GB.
    Every intermediate is read several times (tie points, flow, warp, QC, report, COG): on a
    10980 x 10980 band the floating-point predictor cost 2.9 s of CPU to write and 0.96 s to
    read, against 1.65 s and 0.52 s without it, for files 5 % (a band) to 18 % (a confidence)
    larger. Not GDAL's multithreaded compression: its worker threads' write errors (a full
    disk) are only logged, the write does not raise (tests/test_faults.py's file-size-limit
    test fails with it).
    """
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "dtype": "float32",
        "count": count,
        "height": grid.height,
        "width": grid.width,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "compress": "zstd",
        "zstd_level": 1,
        "tiled": grid.width >= BLOCK and grid.height >= BLOCK,
        "BIGTIFF": "IF_SAFER",
    }
    if profile["tiled"]:
        profile.update(blockxsize=BLOCK, blockysize=BLOCK)
    return profile


class _GdalErrors(logging.Handler):
    """Collects the errors GDAL reports through rasterio's loggers (it reports some failures,
    such as a block or the TIFF directory not written at close, without raising)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def verify_raster(path: str | Path) -> None:
    """Re-open ``path`` and check that it is whole: a TIFF whose directory was not written does
    not open; every block of every band must have been written, inside the file (its offset and
    byte count, from GDAL's TIFF metadata); and the file's last block decodes. Other formats are
    read whole.

    The check reads the TIFF's structure rather than decoding every block: on a 10980 x 10980
    flow (three rasters) the full read-back took 5 s of the flow stage's CPU. A write cut short
    (a full disk, a file-size limit) leaves blocks unwritten or past the end of the file, and is
    also reported by GDAL while writing and by ``fsync`` (:func:`atomic_raster`)."""
    size = Path(path).stat().st_size
    with rasterio.open(path) as src:
        if src.driver != "GTiff":
            for band in src.indexes:
                for _, window in src.block_windows(band):
                    src.read(band, window=window, masked=False)
            return
        last = (0, 1, None)
        for band in src.indexes:
            for (row, col), window in src.block_windows(band):
                offset = src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=band)
                count = src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=band)
                if not offset or not count or int(offset) + int(count) > size:
                    raise OSError(f"{Path(path).name}: block ({row}, {col}) of band {band} was "
                                  "not written whole")  # fmt: skip
                if int(offset) > last[0]:
                    last = (int(offset), band, window)
        if last[2] is not None:
            src.read(last[1], window=last[2], masked=False)


@contextmanager
def atomic_raster(path: str | Path) -> Iterator[str]:
    """:func:`~costack.io.files.atomic_path` for a raster: the file is moved into place only
    when GDAL reported no error while it was written and closed (a full disk is reported by
    GDAL at close without an exception), it reached its device, and it reads back whole
    (:func:`verify_raster`); otherwise nothing is left, and a full disk is one line."""
    errors = _GdalErrors()
    loggers = [logging.getLogger("rasterio")]  # rasterio._env and ._err propagate to it
    for lg in loggers:
        lg.addHandler(errors)

    def verify(tmp: str) -> None:
        name = Path(tmp).name
        ours = [m for m in errors.messages if name in m or "no space left" in m.lower()]
        if any("no space left" in m.lower() for m in ours):
            raise no_space_error(Path(path).parent)
        if ours:
            raise OSError(f"GDAL reported while writing {Path(path).name}: {ours[0][:200]}")
        verify_raster(tmp)

    try:
        with atomic_path(path, verify) as tmp:
            yield tmp
    finally:
        for lg in loggers:
            lg.removeHandler(errors)


@contextmanager
def open_float32(
    path: str | Path,
    grid: Grid,
    count: int = 1,
    nodata: float = float("nan"),
    tags: dict[str, str] | None = None,
    band_descriptions: list[str] | None = None,
) -> Iterator[rasterio.io.DatasetWriter]:
    """A Float32 GeoTIFF on ``grid`` open for writing by windows, moved into place only when the
    block exits without an error (see :func:`atomic_path`). The caller writes ``nodata``, not
    NaN, where there is no data (see :func:`to_nodata`)."""
    with atomic_raster(path) as tmp:
        with rasterio.open(tmp, "w", **float32_profile(grid, count, nodata)) as dst:
            yield dst
            # after the pixels, as GeoTIFFs written whole always were (the same bytes)
            if tags:
                dst.update_tags(**tags)
            for i, desc in enumerate(band_descriptions or [], start=1):
                dst.set_band_description(i, desc)


def to_nodata(data: np.ndarray, nodata: float) -> np.ndarray:
    """Float32 ``data`` with NaN replaced by ``nodata`` (unchanged when ``nodata`` is NaN)."""
    arr = np.asarray(data, dtype=np.float32)
    if not np.isnan(nodata):
        arr = np.where(np.isnan(arr), np.float32(nodata), arr)
    return arr


def write_float32(
    path: str | Path,
    data: np.ndarray,
    grid: Grid,
    nodata: float = float("nan"),
    tags: dict[str, str] | None = None,
    band_descriptions: list[str] | None = None,
) -> None:
    """Write a (bands, rows, cols) or (rows, cols) array as a tiled Float32 GeoTIFF.

    NaN marks missing data in ``data``; it is written as ``nodata``.
    """
    arr = to_nodata(data, nodata)
    if arr.ndim == 2:
        arr = arr[None]
    with open_float32(path, grid, arr.shape[0], nodata, tags, band_descriptions) as dst:
        dst.write(arr)


def strip_rows(width: int, height: int, bytes_per_pixel: float, budget: int) -> int:
    """Rows of a full-width strip holding about ``budget`` bytes at ``bytes_per_pixel``: a
    multiple of :data:`BLOCK`, at least one block (so a tiled, compressed output's blocks are
    each written once, whole)."""
    rows = int(budget // max(1.0, bytes_per_pixel * width))
    rows = max(BLOCK, rows - rows % BLOCK)
    return min(height, rows)


def strips(height: int, rows: int) -> Iterator[tuple[int, int]]:
    """(first row, last row + 1) of consecutive strips of ``rows`` rows covering ``height``."""
    for r0 in range(0, height, rows):
        yield r0, min(height, r0 + rows)


def read_window(src: rasterio.io.DatasetReader, window=None, boundless: bool = False) -> np.ndarray:
    """Band 1 of an open raster (or its ``window``) as Float32 with NaN where it is nodata (and,
    ``boundless``, outside the raster)."""
    if boundless:
        data = src.read(1, window=window, boundless=True, fill_value=np.nan, masked=False)
    else:
        data = src.read(1, window=window)
    data = data.astype(np.float32)
    if src.nodata is not None and not np.isnan(src.nodata):
        data[data == np.float32(src.nodata)] = np.nan
    return data


def read_average(
    src: rasterio.io.DatasetReader, shape: tuple[int, int], band: int | list[int] = 1
) -> np.ndarray:
    """A band of an open raster (or several, ``band`` a list: an array of them, in one pass
    over a pixel-interleaved file) reduced to ``shape`` by GDAL's average of the valid pixels,
    as Float32 with NaN where a block holds no valid pixel.

    When the bands' validity is their nodata value (or every pixel is valid), GDAL's average
    already leaves the nodata pixels out and writes nodata where a block has none, so the
    values are read alone: a masked read would resample GDAL's mask band too, a second pass
    over the raster (a 10980 x 10980 band: 1.13-1.34 -> 0.94-1.02 s, the same values on
    every intermediate of the stack benchmark). A band with a mask of its own (an internal
    mask, alpha) is read masked."""
    from rasterio.enums import MaskFlags, Resampling

    bands = band if isinstance(band, list) else [band]
    out_shape = (len(bands), *shape) if isinstance(band, list) else shape
    if all(set(src.mask_flag_enums[b - 1]) <= {MaskFlags.nodata, MaskFlags.all_valid}
           for b in bands):  # fmt: skip
        data = src.read(band, out_shape=out_shape, resampling=Resampling.average)
        data = data.astype(np.float32)
        nodata = src.nodata
        if nodata is not None and not np.isnan(nodata):
            data[data == np.float32(nodata)] = np.nan
        return data
    masked = src.read(band, out_shape=out_shape, resampling=Resampling.average, masked=True)
    return np.ma.filled(masked.astype(np.float32), np.nan)


def require_colocated(
    step: str,
    first: str | Path,
    *others: str | Path,
    bands: tuple[int, ...] | None = None,
    off_grid_fix: str | None = None,
) -> Grid:
    """The grid of ``first`` once every raster is checked, from the headers alone: each has its
    number of bands (``bands``, one count per raster; default one band each) and every other
    raster is on ``first``'s grid (same CRS and size, transforms within :data:`SAME_GRID_PX`).

    The steps that compare or combine co-located rasters (tie points, flow, warp, band math,
    QC) call this before any work: a 3-band RGB would otherwise be read as its first band
    without a word, and a raster half a pixel off would be taken as co-located. Raises
    :class:`CostackError` naming the file, what differs and the fix (``off_grid_fix`` for a
    raster off the grid; default: co-locate it)."""
    from costack.errors import CostackError

    paths = (first, *others)
    need = bands or (1,) * len(paths)
    grids, gcps = [], []
    for path, n in zip(paths, need, strict=True):
        with rasterio.open(path) as src:
            count = src.count
            grids.append(Grid(src.crs, src.transform, src.width, src.height))
            gcps.append(bool(src.gcps[0]))
        if count != n and n == 1:
            raise CostackError(
                step, f"{path} has {count} bands; the step takes single-band rasters (one "
                "asset per file, as co-location writes them)",
                f"extract the band to use, e.g. rio stack {path} --bidx 1 BAND.tif",
            )  # fmt: skip
        if count != n:
            raise CostackError(step, f"{path} has {count} band(s), {n} expected",
                               f"give the {step} step's own input")  # fmt: skip
    a = grids[0]
    for path, b, by_gcps in zip(others, grids[1:], gcps[1:], strict=True):
        if why := grid_difference(a, b):
            fix = off_grid_fix or (
                "co-locate it with the workflow's colocate step, which takes its GCPs at pixel "
                "centres as Sentinel-1 GRD gives them (gcp_pixel_center; GDAL's warper alone "
                "would put it half a pixel off)" if by_gcps else
                f"co-locate it first, e.g. rio warp {path} ON_GRID.tif --like {first} "
                "--resampling cubic (the workflow's colocate step does this for STAC inputs)"
            )  # fmt: skip
            raise CostackError(step, f"{path} is not on the grid of {first} ({why})", fix)
    return a


#: the tag co-location writes on a raster warped as linear power from dB
DB_DOMAIN = "linear power (dB converted before and after)"


def costack_tags(path: str | Path) -> dict[str, str]:
    """A raster's ``costack_*`` tags (empty for a raster this project did not write)."""
    with rasterio.open(path) as src:
        return {k: v for k, v in src.tags().items() if k.startswith("costack_")}


def dataset_of(key: str | None) -> str | None:
    """The dataset index of an asset key (``3`` of ``3.s0_db_c_vv``), or None."""
    return key.partition(".")[0] if key and "." in key else None


def raster_nodata(path: str | Path) -> float:
    """A raster's nodata value from its header (NaN when it declares none), without reading
    its pixels."""
    with rasterio.open(path) as src:
        return np.nan if src.nodata is None else float(src.nodata)


def read_float32(path: str | Path, band: int | None = 1) -> tuple[np.ndarray, Grid, float]:
    """Read a raster as Float32 with NaN where it is nodata; return (array, grid, nodata)."""
    with rasterio.open(path) as src:
        data = src.read(band).astype(np.float32) if band else src.read().astype(np.float32)
        nodata = np.nan if src.nodata is None else float(src.nodata)
        grid = Grid(src.crs, src.transform, src.width, src.height)
    if not np.isnan(nodata):
        data[data == np.float32(nodata)] = np.nan
    return data, grid, nodata


def read_flow_and_truth(
    flow_tif: str | Path, truth_tif: str | Path
) -> tuple[np.ndarray, np.ndarray]:
    """A flow raster (dx, dy) and the window of a truth raster (dx, dy) that covers its grid,
    both (2, h, w) float32 (benchmarks and tests score one against the other)."""
    from rasterio.windows import from_bounds

    flow, grid, _ = read_float32(flow_tif, band=None)
    with rasterio.open(truth_tif) as t:
        win = from_bounds(*grid.bounds, transform=t.transform).round_offsets().round_lengths()
        truth = t.read(window=win).astype(np.float32)
    return flow, truth
