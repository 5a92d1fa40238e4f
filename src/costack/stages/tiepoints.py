"""Sub-pixel tie points and a global geometric model, after Yan, Roy, Zhang, Li, Huang (2016).

"An Automated Approach for Sub-Pixel Registration of Landsat-8 OLI and Sentinel-2 MSI
Imagery", Remote Sensing 8(6):520. The steps (section numbers of the paper):

- 3.2 image pyramid: Gaussian low-pass of both co-located images at 1, 3, 6 and 12 times the
  grid's pixel (10/30/60/120 m for a 10 m grid), nodata masked at every level;
- 3.3 feature points: Förstner's interest operator on the reference at the coarsest level
  (scikit-image's ``corner_foerstner``), here kept to the strongest point per cell of a regular
  grid so that the points spread over the image;
- 3.4 area-based least-squares matching (LSM) around each point, with an affine geometric and a
  linear radiometric model, iterated while the similarity improves; similarity by the spectral
  angle (SAM, cosine of the angle between the two patches, success at >= 0.995), 21x21 patches
  at the coarse levels and 35x35 at the finest;
- 3.5 depth-first mismatch detection: a point matched at one level is projected to the next
  finer level and matched again; it is rejected when a match fails, when at the coarsest level
  the match lies over one (coarse) pixel from the global prior (:func:`prior_shift`; the paper
  assumes a misregistration under one coarse pixel, i.e. a zero prior), or when at a finer
  level the match lands more than 1/3 pixel from its projected position;
- 3.6 transformation fitting: translation (eq. 1), affine (eq. 2) and second-order polynomial
  (eq. 3) by least squares, each with the paper's RMSE (eq. 5, squared residuals over n - t);
  residual outliers are rejected at 3 sigma, iterated.

Ours: the secondary is sampled through a cubic B-spline during LSM; a secondary much coarser
than the grid is matched against the reference blurred to its resolution. For SAR against
optical, where SAM on raw intensities fails, both images are described by CFOG channels of
oriented gradients (:func:`cfog`) matched by translation with normalised correlation, and a
match may land up to one pixel (``max_jump_multimodal``) from its projected position: on the
demo's SAR/optical pair, 13 points survive with 0.87 px RMSE against the truth (none did with
the 1/3 px tolerance and 4 px descriptor smoothing). Such local SAR/optical matches are fragile:
neighbouring settings gave 8-23 points and 0.57-1.36 px.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from costack.errors import CostackError
from costack.io.manifest import registration_label  # noqa: F401 (the rule script's label)
from costack.io.masks import Exclusions, rule_exclusions  # noqa: F401 (the rule script's)
from costack.limits import TIEPOINT_IN_MEMORY_PIXELS
from costack.registration.change import apply_exclusions
from costack.registration.imaging import masked_blur, resolution_sigma
from costack.registration.matching import (
    MIN_SIMILARITY_MULTIMODAL,
    LocalLevel,
    lsm_at,
    prepare,
    prior_shift,
    representation,
)
from costack.registration.tiepoint_model import TiePointModel, fit_models
from costack.stages._common import decide_ratio, matches_on_descriptors, write_model

log = logging.getLogger(__name__)

CSV_COLUMNS = ["ref_col", "ref_row", "sec_col", "sec_row", "dx", "dy", "similarity", "level",
               "residual", "outlier"]  # fmt: skip


@dataclass
class TiePointParams:
    """Parameters of :func:`match_tiepoints` (defaults from Yan et al. 2016)."""

    factors: tuple[int, ...] = (1, 3, 6, 12)
    patch_coarse: int = 21
    patch_fine: int = 35
    min_similarity: float = 0.995
    max_jump: float = 1.0 / 3.0
    cell: int = 2  # coarse pixels per point-selection cell
    # candidates per matched window (a tile): beyond, the strongest per larger cell (issue 40:
    # a 3660 px tile held about 1700, matched at four levels each)
    max_candidates: int | None = 512
    # candidates per tile of a grid matched by tiles (16 tiles on a 10980 x 10980 grid): 256 took
    # a tile dataset's tie points from 34 to 26-29 s of CPU and 7399 to 3504 points, the model's
    # mean shift 0.0047 -> 0.0042 px and 0.0057 -> 0.0055 px from the truth (stack bench)
    tile_candidates: int = 256
    roundness: float = 0.2
    max_iterations: int = 20
    multimodal: bool | None = None  # CFOG descriptors; None: decided from the rasters
    # SAR/optical: CFOG descriptors at a scale of cfog_sigma grid pixels (at least 1 level
    # pixel), larger patches, NCC threshold, and a depth-first tolerance of one pixel (SAR/optical
    # matches are rarely consistent to 1/3 px between levels)
    min_similarity_multimodal: float = MIN_SIMILARITY_MULTIMODAL
    cfog_sigma: float = 1.0
    patch_coarse_multimodal: int = 51
    patch_fine_multimodal: int = 81
    max_jump_multimodal: float = 1.0
    outlier_sigma: float = 3.0
    max_shift: float = 16.0  # grid pixels: search range of the global prior
    reference_blur: float = 0.0  # Gaussian sigma (grid px) for a coarser secondary


def pyramid_factors(factors: tuple[int, ...], size: int, patch: int) -> list[int]:
    """The paper's factors if the coarsest level still holds 5 patches across, else powers of
    two up to the largest that does (a 480 px demo grid gets 1, 2, 4)."""
    if size / max(factors) >= 5 * patch:
        return list(factors)
    out = [1]
    while size / (out[-1] * 2) >= 5 * patch:
        out.append(out[-1] * 2)
    return out


def _masked_level(
    img: np.ndarray, valid: np.ndarray, f: int, sigma: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One pyramid level: Gaussian low-pass (``sigma``, default 0.5 f) then f x f block mean
    (centred), nodata masked (normalised convolution; skipped where all is valid)."""
    if f == 1:
        return np.where(valid, img, 0).astype(np.float32), valid
    w = valid.astype(np.float32)
    sigma = 0.5 * f if sigma is None else sigma
    num = ndimage.gaussian_filter(np.where(valid, img, 0).astype(np.float32), sigma)
    # all valid: the filtered weights are 1 everywhere (the filter reflects at the border)
    all_valid = bool(valid.all())
    den = w if all_valid else ndimage.gaussian_filter(w, sigma)
    h, wd = (img.shape[0] // f) * f, (img.shape[1] // f) * f

    def block(a: np.ndarray) -> np.ndarray:
        return a[:h, :wd].reshape(h // f, f, wd // f, f).mean(axis=(1, 3))

    if all_valid:  # the weights' block means are 1: the division is exact, every block valid
        return block(num).astype(np.float32), np.ones((h // f, wd // f), bool)
    n, d, cover = block(num), block(den), block(w)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(d > 1e-6, n / d, 0).astype(np.float32)
    ok = cover > 0.99
    return np.where(ok, out, 0).astype(np.float32), ok


def pyramid(
    img: np.ndarray, valid: np.ndarray, factors: tuple[int, ...] | list[int]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The levels of :func:`_masked_level` for ``factors`` (increasing, each dividing the
    next), each made from the one before rather than from the full resolution: level f_k is
    level f_(k-1) low-passed and reduced by f_k / f_(k-1), the low-pass's variance chosen so
    that the chain's equals the direct one's: Gaussians add their variances, and the block
    means of f_(k-1) then f_k / f_(k-1) add (f_k^2 - 1) / 12 grid px^2 as one block of f_k
    does, so the low-pass is 0.5 sqrt(f_k^2 - f_(k-1)^2) grid px. The coarse levels then cost a
    fraction of the first reduction (a 2048 px tile: 17 s -> 2 s of its 28 s)."""
    out = [_masked_level(img, valid, factors[0])]
    for prev, f in zip(factors[:-1], factors[1:], strict=True):
        var = (0.5 * f) ** 2 - (0.5 * prev) ** 2 * (prev > 1)  # grid px^2
        sigma = math.sqrt(var) / prev
        level, ok = out[-1]
        out.append(_masked_level(level, ok, f // prev, sigma))
    return out


def foerstner(img: np.ndarray, sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Förstner's distinctness ``w`` and roundness ``q`` per pixel (Förstner and Gülch 1987).

    N is the structure tensor: the products of the Sobel derivatives (zero outside the image)
    smoothed by a Gaussian of ``sigma`` (truncated at 4 sigma); w = det(N) / tr(N) and
    q = 4 det(N) / tr(N)^2, both 0 where tr(N) = 0 or the image is not finite. The same
    operator as scikit-image's ``corner_foerstner``, from SciPy's primitives: importing
    ``skimage.feature`` loads scipy.stats, 0.6-1 s of every tie-point job's start-up.
    """
    image = np.asarray(img, dtype=np.float32 if img.dtype == np.float32 else np.float64)
    d_row = ndimage.sobel(image, axis=0, mode="constant")
    d_col = ndimage.sobel(image, axis=1, mode="constant")

    def smooth(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma, mode="constant", truncate=4.0)

    with np.errstate(all="ignore"):
        n_rr, n_rc, n_cc = smooth(d_row * d_row), smooth(d_row * d_col), smooth(d_col * d_col)
        det = n_rr * n_cc - n_rc**2
        trace = n_rr + n_cc
        ok = trace != 0
        safe = np.where(ok, trace, 1)
        w = np.where(ok, det / safe, 0)
        q = np.where(ok, 4 * det / safe**2, 0)
    return np.nan_to_num(w), np.nan_to_num(q)


def _strongest_per_cell(rows: np.ndarray, cols: np.ndarray, s: np.ndarray, cell: int) -> np.ndarray:
    """Indices of the strongest (``s``) point in each ``cell`` x ``cell`` block."""
    keys = (rows // cell) * 100_000 + cols // cell
    order = np.lexsort((-s, keys))
    keys_sorted = keys[order]
    first = np.ones(order.size, bool)
    first[1:] = keys_sorted[1:] != keys_sorted[:-1]
    return order[first]


def feature_points(
    img: np.ndarray,
    valid: np.ndarray,
    cell: int,
    roundness: float,
    margin: int = 3,
    max_points: int | None = None,
) -> np.ndarray:
    """Förstner points (row, col) on ``img``, the strongest per ``cell`` x ``cell`` block.

    Förstner and Gülch (1987): w = det(N) / tr(N) measures distinctness, q = 4 det(N) / tr(N)^2
    roundness (1 for a corner or a circular feature, 0 for an edge).

    ``max_points``: more points than this are thinned to the strongest per larger block (its
    side grown by the square root of the excess), so that they stay spread over the image.
    """
    w, q = foerstner(img, sigma=1.0)
    ok = ndimage.binary_erosion(valid, iterations=margin, border_value=0) & (q > roundness)
    score = np.where(ok, w, 0)
    peak = (score == ndimage.maximum_filter(score, size=3)) & (score > 0)
    if not peak.any():
        return np.zeros((0, 2), int)
    thresh = np.percentile(score[peak], 10)
    rows, cols = np.nonzero(peak & (score >= thresh))
    s = score[rows, cols]
    sel = _strongest_per_cell(rows, cols, s, cell)
    rows, cols, s = rows[sel], cols[sel], s[sel]
    while max_points and len(rows) > max_points:
        cell = max(cell + 1, math.ceil(cell * math.sqrt(len(rows) / max_points)))
        sel = _strongest_per_cell(rows, cols, s, cell)
        rows, cols, s = rows[sel], cols[sel], s[sel]
    return np.column_stack([rows, cols])


def match_tiepoints(
    ref: np.ndarray,
    sec: np.ndarray,
    params: TiePointParams | None = None,
    label: str = "secondary",
) -> pd.DataFrame:
    """Tie points between two co-located images (NaN = nodata); one row per tie point.

    Section 3.5 of Yan et al. (2016): each Förstner point is matched at the coarsest level
    and followed down the pyramid; it survives only if every level matches (similarity above
    the threshold) and the match stays within ``max_jump`` pixels of the position projected
    from the level above. At the coarsest level the match must lie within one coarse pixel of
    the global prior (:func:`prior_shift`; the paper's prior is zero, which holds while the
    misregistration is below one coarse pixel).
    """
    p = params or TiePointParams()
    v1 = np.isfinite(ref)
    v2 = np.isfinite(sec)
    if not v1.any() or not v2.any():
        raise CostackError(
            "tiepoints", f"{label}: an input has no valid pixel", "check the colocated rasters"
        )
    a = np.where(v1, ref, 0).astype(np.float32)
    b = np.where(v2, sec, 0).astype(np.float32)
    if not p.multimodal and min(a[v1].min(), b[v2].min()) < 0:
        lo = min(a[v1].min(), b[v2].min())  # SAM needs a common non-negative origin
        a, b = np.where(v1, a - lo, 0), np.where(v2, b - lo, 0)
    if p.reference_blur > 0:  # bring a sharp reference to a coarse secondary's resolution
        a = masked_blur(a, v1, p.reference_blur)
    factors = pyramid_factors(p.factors, min(ref.shape), p.patch_coarse)
    if tuple(factors) != tuple(p.factors):
        log.info("%s: image too small for factors %s, using %s", label, p.factors, factors)
    p = replace(p, factors=tuple(factors))
    raw = list(zip(pyramid(a, v1, p.factors), pyramid(b, v2, p.factors), strict=True))
    threshold = p.min_similarity_multimodal if p.multimodal else p.min_similarity
    patches = (
        (p.patch_fine_multimodal, p.patch_coarse_multimodal)
        if p.multimodal
        else (p.patch_fine, p.patch_coarse)
    )
    (ca, cv), (cb, cw) = raw[-1]
    pts = feature_points(ca, cv, p.cell, p.roundness, margin=patches[1] // 2 + 2,
                         max_points=p.max_candidates)  # fmt: skip
    top = len(p.factors) - 1
    # descriptor matches (translation only) rarely settle below 1e-3 px and then run to the
    # cap; 8 Gauss-Newton steps reach their best similarity (demo SAR pair: 14 -> 9 s)
    iterations = min(p.max_iterations, 8) if p.multimodal else p.max_iterations
    prior = prior_shift(
        *representation(ca, cv, cb, cw, p.multimodal, max(1.0, p.cfog_sigma / p.factors[top])),
        p.max_shift / p.factors[top],
    )
    log.info("%s: %d Förstner points at the coarsest level (%d m pixels in grid units: x%d); "
             "global prior shift (col, row) %.1f, %.1f grid px", label, len(pts), p.factors[top],
             p.factors[top], prior[1] * p.factors[top], prior[0] * p.factors[top])  # fmt: skip
    # the full resolution is prepared around each point that reaches it when that costs less
    # than preparing all of it (a 2745 px tile of a scene: 2.0 -> 1.2 s; the coarse levels are
    # small)
    levels = [
        LocalLevel(la, lv, lb, lw, p.multimodal, max(1.0, p.cfog_sigma / f))
        if k == 0 and LocalLevel.pays(len(pts), patches[0] // 2, la.shape)
        else prepare(la, lv, lb, lw, p.multimodal, max(1.0, p.cfog_sigma / f))
        for k, (f, ((la, lv), (lb, lw))) in enumerate(zip(p.factors, raw, strict=True))
    ]
    del raw
    max_jump = p.max_jump_multimodal if p.multimodal else p.max_jump
    rows = []
    for r, c in pts:
        p_ref = (r + 0.5, c + 0.5)
        d = prior
        ok = True
        sim = 0.0
        for k in range(top, -1, -1):
            if k < top:  # project the coarser level's match to this level
                scale = p.factors[k + 1] / p.factors[k]
                p_ref = (math.floor(p_ref[0] * scale) + 0.5, math.floor(p_ref[1] * scale) + 0.5)
                d = (d[0] * scale, d[1] * scale)
            half = patches[0 if k == 0 else 1] // 2
            guess = (p_ref[0] + d[0], p_ref[1] + d[1])
            m = lsm_at(levels[k], p_ref, guess, half, iterations)
            if m is None or m[1] < threshold:
                ok = False
                break
            (mr, mc), sim = m
            nd = (mr - p_ref[0], mc - p_ref[1])
            jump = math.hypot(nd[0] - d[0], nd[1] - d[1])
            if jump > (1.0 if k == top else max_jump):
                ok = False
                break
            d = nd
        if ok:
            rows.append((p_ref[1], p_ref[0], p_ref[1] + d[1], p_ref[0] + d[0], d[1], d[0], sim, 0))
    df = pd.DataFrame(rows, columns=CSV_COLUMNS[:8])
    log.info("%s: %d tie points survived the depth-first check", label, len(df))
    return df


#: The vector plot of a tiled grid is drawn over the reference reduced to this side (px): twice
#: the 800 px figure's; at 4096 px matplotlib's buffers for the image took about 700 MB (the
#: tie-point job's peak, 4096x4096 stack: 1.53 GB with the plot, 0.81 GB without).
VECTOR_PLOT_SIDE = 1600
TILES_AT_ONCE = 2
"""Tie-point tiles matched at once on a tiled grid; the tile size is ``max_in_memory_pixels /
TILES_AT_ONCE`` whatever the thread count, so the points do not depend on ``--cores``."""


def run_tiepoints(
    ref_tif: str | Path,
    sec_tif: str | Path,
    out_csv: str | Path,
    model_json: str | Path | None = None,
    png: str | Path | None = None,
    params: TiePointParams | None = None,
    label: str = "secondary",
    resolution_ratio: float | None = None,
    max_in_memory_pixels: int = TIEPOINT_IN_MEMORY_PIXELS,
    threads: int = 1,
    masks: Exclusions | None = None,
) -> TiePointModel:
    """The tie-point stage (rule ``match_tiepoints``, ``costack tiepoints``) on two co-located
    rasters: CSV, model JSON and vector plot.

    Grids over ``max_in_memory_pixels`` are matched tile by tile (:func:`_match_by_tiles`,
    tiles of at most that size, each with its own pyramid and prior as the paper's method on a
    scene), and one model is fitted to all their points; memory is then bounded by the tile
    (tiles of at most ``max_in_memory_pixels / TILES_AT_ONCE`` px whatever ``threads`` is, so
    the points do not depend on the thread count; up to ``TILES_AT_ONCE`` matched at once).

    ``params.multimodal`` None (the default) decides from the rasters
    (:func:`costack.stages._common.matches_on_descriptors`): SAR against optical and locally
    inverted
    contrast are matched on CFOG descriptors, other pairs on intensities; True or False forces.

    ``resolution_ratio``: the secondary's native pixel over the grid's (None: its
    ``costack_resolution_ratio`` tag, else read from its pixels,
    :func:`costack.stages._common.decide_ratio`). A secondary over 1.5x
    coarser (30 m on a 10 m grid) is matched against the reference blurred to its resolution
    (:func:`costack.registration.imaging.resolution_sigma`); on the demo's 30 m pair this took the
    tie points
    from 77 to 127 and their error from 0.28 to 0.19 px RMSE.
    """
    from costack.io.files import atomic_path
    from costack.io.rasters import read_average, read_float32, require_colocated

    grid = require_colocated("tiepoints", ref_tif, sec_tif)
    resolution_ratio, _ = decide_ratio(resolution_ratio, sec_tif)
    p = params or TiePointParams()
    mode_choice = None
    if p.multimodal is None:
        multimodal, mode_choice = matches_on_descriptors(ref_tif, sec_tif, p.max_shift)
        p = replace(p, multimodal=multimodal)
    if not p.multimodal and p.reference_blur == 0:
        p = replace(p, reference_blur=resolution_sigma(resolution_ratio))
    import rasterio

    with rasterio.open(ref_tif) as src:
        height, width = src.height, src.width
    scale = 1
    if height * width <= max_in_memory_pixels:
        ref, _, _ = read_float32(ref_tif)
        sec, _, _ = read_float32(sec_tif)
        if masks is not None:  # excluded pixels (clouds, a damage zone) match nothing
            ref, sec, _ = apply_exclusions(ref, sec, *masks.read(grid))
        df = _match_window(ref, sec, p, label, (0, 0))
    else:
        if masks is not None:
            log.warning("%s: a grid over %d pixels is matched by tiles, without the masks",
                        label, max_in_memory_pixels)  # fmt: skip
        # tiles of half the pixels whatever the thread count (the points must not depend on
        # --cores: a rerun on one core gives the same bytes); two at once keep memory bounded
        per_tile = min(p.max_candidates or p.tile_candidates, p.tile_candidates)
        df = _match_by_tiles(ref_tif, sec_tif, (height, width),
                             replace(p, max_candidates=per_tile), label,
                             max_in_memory_pixels // TILES_AT_ONCE,
                             min(max(1, threads), TILES_AT_ONCE))  # fmt: skip
        scale = math.ceil(max(height, width) / VECTOR_PLOT_SIDE)
        with rasterio.open(ref_tif) as src:  # the vector plot over a reduced reference
            ref = read_average(src, (math.ceil(height / scale), math.ceil(width / scale)))
    if len(df) == 0:
        log.warning("%s: 0 tie points survived the depth-first check; no global model (the "
                    "flow starts from its own global search)", label)  # fmt: skip
        model = TiePointModel.none()
        df = df.assign(residual=np.nan, outlier=False)
    else:
        model, df = fit_models(df, p.outlier_sigma, label)
        inliers = df[~df["outlier"].astype(bool)]
        model.data["mean_shift"] = [float(inliers["dx"].mean()), float(inliers["dy"].mean())]
    model.data["similarity"] = (
        "NCC of CFOG descriptors (oriented-gradient channels)" if p.multimodal else "SAM"
    )
    model.data["params"] = asdict(p)
    model.data["mode_choice"] = mode_choice
    model.data["tiepoints"] = int(len(df))
    # the pair it was fitted on, which the flow checks before it starts from the model
    model.data["grid"] = grid.to_json()
    model.data["rasters"] = {"reference": Path(ref_tif).name, "secondary": Path(sec_tif).name}
    with atomic_path(out_csv) as tmp:
        df[CSV_COLUMNS].to_csv(tmp, index=False)
    if model_json:
        write_model(model, model_json)
    if png:
        plot_vectors(ref, df, png, label, scale)
    return model


def _match_window(
    ref: np.ndarray, sec: np.ndarray, p: TiePointParams, label: str, origin: tuple[int, int]
) -> pd.DataFrame:
    """:func:`match_tiepoints` on the valid overlap of two co-located arrays whose first pixel
    is grid pixel ``origin`` (row, col); positions in grid pixels."""
    from costack.registration.overlap import overlap_window

    # match on the valid overlap only (see costack.registration.overlap); positions back in grid
    # pixels
    window = overlap_window(ref, sec, margin=0)
    r0, c0 = (window[0].start, window[1].start) if window else (0, 0)
    df = match_tiepoints(ref[window] if window else ref, sec[window] if window else sec, p,
                         label)  # fmt: skip
    df[["ref_col", "sec_col"]] += c0 + origin[1]
    df[["ref_row", "sec_row"]] += r0 + origin[0]
    return df


def _match_by_tiles(
    ref_tif: str | Path, sec_tif: str | Path, shape: tuple[int, int], p: TiePointParams,
    label: str, max_pixels: int, threads: int = 1,
) -> pd.DataFrame:  # fmt: skip
    """Tie points of a scene-sized pair, tile by tile: the grid is cut into equal tiles of at
    most ``max_pixels`` and each tile is matched on its own (pyramid, Foerstner points, prior,
    depth-first LSM: Yan et al. 2016 per tile); a tile without valid data in both is skipped.
    ``threads`` tiles at a time (SciPy's filters and the compiled LSM release the GIL; each
    thread reads its own tile). Points come back in grid pixels, concatenated in tile order."""
    from concurrent.futures import ThreadPoolExecutor

    import rasterio
    from rasterio.windows import Window

    from costack.io.rasters import read_window

    h, w = shape
    side = math.isqrt(max_pixels)
    rows, cols = math.ceil(h / side), math.ceil(w / side)
    th, tw = math.ceil(h / rows), math.ceil(w / cols)

    def tile(origin: tuple[int, int]) -> pd.DataFrame | None:
        r0, c0 = origin
        win = Window(c0, r0, min(tw, w - c0), min(th, h - r0))
        with rasterio.open(ref_tif) as rsrc, rasterio.open(sec_tif) as ssrc:
            ref, sec = read_window(rsrc, win), read_window(ssrc, win)
        if not (np.isfinite(ref) & np.isfinite(sec)).any():
            return None
        where = f"{label}, tile rows {r0}-{r0 + win.height}, cols {c0}-{c0 + win.width}"
        return _match_window(ref, sec, p, where, (r0, c0))

    origins = [(r0, c0) for r0 in range(0, h, th) for c0 in range(0, w, tw)]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as ex:
        parts = [df for df in ex.map(tile, origins) if df is not None]
    log.info("%s: %d tiles of %d x %d px matched on %d thread(s)", label, len(parts), th, tw,
             max(1, threads))  # fmt: skip
    if not parts:
        return pd.DataFrame(columns=CSV_COLUMNS[:8])
    return pd.concat(parts, ignore_index=True)


def plot_vectors(
    ref: np.ndarray, df: pd.DataFrame, png: str | Path, label: str, scale: float = 1
) -> None:
    """Misregistration vectors over the reference, enlarged (like Yan et al. 2016, Fig. 5);
    ``ref`` reduced ``scale`` times (a tiled grid's plot): positions and vectors follow."""
    from costack.io.figures import png_figure

    if scale != 1:
        df = df.assign(ref_col=df["ref_col"] / scale, ref_row=df["ref_row"] / scale,
                       dx=df["dx"] / scale, dy=df["dy"] / scale)  # fmt: skip
        label = f"{label} (shown reduced {scale:g}x)"

    finite = ref[np.isfinite(ref)]
    lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0, 1)
    df = df.astype({"dx": float, "dy": float, "ref_col": float, "ref_row": float})
    mag = float(np.hypot(df["dx"], df["dy"]).median()) if len(df) else 1.0
    factor = max(1.0, round(0.04 * max(ref.shape) / max(mag, 1e-3)))
    good = ~df["outlier"].astype(bool)
    with png_figure(png, dpi=100, figsize=(8, 8)) as (_, ax):
        ax.imshow(ref, cmap="gray", vmin=lo, vmax=hi)
        for sel, color, name in ((good, "lime", "tie point"), (~good, "red", "outlier")):
            d = df[sel]
            if d.empty:
                continue
            ax.quiver(d["ref_col"] - 0.5, d["ref_row"] - 0.5, d["dx"] * factor, d["dy"] * factor,
                      color=color, angles="xy", scale_units="xy", scale=1, width=0.003,
                      label=f"{name} ({len(d)})")  # fmt: skip
        ax.set_title(f"{label}: misregistration vectors, enlarged x{factor:g}")
        if len(df):
            ax.legend(loc="lower right")
        else:
            ax.text(0.5, 0.5, "no tie point", transform=ax.transAxes, ha="center", color="red")
        ax.set_axis_off()
