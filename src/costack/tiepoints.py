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

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from costack._kernels import sample_channels
from costack.errors import CostackError
from costack.flow import fill_nearest, masked_blur, resolution_sigma

log = logging.getLogger(__name__)

CSV_COLUMNS = ["ref_col", "ref_row", "sec_col", "sec_row", "dx", "dy", "similarity", "level",
               "residual", "outlier"]  # fmt: skip
#: coefficients per axis of each model (t of eq. 5)
MODEL_TERMS = {"translation": 1, "affine": 3, "polynomial2": 6}


@dataclass
class TiePointParams:
    """Parameters of :func:`match_tiepoints` (defaults from Yan et al. 2016)."""

    factors: tuple[int, ...] = (1, 3, 6, 12)
    patch_coarse: int = 21
    patch_fine: int = 35
    min_similarity: float = 0.995
    max_jump: float = 1.0 / 3.0
    cell: int = 2  # coarse pixels per point-selection cell
    roundness: float = 0.2
    max_iterations: int = 20
    multimodal: bool = False
    # SAR/optical: CFOG descriptors at a scale of cfog_sigma grid pixels (at least 1 level
    # pixel), larger patches, NCC threshold, and a depth-first tolerance of one pixel (SAR/optical
    # matches are rarely consistent to 1/3 px between levels)
    min_similarity_multimodal: float = 0.4
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


def _masked_level(img: np.ndarray, valid: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """One pyramid level: Gaussian low-pass then f x f block mean (centred), nodata masked."""
    if f == 1:
        return np.where(valid, img, 0).astype(np.float32), valid
    w = valid.astype(np.float32)
    sigma = 0.5 * f
    num = ndimage.gaussian_filter(np.where(valid, img, 0).astype(np.float32), sigma)
    den = ndimage.gaussian_filter(w, sigma)
    h, wd = (img.shape[0] // f) * f, (img.shape[1] // f) * f

    def block(a: np.ndarray) -> np.ndarray:
        return a[:h, :wd].reshape(h // f, f, wd // f, f).mean(axis=(1, 3))

    n, d, cover = block(num), block(den), block(w)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(d > 1e-6, n / d, 0).astype(np.float32)
    ok = cover > 0.99
    return np.where(ok, out, 0).astype(np.float32), ok


def feature_points(
    img: np.ndarray, valid: np.ndarray, cell: int, roundness: float, margin: int = 3
) -> np.ndarray:
    """Förstner points (row, col) on ``img``, the strongest per ``cell`` x ``cell`` block.

    Förstner and Gülch (1987): w = det(N) / tr(N) measures distinctness, q = 4 det(N) / tr(N)^2
    roundness (1 for a corner or a circular feature, 0 for an edge).
    """
    from skimage.feature import corner_foerstner

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        w, q = corner_foerstner(img, sigma=1.0)
    w = np.nan_to_num(w)
    q = np.nan_to_num(q)
    ok = ndimage.binary_erosion(valid, iterations=margin, border_value=0) & (q > roundness)
    score = np.where(ok, w, 0)
    peak = (score == ndimage.maximum_filter(score, size=3)) & (score > 0)
    if not peak.any():
        return np.zeros((0, 2), int)
    thresh = np.percentile(score[peak], 10)
    rows, cols = np.nonzero(peak & (score >= thresh))
    s = score[rows, cols]
    keys = (rows // cell) * 100_000 + cols // cell
    order = np.lexsort((-s, keys))
    keys_sorted = keys[order]
    first = np.ones(order.size, bool)
    first[1:] = keys_sorted[1:] != keys_sorted[:-1]
    sel = order[first]
    return np.column_stack([rows[sel], cols[sel]])


#: orientations of the CFOG descriptor (multimodal matching)
CFOG_ORIENTATIONS = 8


def cfog(
    img: np.ndarray, valid: np.ndarray, sigma: float = 1.0, norm_sigma: float = 8.0
) -> np.ndarray:
    """Channel features of oriented gradients (Ye, Bruzzone, Shan, Bovolo, Zhu 2019, IEEE TGRS
    57(11):9059, "Fast and robust matching for multimodal remote sensing image registration").

    For orientations theta_i in [0, pi): g_i = |cos(theta_i) gx + sin(theta_i) gy| (eq. 3 with
    the absolute value, so that inverted contrast between sensors does not matter), smoothed by a
    Gaussian in space and by [1, 2, 1] across orientations (eq. 4), then divided by the local
    mean gradient energy (Gaussian of ``norm_sigma``; the paper normalises every pixel).
    Edges at the same place give the same descriptor whatever the two sensors' radiometry,
    which SAM or correlation of intensities cannot offer for SAR/optical.
    Returns (CFOG_ORIENTATIONS, H, W) float32, zero on nodata.
    """
    sm = masked_blur(img, valid, sigma)
    gvalid = ndimage.binary_erosion(valid, iterations=1, border_value=0)
    gy, gx = np.gradient(sm)
    theta = np.pi * np.arange(CFOG_ORIENTATIONS) / CFOG_ORIENTATIONS
    ch = np.abs(np.cos(theta)[:, None, None] * gx + np.sin(theta)[:, None, None] * gy)
    # every smoothing is a normalised convolution over the pixels whose gradient is valid, so
    # that the border of nodata (a false edge) never leaks into a valid pixel's descriptor
    ch = np.stack([masked_blur(c, gvalid, sigma) for c in ch])
    ch = (2 * ch + np.roll(ch, 1, axis=0) + np.roll(ch, -1, axis=0)) / 4
    # regional rather than per-pixel normalisation: per pixel, the speckle of a flat SAR field
    # would weigh as much as an edge (measured: 73% of coarse matches within one pixel with a
    # regional norm over 8 px, 18% with the per-pixel norm, on the demo's SAR/optical pair)
    norm = masked_blur(np.sqrt((ch * ch).sum(axis=0)), gvalid, norm_sigma) + 1e-6
    ok = ndimage.binary_erosion(valid, iterations=2, border_value=0)
    return np.where(ok, ch / norm, 0).astype(np.float32)


@dataclass
class MatchImages:
    """One pyramid level prepared for least-squares matching.

    ``ref`` (C, H, W) patches are read at integer positions; the secondary is stored as cubic
    B-spline coefficients (values and row/column derivatives, Unser 1999) so that resampling
    it at sub-pixel positions during LSM is exact for the spline and cheap per iteration; smooth
    descriptors are stored as values and sampled bilinearly (``order`` 1).
    """

    ref: np.ndarray
    ref_ok: np.ndarray
    sec: np.ndarray
    sec_gy: np.ndarray
    sec_gx: np.ndarray
    sec_ok: np.ndarray
    similarity: str  # "sam" (intensities), "ncc" (CFOG descriptors) or "absncc"
    affine: bool = True  # affine patch geometry, else a translation
    order: int = 3  # 3: cubic B-spline coefficients are stored; 1: values, bilinear


def representation(
    ref: np.ndarray,
    ref_ok: np.ndarray,
    sec: np.ndarray,
    sec_ok: np.ndarray,
    multimodal: bool,
    sigma: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What is matched: intensities (1, H, W) for SAM, or CFOG descriptors (C, H, W) for
    SAR/optical; with the masks of pixels whose descriptor is valid."""
    if multimodal:
        r_ok = ndimage.binary_erosion(ref_ok, iterations=2, border_value=0)
        s_ok = ndimage.binary_erosion(sec_ok, iterations=2, border_value=0)
        return cfog(ref, ref_ok, sigma), r_ok, cfog(sec, sec_ok, sigma), s_ok
    return ref[None].astype(np.float32), ref_ok, sec[None].astype(np.float32), sec_ok


def prepare(
    ref: np.ndarray,
    ref_ok: np.ndarray,
    sec: np.ndarray,
    sec_ok: np.ndarray,
    multimodal: bool,
    sigma: float = 1.0,
) -> MatchImages:
    """A co-located pair (nodata anywhere) made ready for :func:`lsm`."""
    r, r_ok, s, s_ok = representation(ref, ref_ok, sec, sec_ok, multimodal, sigma)
    if not multimodal:
        s = fill_nearest(s[0], s_ok)[None]  # no ringing of the spline at nodata

    # descriptors are smooth (Gaussian of at least one pixel): bilinear sampling suffices for
    # them and costs a quarter of the cubic spline's 16 taps per sample, on 8 channels (20 -> 14 s)
    order = 1 if multimodal else 3

    def spline(a: np.ndarray) -> np.ndarray:
        if order == 1:
            return a.astype(np.float32)
        return np.stack([ndimage.spline_filter(c, 3, output=np.float32, mode="mirror") for c in a])

    gy = np.stack([np.gradient(c, axis=0) for c in s])
    gx = np.stack([np.gradient(c, axis=1) for c in s])
    # descriptor patches are matched by translation: the 6-parameter affine drifts on them
    # (jumps between levels of 0.73 coarse px median with it, 0.37 without, SAR/optical demo)
    return MatchImages(r, r_ok, spline(s), spline(gy), spline(gx), s_ok.astype(np.float32),
                       "ncc" if multimodal else "sam", affine=not multimodal,
                       order=order)  # fmt: skip


def _similarity(a: np.ndarray, b: np.ndarray, kind: str) -> float:
    """SAM as the cosine of the angle between the patches (Yan et al. 2016, eq. 4), or the
    normalised correlation of the patches (means removed per channel; "absncc": its absolute
    value, for locally inverted contrast)."""
    if kind != "sam":
        a = a - a.mean(axis=1, keepdims=True)
        b = b - b.mean(axis=1, keepdims=True)
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    r = float((a * b).sum()) / den if den > 0 else 0.0
    return abs(r) if kind == "absncc" else r


def _sample(coef: np.ndarray, rows: np.ndarray, cols: np.ndarray, order: int) -> np.ndarray:
    """Cubic B-spline (or bilinear) interpolation of every channel at (rows, cols); (C, n)."""
    return sample_channels(coef, rows, cols, order)


def _solve(j: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares ``j x = y`` by the normal equations (a few well-posed columns), or NaN."""
    try:
        return np.linalg.solve(j.T @ j, j.T @ y)
    except np.linalg.LinAlgError:
        return np.full(j.shape[1], np.nan)


def lsm(
    m: MatchImages,
    p_ref: tuple[float, float],
    p_sec: tuple[float, float],
    half: int,
    max_iterations: int = 20,
) -> tuple[tuple[float, float], float] | None:
    """Least-squares matching of the patch of the reference centred at ``p_ref`` (row, col).

    Model (Gruen 1985): ref(x) = r0 + r1 sec(A x + t) over the patch, x relative to the patch
    centre, A = I at start and t = p_sec; Gauss-Newton on the geometric parameters with the
    linear radiometry re-fitted at each step, kept while the similarity improves (a step that
    lowers it is halved, up to 4 times). Returns ((row, col) in the secondary, similarity) or
    None when the patch leaves the valid data.
    """
    r0i, c0i = int(round(p_ref[0] - 0.5)), int(round(p_ref[1] - 0.5))
    h, w = m.ref_ok.shape
    if r0i - half < 0 or c0i - half < 0 or r0i + half >= h or c0i + half >= w:
        return None
    sl = (slice(r0i - half, r0i + half + 1), slice(c0i - half, c0i + half + 1))
    if not m.ref_ok[sl].all():
        return None
    nch = m.ref.shape[0]
    g1 = m.ref[(slice(None), *sl)].reshape(nch, -1).astype(np.float64)
    g1_flat = g1.ravel()
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    yy, xx = yy.ravel(), xx.ravel()
    yyc, xxc = np.tile(yy, nch), np.tile(xx, nch)
    # affine geometry: sec position = t + A (y, x); pixel-centre index = position - 0.5
    a = np.array([1.0, 0.0, 0.0, 1.0])  # a11 a12 a21 a22 (row/col)
    t = np.array(p_sec, dtype=np.float64) + np.array([r0i + 0.5 - p_ref[0], c0i + 0.5 - p_ref[1]])
    best: tuple[tuple[float, float], float] | None = None
    converged = False
    halvings = 0
    last_delta = np.zeros(6)
    for _ in range(max_iterations):
        rows = t[0] + a[0] * yy + a[1] * xx - 0.5
        cols = t[1] + a[2] * yy + a[3] * xx - 0.5
        if rows.min() < 0 or cols.min() < 0 or rows.max() > h - 1 or cols.max() > w - 1:
            return best
        okw = sample_channels(m.sec_ok[None], rows, cols, 1)
        if (okw < 0.999).any():
            return best
        g2 = _sample(m.sec, rows, cols, m.order)
        sim = _similarity(g1, g2, m.similarity)
        # iterate while the similarity improves (ties within 1e-6 count as improving, so an
        # already aligned patch still gets its sub-pixel refinement)
        if best is not None and sim < best[1] - 1e-6:
            # the step overshot: halve it (a backtracking line search), up to 4 times
            if halvings >= 4:
                return best
            halvings += 1
            last_delta = last_delta / 2
            t -= last_delta[:2]
            a -= last_delta[2:]
            continue
        halvings = 0
        best = ((float(t[0]), float(t[1])), max(sim, best[1]) if best else sim)
        if converged:
            return best
        gy = _sample(m.sec_gy, rows, cols, m.order).ravel()
        gx = _sample(m.sec_gx, rows, cols, m.order).ravel()
        g2f = g2.ravel()
        # radiometry by linear regression of g1 on g2, then geometry by Gauss-Newton
        design = np.column_stack([np.ones_like(g2f), g2f])
        rad = _solve(design, g1_flat)
        if not abs(rad[1]) >= 1e-9:
            return best
        resid = g1_flat - (rad[0] + rad[1] * g2f)
        if m.affine:
            j = rad[1] * np.column_stack([gy, gx, gy * yyc, gy * xxc, gx * yyc, gx * xxc])
            delta = _solve(j, resid)
        else:
            j = rad[1] * np.column_stack([gy, gx])
            delta = np.zeros(6)
            delta[:2] = _solve(j, resid)
        if not np.all(np.isfinite(delta)) or np.hypot(delta[0], delta[1]) > half / 2:
            return best
        t += delta[:2]
        a += delta[2:]
        last_delta = delta.copy()
        converged = bool(np.hypot(delta[0], delta[1]) < 1e-3)
    return best


def _cfog_pair(ref: np.ndarray, sec: np.ndarray):
    """CFOG descriptors (one-pixel scale) of two co-located images with NaN as nodata, and the
    masks where they are valid (see :func:`representation`)."""
    v1, v2 = np.isfinite(ref), np.isfinite(sec)
    return representation(np.where(v1, ref, 0).astype(np.float32), v1,
                          np.where(v2, sec, 0).astype(np.float32), v2, True, 1.0)  # fmt: skip


def multimodal_prior(ref: np.ndarray, sec: np.ndarray, max_shift: float) -> tuple[float, float]:
    """Global translation (dx, dy) of a SAR/optical pair (NaN = nodata): :func:`prior_shift` on
    CFOG descriptors at one-pixel scale (Ye et al. 2019), which survive inverted and
    non-monotonic contrast between the sensors where intensity correlation does not."""
    dy, dx = prior_shift(*_cfog_pair(ref, sec), max_shift)
    return dx, dy


def multimodal_similarity(ref: np.ndarray, sec: np.ndarray) -> float:
    """NCC of the CFOG descriptors of two co-located images over their common valid pixels
    (channels' means removed; Ye et al. 2019, eq. 6 over the whole overlap): how well a
    co-registered SAR image's structure lies on the optical reference's."""
    a, a_ok, b, b_ok = _cfog_pair(ref, sec)
    both = a_ok & b_ok
    if both.sum() < 16:
        return float("nan")
    x = a[:, both].astype(np.float64)
    y = b[:, both].astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    y -= y.mean(axis=1, keepdims=True)
    den = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else float("nan")


def prior_shift(
    ref: np.ndarray, ref_ok: np.ndarray, sec: np.ndarray, sec_ok: np.ndarray, max_shift: float
) -> tuple[float, float]:
    """Global translation (row, col) of the secondary, by masked cross-correlation.

    The zero-mean images (or descriptor channels) are correlated by FFT and the sum of
    products is divided by the overlap of the two masks at every shift (a normalised
    cross-correlation in the sense of Padfield 2012, IEEE TIP 21(5)); the best shift within
    ``max_shift`` pixels is returned. It seeds the coarsest level, where the paper assumes
    the misregistration below one coarse pixel; the check is then made against this prior.
    """
    ok1 = ref_ok.astype(np.float64)
    ok2 = sec_ok
    h, w = ok1.shape
    r = int(min(max(1, math.ceil(max_shift)), h // 3, w // 3))
    shape = (h + r, w + r)
    f = np.fft.rfft2
    acc = np.zeros(shape)
    for a, b in zip(ref, sec, strict=True):
        a0 = np.where(ok1 > 0, a - a[ok1 > 0].mean(), 0)
        b0 = np.where(ok2, b - b[ok2].mean(), 0)
        acc += np.fft.irfft2(f(b0, shape) * np.conj(f(a0, shape)), shape)
    cnt = np.fft.irfft2(f(ok2.astype(float), shape) * np.conj(f(ok1, shape)), shape)
    best, arg = -np.inf, (0, 0)
    min_overlap = 0.25 * ok1.sum()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dx * dx + dy * dy > max_shift * max_shift + 1e-9:
                continue
            n = cnt[dy % shape[0], dx % shape[1]]
            if n < min_overlap:
                continue
            v = acc[dy % shape[0], dx % shape[1]] / n
            if v > best:
                best, arg = v, (dy, dx)

    def score(dy: int, dx: int) -> float:
        n = cnt[dy % shape[0], dx % shape[1]]
        return acc[dy % shape[0], dx % shape[1]] / n if n >= min_overlap else -np.inf

    def vertex(sm: float, s0: float, sp: float) -> float:  # parabola through three scores
        den = sm - 2 * s0 + sp
        if not np.isfinite(den) or den >= 0:
            return 0.0
        return float(np.clip(0.5 * (sm - sp) / den, -0.5, 0.5))

    dy, dx = arg
    return (dy + vertex(score(dy - 1, dx), best, score(dy + 1, dx)),
            dx + vertex(score(dy, dx - 1), best, score(dy, dx + 1)))  # fmt: skip


def _fit(src: np.ndarray, dst: np.ndarray, name: str) -> np.ndarray:
    """Least-squares coefficients (2 x t) mapping ref (col, row) to sec (col, row)."""
    x, y = src[:, 0], src[:, 1]
    if name == "translation":
        return (dst - src).mean(axis=0)[:, None]
    cols = [np.ones_like(x), x, y]
    if name == "polynomial2":
        cols += [x * y, x * x, y * y]
    design = np.column_stack(cols)
    coef, *_ = np.linalg.lstsq(design, dst, rcond=None)
    return coef.T


def apply_model(name: str, coef: np.ndarray, col: np.ndarray, row: np.ndarray):
    """Secondary (col, row) of reference (col, row) under a fitted model."""
    coef = np.asarray(coef, dtype=np.float64)
    if name == "translation":
        return col + coef[0, 0], row + coef[1, 0]
    terms = [np.ones_like(col), col, row]
    if name == "polynomial2":
        terms += [col * row, col * col, row * row]
    return (sum(c * t for c, t in zip(coef[0], terms, strict=True)),
            sum(c * t for c, t in zip(coef[1], terms, strict=True)))  # fmt: skip


def rmse(src: np.ndarray, dst: np.ndarray, name: str, coef: np.ndarray) -> float:
    """Eq. 5 of Yan et al. 2016: sqrt(sum of squared residual distances / (n - t))."""
    px, py = apply_model(name, coef, src[:, 0], src[:, 1])
    ss = float(((px - dst[:, 0]) ** 2 + (py - dst[:, 1]) ** 2).sum())
    n, t = len(src), MODEL_TERMS[name]
    return math.sqrt(ss / (n - t)) if n > t else float("nan")


def fit_models(
    df: pd.DataFrame, sigma: float = 3.0, label: str = "tie points"
) -> tuple[dict, pd.DataFrame]:
    """Fit the three models with iterated 3-sigma outlier rejection; choose one.

    The affine is chosen unless the polynomial's RMSE is below 80% of the affine's with at
    least 30 points; with fewer than 6 points (10 for the polynomial) the simpler model is
    used and a warning names the count.
    """
    src = df[["ref_col", "ref_row"]].to_numpy(float)
    dst = df[["sec_col", "sec_row"]].to_numpy(float)
    inlier = np.ones(len(df), bool)
    n = len(df)
    usable = "affine" if n >= 6 else "translation"
    if n < 6:
        log.warning("%s: only %d tie points, falling back to a translation", label, n)
    for _ in range(10):
        coef = _fit(src[inlier], dst[inlier], usable)
        px, py = apply_model(usable, coef, src[:, 0], src[:, 1])
        res = np.hypot(px - dst[:, 0], py - dst[:, 1])
        s = float(np.sqrt(np.mean(res[inlier] ** 2)))
        new = res <= max(sigma * s, 1e-6)
        if new.sum() < max(3, MODEL_TERMS[usable]) or (new == inlier).all():
            break
        inlier = new
    models = {}
    for name in MODEL_TERMS:
        k = int(inlier.sum())
        if k <= MODEL_TERMS[name] or (name == "polynomial2" and k < 10):
            continue
        c = _fit(src[inlier], dst[inlier], name)
        models[name] = {"coefficients": c.tolist(), "rmse": rmse(src[inlier], dst[inlier], name, c),
                        "n": k}  # fmt: skip
    chosen = usable
    if (
        "polynomial2" in models
        and models["polynomial2"]["n"] >= 30
        and models["polynomial2"]["rmse"] < 0.8 * models["affine"]["rmse"]
    ):
        chosen = "polynomial2"
    coef = np.asarray(models[chosen]["coefficients"])
    px, py = apply_model(chosen, coef, src[:, 0], src[:, 1])
    out = df.copy()
    out["residual"] = np.hypot(px - dst[:, 0], py - dst[:, 1])
    out["outlier"] = ~inlier
    result = {"chosen": chosen, "coefficients": models[chosen]["coefficients"],
              "outliers": int((~inlier).sum()), "models": models,
              "convention": "reference (col, row) -> secondary (col, row), grid pixels, "
                            "GDAL convention (first pixel centre at 0.5, 0.5)"}  # fmt: skip
    return result, out


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
    raw = [(_masked_level(a, v1, f), _masked_level(b, v2, f)) for f in p.factors]
    threshold = p.min_similarity_multimodal if p.multimodal else p.min_similarity
    patches = (
        (p.patch_fine_multimodal, p.patch_coarse_multimodal)
        if p.multimodal
        else (p.patch_fine, p.patch_coarse)
    )
    (ca, cv), (cb, cw) = raw[-1]
    pts = feature_points(ca, cv, p.cell, p.roundness, margin=patches[1] // 2 + 2)
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
    levels = [
        prepare(la, lv, lb, lw, p.multimodal, max(1.0, p.cfog_sigma / f))
        for f, ((la, lv), (lb, lw)) in zip(p.factors, raw, strict=True)
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
            m = lsm(levels[k], p_ref, guess, half, iterations)
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


def run_tiepoints(
    ref_tif: str | Path,
    sec_tif: str | Path,
    out_csv: str | Path,
    model_json: str | Path | None = None,
    png: str | Path | None = None,
    params: TiePointParams | None = None,
    label: str = "secondary",
    resolution_ratio: float = 1.0,
    mode: str | None = "auto",
) -> dict:
    """The tie-point step on two co-located rasters: CSV, model JSON and vector plot.

    ``mode``: the flow mode of the pair (:func:`costack.coregister.decide_mode`, ``auto`` by
    default, as the flow step decides it); GEFolki's pairs (SAR against optical, locally
    inverted contrast) are matched on CFOG descriptors. None keeps ``params.multimodal``.

    ``resolution_ratio``: the secondary's native pixel over the grid's. A secondary over 1.5x
    coarser (30 m on a 10 m grid) is matched against the reference blurred to its resolution
    (:func:`costack.flow.resolution_sigma`); on the demo's 30 m pair this took the tie points
    from 77 to 127 and their error from 0.28 to 0.19 px RMSE.
    """
    from costack.rasterio_io import atomic_path, read_float32

    p = params or TiePointParams()
    mode_choice = None
    if mode is not None:
        from costack.coregister import matches_on_descriptors

        multimodal, mode_choice = matches_on_descriptors(mode, ref_tif, sec_tif, p.max_shift)
        p = replace(p, multimodal=multimodal)
    if not p.multimodal and p.reference_blur == 0:
        p = replace(p, reference_blur=resolution_sigma(resolution_ratio))
    from costack.overlap import overlap_window

    ref, grid, _ = read_float32(ref_tif)
    sec, _, _ = read_float32(sec_tif)
    # match on the valid overlap only (see costack.overlap); positions back in grid pixels
    window = overlap_window(ref, sec, margin=0)
    r0, c0 = (window[0].start, window[1].start) if window else (0, 0)
    df = match_tiepoints(ref[window] if window else ref, sec[window] if window else sec, p,
                         label)  # fmt: skip
    df[["ref_col", "sec_col"]] += c0
    df[["ref_row", "sec_row"]] += r0
    if len(df) == 0:
        log.warning("%s: 0 tie points survived the depth-first check; no global model (the "
                    "flow starts from its own global search)", label)  # fmt: skip
        model = {"chosen": "none", "coefficients": None, "outliers": 0, "models": {}}
        df = df.assign(residual=np.nan, outlier=False)
    else:
        model, df = fit_models(df, p.outlier_sigma, label)
        inliers = df[~df["outlier"].astype(bool)]
        model["mean_shift"] = [float(inliers["dx"].mean()), float(inliers["dy"].mean())]
    model["similarity"] = (
        "NCC of CFOG descriptors (oriented-gradient channels)" if p.multimodal else "SAM"
    )
    model["params"] = asdict(p)
    model["mode_choice"] = mode_choice
    model["tiepoints"] = int(len(df))
    with atomic_path(out_csv) as tmp:
        df[CSV_COLUMNS].to_csv(tmp, index=False)
    if model_json:
        with atomic_path(model_json) as tmp:
            Path(tmp).write_text(json.dumps(model, indent=2) + "\n", encoding="utf-8")
    if png:
        plot_vectors(ref, df, png, label)
    return model


def model_init(
    model: dict, shape: tuple[int, int], scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray] | None:
    """The displacement field (dx, dy) of a fitted model on a grid, or None without a model.

    ``scale``: grid pixels per pixel of ``shape`` (a decimated grid, e.g. 4 for the tiled
    flow's coarse pass); the field is then in those coarser pixels.
    """
    if not model or model.get("chosen") in (None, "none"):
        return None
    h, w = shape
    col, row = np.meshgrid((np.arange(w) + 0.5) * scale, (np.arange(h) + 0.5) * scale)
    px, py = apply_model(model["chosen"], np.asarray(model["coefficients"]), col, row)
    return ((px - col) / scale).astype(np.float32), ((py - row) / scale).astype(np.float32)


def plot_vectors(ref: np.ndarray, df: pd.DataFrame, png: str | Path, label: str) -> None:
    """Misregistration vectors over the reference, enlarged (like Yan et al. 2016, Fig. 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from costack.rasterio_io import atomic_path

    fig, ax = plt.subplots(figsize=(8, 8))
    finite = ref[np.isfinite(ref)]
    lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0, 1)
    ax.imshow(ref, cmap="gray", vmin=lo, vmax=hi)
    df = df.astype({"dx": float, "dy": float, "ref_col": float, "ref_row": float})
    mag = float(np.hypot(df["dx"], df["dy"]).median()) if len(df) else 1.0
    factor = max(1.0, round(0.04 * max(ref.shape) / max(mag, 1e-3)))
    good = ~df["outlier"].astype(bool)
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
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
