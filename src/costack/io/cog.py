"""Cloud Optimized GeoTIFFs through GDAL's COG driver, checked with rio-cogeo's validator."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import rasterio
import rasterio.shutil
from rio_cogeo.cogeo import cog_validate

from costack.io.files import no_space_error
from costack.io.rasters import atomic_raster

#: DEFLATE, which every GeoTIFF reader decodes (ZSTD would be faster still, but older readers
#: lack it), at level 1: libdeflate's level 6 took 1.6x as long on a 10980 x 10980 tile (flow
#: displacement 22.1 -> 13.2 s, a Float32 band 10.5 -> 7.1 s) for files 0.7-2 % smaller
COG_OPTIONS = {
    "COMPRESS": "DEFLATE",
    "LEVEL": "1",
    "PREDICTOR": "YES",
    "BLOCKSIZE": "256",
    "OVERVIEWS": "AUTO",
    "OVERVIEW_RESAMPLING": "AVERAGE",
    "BIGTIFF": "IF_SAFER",
}
#: the codecs a run may publish (config ``cog_compression``): DEFLATE by default; ZSTD at level
#: 1 without a predictor for readers that have it (GDAL 2.3 and later, so QGIS 3 and rasterio):
#: on a 10980 x 10980 tile's flow confidence 8.1 -> 3.1 s of CPU, the file 490 -> 573 MB
#: (bench/RESULTS-stack.txt section 0t)
CODECS = {
    "deflate": {},
    "zstd": {"COMPRESS": "ZSTD", "LEVEL": "1", "PREDICTOR": "NO"},
}


@contextlib.contextmanager
def _stderr_of_libtiff() -> Iterator:
    """Capture what is written to file descriptor 2 in the block (and write it out after):
    writing a COG, libtiff reports a full disk ("_tiffWriteProc: No space left on device")
    straight to stderr, and GDAL then raises only "TIFFAppendToStrip: Seek error". Yields a
    function returning the text captured so far. The copy is in memory (memfd): the disk may be
    the full one."""
    if not hasattr(os, "memfd_create"):
        yield lambda: ""
        return
    sys.stderr.flush()
    saved, buf = os.dup(2), os.memfd_create("costack-stderr")
    os.dup2(buf, 2)

    def said() -> str:
        os.lseek(buf, 0, os.SEEK_SET)
        return os.read(buf, 1 << 20).decode("utf-8", "replace")

    try:
        yield said
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        text = said()
        os.close(buf)
        if text:
            sys.stderr.write(text)
            sys.stderr.flush()


def write_cog(
    src_path: str | Path,
    dst_path: str | Path,
    resampling: str = "average",
    threads: int = 1,
    compression: str = "deflate",
) -> None:
    """Copy a GeoTIFF to a COG (tiles, overviews, ``compression`` of :data:`CODECS`), keeping
    nodata and tags.

    Overviews use ``resampling`` (``average`` for continuous data, ``nearest`` for masks).
    ``threads`` > 1: GDAL compresses the tiles on so many threads (the same bytes; a 4096 x
    4096 flow: 19 -> 10 s wall on two).
    """
    if compression not in CODECS:
        raise ValueError(f"compression must be one of {', '.join(CODECS)}, not {compression!r}")
    options = dict(COG_OPTIONS, **CODECS[compression], OVERVIEW_RESAMPLING=resampling.upper())
    if threads > 1:
        options["NUM_THREADS"] = str(threads)
    with atomic_raster(dst_path) as tmp:
        with rasterio.open(src_path) as src, _stderr_of_libtiff() as said:
            try:
                rasterio.shutil.copy(src, tmp, driver="COG", **options)
            except Exception as err:
                if "no space left" in said().lower():
                    raise no_space_error(Path(dst_path).parent) from err
                raise
        valid, errors, _ = cog_validate(tmp, strict=False, quiet=True)
        if not valid:
            raise RuntimeError(f"GDAL wrote an invalid COG for {src_path}: {errors}")


def is_valid_cog(path: str | Path) -> bool:
    """True if ``path`` passes rio-cogeo's COG validation."""
    valid, _, _ = cog_validate(str(path), strict=False, quiet=True)
    return bool(valid)
