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
  the shift exceeds one (coarse) pixel, or when at a finer level the match lands more than 1/3
  pixel from its projected position;
- 3.6 transformation fitting: translation (eq. 1), affine (eq. 2) and second-order polynomial
  (eq. 3) by least squares, each with the paper's RMSE (eq. 5, squared residuals over n - t);
  residual outliers are rejected at 3 sigma, iterated.

For SAR against optical, where SAM on raw intensities fails, both images are rank-transformed
(local rank, EFolki's filter) and the similarity is the absolute normalised correlation (the
radiometric gain of the LSM may then be negative: locally inverted contrast).
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

from costack import _kernels as K
from costack.errors import CostackError

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
    min_similarity_multimodal: float = 0.5
    rank_radius: int = 4
    outlier_sigma: float = 3.0


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


def _similarity(a: np.ndarray, b: np.ndarray, multimodal: bool) -> float:
    """SAM as the cosine of the angle between the patches (or |NCC| in multimodal mode)."""
    if multimodal:
        a0, b0 = a - a.mean(), b - b.mean()
        den = math.sqrt(float((a0 * a0).sum() * (b0 * b0).sum()))
        return abs(float((a0 * b0).sum()) / den) if den > 0 else 0.0
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / den if den > 0 else 0.0


def lsm(
    ref: np.ndarray,
    ref_ok: np.ndarray,
    sec: np.ndarray,
    sec_ok: np.ndarray,
    p_ref: tuple[float, float],
    p_sec: tuple[float, float],
    half: int,
    multimodal: bool,
    max_iterations: int = 20,
) -> tuple[tuple[float, float], float] | None:
    """Least-squares matching of the patch of ``ref`` centred at ``p_ref`` (row, col).

    Model (Gruen 1985): ref(x) = r0 + r1 sec(A x + t) over the patch, x relative to the patch
    centre, A = I at start and t = p_sec; Gauss-Newton on the 8 parameters, kept while the
    similarity improves. Returns ((row, col) in ``sec``, similarity) or None.
    """
    r0i, c0i = int(round(p_ref[0] - 0.5)), int(round(p_ref[1] - 0.5))
    if r0i - half < 0 or c0i - half < 0 or r0i + half >= ref.shape[0] or c0i + half >= ref.shape[1]:
        return None
    sl = (slice(r0i - half, r0i + half + 1), slice(c0i - half, c0i + half + 1))
    if not ref_ok[sl].all():
        return None
    g1 = ref[sl].astype(np.float64).ravel()
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    yy, xx = yy.ravel(), xx.ravel()
    # affine geometry: sec position = t + A (x, y); pixel-centre index = position - 0.5
    a = np.array([1.0, 0.0, 0.0, 1.0])  # a11 a12 a21 a22 (row/col)
    t = np.array(p_sec, dtype=np.float64) + np.array([r0i + 0.5 - p_ref[0], c0i + 0.5 - p_ref[1]])
    gy_img = ndimage.sobel(sec, axis=0) / 8.0
    gx_img = ndimage.sobel(sec, axis=1) / 8.0
    best: tuple[tuple[float, float], float] | None = None
    converged = False
    halvings = 0
    last_delta = np.zeros(6)
    for _ in range(max_iterations):
        rows = t[0] + a[0] * yy + a[1] * xx - 0.5
        cols = t[1] + a[2] * yy + a[3] * xx - 0.5
        if (
            rows.min() < 0
            or cols.min() < 0
            or rows.max() > sec.shape[0] - 1
            or cols.max() > sec.shape[1] - 1
        ):
            return best
        okw = ndimage.map_coordinates(sec_ok.astype(np.float32), [rows, cols], order=1)
        if (okw < 0.999).any():
            return best
        g2 = ndimage.map_coordinates(sec, [rows, cols], order=1)
        sim = _similarity(g1, g2, multimodal)
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
        gy = ndimage.map_coordinates(gy_img, [rows, cols], order=1)
        gx = ndimage.map_coordinates(gx_img, [rows, cols], order=1)
        # radiometry by linear regression of g1 on g2, then geometry by Gauss-Newton
        design = np.column_stack([np.ones_like(g2), g2])
        rad, *_ = np.linalg.lstsq(design, g1, rcond=None)
        if abs(rad[1]) < 1e-9:
            return best
        resid = g1 - (rad[0] + rad[1] * g2)
        j = rad[1] * np.column_stack([gy, gx, gy * yy, gy * xx, gx * yy, gx * xx])
        delta, *_ = np.linalg.lstsq(j, resid, rcond=None)
        if not np.all(np.isfinite(delta)) or np.hypot(delta[0], delta[1]) > half / 2:
            return best
        t += delta[:2]
        a += delta[2:]
        last_delta = delta.copy()
        converged = bool(np.hypot(delta[0], delta[1]) < 1e-3)
    return best


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
    """Tie points between two co-located images (NaN = nodata); one row per tie point."""
    p = params or TiePointParams()
    v1 = np.isfinite(ref)
    v2 = np.isfinite(sec)
    if not v1.any() or not v2.any():
        raise CostackError(
            "tiepoints", f"{label}: an input has no valid pixel", "check the colocated rasters"
        )
    a = np.where(v1, ref, 0).astype(np.float32)
    b = np.where(v2, sec, 0).astype(np.float32)
    if p.multimodal:
        a = K.rank_transform(a, v1.astype(np.uint8), p.rank_radius)
        b = K.rank_transform(b, v2.astype(np.uint8), p.rank_radius)
    elif min(a[v1].min(), b[v2].min()) < 0:  # SAM needs a common non-negative origin
        lo = min(a[v1].min(), b[v2].min())
        a, b = a - lo, b - lo
    factors = pyramid_factors(p.factors, min(ref.shape), p.patch_coarse)
    if tuple(factors) != tuple(p.factors):
        log.info("%s: image too small for factors %s, using %s", label, p.factors, factors)
    p = replace(p, factors=tuple(factors))
    levels = [(_masked_level(a, v1, f), _masked_level(b, v2, f)) for f in p.factors]
    threshold = p.min_similarity_multimodal if p.multimodal else p.min_similarity
    (ca, cv), _ = levels[-1]
    pts = feature_points(ca, cv, p.cell, p.roundness, margin=p.patch_coarse // 2 + 2)
    log.info("%s: %d Förstner points at the coarsest level", label, len(pts))
    rows = []
    top = len(p.factors) - 1
    for r, c in pts:
        p_ref = (r + 0.5, c + 0.5)
        d = (0.0, 0.0)
        ok = True
        sim = 0.0
        for k in range(top, -1, -1):
            (la, lv), (lb, lw) = levels[k]
            if k < top:  # project the coarser level's match to this level
                scale = p.factors[k + 1] / p.factors[k]
                p_ref = (math.floor(p_ref[0] * scale) + 0.5, math.floor(p_ref[1] * scale) + 0.5)
                d = (d[0] * scale, d[1] * scale)
            half = (p.patch_fine if k == 0 else p.patch_coarse) // 2
            guess = (p_ref[0] + d[0], p_ref[1] + d[1])
            m = lsm(la, lv, lb, lw, p_ref, guess, half, p.multimodal, p.max_iterations)
            if m is None or m[1] < threshold:
                ok = False
                break
            (mr, mc), sim = m
            nd = (mr - p_ref[0], mc - p_ref[1])
            jump = math.hypot(nd[0] - d[0], nd[1] - d[1])
            if (k == top and math.hypot(*nd) > 1.0) or (k < top and jump > p.max_jump):
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
) -> dict:
    """The tie-point step on two co-located rasters: CSV, model JSON and vector plot."""
    from costack.rasterio_io import atomic_path, read_float32

    p = params or TiePointParams()
    ref, grid, _ = read_float32(ref_tif)
    sec, _, _ = read_float32(sec_tif)
    df = match_tiepoints(ref, sec, p, label)
    if len(df) == 0:
        log.warning("%s: 0 tie points survived the depth-first check; no global model (the "
                    "flow starts from its own global search)", label)  # fmt: skip
        model = {"chosen": "none", "coefficients": None, "outliers": 0, "models": {}}
        df = df.assign(residual=np.nan, outlier=False)
    else:
        model, df = fit_models(df, p.outlier_sigma, label)
    model["similarity"] = "abs NCC of rank-transformed patches" if p.multimodal else "SAM"
    model["params"] = asdict(p)
    model["tiepoints"] = int(len(df))
    with atomic_path(out_csv) as tmp:
        df[CSV_COLUMNS].to_csv(tmp, index=False)
    if model_json:
        with atomic_path(model_json) as tmp:
            Path(tmp).write_text(json.dumps(model, indent=2) + "\n", encoding="utf-8")
    if png:
        plot_vectors(ref, df, png, label)
    return model


def model_init(model: dict, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """The displacement field (dx, dy) of a fitted model on a grid, or None without a model."""
    if not model or model.get("chosen") in (None, "none"):
        return None
    h, w = shape
    col, row = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    px, py = apply_model(model["chosen"], np.asarray(model["coefficients"]), col, row)
    return (px - col).astype(np.float32), (py - row).astype(np.float32)


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
