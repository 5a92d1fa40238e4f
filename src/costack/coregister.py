"""The co-registration stage: each asset warped by its dataset's dense flow.

As the service defines it, the flow (:mod:`costack.flow`) is computed once per secondary
dataset between the reference asset and that dataset's matching asset, and the same flow warps
every listed asset of the dataset (:func:`run_warp`, rule ``coregister_asset``, ``costack
warp``). The reference dataset's assets are not moved (:func:`run_coregister_identity`,
``costack coregister``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from costack.errors import CostackError
from costack.imaging import db_to_linear, linear_to_db, warp_array
from costack.limits import TILED_ABOVE
from costack.rasterio_io import atomic_path, read_float32, require_colocated, write_float32

log = logging.getLogger(__name__)


def run_warp(
    sec_tif: str | Path,
    flow_tif: str | Path,
    out_tif: str | Path,
    resampling: str = "bilinear",
    db: bool = False,
) -> None:
    """Warp a colocated asset with a flow (dB data warped as linear power)."""
    with rasterio.open(flow_tif) as f:
        if f.count != 2:
            raise CostackError(
                "warp", f"{flow_tif} is not a flow (it has {f.count} band(s), a flow has 2: "
                "dx, dy)", "give the flow step's results/flow/N.tif",
            )  # fmt: skip
    fix = "give the flow estimated on this raster's grid"
    grid = require_colocated("warp", sec_tif, flow_tif, bands=(1, 2), off_grid_fix=fix)
    n_pixels = grid.width * grid.height
    if n_pixels > TILED_ABOVE:
        from costack.tiled import warp_tiled

        def fn(data: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
            if db:
                data = db_to_linear(data)
            out = warp_array(data, dx, dy, resampling)
            return linear_to_db(out) if db else out

        warp_tiled(sec_tif, flow_tif, out_tif, fn)
        return
    data, grid, nodata = read_float32(sec_tif)
    flow, _, _ = read_float32(flow_tif, band=None)
    if db:
        data = db_to_linear(data)
    out = warp_array(data, flow[0], flow[1], resampling)
    if db:
        out = linear_to_db(out)
    write_float32(out_tif, out, grid, nodata, tags={"costack_flow": str(flow_tif)})


def run_coregister_identity(colocated: str | Path, out_tif: str | Path) -> None:
    """The reference dataset's assets, which are not moved: a copy of the co-located raster
    (secondary datasets are warped by :func:`run_warp`). The copy must be a raster: anything
    else is refused with one line."""
    try:
        with rasterio.open(colocated):
            pass
    except RasterioIOError as err:
        raise CostackError(
            "coregister",
            f"{colocated} is not a readable raster ({' '.join(str(err).split())[:160]})",
            "give the co-located GeoTIFF (results/colocated/KEY.tif)",
        ) from err  # fmt: skip
    with atomic_path(out_tif) as tmp:
        shutil.copyfile(colocated, tmp)
