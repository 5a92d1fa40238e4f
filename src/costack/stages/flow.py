"""The flow stage (rule ``estimate_flow``, ``costack flow``): one dense displacement per
secondary dataset, between the reference asset and that dataset's matching asset.

The file-level entry point is :func:`run_flow`: it decides the GeFolki-family mode from the
rasters (:func:`costack.stages._common.decide_mode`), seeds the flow from the tie-point model when
it is strong enough, blurs the reference to a coarser secondary's resolution and widens the
windows for it, works on the valid overlap, and writes the dx, dy bands, the confidence and
the statistics JSON. Scene-sized grids go by tiles (:mod:`costack.stages._tiled`). The algorithm
itself, written from Plyer et al. 2015 and Brigot et al. 2016, is
:mod:`costack.registration.folki`, whose
public face this module re-exports.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from costack.io.files import write_json
from costack.io.masks import Exclusions, rule_exclusions
from costack.io.rasters import costack_tags, read_float32, require_colocated, write_float32
from costack.limits import TILED_ABOVE
from costack.registration.change import (
    SUPPORT_MEANING,
    apply_exclusions,
    change_stats,
    hold_result,
    support_on_grid,
)
from costack.registration.folki import FlowParams, FlowResult, estimate_flow, resolve_mode
from costack.registration.imaging import blur_valid, on_two_threads, resolution_sigma, warp_array
from costack.registration.matching import (
    cfog_of,
    multimodal_prior,
    multimodal_similarity,
)
from costack.registration.overlap import OVERLAP_MARGIN, overlap_window
from costack.stages._common import better_by_similarity, decide_mode, decide_ratio, read_model

__all__ = ["FlowParams", "FlowResult", "adapt_to_resolution", "estimate_flow",
           "reference_blur", "resolve_mode", "rule_exclusions", "run_flow"]  # fmt: skip

log = logging.getLogger(__name__)


def run_flow(
    ref_tif: str | Path,
    sec_tif: str | Path,
    out_tif: str | Path,
    confidence_tif: str | Path | None = None,
    params: FlowParams | None = None,
    stats_json: str | Path | None = None,
    resolution_ratio: float | None = None,
    model_json: str | Path | None = None,
    masks: Exclusions | None = None,
    support_tif: str | Path | None = None,
    hold_changes: bool = True,
    radar_aux: list[str | Path] | tuple[str | Path, ...] = (),
) -> dict:
    """Estimate the flow between two co-located rasters and write it (dx, dy bands, pixels).

    ``masks``: pixels of either image that take no part in the flow's data term (item quality
    masks, a user's mask or polygons; :class:`costack.io.masks.Exclusions`). ``hold_changes``:
    where the data does not support a match (masked, changed, inconsistent), the displacement
    comes from the stable surroundings (:mod:`costack.registration.change`); ``support_tif``
    then receives where it did (1 the data's own match, 0 the surroundings).

    ``resolution_ratio``: native pixel size of the secondary over the grid's (None: its
    ``costack_resolution_ratio`` tag, else read from its pixels,
    :func:`costack.stages._common.decide_ratio`; the evidence in the statistics). When the
    secondary is much coarser (30 m on a 10 m grid), the reference is blurred to a similar
    resolution first (Gaussian, sigma = 0.5 sqrt(ratio^2 - 1) px), so that both images show
    the same detail; the flow is then less noisy (0.20 -> 0.15 px on the demo's 30 m pair).
    Windows are widened for coarse secondaries (see :func:`adapt_to_resolution`). The rank
    filter makes dB or linear scales irrelevant.

    ``model_json``: the tie-point step's model
    (:class:`costack.registration.tiepoint_model.TiePointModel`);
    when it is strong enough (``seed_min_points``, ``seed_max_rmse``) the flow starts from its
    displacement field instead of its own global search, as the rule ``estimate_flow`` does.
    ``radar_aux``: the secondary's other polarisations, co-located like it (the rule passes
    the SAR dataset's other backscatter assets, VH beside VV): in the structure mode, with the
    secondary as the radar side, their edge strengths are averaged with the secondary's
    (:func:`costack.registration.modality.structure_images`); else they are not used (the
    statistics say which).

    The ``costack flow`` subcommand calls this with the same defaults.
    """
    params = params or FlowParams()
    grid = require_colocated("flow", ref_tif, sec_tif, *radar_aux)
    # before any work: a model of another pair would seed the flow, unseen, from its field
    tp_model = read_model(model_json) if model_json is not None else None
    if tp_model is not None:
        tp_model.require_pair(grid, sec_tif)
    resolution_ratio, ratio_choice = decide_ratio(resolution_ratio, sec_tif)
    if ratio_choice["from"] == "pixels":
        log.info("flow %s: resolution ratio %s (from the pixels: %s)", sec_tif,
                 resolution_ratio, ratio_choice["reason"])  # fmt: skip
    mode, mode_choice = decide_mode(params.mode, ref_tif, sec_tif, params.max_displacement)
    asked = params
    if mode != params.mode:
        log.info("flow %s: mode %s (%s)", sec_tif, mode, mode_choice["reason"])
    params = replace(params, mode=mode, radar=mode_choice.get("radar", params.radar),
                     invert_secondary=bool(mode_choice.get("invert_secondary")))  # fmt: skip
    params = replace(params, radii=params.window_radii())
    aux_used = bool(radar_aux) and params.mode == "structure" and params.radar == "secondary"
    aux_choice = {"rasters": [str(p) for p in radar_aux], "used": aux_used}
    if radar_aux and not aux_used:
        aux_choice["reason"] = "used in the structure mode with the secondary as the radar only"
    aux_tifs = list(radar_aux) if aux_used else []
    excluded = masks.read(grid) if masks is not None else (None, None)  # one-line errors first
    seed_note = None
    if tp_model is not None:
        seed_note = tp_model.seed_refusal(params.seed_min_points, params.seed_max_rmse)
        if seed_note:
            log.warning("flow %s: tie-point model not used as the start (%s); the flow runs its "
                        "own global search", sec_tif, seed_note)  # fmt: skip
            tp_model = None
    if grid.width * grid.height > TILED_ABOVE:
        return _run_flow_tiled(
            ref_tif, sec_tif, out_tif, confidence_tif, params, stats_json, resolution_ratio,
            tp_model, model_json, seed_note, mode_choice, support_tif, hold_changes, masks,
            ratio_choice, aux_tifs, aux_choice,
        )  # fmt: skip
    ref, grid, ref_nd = read_float32(ref_tif)
    sec, _, sec_nd = read_float32(sec_tif)
    t0 = time.perf_counter()
    blur = reference_blur(params, resolution_ratio)
    if blur:
        ref = blur_valid(ref, blur)
    params = adapt_to_resolution(params, resolution_ratio)
    init = None if tp_model is None else tp_model.displacement(ref.shape)
    if init is not None:
        params = replace(params, global_search=False)
    # work on the valid overlap only: an AOI that overhangs the data leaves most of the grid
    # empty, and the global search and pyramid then answer to the empty part (demo SAR with
    # an overhanging AOI: 7.8 px from the truth on the full grid, 0.48 px on the overlap)
    window = overlap_window(ref, sec, OVERLAP_MARGIN)
    full_shape = ref.shape
    if window is not None:
        ref, sec = ref[window], sec[window]
        excluded = tuple(None if m is None else m[window] for m in excluded)
        if init is not None:
            init = (init[0][window], init[1][window])
    aux = []
    for path in aux_tifs:
        a = read_float32(path)[0]
        a = a[window] if window is not None else a
        if excluded[1] is not None:  # the secondary's quality mask holds for its polarisations
            a = np.where(excluded[1], np.float32(np.nan), a)
        aux.append(a)
    ref, sec, overlap = apply_exclusions(ref, sec, *excluded)
    res, start = _estimate_with_start(ref, sec, params, init, aux or None)
    if mode_choice.get("verify_with"):  # untagged, multimodal, no side read as radar
        res, params, start = _verified(ref, sec, res, params, start, asked, mode_choice, init,
                                       resolution_ratio)  # fmt: skip
    # the flow's own known share (before any hold fills its unknown pixels): the verdict's
    # min_flow_valid judges the data's own match
    own_known = int(np.isfinite(res.dx).sum())
    res, held = hold_result(res, ref, sec, overlap) if hold_changes else (res, None)
    if window is not None:
        res = _embed(res, window, full_shape)
    seconds = time.perf_counter() - t0
    tags = flow_tags(params.mode, ref_tif, sec_tif)
    flow_out = (out_tif, np.stack([res.dx, res.dy]), grid, tags, ["dx (columns)", "dy (rows)"])
    if confidence_tif:
        # the two GeoTIFFs are compressed and written on two threads (GDAL releases the GIL):
        # 0.22 -> 0.12 s at 2000x2000, the same bytes
        conf_out = (confidence_tif, res.confidence, grid, None, ["confidence"])
        try:
            on_two_threads(_write_flow_file, (*flow_out,), (*conf_out,))
        except BaseException:
            for path in (out_tif, confidence_tif):  # one written without the other: neither
                Path(path).unlink(missing_ok=True)
            raise
    else:
        _write_flow_file(*flow_out)
    if support_tif:
        support = support_on_grid(held, window, full_shape)
        pair = {k: v for k, v in tags.items()
                if k in ("costack_flow_reference", "costack_flow_secondary")}  # fmt: skip
        try:
            write_float32(support_tif, support, grid,
                          tags={"costack_support": SUPPORT_MEANING, **pair},
                          band_descriptions=["support"])  # fmt: skip
        except BaseException:
            for path in (out_tif, confidence_tif):  # the flow without its evidence: neither
                if path:
                    Path(path).unlink(missing_ok=True)
            raise
    valid = np.isfinite(res.dx)
    stats = {
        "mode": params.mode,
        "mode_choice": mode_choice,
        "resolution_ratio": ratio_choice,
        "radar_aux": aux_choice,
        "params": res.params.to_dict(),  # as run: radii capped to the image
        "seconds": round(seconds, 3),
        "levels": res.stats.get("levels"),
        "reference_blur_sigma": round(blur, 3),
        "global_shift": [float(x) for x in res.stats.get("global_shift_coarse", (0, 0))],
        "valid_fraction": own_known / valid.size,
        "mean_dx": float(np.nanmean(res.dx)) if valid.any() else None,
        "mean_dy": float(np.nanmean(res.dy)) if valid.any() else None,
        "mean_confidence": float(res.confidence[valid].mean()) if valid.any() else None,
        "tiepoint_model": str(model_json) if init is not None else None,
        "tiepoint_model_refused": seed_note,
        "diverged_fraction": res.stats.get("diverged_fraction"),
        "overlap_window": None if window is None else [
            window[0].start, window[0].stop, window[1].start, window[1].stop],
        "start": start,
        "change": change_stats(held, excluded, hold_changes),
    }  # fmt: skip
    log.info("flow %s -> %s: %s", sec_tif, out_tif, stats)
    if stats_json:
        write_json(stats_json, stats)
    return stats


def flow_tags(mode: str, ref_tif: str | Path, sec_tif: str | Path) -> dict[str, str]:
    """The flow's GeoTIFF tags: mode, units and the asset keys of the pair it was estimated on
    (from co-location's tags, when the rasters carry them), which ``costack warp`` checks."""
    tags = {"costack_flow_mode": mode, "costack_flow_units": "grid pixels"}
    for name, path in (("reference", ref_tif), ("secondary", sec_tif)):
        key = costack_tags(path).get("costack_key")
        if key:
            tags[f"costack_flow_{name}"] = key
    return tags


def _write_flow_file(path, data, grid, tags, descriptions) -> None:
    """:func:`costack.io.rasters.write_float32` with positional tags and band descriptions."""
    write_float32(path, data, grid, tags=tags, band_descriptions=descriptions)


def _embed(res, window: tuple[slice, slice], shape: tuple[int, int]):
    """A flow result computed on ``window`` placed on the full grid (unknown outside)."""

    def full(a: np.ndarray, fill: float) -> np.ndarray:
        out = np.full(shape, fill, dtype=np.float32)
        out[window] = a
        return out

    return replace(res, dx=full(res.dx, np.nan), dy=full(res.dy, np.nan),
                   confidence=full(res.confidence, 0.0))  # fmt: skip


def _estimate_with_start(ref, sec, params: FlowParams, init, radar_aux=None):
    """:func:`estimate_flow`, and for SAR against optical (GEFolki, no tie-point seed) a
    second start from the CFOG global shift
    (:func:`costack.registration.matching.multimodal_prior`),
    keeping the result whose co-registered secondary has the higher CFOG similarity to the
    reference. The flow's own global search correlates CLAHE/rank images, which can lock on a
    wrong peak over small SAR/optical overlaps (1.65 px from the truth over the demo's
    overhanging-AOI overlap, 0.48 px from the CFOG start); on the whole demo both agree
    (0.457 and 0.490 px) and the similarity keeps the first.

    ``radar_aux``: the secondary's other polarisations (:func:`estimate_flow`).

    Returns (result, what the start was and the scores that chose it)."""
    res = estimate_flow(ref, sec, params, init=init, radar_aux=radar_aux)
    if params.mode != "gefolki" or init is not None:
        return res, {"kind": "tie-point model" if init is not None else "global search"}
    ref_desc = cfog_of(ref)  # the reference's descriptors serve all three comparisons
    dx0, dy0 = multimodal_prior(ref, sec, params.max_displacement, ref_desc)
    alt_init = (np.full(ref.shape, dx0, np.float32), np.full(ref.shape, dy0, np.float32))
    alt = estimate_flow(ref, sec, replace(params, global_search=False), init=alt_init,
                        radar_aux=radar_aux)  # fmt: skip
    own = multimodal_similarity(ref, warp_array(sec, res.dx, res.dy), ref_desc)
    other = multimodal_similarity(ref, warp_array(sec, alt.dx, alt.dy), ref_desc)
    start = {
        "kind": "global search",
        "cfog_similarity": {"global search": round(own, 5), "cfog prior": round(other, 5)},
        "cfog_prior": [round(dx0, 3), round(dy0, 3)],
    }
    if np.isfinite(other) and not other <= own:
        start["kind"] = "cfog prior"
        return alt, start
    return res, start


def _run_flow_tiled(
    ref_tif, sec_tif, out_tif, confidence_tif, params, stats_json, ratio, tp_model=None,
    model_json=None, seed_note=None, mode_choice=None, support_tif=None, hold_changes=False,
    masks=None, ratio_choice=None, aux_tifs=(), aux_choice=None,
):  # fmt: skip
    """:func:`run_flow` for scene-sized grids (see :mod:`costack.stages._tiled`); an accepted
    tie-point model ``tp_model`` seeds the coarse pass."""
    from costack.stages._tiled import flow_tiled

    blur = reference_blur(params, ratio)
    ref_filter = (lambda a: blur_valid(a, blur)) if blur else None
    params = adapt_to_resolution(params, ratio)
    conf = confidence_tif or str(Path(out_tif).with_suffix("")) + ".confidence.tif"
    tags = flow_tags(params.mode, ref_tif, sec_tif)
    tiled = flow_tiled(ref_tif, sec_tif, out_tif, conf, params, ref_filter=ref_filter,
                       seed_model=tp_model, tags=tags, support_tif=support_tif,
                       hold_changes=hold_changes, masks=masks, radar_aux=aux_tifs)  # fmt: skip
    stats = {"mode": params.mode, "mode_choice": mode_choice, "resolution_ratio": ratio_choice,
             "radar_aux": aux_choice,
             "params": params.to_dict(),
             "seconds": tiled["seconds"],
             "tiled": tiled, "reference_blur_sigma": round(blur, 3),
             "tiepoint_model": str(model_json) if tp_model is not None else None,
             "tiepoint_model_refused": seed_note,
             "change": {"held": hold_changes,
                        "masks": {"reference": bool(masks and (masks.reference or masks.polygons)),
                                  "secondary": bool(masks and (masks.secondary or
                                                               masks.polygons))},
                        "unsupported_fraction": tiled.get("unsupported_fraction")}}  # fmt: skip
    if not hold_changes:
        del stats["change"]["unsupported_fraction"]
    if stats_json:
        write_json(stats_json, stats)
    return stats


def reference_blur(params: FlowParams, ratio: float) -> float:
    """Gaussian sigma (grid px) bringing the reference to a coarse secondary's resolution:
    0.5 sqrt(ratio^2 - 1) when the secondary is over 1.5x coarser (not in the GEFolki and
    structure modes, for SAR: the speckled side is not the one to blur)."""
    return resolution_sigma(ratio) if params.mode not in ("gefolki", "structure") else 0.0


def adapt_to_resolution(params: FlowParams, ratio: float) -> FlowParams:
    """Widen the windows for a secondary coarser than the grid (native pixel / grid pixel).

    A window must hold enough of the secondary's own detail: radii are scaled by the square of
    the ratio (at most 4x), EFolki's rank radius by the ratio (at most 2x); :func:`estimate_flow`
    then caps them to the image (:func:`costack.registration.folki.fit_radii`). Measured on the
    demo's 30 m
    and 20 m secondaries (ratio 3 and 2.05), mean EPE: EFolki's (32, 8) widened to (128, 32)
    and capped to (68, 32) on the 485 px grid, 0.058 px optical; GEFolki's (16, 8) widened to
    (64, 32), 0.378 px SAR (against 0.555 with (32, 16) and 0.467 with (48, 24) before the
    pyramid depth followed the windows).
    """

    if ratio <= 1.0:
        return params
    scale = float(np.clip(ratio, 1.0, 2.0))
    widen = float(np.clip(ratio * ratio, 1.0, 4.0))
    radii = tuple(int(round(r * widen)) for r in params.window_radii())
    fine = params.fine_radii and tuple(int(round(r * widen)) for r in params.fine_radii)
    rank = (
        params.rank_radius if params.mode == "gefolki" else int(round(params.rank_radius * scale))
    )
    return replace(params, radii=radii, fine_radii=fine or None, rank_radius=rank)


def _verified(ref, sec, res, params, start, asked, mode_choice, init, ratio):
    """The flow in the other mode too (``mode_choice["verify_with"]``, set by
    :func:`decide_mode` for an untagged multimodal pair no side of which reads as radar), and
    the better of the two by :func:`better_by_similarity`; the scores go in ``mode_choice``.
    Returns (result, its parameters, its start)."""
    alt_params = replace(asked, mode=mode_choice["verify_with"], invert_secondary=False)
    alt_params = adapt_to_resolution(replace(alt_params, radii=alt_params.window_radii()), ratio)
    if init is not None:
        alt_params = replace(alt_params, global_search=False)
    alt, alt_start = _estimate_with_start(ref, sec, alt_params, init)
    take_alt, scores = better_by_similarity(ref, sec, res, alt)
    mode_choice["verified"] = {
        "cfog_similarity": {params.mode: scores[0], alt_params.mode: scores[1]},
        "kept": alt_params.mode if take_alt else params.mode,
    }
    return (alt, alt_params, alt_start) if take_alt else (res, params, start)
