"""Dense displacement by the GeFolki family of optical-flow methods, written from the papers.

- Folki (Le Besnerais and Champagnat 2005; Plyer et al. 2015, IEEE GRSL 12(11):2198-2202):
  iterative Lucas-Kanade on a Burt pyramid. In a window W around each pixel the flow u
  minimises sum_W (I2(x + u) - I1(x))^2; linearised around the current estimate u0 with the
  reference's gradient, this is the 2x2 system (Plyer et al. 2015, eq. 2-3)

      [sum Ix^2  sum IxIy] u = - [sum Ix It]       It = I2(x + u0) - I1(x) - grad(I1) . u0
      [sum IxIy  sum Iy^2]       [sum Iy It]

  solved at each pixel with window sums (box filters whose cost does not depend on the
  radius), for several radii per level, coarse to fine.
- EFolki (Brigot et al. 2016, IEEE JSTARS 9(7), section III-A): both images are replaced by
  their local rank, so any monotonic radiometric difference is harmless.
- GEFolki (Brigot et al. 2016, section III-B): adds local contrast equalisation (CLAHE) before
  the rank filter and a per-pixel choice between the secondary and its inverted contrast
  (the sign of the local correlation of the two images), for SAR against optical.

Differences from the published code, all ours: validity masks everywhere (every product is
weighted by the joint validity of both images, so nodata, NaN and Inf neither drive nor leak
into the estimate, and sums are normalised by the valid weight); a Tikhonov term that pulls the
estimate towards the window mean of the previous one where the structure tensor is weak (flat
areas, water) instead of towards zero; a per-iteration step limit and a divergence check that
marks as unknown (NaN) the pixels whose estimate ended over 1.5 x ``max_displacement`` from
its start; a start from a global model (the tie-point affine) or a global shift search; and a
confidence layer.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from costack.registration import _kernels as K
from costack.registration.imaging import masked_blur, on_two_threads

log = logging.getLogger(__name__)

# window_solve's unused scalars: float32 like the used ones, so that one compiled signature
# serves every kind (float64 literals compiled it three times, 7 s each on first use)
_F0 = np.float32(0.0)

MODES = ("folki", "efolki", "gefolki", "structure")
#: Lucas-Kanade iterations per radius by mode when none are given (see :class:`FlowParams`)
DEFAULT_ITERATIONS = {"structure": 6}


@dataclass
class FlowParams:
    """Parameters of :func:`estimate_flow`.

    Attributes:
        mode: ``folki`` (raw intensities), ``efolki`` (rank filter), ``gefolki`` (CLAHE, rank
            filter and local contrast inversion, for different sensors), ``structure`` (SAR
            against optical: the pair as edge strengths, ROEWA on the ``radar`` side and the
            Gaussian gradient magnitude on the other,
            :func:`costack.registration.modality.structure_images`, then EFolki's rank filter
            and Lucas-Kanade; docs/sar.md) or ``auto`` (:func:`resolve_mode`: GEFolki where
            the local contrast is inverted, else EFolki; the file-level step takes the
            structure mode for SAR against optical, from the rasters' tags or pixels).
        radii: window radii (pixels of the level), applied in turn at every level; None:
            :func:`default_radii` of the mode. Every radius is at most what keeps
            :data:`WINDOWS_AT_COARSEST` windows across the image (:func:`fit_radii`).
        iterations: Lucas-Kanade iterations per radius; None: 6 in structure mode (edge images
            converge more slowly: Sentinel-1/2 differential error 0.55 px with 2, 0.21 with 6),
            2 in the others.
        levels: pyramid levels; None chooses from the image size and the radii
            (:func:`auto_levels`).
        max_displacement: largest displacement expected after the initial model (pixels).
        rank_radius: radius of the rank filter (EFolki, GEFolki).
        clahe_kernel: CLAHE tile size in pixels (GEFolki).
        clip_percentile: intensities above this percentile are clipped before CLAHE (bright
            SAR point scatterers).
        regularisation: weight of the pull towards the local mean flow, relative to the mean
            structure-tensor trace.
        fine_radii: radii for the finest level only (None = ``radii``).
        presmooth: Gaussian sigma (pixels) applied to both images before the rank filter; it
            breaks the ties of quantised data (8-bit products) that the rank filter would
            otherwise turn into noise (LIDAR 1024x1024 benchmark: 0.062 -> 0.030 px). None:
            0.7 in EFolki mode, 0 otherwise (before CLAHE it costs GEFolki accuracy: 0.07 ->
            0.12 px on the camera test).
        seed_min_points, seed_max_rmse: a tie-point model seeds the flow (which then
            estimates the residual, without its own global search) only when it rests on at
            least this many tie points and fits them within this RMSE (pixels, Yan et al. 2016
            eq. 6); a weaker model (a few SAR/optical points) would start the flow further from
            the truth than the flow's own global search does (demo SAR pair: a 13-point affine
            with RMSE 0.53 px took the flow from 0.46 to 0.80 px mean error).
        radar: which image is the SAR in structure mode, ``reference`` or ``secondary``.
        invert_secondary: negate the secondary first (EFolki on a pair whose contrast is
            inverted everywhere: the rank filter then sees one sensor; ``auto`` sets it).
        detail_blend: at the finest level, combine the estimates of the first (largest) and
            the last (smallest) radius by scale (:func:`blend_scales`): the large window's
            field, less noisy, plus the smoothed difference of the small window's, less biased
            by the window's averaging of a varying field. Bench, 1024x1024 real images (mean
            EPE, px): optical 0.0307 -> 0.0278, affine 0.0170 -> 0.0113, lidar 0.0298 ->
            0.0252; the demo's 30 m secondary 0.081 -> 0.060.
        fine_iterations: Lucas-Kanade iterations per radius at the finest level; None: 1 in
            EFolki and Folki modes with ``detail_blend``, where a second one mostly refits
            noise (bench: optical 0.0278 -> 0.0271, lidar 0.0252 -> 0.0246, affine 0.0113 ->
            0.0115 px, the demo's 30 m secondary 0.060 -> 0.059, and half the finest level's
            cost), ``iterations`` in GEFolki mode (UAVSAR radar/optical consistency: mean
            0.882 px with 2, 0.897 with 1).
        coarse_detail: at every level but the finest, the radii are followed by one of half
            the smallest ((16, 8) -> (16, 8, 4)): a coarse level's small window spans a wide
            part of the scene and follows a misregistration that varies across it, which the
            finest level's windows then refine. The real radar/optical UAVSAR pair (its own
            misregistration varies by about 5 px across the scene) under a known field:
            consistency 0.175/0.436 -> 0.140/0.311 px median/mean. None: on in GEFolki mode
            only; in EFolki mode the same-sensor bench cases do not change at 1024 px (the
            finest level decides them) and the 2000x2000 pair costs 5-8 % more for 0.0303 ->
            0.0306 px.
    """

    mode: str = "efolki"
    radii: tuple[int, ...] | None = None
    iterations: int | None = None
    levels: int | None = None
    max_displacement: float = 16.0
    rank_radius: int = 4
    clahe_kernel: int = 64
    clip_percentile: float = 99.5
    regularisation: float = 1e-3
    fine_radii: tuple[int, ...] | None = None
    presmooth: float | None = None
    interpolation: str = "bspline"
    smooth: float = 0.0
    symmetric_gradient: bool = True
    global_search: bool = True
    seed_min_points: int = 20
    seed_max_rmse: float = 1.0 / 3.0
    invert_secondary: bool = False
    radar: str = "secondary"
    detail_blend: bool = True
    fine_iterations: int | None = None
    coarse_detail: bool | None = None

    def lk_iterations(self) -> int:
        """``iterations``, else 6 in structure mode and 2 in the others."""
        return self.iterations or DEFAULT_ITERATIONS.get(self.mode, 2)

    def window_radii(self) -> tuple[int, ...]:
        """``radii``, else :func:`default_radii` of the mode (resolve ``auto`` first)."""
        return self.radii or default_radii(self.mode)

    def to_dict(self) -> dict:
        """JSON-able parameters (recorded in the STAC item)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass
class FlowResult:
    """A dense displacement field on the reference grid (pixels, NaN where unknown)."""

    dx: np.ndarray
    dy: np.ndarray
    confidence: np.ndarray
    params: FlowParams
    stats: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Pre-processing


def _valid(img: np.ndarray, nodata: float | None = None) -> np.ndarray:
    ok = np.isfinite(img)
    if nodata is not None and not np.isnan(nodata):
        ok &= img != nodata
    return ok


def _clahe(img: np.ndarray, valid: np.ndarray, kernel: int, clip: float) -> np.ndarray:
    """Local contrast equalisation (CLAHE) of the valid pixels, scaled to [0, 1].

    Intensities are first stretched between the ``100 - clip`` and ``clip`` percentiles of the
    valid pixels; the equalisation itself (``_kernels.clahe``) counts only valid pixels, where
    scikit-image's ``equalize_adapthist`` would count nodata as zeros, and it takes 0.06 s
    instead of 0.5 s for a 2000x2000 image.
    """
    vals = img[valid]
    if vals.size == 0:
        return np.zeros_like(img, dtype=np.float32)
    lo, hi = np.percentile(vals[:: max(1, vals.size // 1_000_000)], [100 - clip, clip])
    scaled = np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1).astype(np.float32)
    k = max(8, min(kernel, min(img.shape) // 2))
    return K.clahe(scaled, valid, k, 256, 0.01)


def preprocess(
    pair: list[tuple[np.ndarray, np.ndarray]], mode: str, params: FlowParams,
    radar_aux: list[np.ndarray] | None = None,
) -> list[np.ndarray]:  # fmt: skip
    """The images the flow is computed on, for ``mode`` (Brigot et al. 2016, section III), from
    (image, validity) pairs (the reference's and the secondary's): EFolki's rank filter,
    after GEFolki's CLAHE in that mode, or after the edge strengths in structure mode (ROEWA
    on the ``params.radar`` side, the Gaussian gradient magnitude on the other:
    :func:`costack.registration.modality.structure_images`), or (Folki) the standardised
    intensities. ``radar_aux``: the radar side's other polarisations, used in structure mode
    (:func:`costack.registration.modality.structure_images`)."""
    valids = [valid for _, valid in pair]
    if mode == "structure":
        from costack.registration.modality import structure_images

        edges = structure_images(*(np.where(v, img, np.nan) for img, v in pair), params.radar,
                                 radar_aux)  # fmt: skip
        valids = [v & np.isfinite(e) for v, e in zip(valids, edges, strict=True)]
        pair = list(zip(edges, valids, strict=True))
    imgs = [np.where(valid, img, 0).astype(np.float32) for img, valid in pair]
    if mode == "folki":
        out = []
        for img, valid in zip(imgs, valids, strict=True):
            vals = img[valid]
            if vals.size:
                img = (img - vals.mean()) / max(float(vals.std()), 1e-12)
            out.append(np.where(valid, img, 0).astype(np.float32))
        return out
    if mode == "gefolki":
        imgs = [
            _clahe(img, valid, params.clahe_kernel, params.clip_percentile)
            for img, valid in zip(imgs, valids, strict=True)
        ]
    return [
        K.rank_transform(img, valid.astype(np.uint8), params.rank_radius)
        for img, valid in zip(imgs, valids, strict=True)
    ]


# ---------------------------------------------------------------------------------------------
# Pyramid


def _down_taps(sigma: float = 0.8) -> np.ndarray:
    """The 6 taps of a Gaussian blur (radius 2) followed by a 2x2 mean, for ``pyramid_down``."""
    g = np.exp(-0.5 * (np.arange(-2, 3) / sigma) ** 2)
    g /= g.sum()
    return (0.5 * (np.r_[g, 0.0] + np.r_[0.0, g])).astype(np.float32)


_TAPS = _down_taps()


def _down(img: np.ndarray, wgt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One Burt-pyramid step with normalised convolution: blur (sigma 0.8 px), then 2x2 mean
    (Burt & Adelson 1983). A coarse pixel is valid when most (> 3/4) of its footprint is."""
    out, pooled = K.pyramid_down(
        np.ascontiguousarray(img, np.float32), np.ascontiguousarray(wgt, np.float32), _TAPS
    )
    return out, (pooled > 0.75).astype(np.float32)


#: the coarsest pyramid level still spans this many windows of the largest radius
WINDOWS_AT_COARSEST = 3.5

#: window radii by mode when none are given (:func:`default_radii`)
DEFAULT_RADII = {"efolki": (32, 8), "folki": (32, 8), "gefolki": (16, 8), "structure": (16, 8)}


def default_radii(mode: str) -> tuple[int, ...]:
    """Window radii at the grid's resolution when none are given, by the (resolved) mode.

    EFolki and Folki: (32, 8), whose finest-level scale blend (:func:`blend_scales`) gives the
    large window's low noise and the small one's detail; the bench's 1024 px same-sensor pairs
    (mean EPE, px): optical 0.0271 -> 0.0195, LIDAR 0.0246 -> 0.0179, affine 0.0115 -> 0.0094
    against (16, 8). GEFolki: (16, 8), the better on the real radar/optical UAVSAR pair (0.14 px
    median consistency against 0.27 with (32, 8) at the same depth): across sensors a large
    window holds structures the two images do not share.
    """
    return DEFAULT_RADII.get(mode, DEFAULT_RADII["efolki"])


def fit_radii(radii: tuple[int, ...], shape: tuple[int, int]) -> tuple[int, ...]:
    """``radii`` each at most what keeps :data:`WINDOWS_AT_COARSEST` windows across an image of
    ``shape``: a window over a quarter of the image averages away what varies across it (the
    demo's 30 m secondary, 485 px, EFolki (32, 8) widened to (128, 32): 0.069 px mean EPE,
    capped to (68, 32): 0.058)."""
    cap = max(1, int((min(shape) / WINDOWS_AT_COARSEST - 1) // 2))
    return tuple(min(int(r), cap) for r in radii)


def auto_levels(shape: tuple[int, int], radius: int) -> int:
    """Pyramid depth: every halving while the coarsest level still spans
    :data:`WINDOWS_AT_COARSEST` windows of ``radius`` (and 24 pixels).

    The global search (:func:`global_shift`) covers ``max_displacement``; the levels are for
    what varies across the image, and a level whose window covers most of it averages that
    away. Measured (mean EPE or consistency, px): the real radar/optical UAVSAR pair, 1024 px,
    radius 16: 0.88 with 3 levels, 0.44 with 4 (this rule), 0.47 with 5; the demo's 20 m SAR
    on its 482 px grid, radius 64: 0.45 with 2 levels, 0.38 with 1 (this rule); same-sensor
    1024 px pairs: the same with 3 or 4 levels (0.0271 optical, 0.0246 LIDAR).
    """
    window = 2 * radius + 1
    by_window = math.floor(math.log2(max(min(shape) / (WINDOWS_AT_COARSEST * window), 1.0)))
    by_size = math.floor(math.log2(max(min(shape) / 24.0, 1.0)))
    return 1 + max(0, min(by_window, by_size))


# ---------------------------------------------------------------------------------------------
# Lucas-Kanade at one level


def _gradient(img: np.ndarray, wgt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """5-tap central derivatives (-1, 8, 0, -8, 1)/12, valid where all taps are valid."""
    return K.gradient5(np.ascontiguousarray(img, np.float32), (wgt > 0).astype(np.uint8))


def _bands(h: int) -> int:
    """Row bands for the fused window kernels: a few per thread, each a few hundred rows."""
    import numba

    return max(1, min(4 * numba.get_num_threads(), h // 64))


def _lk_level(
    i1: np.ndarray,
    w1: np.ndarray,
    i2: np.ndarray,
    w2: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    radii: tuple[int, ...],
    iterations: int,
    invert: bool,
    reg: float,
    step: float,
    warp=K.warp_cubic,
    symmetric: bool = True,
    grad: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    first: list | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Iterative Lucas-Kanade at one pyramid level; returns (u, v, support weight).
    With ``first`` (a list), copies of (u, v) after the first radius are appended to it.

    Each iteration warps the secondary with the current field, (GEFolki) chooses per pixel
    between it and its inverted contrast, and solves the windowed Folki system at every pixel
    (:func:`costack.registration._kernels.window_solve`, window sums fused with the solve).
    ``grad`` is the
    reference's :func:`_gradient`, when the caller has it.
    """
    i1 = np.ascontiguousarray(i1, dtype=np.float32)
    ix1, iy1, wg1 = grad if grad is not None else _gradient(i1, w1)
    support = np.zeros_like(i1)
    u = np.ascontiguousarray(u, dtype=np.float32)
    v = np.ascontiguousarray(v, dtype=np.float32)
    u_new, v_new = np.empty_like(u), np.empty_like(v)
    w2u8 = (w2 > 0).astype(np.uint8)
    nb = _bands(i1.shape[0])
    if warp is K.warp_bspline:
        i2 = spline_coefficients(i2, w2 > 0)
    # the iterations' planes, allocated once per level and rewritten by each iteration (a
    # fresh plane per iteration cost a page fault per 4 KiB: 2000x2000, about 18,000 of a
    # warm call's 44,000 faults)
    warped, ok = np.empty_like(i1), np.empty_like(i1)
    sg = (np.empty_like(i1), np.empty_like(i1), np.empty_like(i1)) if symmetric else None
    joint = np.empty_like(i1) if (invert or not symmetric) else None
    flipped = np.empty_like(i1) if invert else None
    for r in radii:
        nmin = np.float32(0.25 * (2 * r + 1) ** 2)
        for _ in range(iterations):
            i2w, ok = warp(i2, w2u8, u, v, warped, ok)
            # the joint weight (symmetric_gradient makes its own, with the secondary's taps)
            wt = np.multiply(wg1, ok, out=joint) if joint is not None else None
            if invert:
                # GEFolki: per pixel, the secondary or its inverted contrast, whichever
                # correlates positively with the reference in the window
                K.window_solve(kind=K.SOLVE_CONTRAST, i1=i1, i2w=i2w, a=ok, b=ok, wt=wt, u=u,
                               v=v, r=r, eps=_F0, step=_F0, nmin=_F0, out1=flipped,
                               out2=flipped, support=support, nbands=nb)  # fmt: skip
                i2w = flipped
            if symmetric:
                # efficient second-order minimisation: the mean of both images' gradients
                # (the secondary's after any contrast inversion)
                ix, iy, wt = K.symmetric_gradient(i2w, ok, ix1, iy1, wg1, *sg)
            else:
                ix, iy = ix1, iy1
            # Folki (Plyer et al. 2015, eq. 3): solve for u itself, linearised around u0
            eps = np.float32(reg * max(K.weighted_trace(wt, ix, iy), 1e-12))
            K.window_solve(kind=K.SOLVE_FLOW, i1=i1, i2w=i2w, a=ix, b=iy, wt=wt, u=u, v=v,
                           r=r, eps=eps, step=np.float32(step), nmin=nmin, out1=u_new,
                           out2=v_new, support=support, nbands=nb)  # fmt: skip
            u, u_new = u_new, u
            v, v_new = v_new, v
        if first is not None and not first:
            first.extend((u.copy(), v.copy()))
    return u, v, support


# ---------------------------------------------------------------------------------------------
# Public API


def _model_field(model: np.ndarray | None, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Displacement of an affine ``model`` (2x3, ref (col,row) -> sec) at pixel centres."""
    h, w = shape
    if model is None:
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    m = np.asarray(model, dtype=np.float64).reshape(2, 3)
    col = np.arange(w, dtype=np.float64) + 0.5
    row = np.arange(h, dtype=np.float64)[:, None] + 0.5
    dx = m[0, 0] * col + m[0, 1] * row + m[0, 2] - col
    dy = m[1, 0] * col + m[1, 1] * row + m[1, 2] - row
    return dx.astype(np.float32), np.broadcast_to(dy, shape).astype(np.float32)


def estimate_flow(
    ref: np.ndarray,
    sec: np.ndarray,
    params: FlowParams | None = None,
    ref_nodata: float | None = None,
    sec_nodata: float | None = None,
    model: np.ndarray | None = None,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    radar_aux: list[np.ndarray] | None = None,
) -> FlowResult:
    """Dense flow such that ``sec`` sampled at (col + dx, row + dy) matches ``ref`` at (col, row).

    Args:
        ref, sec: co-located single-band images of one shape; NaN, Inf and the nodata values
            are invalid and never used.
        params: algorithm parameters (default EFolki).
        ref_nodata, sec_nodata: fill values besides NaN.
        model: optional 2x3 affine mapping reference pixel coordinates (GDAL convention) to
            secondary ones; the flow starts from it and estimates the residual.
        init: optional starting field (dx, dy) at full resolution (used by the tiled driver).
        radar_aux: the radar side's other polarisations (NaN invalid), on its grid; structure
            mode averages their edge strengths with its own, other modes do not use them.

    Returns:
        The field in pixels (NaN where no valid data supported it) and a confidence in [0, 1].
    """
    p = params or FlowParams()
    if p.mode not in (*MODES, "auto"):
        raise ValueError(f"mode must be one of {MODES} or auto")
    t0 = time.perf_counter()
    ref = np.asarray(ref, dtype=np.float32)
    sec = np.asarray(sec, dtype=np.float32)
    v1 = _valid(ref, ref_nodata)
    v2 = _valid(sec, sec_nodata)
    if p.mode == "auto":  # both taken as of one kind: the local contrast decides
        mode, why = resolve_mode("auto", np.where(v1, ref, np.nan), np.where(v2, sec, np.nan),
                                 max_displacement=p.max_displacement)  # fmt: skip
        p = replace(p, mode=mode, invert_secondary=bool(why.get("invert_secondary")))
    p = replace(
        p,
        radii=fit_radii(p.window_radii(), ref.shape),
        fine_radii=p.fine_radii and fit_radii(p.fine_radii, ref.shape),
        iterations=p.lk_iterations(),
    )
    if p.invert_secondary:
        sec = np.where(v2, -sec, 0).astype(np.float32)
    presmooth = p.presmooth if p.presmooth is not None else (0.7 if p.mode == "efolki" else 0.0)
    if presmooth > 0:
        ref, sec = on_two_threads(lambda x, ok: masked_blur(x, ok, presmooth), (ref, v1), (sec, v2))
    aux = None
    if radar_aux and p.mode == "structure":
        aux = [np.asarray(a, dtype=np.float32) for a in radar_aux]
    i1, i2 = preprocess([(ref, v1), (sec, v2)], p.mode, p, aux)
    if p.smooth > 0:
        i1 = masked_blur(i1, v1, p.smooth)
        i2 = masked_blur(i2, v2, p.smooth)
    t_pre = time.perf_counter() - t0
    if init is not None:
        u0, w0 = init[0].astype(np.float32), init[1].astype(np.float32)
    else:
        u0, w0 = _model_field(model, ref.shape)
    levels = p.levels or auto_levels(ref.shape, max(p.radii))
    pyr = [(i1, v1.astype(np.float32), i2, v2.astype(np.float32))]
    for _ in range(levels - 1):
        a, wa, b, wb = pyr[-1]
        pyr.append((*_down(a, wa), *_down(b, wb)))
    # initial field at the coarsest level
    u = u0.copy()
    v = w0.copy()
    for lvl in range(1, levels):
        hh, ww = pyr[lvl][0].shape
        u = 0.5 * _pool2(u)[:hh, :ww]
        v = 0.5 * _pool2(v)[:hh, :ww]
    shift = (0, 0)
    if p.global_search and model is None and init is None:
        shift = global_shift(pyr, p.max_displacement, p.mode == "gefolki")
        u += shift[0]
        v += shift[1]
    support = np.zeros(pyr[-1][0].shape, np.float32)
    grad0 = _gradient(pyr[0][0], pyr[0][1])  # used by the finest level and the confidence
    coarse_detail = p.mode == "gefolki" if p.coarse_detail is None else p.coarse_detail
    for lvl in range(levels - 1, -1, -1):
        a, wa, b, wb = pyr[lvl]
        if u.shape != a.shape:
            u = K.upsample_flow(u, *a.shape)
            v = K.upsample_flow(v, *a.shape)
        radii = p.fine_radii if (lvl == 0 and p.fine_radii) else p.radii
        if lvl > 0 and coarse_detail:
            radii = (*radii, max(1, min(radii) // 2))
        blend = lvl == 0 and p.detail_blend and len(radii) > 1
        first: list | None = [] if blend else None
        iterations = p.iterations
        if lvl == 0 and p.fine_iterations is not None:
            iterations = p.fine_iterations
        elif blend and p.mode in ("efolki", "folki"):
            iterations = 1
        u, v, support = _lk_level(
            a, wa, b, wb, u, v, tuple(radii), iterations, p.mode == "gefolki",
            p.regularisation, step=max(radii) / 2.0,
            warp=WARPS[p.interpolation], symmetric=p.symmetric_gradient,
            grad=grad0 if lvl == 0 else None, first=first,
        )  # fmt: skip
        if first:
            sigma = BLEND_SIGMA * min(radii)
            u, v = blend_scales(first[0], first[1], u, v, support > 0, sigma)
    conf = confidence(i1, v1, i2, v2, u, v, min(p.fine_radii or p.radii), grad0)
    # divergence: an estimate that left the start (model or global shift) by more than 1.5x the
    # largest displacement expected is unknown, not a wild value; unknown where no window
    # supported the field either (one pass: K.finish_flow)
    scale = 2 ** (levels - 1)
    dx, dy, n_diverged = K.finish_flow(
        np.ascontiguousarray(u, np.float32), np.ascontiguousarray(v, np.float32),
        np.ascontiguousarray(u0, np.float32), np.ascontiguousarray(w0, np.float32),
        float(shift[0] * scale), float(shift[1] * scale), support, conf,
        1.5 * p.max_displacement,
    )  # fmt: skip
    diverged_fraction = n_diverged / conf.size
    if n_diverged:
        log.warning("flow diverged on %.2f%% of the grid (moved over %.0f px from its start): "
                    "marked unknown", 100 * diverged_fraction,
                    1.5 * p.max_displacement)  # fmt: skip
    stats = {
        "global_shift_coarse": shift,
        "levels": levels,
        "diverged_fraction": float(diverged_fraction),
        "seconds": time.perf_counter() - t0,
        "preprocess_s": t_pre,
    }
    return FlowResult(dx, dy, conf, p, stats)


def _shift_score(
    a: np.ndarray,
    wa: np.ndarray,
    b: np.ndarray,
    wb: np.ndarray,
    dx: int,
    dy: int,
    multimodal: bool,
    radius: int,
) -> float:
    """Mean local correlation of ``a`` with ``b`` shifted by (dx, dy) (|corr| if multimodal)."""
    h, w = a.shape
    if abs(dx) >= w - 2 * radius or abs(dy) >= h - 2 * radius:
        return -np.inf
    bs, ws = _shifted(b, wb, dx, dy)
    wt = np.ascontiguousarray(wa * ws, np.float32)
    corr, good = np.empty_like(wt), np.empty_like(wt)
    a = np.ascontiguousarray(a, np.float32)
    nmin = np.float32(0.5 * (2 * radius + 1) ** 2)
    K.window_solve(kind=K.SOLVE_CORRELATION, i1=a, i2w=bs, a=a, b=a, wt=wt, u=a, v=a,
                   r=radius, eps=_F0, step=_F0, nmin=nmin, out1=corr, out2=corr, support=good,
                   nbands=_bands(h))  # fmt: skip
    good = good > 0
    if good.sum() < 16:
        return -np.inf
    return float(np.mean(np.abs(corr[good]) if multimodal else corr[good]))


def _shifted(b: np.ndarray, wb: np.ndarray, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray]:
    """``b`` and its weights read at (col + dx, row + dy); zero weight where that falls out."""
    h, w = b.shape
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    bs, ws = np.zeros_like(b), np.zeros_like(wb)
    bs[yd, xd], ws[yd, xd] = b[ys, xs], wb[ys, xs]
    return bs, ws


#: share of anti-correlated windows above which ``auto`` takes the pair as locally inverted
INVERTED_SHARE = 0.25
#: ... and above which as inverted everywhere (EFolki on the negated secondary)
INVERTED_EVERYWHERE = 0.95


def _box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over each (2r+1)^2 window with zeros beyond the edges (what
    ``scipy.ndimage.uniform_filter(x, 2r+1, mode="constant")`` gives, within 1e-14 relative):
    differences of running sums along each axis."""
    size = 2 * radius + 1
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius + 1, radius)
        c = np.cumsum(np.pad(x, pad), axis=axis)
        n = x.shape[axis]
        x = (c.take(np.arange(size, size + n), axis=axis) - c.take(np.arange(n), axis=axis)) / size
    return x


def _signed_local_corr(
    a: np.ndarray, wa: np.ndarray, b: np.ndarray, wb: np.ndarray, dx: int, dy: int, radius: int
) -> np.ndarray:
    """Correlation coefficient of ``a`` and ``b`` shifted by (dx, dy) over each (2r+1)^2
    window, weighted by both validities (normalised convolution); NaN where either window
    lacks contrast (variance under 1e-3 of the image's) or half its pixels."""
    bs, ws = _shifted(b, wb, dx, dy)
    g = wa * ws

    def box(x: np.ndarray) -> np.ndarray:
        return _box_mean(x, radius)

    n = box(g)
    with np.errstate(invalid="ignore", divide="ignore"):
        m1, m2 = box(g * a) / n, box(g * bs) / n
        v1 = box(g * a * a) / n - m1 * m1
        v2 = box(g * bs * bs) / n - m2 * m2
        r = (box(g * a * bs) / n - m1 * m2) / np.sqrt(v1 * v2)
    floor1 = 1e-3 * float(a[wa > 0].var()) if (wa > 0).any() else np.inf
    floor2 = 1e-3 * float(b[wb > 0].var()) if (wb > 0).any() else np.inf
    ok = (n >= 0.5) & (v1 > floor1) & (v2 > floor2)
    return np.where(ok, np.clip(r, -1.0, 1.0), np.nan)


def contrast_relation(
    ref: np.ndarray, sec: np.ndarray, max_displacement: float = 16.0, radius: int = 4
) -> dict:
    """How the local contrasts of two co-located images relate, after a coarse alignment.

    Both images (NaN = nodata) are reduced to at most 128 px; the translation that maximises
    the sum of the absolute local correlations (within ``max_displacement``; searched on all
    shifts at half that size, then within one pixel) aligns them, and the
    signed correlation of every (2r+1)^2 window with contrast in both is then read: same-
    sensor pairs correlate positively almost everywhere, a pair whose contrast is inverted in
    places (SWIR against NIR over water, LIDAR against optical, SAR against optical) does
    not. The sign of the local correlation is what GEFolki's contrast-inversion step adapts
    to (Brigot et al. 2016, section III). Returns the shares of positively and negatively
    correlated windows among those with |r| >= 0.2, their count, the mean |r| and the coarse
    shift (full-resolution pixels).
    """
    va, vb = _valid(ref), _valid(sec)
    a = np.where(va, ref, 0).astype(np.float32)
    b = np.where(vb, sec, 0).astype(np.float32)
    wa, wb = va.astype(np.float32), vb.astype(np.float32)
    lvl = 0
    while min(a.shape) > 128:
        a, wa = _down(a, wa)
        b, wb = _down(b, wb)
        lvl += 1
    # the exhaustive search runs one level coarser (<= 64 px: a quarter of the pixels and of
    # the shifts), then the best shift is refined within one pixel at this level: 0.08-0.45 s
    # -> 0.03-0.05 s per decision, the same shift as the search at this level on every case
    # tried (camera 160-512 px, inverted, UAVSAR, LIDAR with a NaN strip, the demo)
    coarse = [(a, wa, b, wb)]
    if min(a.shape) > 64:
        coarse.append((*_down(a, wa), *_down(b, wb)))
    coarse = [tuple(x.astype(np.float64) for x in c) for c in coarse]

    def score(c: tuple[np.ndarray, ...], dx: int, dy: int) -> tuple[float, np.ndarray | None]:
        r = _signed_local_corr(*c, dx, dy, radius)
        good = np.isfinite(r)
        if good.sum() < 16:
            return -np.inf, None
        return float(np.abs(r[good]).sum()) / r.size, r  # windows lost to the shift count 0

    top = lvl + len(coarse) - 1
    rmax = int(math.ceil(max_displacement / 2**top)) + 1
    shifts = [(dx, dy) for dy in range(-rmax, rmax + 1) for dx in range(-rmax, rmax + 1)]
    if len(coarse) > 1:
        scores = {s: score(coarse[1], *s)[0] for s in shifts}
        bx, by = max(scores, key=scores.get)
        shifts = [(2 * bx + i, 2 * by + j) for j in (-1, 0, 1) for i in (-1, 0, 1)]
    best, best_score, best_r = (0, 0), -np.inf, None
    for dx, dy in shifts:
        s, r = score(coarse[0], dx, dy)
        if s > best_score:
            best, best_score, best_r = (dx, dy), s, r
    out = {"windows": 0, "positive": None, "negative": None, "mean_abs_corr": None,
           "coarse_shift": [best[0] * 2**lvl, best[1] * 2**lvl], "level": lvl}  # fmt: skip
    if best_r is None:
        return out
    r = best_r[np.isfinite(best_r)]
    strong = r[np.abs(r) >= 0.2]
    out.update(windows=int(strong.size), mean_abs_corr=round(float(np.abs(r).mean()), 4))
    if strong.size:
        out.update(positive=round(float((strong > 0).mean()), 4),
                   negative=round(float((strong < 0).mean()), 4))  # fmt: skip
    return out


def resolve_mode(
    requested: str,
    ref: np.ndarray,
    sec: np.ndarray,
    ref_kind: str = "optical",
    sec_kind: str = "optical",
    max_displacement: float = 16.0,
    contrast: dict | None = None,
) -> tuple[str, dict]:
    """The flow mode to run and why: ``auto`` takes the structure mode for SAR against optical
    (the kinds differ; ``radar`` in the evidence names the SAR side), GEFolki for pairs whose
    local contrast is inverted in at least a quarter of the correlated windows
    (:func:`contrast_relation`); EFolki on the negated secondary (``invert_secondary`` in the
    evidence) where it is inverted in 95 % of them (an inverted LIDAR: 0.030 px instead of
    GEFolki's 0.062 in bench/flow_bench.py); else EFolki. Another mode is kept as asked.
    Kinds that differ with no SAR side take GEFolki. ``contrast``: the pair's
    :func:`contrast_relation` when the caller has it already.
    """
    evidence: dict = {"requested": requested, "kinds": [ref_kind, sec_kind]}
    if requested != "auto":
        return requested, dict(evidence, reason="as requested")
    if ref_kind != sec_kind:
        why = f"{sec_kind} against {ref_kind}"
        if "sar" in (ref_kind, sec_kind):
            side = "reference" if ref_kind == "sar" else "secondary"
            return "structure", dict(evidence, reason=why, radar=side)
        return "gefolki", dict(evidence, reason=why)
    rel = contrast if contrast is not None else contrast_relation(ref, sec, max_displacement)
    evidence["contrast"] = rel
    if rel["negative"] is not None and rel["negative"] >= INVERTED_EVERYWHERE:
        share = f"{100 * rel['negative']:.1f} %"
        return "efolki", dict(evidence, invert_secondary=True,
                              reason=f"contrast inverted everywhere ({share} of the windows): "
                              "EFolki on the negated secondary")  # fmt: skip
    if rel["negative"] is not None and rel["negative"] >= INVERTED_SHARE:
        share = f"{100 * rel['negative']:.0f} %"
        return "gefolki", dict(evidence, reason=f"contrast inverted in {share} of the windows")
    return "efolki", dict(evidence, reason="same kind, contrast not inverted")


def global_shift(
    pyr: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    max_displacement: float,
    multimodal: bool,
    radius: int = 6,
) -> tuple[float, float]:
    """Translation (in pixels of the coarsest level) that best aligns the two images.

    An exhaustive search on a level of at most 128 px over shifts up to ``max_displacement``
    (full resolution pixels) of the mean local correlation of the two images (its absolute
    value in multimodal mode, where contrast may be inverted), refined at finer levels (down
    to half resolution, or full resolution up to 256 px) within one pixel, and to a fraction
    of a pixel by a parabola through the scores. It starts Lucas-Kanade inside its capture
    range, as the correlation stage of area matching does (Yan et al. 2016, section 2.3).
    """
    levels_in = pyr
    pyr = list(pyr)
    while min(pyr[-1][0].shape) > 128:  # search on a small image, refine upwards
        a, wa, b, wb = pyr[-1]
        pyr.append((*_down(a, wa), *_down(b, wb)))
    top = len(pyr) - 1
    rmax = int(math.ceil(max_displacement / 2**top)) + 1
    a, wa, b, wb = pyr[top]
    scores = {
        (dx, dy): _shift_score(a, wa, b, wb, dx, dy, multimodal, radius)
        for dy in range(-rmax, rmax + 1)
        for dx in range(-rmax, rmax + 1)
    }
    best = max(scores, key=scores.get)
    if not np.isfinite(scores[best]):
        return 0.0, 0.0
    lvl = top
    # refine down to the first level over ~600 px (finer levels cost more than they add; a
    # 256 px level alone left the 2000x2000 benchmark's start 0.5 px off and its EPE 0.071
    # instead of 0.063 px after two Lucas-Kanade iterations per radius), and to full
    # resolution where that is at most 256 px (a small image's search used to run there: 1225
    # shifts of a 160 px image, 0.4 s, now 361 of its half and 9 of it)
    last = 0 if min(pyr[0][0].shape) <= 256 else 1
    while lvl > min(last, top) and min(pyr[lvl - 1][0].shape) <= 600:
        lvl -= 1
        a, wa, b, wb = pyr[lvl]
        cx, cy = 2 * best[0], 2 * best[1]
        scores = {
            (cx + i, cy + j): _shift_score(a, wa, b, wb, cx + i, cy + j, multimodal, radius)
            for j in (-1, 0, 1)
            for i in (-1, 0, 1)
        }
        best = max(scores, key=scores.get)
    a, wa, b, wb = pyr[lvl]

    def parabola(sm: float, s0: float, sp: float) -> float:
        den = sm - 2 * s0 + sp
        if not (np.isfinite(den) and den < 0):
            return 0.0
        return float(np.clip(0.5 * (sm - sp) / den, -0.5, 0.5))

    def sc(i: int, j: int) -> float:
        if (i, j) not in scores:
            scores[(i, j)] = _shift_score(a, wa, b, wb, i, j, multimodal, radius)
        return scores[(i, j)]

    s0 = sc(*best)
    fx = parabola(sc(best[0] - 1, best[1]), s0, sc(best[0] + 1, best[1]))
    fy = parabola(sc(best[0], best[1] - 1), s0, sc(best[0], best[1] + 1))
    factor = 2.0 ** (lvl - (len(levels_in) - 1))
    return (best[0] + fx) * factor, (best[1] + fy) * factor


WARPS = {"bspline": K.warp_bspline, "cubic": K.warp_cubic, "bilinear": K.warp_bilinear}


def spline_coefficients(img: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients of ``img`` (invalid pixels set to the valid mean first):
    :func:`costack.registration._kernels.bspline_prefilter`, SciPy's ``spline_filter1d`` (order 3,
    mirror) along each axis to the byte."""
    fill = float(img[valid].mean()) if valid.any() else 0.0
    filled = np.where(valid, img, fill).astype(np.float32)
    return K.bspline_prefilter(filled, np.empty_like(filled))


#: the smoothing of :func:`blend_scales`, in units of the smallest radius. Bench, 1024x1024
#: optical / affine / lidar mean EPE: 0.5 -> 0.0250 / 0.0128 / 0.0236 px, 0.75 -> 0.0259 /
#: 0.0119 / 0.0240, 1 -> 0.0278 / 0.0113 / 0.0252; without the blend 0.0307 / 0.0170 /
#: 0.0298. The demo's 30 m secondary: 0.0654, 0.0620, 0.0599 px (0.081 without).
BLEND_SIGMA = 1.0


def _smooth_fields(
    fields: tuple[np.ndarray, ...], ok: np.ndarray, sigma: float
) -> list[np.ndarray]:
    """Normalised Gaussian smoothing (about ``sigma`` px) of fields known where ``ok``, on a
    reduced grid: Burt reductions down to a scale of about sigma / 2, a Gaussian there, then
    bilinear steps back up (the cost of a blur of sigma 2 px, whatever ``sigma``)."""
    k = max(0, int(math.floor(math.log2(max(sigma / 2.0, 1.0)))))
    full = bool(ok.all())
    w0 = ok.astype(np.float32)
    out = []
    for d in fields:
        x = d if full else np.where(ok, d, 0)
        x, w = np.ascontiguousarray(x, np.float32), w0
        shapes = []
        for _ in range(k):
            if min(x.shape) < 8:
                break
            shapes.append(x.shape)
            x, w = K.pyramid_down(x, w, _TAPS)  # normalised image, 2x2 mean of the weight
        rest = sigma / 2 ** len(shapes)
        x = masked_blur(x, w > 0, rest) if rest > 0.3 else np.where(w > 0, x, 0)
        for shape in reversed(shapes):
            x = K.upsample_flow(np.ascontiguousarray(x, np.float32), *shape)
            x *= np.float32(0.5)  # upsample_flow doubles a flow's values
        out.append(x.astype(np.float32, copy=False))
    return out


def blend_scales(
    u_large: np.ndarray,
    v_large: np.ndarray,
    u_small: np.ndarray,
    v_small: np.ndarray,
    ok: np.ndarray,
    sigma: float,
) -> tuple[np.ndarray, np.ndarray]:
    """u_large + G_sigma * (u_small - u_large) where ``ok`` (both components), else u_small.

    Lucas-Kanade on a window of radius r measures the window's average of the field: the large
    window's estimate is less noisy, the small one's follows a varying field more closely
    (less attenuation of, say, a 400 px sinusoid). Their difference is the small window's
    detail plus its extra noise; smoothing it over ``sigma`` (about the small radius) keeps
    the first and drops most of the second, so the result takes each window where it is
    better: a two-band split of the field by scale. The smoothing ignores pixels outside
    ``ok``, so nodata does not leak into it."""
    du, dv = _smooth_fields((u_small - u_large, v_small - v_large), ok, sigma)
    du += u_large
    dv += v_large
    if not ok.all():
        du = np.where(ok, du, u_small)
        dv = np.where(ok, dv, v_small)
    return du.astype(np.float32, copy=False), dv.astype(np.float32, copy=False)


def _pool2(a: np.ndarray) -> np.ndarray:
    h, w = (a.shape[0] // 2) * 2, (a.shape[1] // 2) * 2
    a = a[:h, :w]
    return 0.25 * (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2])


def confidence(
    i1: np.ndarray,
    v1: np.ndarray,
    i2: np.ndarray,
    v2: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    radius: int,
    grad: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Per-pixel confidence in [0, 1] from the structure tensor and the final residual.

    The smaller eigenvalue of the window's structure tensor (Shi and Tomasi) measures how well
    both flow components are constrained; the window's RMS residual after warping measures how
    well the images agree. conf = lmin / (lmin + median lmin) * exp(-(res / median res)^2 / 2).
    """
    ix, iy, wg = grad if grad is not None else _gradient(i1, v1.astype(np.float32))
    i2w, ok = (np.empty(i2.shape, np.float32) for _ in range(2))
    i2w, ok = K.warp_bilinear(i2, v2.astype(np.uint8), u, v, i2w, ok)
    wt = wg * ok
    lmin, r2, good = (np.zeros_like(i1) for _ in range(3))
    K.window_solve(kind=K.SOLVE_CONFIDENCE, i1=np.ascontiguousarray(i1, np.float32), i2w=i2w,
                   a=ix, b=iy, wt=wt, u=u, v=v, r=radius, eps=_F0, step=_F0, nmin=_F0,
                   out1=lmin, out2=r2, support=good, nbands=_bands(i1.shape[0]))  # fmt: skip
    good = good > 0
    if not good.any():
        return np.zeros_like(i1)
    # the medians are scales, taken on every third row and column (a 2000x2000 field: 0.15 s)
    sub = (slice(None, None, 3), slice(None, None, 3))
    g = good[sub] if good[sub].any() else good
    sub = sub if good[sub].any() else (slice(None), slice(None))
    lref = float(np.median(lmin[sub][g])) + 1e-12
    # the windowed sums can round a zero residual below 0
    rref = float(np.median(np.sqrt(np.maximum(r2[sub][g], 0)))) + 1e-12
    return K.confidence_map(lmin, r2, good.view(np.uint8), lref, rref)
