"""Image primitives shared by the stages: masked Gaussian blur, nearest-valid fill, the blur
that matches a coarser resolution, warping by a displacement field, dB and linear power.

Every function treats nodata as data to respect: invalid pixels are neither used nor
invented, and NaN stays NaN.
"""

from __future__ import annotations

import numpy as np


def masked_blur(img: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur by normalised convolution (Knutsson and Westin 1993): invalid pixels are
    neither used nor filled (0 there).

    A Float32 image goes through the compiled :func:`costack.registration._kernels.masked_blur`
    (the same
    bytes as the SciPy path below, six times faster); other types through SciPy's
    ``gaussian_filter`` (truncated at 3 sigma, zero outside the image)."""
    if img.dtype == np.float32 and img.ndim == 2 and float(sigma) > 0:
        from costack.registration import (
            _kernels as K,  # numba: imported by the jobs that filter only
        )

        r = int(3.0 * float(sigma) + 0.5)
        x = np.arange(-r, r + 1)
        taps = np.exp(-0.5 / (float(sigma) * float(sigma)) * x**2)  # SciPy's taps
        taps = np.ascontiguousarray((taps / taps.sum())[r:])
        ok = np.ascontiguousarray(valid, dtype=bool).view(np.uint8)
        return K.masked_blur(np.ascontiguousarray(img), ok, taps)
    from scipy import ndimage  # scipy: imported by the jobs that filter only

    w = valid.astype(np.float32)
    num = ndimage.gaussian_filter(np.where(valid, img, 0), sigma, mode="constant", truncate=3.0)
    den = ndimage.gaussian_filter(w, sigma, mode="constant", truncate=3.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid, num / np.maximum(den, 1e-6), 0).astype(np.float32)


def fill_nearest(img: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``img`` with every invalid pixel replaced by the nearest valid one (zeros if there is
    none): a neutral extension before filters that would ring on a step or spread NaN."""
    if valid.all():
        return img
    if not valid.any():
        return np.zeros_like(img)
    from scipy import ndimage

    idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return img[tuple(idx)]


def on_two_threads(fn, args1: tuple, args2: tuple) -> tuple:
    """``fn(*args1), fn(*args2)`` on two threads, for code that releases the GIL and is not a
    parallel numba kernel (two of those at once are not safe under every threading layer):
    SciPy's filters, the compiled masked blur (the flow's pre-smoothing of both images: 0.03 s
    at 2000x2000) and the compiled LSM (the QC's before and after re-matchings)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as ex:
        f1 = ex.submit(fn, *args1)
        f2 = ex.submit(fn, *args2)
        return f1.result(), f2.result()


def resolution_sigma(ratio: float) -> float:
    """Gaussian sigma (grid px) that brings a sharp image to the resolution of one ``ratio``
    times coarser: 0.5 sqrt(ratio^2 - 1) when the ratio exceeds 1.5, else 0 (the Gaussian
    equivalents of the two point spread functions add in quadrature)."""
    return 0.5 * float(np.sqrt(ratio**2 - 1.0)) if ratio > 1.5 else 0.0


def blur_valid(img: np.ndarray, sigma: float) -> np.ndarray:
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
    from costack.registration import _kernels as K  # numba: imported by the jobs that warp only

    out, ok = (np.empty(src.shape, np.float32) for _ in range(2))
    out, ok = K.warp_bilinear(src, valid.astype(np.uint8), u, v, out, ok)
    return np.where((ok > 0) & known, out, np.nan).astype(np.float32)


def db_to_linear(db: np.ndarray) -> np.ndarray:
    """10^(dB/10), element-wise."""
    return np.power(np.float32(10.0), db / np.float32(10.0), dtype=np.float32)


def linear_to_db(power: np.ndarray) -> np.ndarray:
    """10 log10(power), with non-positive power as NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.float32(10.0) * np.log10(power)
    out[~np.isfinite(out)] = np.nan
    return out.astype(np.float32)
