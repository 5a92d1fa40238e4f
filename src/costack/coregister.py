"""Co-registration: one dense flow per secondary dataset, applied to every asset of it.

As the service defines it, the flow is computed once per secondary dataset between the
reference asset and that dataset's matching asset (the asset with the reference's band name,
else the dataset's first listed asset, else the one the config names), and the same flow warps
every listed asset of the dataset. The reference dataset's assets are not moved.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import rasterio

from costack import _kernels as K
from costack.colocate import db_to_linear, linear_to_db
from costack.config import RunConfig
from costack.flow import FlowParams, estimate_flow, masked_blur, resolution_sigma
from costack.overlap import OVERLAP_MARGIN, overlap_window
from costack.rasterio_io import read_float32, write_float32

log = logging.getLogger(__name__)


def matching_asset(cfg: RunConfig, dataset: int, overrides: dict | None = None) -> str:
    """Key of the asset of ``dataset`` that the flow is computed on."""
    overrides = {int(k): v for k, v in (overrides or {}).items()}
    assets = cfg.assets_of(dataset)
    if dataset in overrides:
        key = f"{dataset}.{overrides[dataset]}"
        if key in {a.key for a in assets}:
            return key
    for a in assets:
        if a.band == cfg.reference.band:
            return a.key
    return assets[0].key


def decide_mode(
    requested: str, ref_tif: str | Path, sec_tif: str | Path, max_displacement: float = 16.0
) -> tuple[str, dict]:
    """The GeFolki-family mode for a co-located pair of rasters and the evidence for it.

    ``auto`` follows :func:`costack.flow.resolve_mode`: GEFolki when the assets' kinds differ
    (the ``costack_kind`` tags co-location writes; untagged rasters count as optical) or when
    their local contrast is inverted in a quarter of the windows, else EFolki. Both rasters are
    read reduced to at most 512 px (GDAL average of the valid pixels), so the tie-point, flow
    and QC steps, which each call this on the same pair, take the same decision cheaply at any
    raster size. Another mode is returned as asked."""
    import math

    from rasterio.enums import Resampling

    from costack.flow import resolve_mode

    def reduced(path: str | Path) -> tuple[np.ndarray, str, int]:
        with rasterio.open(path) as src:
            f = max(1, math.ceil(max(src.height, src.width) / 512))
            shape = (math.ceil(src.height / f), math.ceil(src.width / f))
            arr = src.read(1, out_shape=shape, resampling=Resampling.average, masked=True)
            kind = src.tags().get("costack_kind", "optical")
        return np.ma.filled(arr.astype(np.float32), np.nan), kind, f

    if requested != "auto":
        return requested, {"requested": requested, "reason": "as requested"}
    ref, ref_kind, f = reduced(ref_tif)
    sec, sec_kind, _ = reduced(sec_tif)
    if ref.shape != sec.shape:
        from costack.errors import CostackError

        raise CostackError(
            "flow", f"{sec_tif} is not on the grid of {ref_tif}", "co-locate both first"
        )
    mode, evidence = resolve_mode(requested, ref, sec, ref_kind, sec_kind, max_displacement / f)
    if "contrast" in evidence:
        rel = evidence["contrast"]
        rel["coarse_shift"] = [c * f for c in rel["coarse_shift"]]
        rel["read_reduced_by"] = f
    return mode, evidence


def matches_on_descriptors(
    requested: str, ref_tif: str | Path, sec_tif: str | Path, max_displacement: float = 16.0
) -> tuple[bool, dict]:
    """Whether the tie points and the QC match this pair on CFOG descriptors rather than on
    intensities: the pairs the flow runs in GEFolki mode and those whose contrast is inverted
    (:func:`decide_mode`); with the decision's evidence."""
    mode, why = decide_mode(requested, ref_tif, sec_tif, max_displacement)
    return mode == "gefolki" or bool(why.get("invert_secondary")), why


def run_flow(
    ref_tif: str | Path,
    sec_tif: str | Path,
    out_tif: str | Path,
    confidence_tif: str | Path | None = None,
    params: FlowParams | None = None,
    model: np.ndarray | None = None,
    stats_json: str | Path | None = None,
    resolution_ratio: float = 1.0,
    model_json: str | Path | None = None,
) -> dict:
    """Estimate the flow between two co-located rasters and write it (dx, dy bands, pixels).

    ``resolution_ratio``: native pixel size of the secondary over the grid's. When the
    secondary is much coarser (30 m on a 10 m grid), the reference is blurred to a similar
    resolution first (Gaussian, sigma = 0.5 sqrt(ratio^2 - 1) px), so that both images show
    the same detail; the flow is then less noisy (0.20 -> 0.15 px on the demo's 30 m pair).
    Windows are widened for coarse secondaries (see :func:`adapt_to_resolution`). The rank
    filter makes dB or linear scales irrelevant.
    """
    params = params or FlowParams()
    mode, mode_choice = decide_mode(params.mode, ref_tif, sec_tif, params.max_displacement)
    if mode != params.mode:
        log.info("flow %s: mode %s (%s)", sec_tif, mode, mode_choice["reason"])
    params = replace(params, mode=mode,
                     invert_secondary=bool(mode_choice.get("invert_secondary")))  # fmt: skip
    tp_model, seed_note = None, None
    if model_json is not None and Path(model_json).exists():
        tp_model = json.loads(Path(model_json).read_text(encoding="utf-8"))
        seed_note = seed_refusal(tp_model, params)
        if seed_note:
            log.warning("flow %s: tie-point model not used as the start (%s); the flow runs its "
                        "own global search", sec_tif, seed_note)  # fmt: skip
            tp_model = None
    with rasterio.open(ref_tif) as r:
        n_pixels = r.width * r.height
    if n_pixels > TILED_ABOVE:
        return _run_flow_tiled(
            ref_tif, sec_tif, out_tif, confidence_tif, params, stats_json, resolution_ratio,
            tp_model, model_json, seed_note, mode_choice,
        )  # fmt: skip
    ref, grid, ref_nd = read_float32(ref_tif)
    sec, grid2, sec_nd = read_float32(sec_tif)
    if grid2.shape != grid.shape or grid2.transform != grid.transform:
        from costack.errors import CostackError

        raise CostackError(
            "flow", f"{sec_tif} is not on the grid of {ref_tif}", "co-locate both first"
        )
    t0 = time.perf_counter()
    blur = reference_blur(params, resolution_ratio)
    if blur:
        ref = _blur_valid(ref, blur)
    params = adapt_to_resolution(params, resolution_ratio)
    init = None
    if tp_model is not None:
        from costack.tiepoints import model_init

        init = model_init(tp_model, ref.shape)
    if init is not None:
        params = replace(params, global_search=False)
    # work on the valid overlap only: an AOI that overhangs the data leaves most of the grid
    # empty, and the global search and pyramid then answer to the empty part (demo SAR with
    # an overhanging AOI: 7.8 px from the truth on the full grid, 0.48 px on the overlap)
    window = overlap_window(ref, sec, OVERLAP_MARGIN)
    full_shape = ref.shape
    if window is not None:
        ref, sec = ref[window], sec[window]
        if init is not None:
            init = (init[0][window], init[1][window])
    res, start = _estimate_with_start(ref, sec, params, model, init)
    if window is not None:
        res = _embed(res, window, full_shape)
    seconds = time.perf_counter() - t0
    write_float32(
        out_tif,
        np.stack([res.dx, res.dy]),
        grid,
        tags={"costack_flow_mode": params.mode, "costack_flow_units": "grid pixels"},
        band_descriptions=["dx (columns)", "dy (rows)"],
    )
    if confidence_tif:
        write_float32(confidence_tif, res.confidence, grid, band_descriptions=["confidence"])
    valid = np.isfinite(res.dx)
    stats = {
        "mode": params.mode,
        "mode_choice": mode_choice,
        "params": params.to_dict(),
        "seconds": round(seconds, 3),
        "levels": res.stats.get("levels"),
        "reference_blur_sigma": round(blur, 3),
        "global_shift": [float(x) for x in res.stats.get("global_shift_coarse", (0, 0))],
        "valid_fraction": float(valid.mean()),
        "mean_dx": float(np.nanmean(res.dx)) if valid.any() else None,
        "mean_dy": float(np.nanmean(res.dy)) if valid.any() else None,
        "mean_confidence": float(res.confidence[valid].mean()) if valid.any() else None,
        "model": None if model is None else np.asarray(model).tolist(),
        "tiepoint_model": str(model_json) if init is not None else None,
        "tiepoint_model_refused": seed_note,
        "diverged_fraction": res.stats.get("diverged_fraction"),
        "overlap_window": None if window is None else [
            window[0].start, window[0].stop, window[1].start, window[1].stop],
        "start": start,
    }  # fmt: skip
    log.info("flow %s -> %s: %s", sec_tif, out_tif, stats)
    if stats_json:
        Path(stats_json).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats


def _embed(res, window: tuple[slice, slice], shape: tuple[int, int]):
    """A flow result computed on ``window`` placed on the full grid (unknown outside)."""

    def full(a: np.ndarray, fill: float) -> np.ndarray:
        out = np.full(shape, fill, dtype=np.float32)
        out[window] = a
        return out

    return replace(res, dx=full(res.dx, np.nan), dy=full(res.dy, np.nan),
                   confidence=full(res.confidence, 0.0))  # fmt: skip


def _estimate_with_start(ref, sec, params: FlowParams, model, init):
    """:func:`estimate_flow`, and for SAR against optical (GEFolki, no tie-point seed) a
    second start from the CFOG global shift (:func:`costack.tiepoints.multimodal_prior`),
    keeping the result whose co-registered secondary has the higher CFOG similarity to the
    reference. The flow's own global search correlates CLAHE/rank images, which can lock on a
    wrong peak over small SAR/optical overlaps (1.65 px from the truth over the demo's
    overhanging-AOI overlap, 0.48 px from the CFOG start); on the whole demo both agree
    (0.457 and 0.490 px) and the similarity keeps the first.

    Returns (result, what the start was and the scores that chose it)."""
    res = estimate_flow(ref, sec, params, model=model, init=init)
    if params.mode != "gefolki" or init is not None or model is not None:
        return res, {"kind": "tie-point model" if init is not None else "global search"}
    from costack.tiepoints import multimodal_prior, multimodal_similarity

    dx0, dy0 = multimodal_prior(ref, sec, params.max_displacement)
    alt_init = (np.full(ref.shape, dx0, np.float32), np.full(ref.shape, dy0, np.float32))
    alt = estimate_flow(ref, sec, replace(params, global_search=False), init=alt_init)
    own = multimodal_similarity(ref, warp_array(sec, res.dx, res.dy))
    other = multimodal_similarity(ref, warp_array(sec, alt.dx, alt.dy))
    start = {
        "kind": "global search",
        "cfog_similarity": {"global search": round(own, 5), "cfog prior": round(other, 5)},
        "cfog_prior": [round(dx0, 3), round(dy0, 3)],
    }
    if np.isfinite(other) and not other <= own:
        start["kind"] = "cfog prior"
        return alt, start
    return res, start


def seed_refusal(model: dict, params: FlowParams) -> str | None:
    """Why a tie-point model (``*.model.json``) is too weak to seed the flow, or None."""
    chosen = model.get("chosen")
    if chosen in (None, "none"):
        return "no model"
    fit = model.get("models", {}).get(chosen, {})
    n, rmse = int(fit.get("n", 0)), float(fit.get("rmse", np.inf))
    if n < params.seed_min_points:
        return f"{n} tie points, fewer than seed_min_points = {params.seed_min_points}"
    if not rmse <= params.seed_max_rmse:
        return f"fit RMSE {rmse:.2f} px above seed_max_rmse = {params.seed_max_rmse:.2f}"
    return None


#: Grids larger than this (pixels) are processed in tiles (bounded memory).
TILED_ABOVE = 16_000_000


def _run_flow_tiled(
    ref_tif, sec_tif, out_tif, confidence_tif, params, stats_json, ratio, tp_model=None,
    model_json=None, seed_note=None, mode_choice=None,
):  # fmt: skip
    """:func:`run_flow` for scene-sized grids (see :mod:`costack.tiled`); an accepted
    tie-point model ``tp_model`` seeds the coarse pass."""
    from costack.tiled import flow_tiled

    blur = reference_blur(params, ratio)
    ref_filter = (lambda a: _blur_valid(a, blur)) if blur else None
    params = adapt_to_resolution(params, ratio)
    conf = confidence_tif or str(Path(out_tif).with_suffix("")) + ".confidence.tif"
    tiled = flow_tiled(ref_tif, sec_tif, out_tif, conf, params, ref_filter=ref_filter,
                       seed_model=tp_model)  # fmt: skip
    stats = {"mode": params.mode, "mode_choice": mode_choice, "params": params.to_dict(),
             "seconds": tiled["seconds"],
             "tiled": tiled, "reference_blur_sigma": round(blur, 3),
             "tiepoint_model": str(model_json) if tp_model is not None else None,
             "tiepoint_model_refused": seed_note}  # fmt: skip
    if stats_json:
        Path(stats_json).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats


def reference_blur(params: FlowParams, ratio: float) -> float:
    """Gaussian sigma (grid px) bringing the reference to a coarse secondary's resolution:
    0.5 sqrt(ratio^2 - 1) when the secondary is over 1.5x coarser (not in GEFolki mode)."""
    return resolution_sigma(ratio) if params.mode != "gefolki" else 0.0


def adapt_to_resolution(params: FlowParams, ratio: float) -> FlowParams:
    """Widen the windows for a secondary coarser than the grid (native pixel / grid pixel).

    A window must hold enough of the secondary's own detail: radii are scaled by the square of
    the ratio (at most 4x), EFolki's rank radius by the ratio (at most 2x). The default radii
    (16, 8) are the best of (32, 16), (24, 12), (16, 8) on full-resolution pairs (UAVSAR
    orthophoto and LIDAR under a known field: 0.031 and 0.030 px against 0.041 and 0.034 with
    (32, 16); the real radar/optical pair: 0.90 against 1.03 px), and on the demo's 30 m and
    20 m secondaries (ratio 3 and 2.05) the widened (64, 32) is the best of those tried: mean
    EPE 0.081 px optical and 0.455 px SAR, against 0.151 and 0.555 with (32, 16) and 0.103
    and 0.467 with (48, 24).
    """

    if ratio <= 1.0:
        return params
    scale = float(np.clip(ratio, 1.0, 2.0))
    widen = float(np.clip(ratio * ratio, 1.0, 4.0))
    radii = tuple(int(round(r * widen)) for r in params.radii)
    rank = (
        params.rank_radius if params.mode == "gefolki" else int(round(params.rank_radius * scale))
    )
    return replace(params, radii=radii, rank_radius=rank)


def _blur_valid(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of the valid pixels (normalised convolution); nodata stays NaN."""
    valid = np.isfinite(img)
    return np.where(valid, masked_blur(img, valid, sigma), np.nan).astype(np.float32)


def warp_array(
    data: np.ndarray, dx: np.ndarray, dy: np.ndarray, resampling: str = "bilinear"
) -> np.ndarray:
    """Sample ``data`` at (col + dx, row + dy); NaN where the flow is unknown, the sample falls
    outside the raster or touches nodata (never replicated edges)."""
    valid = np.isfinite(data)
    src = np.where(valid, data, 0).astype(np.float32)
    known = np.isfinite(dx) & np.isfinite(dy)
    u = np.where(known, dx, 0).astype(np.float32)
    v = np.where(known, dy, 0).astype(np.float32)
    if resampling == "nearest":
        u = np.round(u + 0.0)
        v = np.round(v + 0.0)
    out, ok = K.warp_bilinear(src, valid.astype(np.uint8), u, v)
    return np.where((ok > 0) & known, out, np.nan).astype(np.float32)


def run_warp(
    sec_tif: str | Path,
    flow_tif: str | Path,
    out_tif: str | Path,
    resampling: str = "bilinear",
    db: bool = False,
) -> None:
    """Warp a colocated asset with a flow (dB data warped as linear power)."""
    with rasterio.open(sec_tif) as r:
        n_pixels = r.width * r.height
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
    flow, fgrid, _ = read_float32(flow_tif, band=None)
    if fgrid.shape != grid.shape:
        from costack.errors import CostackError

        raise CostackError("warp", f"{flow_tif} is not on the grid of {sec_tif}", "use its flow")
    if db:
        data = db_to_linear(data)
    out = warp_array(data, flow[0], flow[1], resampling)
    if db:
        out = linear_to_db(out)
    write_float32(out_tif, out, grid, nodata, tags={"costack_flow": str(flow_tif)})


def flow_metrics(flow_tif: str | Path, truth_tif: str | Path, margin: int = 8) -> dict:
    """EPE statistics of a flow against a truth raster covering the grid (pixels)."""
    import rasterio
    from rasterio.windows import from_bounds

    flow, grid, _ = read_float32(flow_tif, band=None)
    with rasterio.open(truth_tif) as t:
        win = from_bounds(*grid.bounds, transform=t.transform).round_offsets().round_lengths()
        truth = t.read(window=win).astype(np.float32)
    err = np.hypot(flow[0] - truth[0], flow[1] - truth[1])
    m = np.zeros(err.shape, bool)
    m[margin:-margin, margin:-margin] = True
    e = err[m & np.isfinite(err)]
    return {
        "mean_epe": float(e.mean()),
        "median_epe": float(np.median(e)),
        "p90_epe": float(np.percentile(e, 90)),
        "n": int(e.size),
    }
