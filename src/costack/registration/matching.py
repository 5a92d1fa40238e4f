"""Area-based matching shared by the tie-point step and the QC re-matching, and the decision
of what a pair is matched on.

- What is matched (:func:`representation`): intensities, compared by the spectral angle (SAM,
  Yan et al. 2016, eq. 4), or for SAR against optical and inverted contrast CFOG descriptors
  (channel features of oriented gradients, Ye et al. 2019), compared by normalised correlation;
  :func:`costack.stages._common.decide_mode` chooses from the rasters themselves.
- How (:func:`lsm`): least-squares matching of a patch (Gruen 1985), affine geometry and linear
  radiometry, on a cubic B-spline of the secondary (Unser 1999).
- The global prior (:func:`prior_shift`, :func:`multimodal_prior`) and the CFOG similarity of a
  whole co-registered pair (:func:`multimodal_similarity`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from costack.registration import _kernels as K
from costack.registration._kernels import lsm_point
from costack.registration.imaging import fill_nearest, masked_blur

#: NCC of CFOG descriptors that a multimodal match must reach (tie points and QC)
MIN_SIMILARITY_MULTIMODAL = 0.4


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
    from scipy import ndimage  # scipy: imported by the callers that need it only

    sm = masked_blur(img, valid, sigma)
    gvalid = ndimage.binary_erosion(valid, iterations=1, border_value=0)
    gy, gx = np.gradient(sm)
    theta = np.pi * np.arange(CFOG_ORIENTATIONS) / CFOG_ORIENTATIONS
    # the element-wise steps are compiled passes (K.cfog_*): the same operations, in the same
    # types (float64 channels, float32 once blurred) and order, as the NumPy expressions they
    # replaced, so the same bytes (a 2000x2000 image 1.3-1.45 -> 0.92-0.94 s)
    ch = K.cfog_channels(np.ascontiguousarray(gx), np.ascontiguousarray(gy), np.cos(theta),
                         np.sin(theta))  # fmt: skip
    # every smoothing is a normalised convolution over the pixels whose gradient is valid, so
    # that the border of nodata (a false edge) never leaks into a valid pixel's descriptor;
    # the channels are blurred as float32, which the blur returns anyway, on its compiled path
    # (2000x2000: 0.9 -> 0.6 s; descriptors within 5e-7 relative of the float64 blur's, the
    # demo's SAR tie points within 2e-6 px, every tie-point and SAR bench figure unchanged)
    ch = np.stack([masked_blur(c.astype(np.float32), gvalid, sigma) for c in ch])
    ch, energy = K.cfog_mix(ch)  # [1, 2, 1] across orientations; sqrt of the channels' sum
    # regional rather than per-pixel normalisation: per pixel, the speckle of a flat SAR field
    # would weigh as much as an edge (measured: 73% of coarse matches within one pixel with a
    # regional norm over 8 px, 18% with the per-pixel norm, on the demo's SAR/optical pair)
    norm = masked_blur(energy, gvalid, norm_sigma) + 1e-6
    ok = ndimage.binary_erosion(valid, iterations=2, border_value=0)
    return K.cfog_normalise(ch, norm, ok.view(np.uint8))


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


def _cfog_valid(img: np.ndarray, ok: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """An image's CFOG descriptors and the mask where they are valid (two pixels inside its
    valid pixels: the gradient's and the blur's reach)."""
    from scipy import ndimage  # scipy: imported by the callers that need it only

    return cfog(img, ok, sigma), ndimage.binary_erosion(ok, iterations=2, border_value=0)


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
        return (*_cfog_valid(ref, ref_ok, sigma), *_cfog_valid(sec, sec_ok, sigma))
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
    from scipy import ndimage  # scipy: imported by the callers that need it only

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


#: Pixels kept beyond a point's patches when its level is prepared around it alone
#: (:class:`LocalLevel`): the cubic B-spline's recursive prefilter has its pole at
#: sqrt(3) - 2 = -0.268 (Unser 1999, "Splines: a perfect fit for signal and image processing"),
#: so a coefficient this far inside the crop differs from the whole image's by a relative
#: 0.268^16 = 1e-9; the gradients and the CFOG blur reach two pixels.
LOCAL_MARGIN = 16


@dataclass
class LocalLevel:
    """A pyramid level kept as it is, prepared (:func:`prepare`) around each point only when it
    is matched (:func:`lsm_at`): for a few hundred points on a large level, crops of a few
    thousand pixels each cost a fraction of preparing every pixel (a 2745 px tile's full
    resolution: the spline, gradients and nearest fill of 7.5 M pixels for about 250 points)."""

    ref: np.ndarray
    ref_ok: np.ndarray
    sec: np.ndarray
    sec_ok: np.ndarray
    multimodal: bool
    sigma: float = 1.0

    @staticmethod
    def reach(half: int) -> int:
        """Half side of the crop around the secondary's position: the patch, as far again for
        the affine patch's deformation, and :data:`LOCAL_MARGIN`."""
        return 2 * half + LOCAL_MARGIN

    @classmethod
    def pays(cls, points: int, half: int, shape: tuple[int, int]) -> bool:
        """Whether ``points`` crops cost less than preparing a level of ``shape``."""
        side = 2 * cls.reach(half) + 1
        return points * side * side < shape[0] * shape[1]


def lsm_at(
    level: MatchImages | LocalLevel,
    p_ref: tuple[float, float],
    p_sec: tuple[float, float],
    half: int,
    max_iterations: int = 20,
) -> tuple[tuple[float, float], float] | None:
    """:func:`lsm` on a prepared level, or on a :class:`LocalLevel` prepared over the crop that
    holds the reference's patch and the secondary's around ``p_sec``, with room for the affine
    patch and :data:`LOCAL_MARGIN` around both; positions in the level's pixels either way.
    A patch that reaches the level's edge is refused as :func:`lsm` refuses it."""
    if isinstance(level, MatchImages):
        return lsm(level, p_ref, p_sec, half, max_iterations)
    h, w = level.ref_ok.shape
    r0i, c0i = int(round(p_ref[0] - 0.5)), int(round(p_ref[1] - 0.5))
    if r0i - half < 0 or c0i - half < 0 or r0i + half >= h or c0i + half >= w:
        return None
    reach, around = LocalLevel.reach(half), half + LOCAL_MARGIN
    top = max(0, min(r0i - around, int(math.floor(p_sec[0])) - reach))
    left = max(0, min(c0i - around, int(math.floor(p_sec[1])) - reach))
    bottom = min(h, max(r0i + around + 1, int(math.ceil(p_sec[0])) + reach + 1))
    right = min(w, max(c0i + around + 1, int(math.ceil(p_sec[1])) + reach + 1))
    if bottom - top < 4 or right - left < 4:  # the secondary's position left the level
        return None
    crop = (slice(top, bottom), slice(left, right))
    m = prepare(level.ref[crop], level.ref_ok[crop], level.sec[crop], level.sec_ok[crop],
                level.multimodal, level.sigma)  # fmt: skip
    found = lsm(m, (p_ref[0] - top, p_ref[1] - left), (p_sec[0] - top, p_sec[1] - left), half,
                max_iterations)  # fmt: skip
    if found is None:
        return None
    (row, col), sim = found
    return (row + top, col + left), sim


#: the similarity kinds of :func:`costack.registration._kernels.lsm_point`: SAM (intensities), NCC
#: (means
#: removed per channel) and its absolute value (locally inverted contrast)
_SIMILARITY = {"sam": 0, "ncc": 1, "absncc": 2}


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
    g1 = np.ascontiguousarray(m.ref[(slice(None), *sl)].reshape(nch, -1), np.float64)
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    # affine geometry: sec position = t + A (y, x); pixel-centre index = position - 0.5
    t = np.array(p_sec, dtype=np.float64) + np.array([r0i + 0.5 - p_ref[0], c0i + 0.5 - p_ref[1]])
    found, row, col, sim = lsm_point(
        g1, m.sec, m.sec_gy, m.sec_gx, m.sec_ok[None], yy.ravel(), xx.ravel(), t, half,
        m.order, _SIMILARITY[m.similarity], m.affine, max_iterations,
    )  # fmt: skip
    return ((row, col), sim) if found else None


def cfog_of(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CFOG descriptors (one-pixel scale) of an image with NaN as nodata, and the mask where
    they are valid: one half of :func:`representation` on CFOG, the same bytes."""
    v = np.isfinite(img)
    return _cfog_valid(np.where(v, img, 0).astype(np.float32), v, 1.0)


def _cfog_pair(ref: np.ndarray, sec: np.ndarray, ref_desc=None):
    """:func:`cfog_of` both images (the reference's may be given, already computed)."""
    a, a_ok = cfog_of(ref) if ref_desc is None else ref_desc
    return (a, a_ok, *cfog_of(sec))


def multimodal_prior(
    ref: np.ndarray, sec: np.ndarray, max_shift: float, ref_desc=None
) -> tuple[float, float]:
    """Global translation (dx, dy) of a SAR/optical pair (NaN = nodata): :func:`prior_shift` on
    CFOG descriptors at one-pixel scale (Ye et al. 2019), which survive inverted and
    non-monotonic contrast between the sensors where intensity correlation does not.
    ``ref_desc``: the reference's :func:`cfog_of`, when the caller has it."""
    dy, dx = prior_shift(*_cfog_pair(ref, sec, ref_desc), max_shift)
    return dx, dy


def multimodal_similarity(ref: np.ndarray, sec: np.ndarray, ref_desc=None) -> float:
    """NCC of the CFOG descriptors of two co-located images over their common valid pixels
    (channels' means removed; Ye et al. 2019, eq. 6 over the whole overlap): how well a
    co-registered SAR image's structure lies on the optical reference's. ``ref_desc``: the
    reference's :func:`cfog_of`, when the caller has it."""
    a, a_ok, b, b_ok = _cfog_pair(ref, sec, ref_desc)
    both = a_ok & b_ok
    if both.sum() < 16:
        return float("nan")
    # channel by channel, so that only one channel's pixels are held in float64 at a time (the
    # eight at once were 2 GB of a 4000x4000 SAR/optical flow's 5.1 GB peak)
    sxy = sxx = syy = 0.0
    for ca, cb in zip(a, b, strict=True):
        x = ca[both].astype(np.float64)
        y = cb[both].astype(np.float64)
        x -= x.mean()
        y -= y.mean()
        sxy += float(x @ y)
        sxx += float(x @ x)
        syy += float(y @ y)
    den = math.sqrt(sxx * syy)
    return sxy / den if den > 0 else float("nan")


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
    from scipy import fft as sfft  # imported by the callers that need it only

    ok1 = ref_ok.astype(np.float64)
    ok2 = sec_ok
    h, w = ok1.shape
    r = int(min(max(1, math.ceil(max_shift)), h // 3, w // 3))
    shape = (h + r, w + r)
    # SciPy's FFT on the job's cores; the channels' cross-spectra are summed before one inverse
    # transform (the correlation is linear): a 2000x2000 SAR/optical prior on 8 CFOG channels
    # took 24 transforms on one core, now 17 on two
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1

    def f(x: np.ndarray) -> np.ndarray:
        return sfft.rfft2(x, shape, workers=workers)

    spec = None
    for a, b in zip(ref, sec, strict=True):
        a0 = np.where(ok1 > 0, a - a[ok1 > 0].mean(), 0)
        b0 = np.where(ok2, b - b[ok2].mean(), 0)
        cross = f(b0) * np.conj(f(a0))
        if spec is None:
            spec = cross
        else:
            spec += cross
    acc = sfft.irfft2(spec, shape, workers=workers)
    cnt = sfft.irfft2(f(ok2.astype(float)) * np.conj(f(ok1)), shape, workers=workers)
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
