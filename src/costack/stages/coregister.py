"""The co-registration stage: each asset warped by its dataset's dense flow.

As the service defines it, the flow (:mod:`costack.stages.flow`) is computed once per secondary
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
from costack.io.rasters import (
    DB_DOMAIN,
    atomic_raster,
    costack_tags,
    dataset_of,
    read_float32,
    require_colocated,
    write_float32,
)
from costack.limits import TILED_ABOVE
from costack.registration.imaging import db_to_linear, linear_to_db, warp_array

log = logging.getLogger(__name__)


def run_warp(
    sec_tif: str | Path,
    flow_tif: str | Path,
    out_tif: str | Path,
    resampling: str = "bilinear",
    db: bool | None = None,
) -> None:
    """Warp a colocated asset with a flow (dB data warped as linear power).

    ``db`` None takes it from co-location's tag (``costack_resampling_domain``), so that
    ``costack warp`` without ``--db`` does what the rule does; a raster without costack's tags
    is taken as linear. Refused, in one line and before any work: ``db`` contradicting the
    tag, and a flow whose tags say it was estimated on another dataset's asset (the flow of
    dataset 2 applied to an asset of dataset 3)."""
    with rasterio.open(flow_tif) as f:
        if f.count != 2:
            raise CostackError(
                "warp", f"{flow_tif} is not a flow (it has {f.count} band(s), a flow has 2: "
                "dx, dy)", "give the flow step's results/flow/N.tif",
            )  # fmt: skip
    fix = "give the flow estimated on this raster's grid"
    grid = require_colocated("warp", sec_tif, flow_tif, bands=(1, 2), off_grid_fix=fix)
    sec_tags, flow_tags = costack_tags(sec_tif), costack_tags(flow_tif)
    db = _warp_in_db(sec_tif, sec_tags, db)
    key = sec_tags.get("costack_key")
    flow_key = flow_tags.get("costack_flow_secondary")
    if dataset_of(key) and dataset_of(flow_key) and dataset_of(key) != dataset_of(flow_key):
        raise CostackError(
            "warp", f"{flow_tif} is dataset {dataset_of(flow_key)}'s flow (estimated on "
            f"{flow_key}); {sec_tif} is asset {key} of dataset {dataset_of(key)}",
            f"give dataset {dataset_of(key)}'s flow (results/flow/{dataset_of(key)}.tif)",
        )  # fmt: skip
    tags = {"costack_flow": str(flow_tif), **({"costack_key": key} if key else {})}
    if db:  # still dB, warped as linear power: as co-location says it (a second warp reads it)
        tags["costack_resampling_domain"] = DB_DOMAIN
    n_pixels = grid.width * grid.height
    if n_pixels > TILED_ABOVE:
        from costack.stages._tiled import warp_tiled

        def fn(data: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
            if db:
                data = db_to_linear(data)
            out = warp_array(data, dx, dy, resampling)
            return linear_to_db(out) if db else out

        warp_tiled(sec_tif, flow_tif, out_tif, fn, tags=tags)
        return
    data, grid, nodata = read_float32(sec_tif)
    flow, _, _ = read_float32(flow_tif, band=None)
    if db:
        data = db_to_linear(data)
    out = warp_array(data, flow[0], flow[1], resampling)
    if db:
        out = linear_to_db(out)
    write_float32(out_tif, out, grid, nodata, tags=tags)


def _warp_in_db(sec_tif: str | Path, tags: dict[str, str], db: bool | None) -> bool:
    """Whether to warp ``sec_tif`` as linear power from dB: ``db`` as given, else from its
    co-location tag; a given ``db`` that co-location's tags contradict is refused."""
    if "costack_key" not in tags:  # not co-located by costack: as the caller says
        return bool(db)
    tagged = tags.get("costack_resampling_domain") == DB_DOMAIN
    if db is not None and bool(db) != tagged:
        said = "in dB" if tagged else "not in dB (co-located as linear values)"
        raise CostackError(
            "--db", f"{sec_tif} is {said}, but the warp was asked {'with' if db else 'without'} "
            "--db", "leave --db out: co-location's tag decides",
        )  # fmt: skip
    return tagged


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
    with atomic_raster(out_tif) as tmp:
        shutil.copyfile(colocated, tmp)
