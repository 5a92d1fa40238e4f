"""Registration quality: residual misregistration after co-registration, measured independently.

The co-registered secondary is re-matched to the reference on a regular grid of points by
least-squares matching (the tie-point step's LSM at full resolution starting at zero
displacement: 35x35 patches scored by zero-mean NCC for optical pairs, 51x51 patches of CFOG
descriptors for SAR against optical); the accepted matches measure what misregistration is
left. This is independent of the flow (different estimator, different support) and is the
figure to quote: mean, median and 90th percentile in pixels and metres, with the number of
points, and no figure under ``QC_MIN_POINTS`` points.

:func:`judge` turns that evidence, with the flow's and the tie points', into a verdict per
secondary dataset: ``pass``, ``warn`` or ``fail`` with its reasons.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio

from costack.errors import CostackError, printable
from costack.io.files import write_json
from costack.io.grids import Grid
from costack.io.manifest import dataset_labels  # noqa: F401 (the rule script's labels)
from costack.io.masks import Exclusions, rule_exclusions  # noqa: F401 (the rule script's)
from costack.io.rasters import costack_tags, read_float32, require_colocated
from costack.limits import (
    QC_BLOCK_BYTES,
    QC_BLOCK_MARGIN,
    qc_block_side,
    qc_in_memory_pixels,
    qc_parallel,
)
from costack.registration.change import apply_exclusions
from costack.registration.imaging import masked_blur, on_two_threads, resolution_sigma
from costack.registration.matching import MIN_SIMILARITY_MULTIMODAL, lsm, prepare
from costack.registration.tiepoint_model import TiePointModel
from costack.stages._common import decide_ratio, read_model

log = logging.getLogger(__name__)

#: Half patch (px) of the multimodal QC matcher (51 px patches, as the tie points' coarse).
MULTIMODAL_HALF = 25
#: A QC residual after co-registration this much above the one before it: made worse (px).
WORSE_BY_PX = 0.1
#: Fewest re-matched points a residual figure rests on; below, the figure is "insufficient".
QC_MIN_POINTS = 20
#: Spacing (grid px) of the QC's regular lattice of points.
QC_SPACING = 24
#: Points of the lattice the QC re-matches (config ``qc_points``): grids whose lattice holds
#: more are sampled (:func:`_residuals_sampled`); 0 re-matches every point.
QC_SAMPLE_POINTS = 1024
#: Fewest points of a sample that must re-match (before and after); fewer, the sample is
#: drawn again twice as large (up to the whole lattice), the points already matched reused.
QC_SAMPLE_MIN_MEASURED = 4 * QC_MIN_POINTS
#: Sampling weight of a point where the flow's confidence is 0, against 1 where it is 1.
LOW_CONFIDENCE_WEIGHT = 4.0


def residual_misregistration(
    ref: np.ndarray,
    sec: np.ndarray,
    spacing: int = QC_SPACING,
    half: int = 17,
    multimodal: bool = False,
    min_similarity: float | None = None,
    reference_blur: float = 0.0,
    row_offset: int = 0,
    point_rows: tuple[int, int] | None = None,
    grid_height: int | None = None,
    col_offset: int = 0,
    point_cols: tuple[int, int] | None = None,
    grid_width: int | None = None,
) -> np.ndarray:
    """Residual shifts (dx, dy) at grid points where LSM succeeds; shape (n, 2).

    ``reference_blur`` (grid px) brings a sharp reference to a coarser secondary's resolution
    (see :func:`costack.registration.imaging.resolution_sigma`) before matching.

    A block of a larger grid: ``ref`` and ``sec`` start at grid row ``row_offset`` and column
    ``col_offset`` of a grid ``grid_height`` x ``grid_width``, and only the points of the whole
    grid's lattice whose row lies in ``point_rows`` and column in ``point_cols`` (grid rows or
    columns, start and stop) are matched, so that blocks with margins together match the
    points of the whole grid once each."""
    v1, v2 = np.isfinite(ref), np.isfinite(sec)
    a = np.where(v1, ref, 0).astype(np.float32)
    b = np.where(v2, sec, 0).astype(np.float32)
    if not v1.any() or not v2.any():
        return np.zeros((0, 2))
    if multimodal:
        # SAR against optical: the tie points' multimodal matcher, NCC of CFOG descriptors
        # (Ye et al. 2019) on 51 px patches by translation. The |NCC| of rank images it
        # replaces found 10 points on the demo's SAR dataset and read 1.31 px where the truth
        # is 0.46 px; CFOG finds 34 and reads 0.76 px (mean).
        m = prepare(a, v1, b, v2, True, 1.0)
        threshold = MIN_SIMILARITY_MULTIMODAL if min_similarity is None else (
            min_similarity)  # fmt: skip
        half = MULTIMODAL_HALF
    else:
        lo = min(a[v1].min(), b[v2].min())
        if lo < 0:
            a, b = a - lo, b - lo
        # zero-mean NCC, not SAM: on non-negative data SAM is near 1 for any two patches of
        # similar level, and re-matched a secondary of pure noise at 118 points "0.00 px";
        # NCC >= 0.9 finds none there and 256 on the demo's 30 m dataset
        threshold = 0.9 if min_similarity is None else min_similarity
        # a light low-pass on both sides keeps patch interpolation from favouring the
        # integer start position (pixel locking)
        a = masked_blur(a, v1, float(np.hypot(1.0, reference_blur)))
        b = masked_blur(b, v2, 1.0)
        m = replace(prepare(a, v1, b, v2, False), similarity="ncc")
    out = []
    height = ref.shape[0] if grid_height is None else grid_height
    width = ref.shape[1] if grid_width is None else grid_width
    first, stop = (0, height) if point_rows is None else point_rows
    left, right = (0, width) if point_cols is None else point_cols

    def walk(size: int, lo: int, hi: int) -> range:
        # the lattice half + 2, half + 2 + spacing, ... below size - half - 2, within [lo, hi)
        start = half + 2
        lo = max(start, lo)
        return range(start + -(-(lo - start) // spacing) * spacing, min(size - half - 2, hi),
                     spacing)  # fmt: skip

    for rg in walk(height, first, stop):
        r = rg - row_offset
        if r < half + 2 or r >= ref.shape[0] - half - 2:
            continue
        for cg in walk(width, left, right):
            c = cg - col_offset
            if c < half + 2 or c >= ref.shape[1] - half - 2:
                continue
            p = (r + 0.5, c + 0.5)
            got = lsm(m, p, p, half, max_iterations=10)
            if got is None or got[1] < threshold:
                continue
            (mr, mc), _ = got
            if abs(mr - p[0]) < 3 and abs(mc - p[1]) < 3:
                out.append((mc - p[1], mr - p[0]))
    return np.array(out, dtype=float).reshape(-1, 2)


def summarise(
    shifts: np.ndarray,
    pixel_size: float,
    min_points: int = QC_MIN_POINTS,
    weights: np.ndarray | None = None,
) -> dict:
    """Mean, median and 90th percentile of the residual magnitudes, in pixels and metres,
    with the number of points they rest on; under ``min_points`` points no figure is given
    (``"figure": "insufficient"``), since a handful of matches says little.

    ``weights``: a sample's points weighted by the inverse of their inclusion probability
    (:func:`costack.registration.sampling.spread_sample`): the figures then estimate those of
    the whole lattice (weighted mean; quantiles of the weighted distribution)."""
    if len(shifts) < min_points:
        return {"points": int(len(shifts)), "figure": "insufficient", "min_points": min_points}
    mag = np.hypot(shifts[:, 0], shifts[:, 1])
    if weights is None:
        px = {"mean": float(mag.mean()), "median": float(np.median(mag)),
              "p90": float(np.percentile(mag, 90))}  # fmt: skip
        mean_dx, mean_dy = float(shifts[:, 0].mean()), float(shifts[:, 1].mean())
    else:
        from costack.registration.sampling import weighted_quantile

        w = np.asarray(weights, dtype=np.float64)
        px = {"mean": float(np.average(mag, weights=w)),
              "median": weighted_quantile(mag, w, 0.5),
              "p90": weighted_quantile(mag, w, 0.9)}  # fmt: skip
        mean_dx = float(np.average(shifts[:, 0], weights=w))
        mean_dy = float(np.average(shifts[:, 1], weights=w))
    return {
        "points": int(len(mag)),
        "figure": "measured",
        "pixels": {k: round(v, 4) for k, v in px.items()},
        "metres": {k: round(v * pixel_size, 3) for k, v in px.items()},
        "mean_dx": round(mean_dx, 4),
        "mean_dy": round(mean_dy, 4),
    }


def lattice(height: int, width: int, half: int, spacing: int = QC_SPACING):
    """Grid rows and columns of the QC's regular lattice (as :func:`residual_misregistration`
    walks it): every ``spacing`` px from ``half + 2`` to ``half + 2`` short of the far edge."""
    return (np.arange(half + 2, height - half - 2, spacing),
            np.arange(half + 2, width - half - 2, spacing))  # fmt: skip


def qc_threads(height: int, width: int, sample_points: int = QC_SAMPLE_POINTS) -> int:
    """Cores the QC of a ``height`` x ``width`` grid keeps busy (the rule's ``threads``,
    known at parse time): 2 only on the in-memory path whose before and after re-matchings
    run side by side (:func:`costack.limits.qc_parallel`); the sampled windows and the blocks
    are matched one after another."""
    rows, cols = lattice(height, width, MULTIMODAL_HALF)
    if sample_points and len(rows) * len(cols) > sample_points:
        return 1
    px = height * width
    return 2 if px <= qc_in_memory_pixels(False) and qc_parallel(px, False) else 1


def window_margin(multimodal: bool, reference_blur: float) -> int:
    """Pixels read around a sampled point so that its re-matching in the window equals that in
    the whole grid: the patch's half, its 2 px border and the 3 px tolerance, plus the reach of
    the filters: on intensities the light blur (3 sigma) and the cubic B-spline prefilter
    (pole -0.268: 16 px bring an edge's influence under 1e-9), on CFOG descriptors the
    gradient, the blurs of 1 px and the 8 px norm (3 sigma each) and the erosions."""
    if multimodal:
        return MULTIMODAL_HALF + 5 + 1 + 4 + 4 + 25 + 4 + 8
    sigma = float(np.hypot(1.0, reference_blur))
    return 17 + 5 + int(3.0 * sigma + 0.5) + 1 + 16 + 4


def _residuals_sampled(
    paths: tuple, grid: Grid, kw: dict, confidence_tif: str | Path | None, size: int,
    seed: int = 0, masks: Exclusions | None = None,
) -> dict:  # fmt: skip
    """:func:`residual_misregistration` before and after at ``size`` points of the lattice,
    each in its own window: the whole-grid figures at the cost of their evidence.

    One pass by strips reads the reference and the secondary before co-registration (the
    coverage and overlap, exact) and keeps the lattice points whose patch has valid corners
    and centre in both, with the flow's confidence there. Among them ``size`` points are
    drawn spread over the overlap, with a probability that grows as the confidence falls
    (1 at confidence 1, LOW_CONFIDENCE_WEIGHT at 0 or where the flow is unknown; see
    :func:`costack.registration.sampling.spread_sample`), and each is re-matched at full
    resolution in a window of :func:`window_margin` px around it. Where fewer than
    QC_SAMPLE_MIN_MEASURED of them re-match, the sample is drawn again twice as large (the
    points' results reused), up to the whole lattice. Returns a dict: ``before``
    and ``after`` (the shifts, (n, 2)), ``before_weights`` and ``after_weights`` (1 / pi),
    ``before_points`` and ``after_points`` (grid row and column of each, (n, 2)),
    ``coverage``, ``overlap`` and ``record`` (the sampling's description). ``masks``: pixels
    excluded (issue 35) take no part: no point is drawn where its patch touches them, and each
    window is re-matched with them invalid (coverage and overlap are before the masks, as
    in memory)."""
    from contextlib import ExitStack

    from rasterio.windows import Window

    from costack.io.rasters import STREAM_CACHE_MB, read_window, strip_rows, strips
    from costack.registration.sampling import spread_sample

    multimodal = kw["multimodal"]
    half = MULTIMODAL_HALF if multimodal else 17
    rows, cols = lattice(grid.height, grid.width, half)
    need = {int(r + d) for r in rows for d in (-half, 0, half)}
    both_rows: dict[int, np.ndarray] = {}
    conf = np.full((len(rows), len(cols)), np.nan, np.float32)
    row_of = {int(r): i for i, r in enumerate(rows)}
    n_before = n_overlap = 0
    with ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=STREAM_CACHE_MB))
        ref_src, before_src, after_src = (stack.enter_context(rasterio.open(p)) for p in paths)
        conf_src = stack.enter_context(rasterio.open(confidence_tif)) if confidence_tif else None
        for r0, r1 in strips(grid.height, strip_rows(grid.width, grid.height, 8, 64_000_000)):
            win = Window(0, r0, grid.width, r1 - r0)
            ok_before = np.isfinite(read_window(before_src, win))
            both = ok_before & np.isfinite(read_window(ref_src, win))
            n_before += int(ok_before.sum())
            n_overlap += int(both.sum())
            del ok_before
            if masks is not None:
                for x in masks.read_window(grid, win):
                    if x is not None:
                        both &= ~x
            for r in range(r0, r1):
                if r in need:
                    both_rows[r] = both[r - r0]
            if conf_src is not None:
                inside = [r for r in range(r0, r1) if r in row_of]
                if inside:
                    c = read_window(conf_src, win)
                    for r in inside:
                        conf[row_of[r]] = c[r - r0, cols]
        ok = np.ones((len(rows), len(cols)), bool)
        for dr in (-half, 0, half):
            block = np.stack([both_rows[int(r + dr)] for r in rows])
            for dc in (-half, 0, half):
                ok &= block[:, cols + dc]
        del both_rows
        ii, jj = np.nonzero(ok)
        c = np.clip(np.nan_to_num(conf[ii, jj], nan=0.0), 0.0, 1.0)
        weight = 1.0 + (LOW_CONFIDENCE_WEIGHT - 1.0) * (1.0 - c)
        m = window_margin(multimodal, kw["reference_blur"])
        cache: dict[int, tuple] = {}  # lattice point -> (shift before or None, after or None)

        def rematch(k: int) -> tuple:
            rg, cg = int(rows[ii[k]]), int(cols[jj[k]])
            w0, w1 = max(0, rg - m), min(grid.height, rg + m + 1)
            v0, v1 = max(0, cg - m), min(grid.width, cg + m + 1)
            win = Window(v0, w0, v1 - v0, w1 - w0)
            ref = read_window(ref_src, win)
            point_kw = dict(
                kw, row_offset=w0, point_rows=(rg, rg + 1), grid_height=grid.height,
                col_offset=v0, point_cols=(cg, cg + 1), grid_width=grid.width,
            )  # fmt: skip
            pair = [read_window(src, win) for src in (before_src, after_src)]
            if masks is not None:
                ref_x, sec_x = masks.read_window(grid, win)
                ref, pair[0], _ = apply_exclusions(ref, pair[0], ref_x, sec_x)
                pair[1] = apply_exclusions(ref, pair[1], None, sec_x)[1]
            got = [residual_misregistration(ref, sec, **point_kw) for sec in pair]
            return tuple(g[0] if len(g) else None for g in got)

        drawn = size
        while True:
            taken, pi = spread_sample(ii, jj, weight, drawn, seed)
            order = np.lexsort((jj[taken], ii[taken]))  # row by row: reads follow the tiles
            taken, pi = taken[order], pi[order]
            for k in taken:
                if int(k) not in cache:
                    cache[int(k)] = rematch(int(k))
            measured = min(sum(cache[int(k)][i] is not None for k in taken) for i in (0, 1))
            # too few of the drawn points re-match (SAR, small grids): draw twice as many
            if measured >= QC_SAMPLE_MIN_MEASURED or drawn >= len(ii):
                break
            drawn = min(len(ii), 2 * drawn)
        out: dict[str, list] = {"before": [], "after": []}
        for k, p in zip(taken, pi, strict=True):
            for name, got in zip(("before", "after"), cache[int(k)], strict=True):
                if got is not None:
                    out[name].append((got[0], got[1], 1.0 / p, rows[ii[k]], cols[jj[k]]))
    px = grid.width * grid.height
    record = {
        "lattice_points": int(len(ii)),
        "sampled": int(len(taken)),
        "size": int(size),
        "drawn": int(drawn),
        "seed": int(seed),
        "weighted_by_confidence": confidence_tif is not None,
    }

    got = {k: np.array(v, dtype=float).reshape(-1, 5) for k, v in out.items()}
    return {
        **{k: v[:, :2] for k, v in got.items()},
        **{f"{k}_weights": v[:, 2] for k, v in got.items()},
        **{f"{k}_points": v[:, 3:].astype(np.int64) for k, v in got.items()},
        "coverage": n_before / px, "overlap": n_overlap / px, "record": record,
    }  # fmt: skip


def _residuals_by_blocks(
    paths: tuple, grid: Grid, kw: dict, block_bytes: int, masks: Exclusions | None = None
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """:func:`residual_misregistration` of the before and after rasters over the whole grid,
    block by block: square blocks of grid rows and columns (:func:`costack.limits.
    qc_block_side`), each read with QC_BLOCK_MARGIN pixels on every side, each matching only
    the lattice points inside it. Returns (shifts before, shifts after, coverage, overlap) as
    the in-memory path does."""
    from contextlib import ExitStack

    from rasterio.windows import Window

    from costack.io.rasters import STREAM_CACHE_MB, read_window, strips

    side = qc_block_side(kw["multimodal"], block_bytes)
    before_all, after_all = [], []
    n_before = n_overlap = 0
    m = QC_BLOCK_MARGIN
    with ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=STREAM_CACHE_MB))
        ref_src, before_src, after_src = (stack.enter_context(rasterio.open(p)) for p in paths)
        for r0, r1 in strips(grid.height, side):
            for c0, c1 in strips(grid.width, side):
                w0, w1 = max(0, r0 - m), min(grid.height, r1 + m)
                v0, v1 = max(0, c0 - m), min(grid.width, c1 + m)
                win = Window(v0, w0, v1 - v0, w1 - w0)
                ref = read_window(ref_src, win)
                block_kw = dict(
                    kw, row_offset=w0, point_rows=(r0, r1), grid_height=grid.height,
                    col_offset=v0, point_cols=(c0, c1), grid_width=grid.width,
                )  # fmt: skip
                before = read_window(before_src, win)
                core = (slice(r0 - w0, r1 - w0), slice(c0 - v0, c1 - v0))
                n_before += int(np.isfinite(before[core]).sum())
                n_overlap += int((np.isfinite(before[core]) & np.isfinite(ref[core])).sum())
                ref_x = sec_x = None
                if masks is not None:  # excluded pixels (clouds, a damage zone): not re-matched
                    ref_x, sec_x = masks.read_window(grid, win)
                    ref, before, _ = apply_exclusions(ref, before, ref_x, sec_x)
                before_all.append(residual_misregistration(ref, before, **block_kw))
                del before
                after = read_window(after_src, win)
                after = apply_exclusions(ref, after, None, sec_x)[1]
                after_all.append(residual_misregistration(ref, after, **block_kw))
                del after, ref
    px = grid.width * grid.height
    return np.concatenate(before_all), np.concatenate(after_all), n_before / px, n_overlap / px


def run_qc(
    ref_tif: str | Path,
    colocated_tif: str | Path,
    coregistered_tif: str | Path,
    out_json: str | Path,
    multimodal: bool | None = None,
    resolution_ratio: float | None = None,
    max_displacement: float = 16.0,
    max_in_memory_pixels: int | None = None,
    block_bytes: int = QC_BLOCK_BYTES,
    threads: int = 2,
    confidence_tif: str | Path | None = None,
    sample_points: int = QC_SAMPLE_POINTS,
    seed: int = 0,
    masks: Exclusions | None = None,
) -> dict:
    """The QC stage (rule ``assess_registration``, ``costack qc``): residual misregistration
    before (colocated) and after co-registration, as JSON.

    Grids over ``max_in_memory_pixels`` (default: :func:`costack.limits.qc_in_memory_pixels`
    of the mode, 1 GB's worth) are re-matched by blocks of about ``block_bytes`` with margins
    wider than a patch and its filters (:func:`_residuals_by_blocks`), so the QC's memory is
    bounded by the block rather than by the grid. Smaller grids (``qc_parallel``), with
    ``threads`` of 2 or more, re-match before and after on two threads (same figures; the
    demo's SAR dataset: 4.0 -> 1.6 s).

    ``multimodal`` None (the default) decides from the rasters as the tie points do
    (:func:`costack.stages._common.matches_on_descriptors`): SAR against optical and inverted
    contrast are re-matched on CFOG descriptors; True or False forces.

    ``resolution_ratio``: the secondary's native pixel over the grid's (None: the co-located
    raster's ``costack_resolution_ratio`` tag, else read from its pixels,
    :func:`costack.stages._common.decide_ratio`; a 30 m secondary is
    compared with the reference blurred to 30 m: on the demo the residual after co-registration
    then reads 0.11 px median, near the flow's true error, instead of 0.24 px).

    ``sample_points``: a grid whose lattice holds more points than this is not re-matched
    everywhere but at that many points (:func:`_residuals_sampled`): spread over the valid
    overlap, more where the flow's confidence (``confidence_tif``, the flow's confidence
    raster; None: uniform) is low, each re-matched at full resolution in its own window, the
    figures weighted back to the whole lattice's (a 10980 x 10980 tile: 1024 of 209,000
    points). 0 re-matches every point. ``seed`` draws the sample (the same seed, the same
    points)."""
    require_colocated("qc", ref_tif, colocated_tif, coregistered_tif)
    before_key = costack_tags(colocated_tif).get("costack_key")
    after_key = costack_tags(coregistered_tif).get("costack_key")
    if before_key and after_key and before_key != after_key:
        raise CostackError(
            "qc", f"{coregistered_tif} is asset {after_key} co-registered, {colocated_tif} is "
            f"asset {before_key} co-located", "give one asset before and after co-registration",
        )  # fmt: skip
    resolution_ratio, _ = decide_ratio(resolution_ratio, colocated_tif)
    if multimodal is None:
        from costack.stages._common import matches_on_descriptors

        multimodal, _ = matches_on_descriptors(ref_tif, colocated_tif, max_displacement)
    blur = 0.0 if multimodal else resolution_sigma(resolution_ratio)
    kw = {"multimodal": multimodal, "reference_blur": blur}
    with rasterio.open(ref_tif) as src:
        grid = Grid(src.crs, src.transform, src.width, src.height)
    size = abs(grid.transform.a)
    if max_in_memory_pixels is None:
        max_in_memory_pixels = qc_in_memory_pixels(multimodal)
    half = MULTIMODAL_HALF if multimodal else 17
    rows, cols = lattice(grid.height, grid.width, half)
    weights_before = weights_after = None
    sampling = None
    if sample_points and len(rows) * len(cols) > sample_points:
        got = _residuals_sampled((ref_tif, colocated_tif, coregistered_tif), grid, kw,
                                 confidence_tif, sample_points, seed, masks)  # fmt: skip
        shifts_before, weights_before = got["before"], got["before_weights"]
        shifts_after, weights_after = got["after"], got["after_weights"]
        coverage, overlap, sampling = got["coverage"], got["overlap"], got["record"]
    elif grid.width * grid.height <= max_in_memory_pixels:
        ref, _, _ = read_float32(ref_tif)
        before, _, _ = read_float32(colocated_tif)
        after, _, _ = read_float32(coregistered_tif)
        coverage = float(np.isfinite(before).mean())
        overlap = float((np.isfinite(before) & np.isfinite(ref)).mean())
        if masks is not None:  # excluded pixels (clouds, a damage zone) are not re-matched
            ref_x, sec_x = masks.read(grid)
            ref, before, _ = apply_exclusions(ref, before, ref_x, sec_x)
            after = apply_exclusions(ref, after, None, sec_x)[1]
        if threads > 1 and qc_parallel(grid.width * grid.height, multimodal):
            # the two re-matchings side by side (LSM releases the GIL)
            shifts_before, shifts_after = on_two_threads(
                lambda sec: residual_misregistration(ref, sec, **kw), (before,), (after,)
            )
        else:
            shifts_before = residual_misregistration(ref, before, **kw)
            shifts_after = residual_misregistration(ref, after, **kw)
    else:
        shifts_before, shifts_after, coverage, overlap = _residuals_by_blocks(
            (ref_tif, colocated_tif, coregistered_tif), grid, kw, block_bytes, masks
        )
    where = (
        f"LSM re-matching at {sampling['sampled']} of the {sampling['lattice_points']} points "
        f"of a regular grid every {QC_SPACING} px in the overlap (spread, more where the flow "
        "is less confident; figures weighted by 1 / inclusion probability); "
        if sampling else f"LSM re-matching on a regular grid every {QC_SPACING} px; "
    )  # fmt: skip
    result = {
        "method": where
        + (
            "NCC of CFOG descriptors >= 0.4, 51x51 patches"
            if multimodal
            else "NCC >= 0.9, 35x35 patches"
        ),  # fmt: skip
        "reference_blur_sigma": round(blur, 3),
        "coverage": round(coverage, 4),
        "overlap": round(overlap, 4),
        "before": summarise(shifts_before, size, weights=weights_before),
        "after": summarise(shifts_after, size, weights=weights_after),
    }
    if sampling:
        result["sampling"] = sampling
    write_json(out_json, result)
    return result


@dataclass(frozen=True)
class VerdictThresholds:
    """When a secondary dataset's registration passes, warns or fails (config ``verdict``).

    The defaults pass the demo's two datasets and fail or flag the cases that motivated them:
    a secondary of pure noise, an AOI that leaves a dataset a sliver of the grid, a residual
    that is worse after co-registration than before.
    """

    min_coverage: float = 0.25  # share of the grid holding the dataset's data; below: warn
    min_qc_points: int = QC_MIN_POINTS  # re-matched points a residual rests on; below: warn
    max_residual_px: float = 1.0  # QC median residual after co-registration; above: fail
    min_flow_valid: float = 0.5  # flow known over this share of the overlap; below: fail
    max_diverged: float = 0.1  # share of the grid where the flow diverged; above: fail
    max_model_disagreement_px: float = 1.0  # tie-point model vs flow mean shift; above: warn
    max_unsupported: float = 0.5  # overlap registered from the surroundings; above: warn


def judge(
    qc: dict, flow: dict, model: TiePointModel, t: VerdictThresholds = VerdictThresholds()
) -> dict:
    """``pass``, ``warn`` or ``fail`` for one secondary dataset, with the reasons.

    Evidence, all from files the run already wrote: the independent QC re-matching (how many
    points, residual after vs before), the flow's valid share of the overlap and its divergence,
    the agreement of the tie-point model with the flow, and the share of the grid the dataset
    covers. ``fail``: the run cannot vouch for the registration (no independent match at all,
    residual above ``max_residual_px`` or worse than before, flow mostly unknown or diverged).
    ``warn``: it holds, on thin evidence or a thin coverage.
    """
    fails: list[str] = []
    warns: list[str] = []
    after, before = qc.get("after", {}), qc.get("before", {})
    measured_after = after.get("figure") == "measured"
    measured_before = before.get("figure") == "measured"
    n_tie = model.tiepoints
    if not measured_after and not measured_before and n_tie < t.min_qc_points:
        fails.append(
            f"no independent evidence that it matches the reference: QC re-matched "
            f"{before.get('points', 0)} points before and {after.get('points', 0)} after, "
            f"{n_tie} tie points (at least {t.min_qc_points} needed)"
        )
    elif not measured_after:
        warns.append(f"QC residual insufficient: {after.get('points', 0)} re-matched points "
                     f"(at least {t.min_qc_points} needed)")  # fmt: skip
    if measured_after:
        med = after["pixels"]["median"]
        if med > t.max_residual_px:
            fails.append(f"QC residual {med:.2f} px (median of {after['points']} points) "
                         f"above max_residual_px {t.max_residual_px:g}")  # fmt: skip
        was = before["pixels"]["median"] if measured_before else None
        if was is not None and med > was + WORSE_BY_PX and med > 0.3:
            fails.append(f"QC residual after co-registration {med:.2f} px is worse than before "
                         f"({was:.2f} px)")  # fmt: skip
    overlap = float(qc.get("overlap", 1.0) or 0.0)
    valid = flow.get("valid_fraction")
    if valid is not None and overlap > 0:
        share = min(1.0, valid / overlap)
        if share < t.min_flow_valid:
            fails.append(f"flow known on {share:.0%} of the overlap (min_flow_valid "
                         f"{t.min_flow_valid:.0%})")  # fmt: skip
    diverged = flow.get("diverged_fraction")
    if diverged is not None and diverged > t.max_diverged:
        fails.append(f"flow diverged on {diverged:.0%} of the grid (max_diverged "
                     f"{t.max_diverged:.0%})")  # fmt: skip
    unsupported = (flow.get("change") or {}).get("unsupported_fraction")
    if unsupported is not None and unsupported > t.max_unsupported:
        warns.append(f"registered from the stable surroundings on {unsupported:.0%} of the "
                     f"overlap (the images did not support a match there: change, clouds, "
                     f"masks; max_unsupported {t.max_unsupported:.0%})")  # fmt: skip
    coverage = qc.get("coverage")
    if coverage is not None and coverage < t.min_coverage:
        warns.append(f"covers {coverage:.1%} of the grid (min_coverage {t.min_coverage:.0%})")
    shift = model.data.get("mean_shift")
    if shift and flow.get("mean_dx") is not None and n_tie >= t.min_qc_points:
        gap = float(np.hypot(shift[0] - flow["mean_dx"], shift[1] - flow["mean_dy"]))
        if gap > t.max_model_disagreement_px:
            warns.append(f"tie-point model and flow disagree by {gap:.2f} px on the mean shift")
    verdict = "fail" if fails else "warn" if warns else "pass"
    return {"verdict": verdict, "reasons": fails + warns}


def verdict_lines(summary_json: str | Path) -> list[str]:
    """One line per secondary dataset of a QC summary, for the end of a run's log."""
    path = Path(summary_json)
    if not path.is_file():
        return []
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    lines = []
    for n, q in summary.items():
        if "verdict" not in q:
            continue
        label = f" ({q['label']})" if q.get("label") else ""
        why = f": {'; '.join(q['reasons'])}" if q.get("reasons") else ""
        after = q.get("after", {})
        figure = (f", residual {after['pixels']['median']:.2f} px median on {after['points']} "
                  "points" if after.get("figure") == "measured" else "")  # fmt: skip
        line = f"costack: registration of dataset {n}{label}: {q['verdict']}{figure}{why}"
        lines.append(printable(line))  # the label is item text: it cannot start a line
    return lines


def merge_summaries(
    parts: dict[str, str | Path],
    out_json: str | Path,
    flows: dict[str, str | Path] | None = None,
    models: dict[str, str | Path] | None = None,
    labels: dict[str, str] | None = None,
    thresholds: VerdictThresholds | None = None,
) -> dict:
    """results/qc/summary.json from the per-dataset files, each with its verdict (see
    :func:`judge`) when the flow statistics and tie-point models are given."""

    def load(path: str | Path | None) -> dict:
        return json.loads(Path(path).read_text(encoding="utf-8")) if path else {}

    summary = {n: load(p) for n, p in parts.items()}
    if flows is not None:
        t = thresholds or VerdictThresholds()
        for n, qc in summary.items():
            path = (models or {}).get(n)
            model = read_model(path) if path else TiePointModel.none()
            flow = load(flows.get(n))
            unsupported = (flow.get("change") or {}).get("unsupported_fraction")
            if unsupported is not None:  # registered from the surroundings (issue 35)
                qc["unsupported_fraction"] = unsupported
            qc.update(judge(qc, flow, model, t))
            if labels and n in labels:
                qc["label"] = labels[n]
    write_json(out_json, summary)
    return summary
