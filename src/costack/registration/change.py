"""Change-aware flow: where the two images do not support a match, the displacement comes from
the stable surroundings (arrays only, no file I/O).

A dense flow explains every difference between the images by a displacement: over a flood, a
burn scar or a cloud it bends the co-registered secondary exactly where the user looks for the
change. Here the pixels whose match the data does not support are found and their displacement
is taken from the reliable flow around them:

1. unsupported (:func:`unsupported`): masked or invalid pixels (nodata, a cloud mask) in either
   image, seen through the flow; pixels where no window supported the flow; pixels whose
   confidence (:func:`costack.folki.confidence`: the structure tensor's smaller eigenvalue and
   the residual after warping, Shi and Tomasi 1994) is near zero, i.e. the warped secondary does
   not resemble the reference there (changed content) or nothing constrains the match
   (featureless). The map is cleaned (a small opening drops isolated pixels) and widened by the
   flow's fine window (the windows of pixels near a change see it too).
2. filled (:func:`fill_from_surroundings`): a robust global model of the reliable flow (an
   affine, or a second-order polynomial when it fits much better: Yan et al. 2016, eqs. 2-3,
   fitted by iteratively reweighted least squares with Tukey's biweight) plus a smooth
   interpolation of the reliable flow's residual to it, by normalised convolution on a pyramid
   (push-pull; Knutsson and Westin 1993, Gortler et al. 1996), which continues the surroundings'
   local detail into the area. Reliable pixels keep their own flow; the two are blended over a
   few pixels at the boundary.

The support map (1 = the data supported the flow, 0 = taken from the surroundings) is returned
so that the file-level step can publish where registration came from the surroundings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from numba import njit, prange
from scipy import ndimage

from costack.registration import _kernels as K
from costack.registration.folki import FlowParams, FlowResult, estimate_flow

#: confidence below which a pixel's match is taken as unsupported. costack's confidence is
#: lmin / (lmin + median lmin) * exp(-(res / median res)^2 / 2): a stable pixel sits near its
#: median (about 0.3 on the bench's images), a changed one near 0 (bench/change_bench.py:
#: the 90th percentile inside floods and new texture is 0.000).
CONFIDENCE_FLOOR = 0.02

#: featureless: the local variance of both images under this share of their median local
#: variance; low confidence there is the lack of structure, not a change, and the flow's own
#: regularisation already carries the surroundings' displacement in (bench/flow_bench.py's
#: 2000 x 2000 LIDAR pair, whose dark areas are flat: 0.140 px there with the flow's own
#: estimate, 0.205 with the fill)
FEATURELESS = 0.03

#: the decision and the fill work on blocks of BLOCK x BLOCK pixels: a block is unsupported
#: when most of its pixels are
BLOCK = 4

#: unsupported blocks are widened by this many pixels (about the flow's fine window radius:
#: the windows of pixels next to a change see it too)
WIDEN_PX = 8

#: the own flow and the fill are blended over about this many pixels at the boundary
BLEND_PX = 8

#: the share of the blocks that must support the flow for :func:`hold` to fit a quadratic model
#: of the surroundings, and an affine; under both a constant (a sliver of support does not
#: constrain a surface across the image)
POLYNOMIAL_SUPPORT = 0.25
AFFINE_SUPPORT = 0.05

#: held displacements stay within the supported ones' range widened by its span, at least this
HELD_MARGIN_PX = 1.0


@dataclass
class ChangeResult:
    """A flow held to its stable surroundings where the data did not support it.

    ``support``: float32 in [0, 1], 1 where the displacement is the data's own, 0 where it
    was taken from the surroundings, in between over the blend at the boundary."""

    dx: np.ndarray
    dy: np.ndarray
    confidence: np.ndarray
    support: np.ndarray
    params: FlowParams
    stats: dict = field(default_factory=dict)


@njit(parallel=True, cache=True)
def _blocks(conf, dx, dy, extra, ref, sec, floor, f, counts, sums, moments):  # pragma: no cover
    """Per block of f x f pixels: ``counts`` (low confidence or no flow, masked (``extra``
    set), supported), ``sums`` of dx and dy over the supported pixels, and ``moments`` of the
    valid pixels of ``ref`` and ``sec`` (count, sum, sum of squares each)."""
    h, w = conf.shape
    hc, wc = counts.shape[:2]
    use_extra = extra.shape[0] == h
    for bi in prange(hc):
        c = np.zeros((wc, 3), np.int64)
        s = np.zeros((wc, 2), np.float64)
        m = np.zeros((wc, 6), np.float64)
        for i in range(bi * f, min(bi * f + f, h)):
            ci, xi, yi, ri, si = conf[i], dx[i], dy[i], ref[i], sec[i]
            for j in range(w):
                bj = j // f
                a = ri[j]
                if np.isfinite(a):
                    m[bj, 0] += 1.0
                    m[bj, 1] += a
                    m[bj, 2] += a * a
                b = si[j]
                if np.isfinite(b):
                    m[bj, 3] += 1.0
                    m[bj, 4] += b
                    m[bj, 5] += b * b
                x = xi[j]
                y = yi[j]
                if use_extra and extra[i, j] != 0:
                    c[bj, 1] += 1
                elif ci[j] >= floor and np.isfinite(x) and np.isfinite(y):
                    c[bj, 2] += 1
                    s[bj, 0] += x
                    s[bj, 1] += y
                else:
                    c[bj, 0] += 1
        counts[bi] = c
        sums[bi] = s
        moments[bi] = m


def featureless(moments: np.ndarray, share: float, window: int = 3) -> np.ndarray:
    """Blocks whose neighbourhood (``window`` x ``window`` blocks) is featureless in both
    images: local variance under ``share`` of the image's median local variance, in each."""
    out = np.ones(moments.shape[:2], bool)
    box = ndimage.uniform_filter(moments.astype(np.float32), (window, window, 1), mode="nearest")
    for k in (0, 3):
        n, s1, s2 = box[..., k], box[..., k + 1], box[..., k + 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            var = s2 / n - (s1 / n) ** 2
        ok = n > 0.5 * moments[..., k].max()
        if not ok.any():
            return np.zeros(moments.shape[:2], bool)
        out &= ok & (var < share * float(np.median(var[ok])))
    return out


@njit(parallel=True, cache=True)
def _combine(fx, fy, sup, hard, touched, f, ox, oy, osup):  # pragma: no cover - compiled
    """In the ``touched`` blocks of the full-resolution ``ox``, ``oy`` (the own flow on
    entry): the coarse fill (fx, fy) and support ``sup`` upsampled bilinearly (block
    centres), support 0 in ``hard`` blocks and where the flow is unknown; out = support * own
    + (1 - support) * fill. ``osup`` (1 on entry) receives the support."""
    h, w = ox.shape
    hc, wc = fx.shape
    for bi in prange(hc):
        for bj in range(wc):
            if not touched[bi, bj]:
                continue
            for i in range(bi * f, min(bi * f + f, h)):
                yc = min(max((i + 0.5) / f - 0.5, 0.0), hc - 1.0)
                y0 = min(int(yc), max(hc - 2, 0))
                y1 = min(y0 + 1, hc - 1)
                ty = yc - y0
                for j in range(bj * f, min(bj * f + f, w)):
                    xc = min(max((j + 0.5) / f - 0.5, 0.0), wc - 1.0)
                    x0 = min(int(xc), max(wc - 2, 0))
                    x1 = min(x0 + 1, wc - 1)
                    tx = xc - x0
                    w00 = (1 - ty) * (1 - tx)
                    w01 = (1 - ty) * tx
                    w10 = ty * (1 - tx)
                    w11 = ty * tx
                    s = w00 * sup[y0, x0] + w01 * sup[y0, x1] + w10 * sup[y1, x0]
                    s += w11 * sup[y1, x1]
                    a = ox[i, j]
                    b = oy[i, j]
                    if hard[bi, bj] or not (np.isfinite(a) and np.isfinite(b)):
                        s = 0.0
                    if s >= 1.0:
                        continue
                    gx = w00 * fx[y0, x0] + w01 * fx[y0, x1] + w10 * fx[y1, x0]
                    gx += w11 * fx[y1, x1]
                    gy = w00 * fy[y0, x0] + w01 * fy[y0, x1] + w10 * fy[y1, x0]
                    gy += w11 * fy[y1, x1]
                    if s <= 0.0:
                        ox[i, j] = gx
                        oy[i, j] = gy
                        osup[i, j] = 0.0
                    else:
                        ox[i, j] = s * a + (1 - s) * gx
                        oy[i, j] = s * b + (1 - s) * gy
                        osup[i, j] = s


def robust_model(
    x: np.ndarray, y: np.ndarray, tx: np.ndarray, ty: np.ndarray, weight: np.ndarray,
    iterations: int = 6, names: tuple[str, ...] = ("affine", "polynomial2"),
) -> tuple[str, np.ndarray, np.ndarray]:  # fmt: skip
    """A global model of the reliable flow (tx, ty at points x, y, normalised coordinates):
    an affine, or the second-order polynomial when its robust RMS is under 80 % of the
    affine's (Yan et al. 2016 eqs. 2-3 and costack.tiepoint_model's rule), each fitted by
    iteratively reweighted least squares with Tukey's biweight (c = 4.685 x 1.4826 MAD).
    ``names``: the models allowed (:func:`hold` allows fewer when the support is small; a
    ``constant`` is the weighted robust mean). Returns (name, x coefficients, y
    coefficients) over (1[, x, y[, xy, x^2, y^2]])."""
    fits = {}
    for name in names:
        a = _design(x, y, name)
        wt = weight.astype(np.float64)
        cx = cy = np.zeros(a.shape[1])
        r = np.zeros(x.size)
        for _ in range(iterations):
            aw = a * wt[:, None]
            normal = aw.T @ a + 1e-12 * np.eye(a.shape[1])
            cx = np.linalg.solve(normal, aw.T @ tx)
            cy = np.linalg.solve(normal, aw.T @ ty)
            r = np.hypot(a @ cx - tx, a @ cy - ty)
            s = 1.4826 * np.median(r[weight > 0]) + 1e-6
            u = r / (4.685 * s)
            wt = weight * np.where(u < 1, (1 - u * u) ** 2, 0.0)
        rms = float(np.sqrt(np.average(r * r, weights=wt))) if wt.sum() > 0 else np.inf
        fits[name] = (cx, cy, rms)
    name = names[0]
    if "polynomial2" in fits and fits["polynomial2"][2] < 0.8 * fits["affine"][2]:
        name = "polynomial2"
    return name, fits[name][0], fits[name][1]


def _design(x: np.ndarray, y: np.ndarray, name: str) -> np.ndarray:
    if name == "constant":
        return np.ones((x.size, 1))
    cols = [np.ones_like(x), x, y]
    if name == "polynomial2":
        cols += [x * y, x * x, y * y]
    return np.column_stack(cols)


def push_pull(values: list[np.ndarray], weight: np.ndarray) -> list[np.ndarray]:
    """Fill ``values`` where ``weight`` is 0 by normalised convolution on a pyramid.

    Push: 2 x 2 weighted sums up to a few pixels (each level's weight saturates at 1). Pull:
    from the coarsest level down, each level keeps its own normalised value in proportion to
    its weight and takes the rest from the bilinear upsampling of the coarser result (Gortler
    et al. 1996, "The Lumigraph", section 3.4; normalised convolution: Knutsson and Westin
    1993). A smooth interpolation of the known values across the gaps, exact where known."""
    levels = []
    w = weight.astype(np.float32)
    vs = [np.where(w > 0, v, 0.0).astype(np.float32) * w for v in values]
    while True:
        levels.append((vs, w))
        if min(w.shape) <= 2:
            break
        h, ww = w.shape
        ph, pw = h % 2, ww % 2

        def down(a: np.ndarray, ph: int = ph, pw: int = pw) -> np.ndarray:
            a = np.pad(a, ((0, ph), (0, pw)), mode="constant")
            return a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]

        wsum = down(w)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = [np.where(wsum > 0, down(v) / wsum, 0.0) for v in vs]
        w = np.minimum(wsum, 1.0)
        vs = [m * w for m in means]
    vs, w = levels[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        est = [np.where(w > 0, v / w, 0.0) for v in vs]
    for vs, w in reversed(levels[:-1]):
        # the flow pyramid's bilinear x2 upsampling (it doubles values: a displacement per
        # coarse pixel); halving is exact in floating point
        up = [K.upsample_flow(np.ascontiguousarray(e, np.float32), *w.shape) * np.float32(0.5)
              for e in est]  # fmt: skip
        with np.errstate(invalid="ignore", divide="ignore"):
            own = [np.where(w > 0, v / np.maximum(w, 1e-12), 0.0) for v in vs]
        wc = np.minimum(w, 1.0)
        est = [wc * o + (1 - wc) * u for o, u in zip(own, up, strict=True)]
    return est


def hold(
    res: FlowResult,
    ref: np.ndarray,
    sec: np.ndarray,
    overlap: np.ndarray | None = None,
    floor: float = CONFIDENCE_FLOOR,
    block: int = BLOCK,
) -> ChangeResult:
    """The flow ``res`` of ``ref`` and ``sec`` (NaN where invalid or masked) held to its
    stable surroundings where the data did not support it.

    Unsupported: confidence under ``floor`` or no flow, the reference invalid, or the
    secondary invalid where the flow samples it. Decided per block of ``block`` px
    (unsupported when most of its pixels are: isolated pixels are noise; not where both
    images are :func:`featureless`), widened by :data:`WIDEN_PX`; there the displacement is
    the robust global model of the supported blocks' flow plus the push-pull interpolation of
    their residual to it, blended with the own flow over :data:`BLEND_PX`. The statistics'
    shares are of ``overlap`` (where both images have data, before any mask), else of the
    grid."""
    dx = np.ascontiguousarray(res.dx, np.float32)
    dy = np.ascontiguousarray(res.dy, np.float32)
    h, w = dx.shape
    f = int(block)
    hc, wc = -(-h // f), -(-w // f)
    extra = np.zeros((0, 0), np.uint8)
    ref_invalid = ~np.isfinite(ref)
    sec_invalid = ~np.isfinite(sec)
    if ref_invalid.any():
        extra = ref_invalid.view(np.uint8)
    if sec_invalid.any():
        seen = _seen_through(sec_invalid, dx, dy)
        extra = seen if extra.size == 0 else (extra | seen)
    counts = np.empty((hc, wc, 3), np.int64)
    sums = np.empty((hc, wc, 2), np.float64)
    moments = np.empty((hc, wc, 6), np.float64)
    _blocks(np.ascontiguousarray(res.confidence, np.float32), dx, dy, extra,
            np.ascontiguousarray(ref, np.float32), np.ascontiguousarray(sec, np.float32),
            np.float32(floor), f, counts, sums, moments)  # fmt: skip
    total = np.maximum(counts.sum(-1), 1)
    masked = counts[..., 1] > 0.5 * total
    low = counts[..., 0] + counts[..., 1] > 0.5 * total
    flat = featureless(moments, FEATURELESS) & low & ~masked
    hard = (low & ~flat) | masked
    n_ok = counts[..., 2]
    sx, sy = sums[..., 0], sums[..., 1]
    stats: dict = {
        "unsupported_fraction": 0.0,
        "featureless_fraction": round(float(flat.mean()), 4),
        "block": f,
    }
    if not hard.any():
        return ChangeResult(res.dx, res.dy, res.confidence, np.ones((h, w), np.float32),
                            res.params, stats)  # fmt: skip
    k = max(1, int(round(WIDEN_PX / f)))
    hard = ndimage.maximum_filter(hard.view(np.uint8), 2 * k + 1, mode="nearest") > 0
    good = ~hard & (n_ok > 0)
    if not good.any():
        stats["unsupported_fraction"] = 1.0
        return ChangeResult(res.dx, res.dy, res.confidence, np.zeros((h, w), np.float32),
                            res.params, stats)  # fmt: skip
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = sx / n_ok, sy / n_ok
    # block centres in normalised coordinates (the fit's conditioning)
    cy = (np.arange(hc) * f + 0.5 * f) / max(h, w)
    cx = (np.arange(wc) * f + 0.5 * f) / max(h, w)
    gx, gy = np.meshgrid(cx, cy)
    idx = np.flatnonzero(good.ravel())
    stride = max(1, idx.size // 5000)
    pick = idx[::stride]
    pts = (gx.ravel()[pick], gy.ravel()[pick], mx.ravel()[pick], my.ravel()[pick])
    # a model of the support's order, and no held value beyond what the support shows: a
    # sliver of support (a tile at the edge of an orbit: 2 % of its blocks) let a quadratic,
    # fitted to its noise, extrapolate to 2000 px across the tile's empty part (stack bench)
    support = float(good.mean())
    names = ("affine", "polynomial2") if support >= POLYNOMIAL_SUPPORT else \
        ("affine",) if support >= AFFINE_SUPPORT else ("constant",)  # fmt: skip
    name, ax, ay = robust_model(*pts, n_ok.ravel()[pick].astype(np.float64), names=names)
    design = _design(gx.ravel(), gy.ravel(), name)
    modx = (design @ ax).reshape(hc, wc)
    mody = (design @ ay).reshape(hc, wc)
    rx, ry = push_pull([np.where(good, mx - modx, 0.0), np.where(good, my - mody, 0.0)],
                       good.astype(np.float64))  # fmt: skip
    fillx = _within_support(modx + rx, mx[good])
    filly = _within_support(mody + ry, my[good])
    # support on the blocks: 0 in the unsupported ones, rising to 1 over about BLEND_PX
    kb = max(1, int(round(BLEND_PX / f)))
    sup = ndimage.uniform_filter((~hard).astype(np.float32), 2 * kb + 1, mode="nearest")
    sup = np.where(hard, 0.0, np.clip(2.0 * sup - 1.0, 0.0, 1.0)).astype(np.float32)
    touched = hard | (ndimage.minimum_filter(sup, 3, mode="nearest") < 1.0)
    ox, oy, osup = dx.copy(), dy.copy(), np.ones((h, w), np.float32)
    _combine(fillx, filly, sup, hard, touched, f, ox, oy, osup)
    share = float((osup[overlap] < 0.5).mean()) if overlap is not None and overlap.any() else \
        float((osup < 0.5).mean())  # fmt: skip
    stats.update(unsupported_fraction=round(share, 4), model=name)
    return ChangeResult(ox, oy, res.confidence, osup, res.params, stats)


def _within_support(fill: np.ndarray, supported: np.ndarray) -> np.ndarray:
    """``fill`` (float32) clipped to the range of the supported blocks' displacements widened
    by that range's span and at least :data:`HELD_MARGIN_PX` on either side: the surroundings
    predict a field that varies smoothly across a change; a value beyond what they show by more
    than that is an extrapolation, not a prediction."""
    lo, hi = float(supported.min()), float(supported.max())
    margin = max(hi - lo, HELD_MARGIN_PX)
    return np.clip(fill, lo - margin, hi + margin).astype(np.float32)


def _seen_through(invalid: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """uint8, 1 where the flow samples the secondary's ``invalid`` pixels (bilinear footprint;
    samples outside the image are not counted)."""
    inv = np.ascontiguousarray(invalid, np.float32)
    ones = np.ones(inv.shape, np.uint8)
    out, ok = np.empty_like(inv), np.empty_like(inv)
    out, ok = K.warp_bilinear(inv, ones, np.nan_to_num(dx), np.nan_to_num(dy), out, ok)
    return ((out > 0.0) & (ok > 0)).astype(np.uint8)


def change_aware_flow(
    ref: np.ndarray,
    sec: np.ndarray,
    params: FlowParams | None = None,
    ref_mask: np.ndarray | None = None,
    sec_mask: np.ndarray | None = None,
    init: tuple[np.ndarray, np.ndarray] | None = None,
) -> ChangeResult:
    """:func:`costack.folki.estimate_flow` on the images with the masked pixels (True in
    ``ref_mask``/``sec_mask``) invalid, then held to the stable surroundings where the data
    did not support it (:func:`hold`)."""
    p = params or FlowParams(mode="auto")
    ref = np.asarray(ref, np.float32)
    sec = np.asarray(sec, np.float32)
    if ref_mask is not None:
        ref = np.where(ref_mask, np.nan, ref).astype(np.float32)
    if sec_mask is not None:
        sec = np.where(sec_mask, np.nan, sec).astype(np.float32)
    res = estimate_flow(ref, sec, p, init=init)
    return hold(res, ref, sec)


# ---------------------------------------------------------------------------------------------
# the flow stage's glue

#: what the support raster's values mean (its GeoTIFF tag and the STAC asset's description)
SUPPORT_MEANING = (
    "1: the displacement is the data's own match; 0: it was taken from the stable surroundings "
    "(the images did not support a match there: a change, a mask, no data, inconsistent); "
    "between: the blend at the boundary"
)


def apply_exclusions(
    ref: np.ndarray, sec: np.ndarray, ref_excluded: np.ndarray | None,
    sec_excluded: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The images with their excluded pixels invalid (NaN; new arrays, the inputs untouched),
    and the overlap where both had data before the exclusions."""
    overlap = np.isfinite(ref) & np.isfinite(sec)
    if ref_excluded is not None and ref_excluded.any():
        ref = np.where(ref_excluded, np.float32(np.nan), ref).astype(np.float32)
    if sec_excluded is not None and sec_excluded.any():
        sec = np.where(sec_excluded, np.float32(np.nan), sec).astype(np.float32)
    return ref, sec, overlap


def hold_result(
    res: FlowResult, ref: np.ndarray, sec: np.ndarray, overlap: np.ndarray
) -> tuple[FlowResult, ChangeResult]:
    """:func:`hold` for the flow stage: the result with the held field, and the details."""
    held = hold(res, ref, sec, overlap)
    if overlap.any():
        masked = overlap & ~(np.isfinite(ref) & np.isfinite(sec))
        held.stats["masked_fraction"] = round(float(masked.sum() / overlap.sum()), 4)
    return replace(res, dx=held.dx, dy=held.dy), held


def support_on_grid(
    held: ChangeResult | None, window: tuple[slice, slice] | None, shape: tuple[int, int]
) -> np.ndarray:
    """The support raster on the whole grid (NaN outside the flow's window; 1 everywhere in it
    when the flow was not held)."""
    out = np.full(shape, np.nan, np.float32)
    win = window or (slice(None), slice(None))
    out[win] = 1.0 if held is None else held.support
    return out


def change_stats(
    held: ChangeResult | None, excluded: tuple[np.ndarray | None, ...], applied: bool
) -> dict:
    """The flow statistics' ``change`` record: whether the flow was held to its surroundings,
    which images had masks, the shares of the overlap that were unsupported, masked or
    featureless, and the model of the surroundings."""
    out: dict = {"held": bool(applied and held is not None),
                 "masks": {"reference": excluded[0] is not None,
                           "secondary": excluded[1] is not None}}  # fmt: skip
    if held is not None:
        out.update(held.stats)
    return out


__all__ = ["SUPPORT_MEANING", "ChangeResult", "apply_exclusions", "change_aware_flow",
           "change_stats", "hold", "hold_result", "push_pull", "robust_model",
           "support_on_grid"]  # fmt: skip
