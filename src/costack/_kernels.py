"""Numba kernels of the dense flow: bilinear warping, masked box sums, rank transform.

Each is a whole-array loop parallelised over rows (``prange``), so both cores are used, and
each works in float32 with float64 accumulators where sums run long.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, fastmath=False)
def warp_bilinear(img, valid, u, v):  # pragma: no cover - compiled
    """Sample ``img`` at (col + u, row + v) (pixel-centre coordinates) bilinearly.

    Returns (values, ok): ``ok`` is 1 where the four neighbours are inside the image and valid,
    else 0 and the value is 0; edges are never replicated.
    """
    h, w = img.shape
    out = np.zeros((h, w), np.float32)
    ok = np.zeros((h, w), np.float32)
    for i in prange(h):
        for j in range(w):
            x = j + u[i, j]
            y = i + v[i, j]
            if not (x >= 0.0 and y >= 0.0 and x <= w - 1 and y <= h - 1):
                continue
            x0 = min(int(x), w - 2) if w > 1 else 0
            y0 = min(int(y), h - 2) if h > 1 else 0
            fx = x - x0
            fy = y - y0
            x1 = min(x0 + 1, w - 1)
            y1 = min(y0 + 1, h - 1)
            # a neighbour with zero weight does not need to be valid
            if (
                (valid[y0, x0] == 0 and (1 - fx) * (1 - fy) > 0)
                or (valid[y0, x1] == 0 and fx * (1 - fy) > 0)
                or (valid[y1, x0] == 0 and (1 - fx) * fy > 0)
                or (valid[y1, x1] == 0 and fx * fy > 0)
            ):
                continue
            a = img[y0, x0] if (1 - fx) * (1 - fy) > 0 else 0.0
            b = img[y0, x1] if fx * (1 - fy) > 0 else 0.0
            c = img[y1, x0] if (1 - fx) * fy > 0 else 0.0
            d = img[y1, x1] if fx * fy > 0 else 0.0
            out[i, j] = (1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * c + fx * d)
            ok[i, j] = 1.0
    return out, ok


@njit(parallel=True, cache=True)
def box_sums(stack, r):  # pragma: no cover - compiled
    """Sums over (2r+1)^2 windows, clipped at the borders, of each plane of ``stack``.

    Running sums make the cost independent of ``r``. ``stack`` is (k, h, w) float32.
    """
    k, h, w = stack.shape
    tmp = np.empty((k, h, w), np.float32)
    out = np.empty((k, h, w), np.float32)
    # horizontal pass: one (plane, row) per task
    for t in prange(k * h):
        p = t // h
        i = t % h
        acc = 0.0
        for j in range(min(r, w - 1) + 1):
            acc += stack[p, i, j]
        for j in range(w):
            tmp[p, i, j] = acc
            jn = j + r + 1
            jo = j - r
            if jn < w:
                acc += stack[p, i, jn]
            if jo >= 0:
                acc -= stack[p, i, jo]
    # vertical pass: one (plane, column block) per task, rows in order
    bw = 64
    nb = (w + bw - 1) // bw
    for t in prange(k * nb):
        p = t // nb
        j0 = (t % nb) * bw
        j1 = min(j0 + bw, w)
        acc = np.zeros(j1 - j0, np.float64)
        for i in range(min(r, h - 1) + 1):
            for j in range(j0, j1):
                acc[j - j0] += tmp[p, i, j]
        for i in range(h):
            for j in range(j0, j1):
                out[p, i, j] = acc[j - j0]
            inew = i + r + 1
            iold = i - r
            if inew < h:
                for j in range(j0, j1):
                    acc[j - j0] += tmp[p, inew, j]
            if iold >= 0:
                for j in range(j0, j1):
                    acc[j - j0] -= tmp[p, iold, j]
    return out


@njit(parallel=True, cache=True, fastmath=True)
def rank_transform(img, valid, r):  # pragma: no cover - compiled
    """Local rank: share of the valid pixels of the (2r+1)^2 window below the centre.

    The rank filter of EFolki (Brigot et al. 2016): any monotonic radiometric change between
    two images leaves it unchanged. Ties count one half. Invalid pixels get 0.
    Branch-free inner loop (vectorised by LLVM).
    """
    h, w = img.shape
    out = np.zeros((h, w), np.float32)
    vf = valid.astype(np.float32)
    for i in prange(h):
        a0 = max(0, i - r)
        a1 = min(h, i + r + 1)
        for j in range(w):
            if vf[i, j] == 0:
                continue
            c = img[i, j]
            b0 = max(0, j - r)
            b1 = min(w, j + r + 1)
            below = np.float32(0.0)
            n = np.float32(0.0)
            for a in range(a0, a1):
                for b in range(b0, b1):
                    x = img[a, b]
                    v = vf[a, b]
                    n += v
                    below += v * (np.float32(x < c) + np.float32(0.5) * np.float32(x == c))
            out[i, j] = (below - np.float32(0.5)) / max(n - np.float32(1.0), np.float32(1.0))
    return out


@njit(parallel=True, cache=True)
def upsample_flow(u, h, w):  # pragma: no cover - compiled
    """Bilinear ×2 upsampling of a coarse flow plane to (h, w), values doubled."""
    hc, wc = u.shape
    out = np.empty((h, w), np.float32)
    for i in prange(h):
        y = min(max((i + 0.5) / 2.0 - 0.5, 0.0), hc - 1.0)
        y0 = min(int(y), max(hc - 2, 0))
        fy = y - y0
        y1 = min(y0 + 1, hc - 1)
        for j in range(w):
            x = min(max((j + 0.5) / 2.0 - 0.5, 0.0), wc - 1.0)
            x0 = min(int(x), max(wc - 2, 0))
            fx = x - x0
            x1 = min(x0 + 1, wc - 1)
            val = (1 - fy) * ((1 - fx) * u[y0, x0] + fx * u[y0, x1]) + fy * (
                (1 - fx) * u[y1, x0] + fx * u[y1, x1]
            )
            out[i, j] = 2.0 * val
    return out


@njit(cache=True, inline="always")
def _keys(t):  # pragma: no cover - compiled
    """Keys' cubic convolution kernel (a = -0.5) at distance t."""
    t = abs(t)
    if t < 1.0:
        return (1.5 * t - 2.5) * t * t + 1.0
    if t < 2.0:
        return ((-0.5 * t + 2.5) * t - 4.0) * t + 2.0
    return 0.0


@njit(parallel=True, cache=True)
def warp_cubic(img, valid, u, v):  # pragma: no cover - compiled
    """Sample ``img`` at (col + u, row + v) with Keys' bicubic convolution.

    Returns (values, ok) like :func:`warp_bilinear`; a sample needs its 4x4 neighbourhood
    inside the image and valid (bilinear is used within one pixel of the border).
    """
    h, w = img.shape
    out = np.zeros((h, w), np.float32)
    ok = np.zeros((h, w), np.float32)
    for i in prange(h):
        for j in range(w):
            x = j + u[i, j]
            y = i + v[i, j]
            if not (x >= 0.0 and y >= 0.0 and x <= w - 1 and y <= h - 1):
                continue
            x0 = int(x)
            y0 = int(y)
            if x0 >= 1 and y0 >= 1 and x0 + 2 <= w - 1 and y0 + 2 <= h - 1:
                fx = x - x0
                fy = y - y0
                acc = 0.0
                good = True
                for a in range(-1, 3):
                    wy = _keys(fy - a)
                    if wy == 0.0:
                        continue
                    row = 0.0
                    for b in range(-1, 3):
                        wx = _keys(fx - b)
                        if wx == 0.0:
                            continue
                        if valid[y0 + a, x0 + b] == 0:
                            good = False
                        row += wx * img[y0 + a, x0 + b]
                    acc += wy * row
                if good:
                    out[i, j] = acc
                    ok[i, j] = 1.0
            else:
                x0 = min(x0, w - 2) if w > 1 else 0
                y0 = min(y0, h - 2) if h > 1 else 0
                x1 = min(x0 + 1, w - 1)
                y1 = min(y0 + 1, h - 1)
                fx = x - x0
                fy = y - y0
                if valid[y0, x0] and valid[y0, x1] and valid[y1, x0] and valid[y1, x1]:
                    out[i, j] = (1 - fy) * ((1 - fx) * img[y0, x0] + fx * img[y0, x1]) + fy * (
                        (1 - fx) * img[y1, x0] + fx * img[y1, x1]
                    )
                    ok[i, j] = 1.0
    return out, ok


@njit(parallel=True, cache=True)
def warp_bspline(coef, valid, u, v):  # pragma: no cover - compiled
    """Sample a cubic B-spline (prefiltered coefficients ``coef``) at (col + u, row + v).

    Exact cubic-spline interpolation (Unser 1999), whose phase response stays close to the
    ideal shift up to high frequencies, unlike bilinear or Keys kernels: with those, a real
    (band-limited) sub-pixel shift is measured with a bias of several hundredths of a pixel.
    Returns (values, ok); a sample needs its 4x4 neighbourhood inside and valid.
    """
    h, w = coef.shape
    out = np.zeros((h, w), np.float32)
    ok = np.zeros((h, w), np.float32)
    for i in prange(h):
        for j in range(w):
            x = j + u[i, j]
            y = i + v[i, j]
            if not (x >= 1.0 and y >= 1.0 and x < w - 2 and y < h - 2):
                continue
            x0 = int(x)
            y0 = int(y)
            tx = x - x0
            ty = y - y0
            wx0 = (1 - tx) ** 3 / 6.0
            wx1 = (3 * tx**3 - 6 * tx**2 + 4) / 6.0
            wx2 = (-3 * tx**3 + 3 * tx**2 + 3 * tx + 1) / 6.0
            wx3 = tx**3 / 6.0
            wy0 = (1 - ty) ** 3 / 6.0
            wy1 = (3 * ty**3 - 6 * ty**2 + 4) / 6.0
            wy2 = (-3 * ty**3 + 3 * ty**2 + 3 * ty + 1) / 6.0
            wy3 = ty**3 / 6.0
            good = True
            for a in range(-1, 3):
                for b in range(-1, 3):
                    if valid[y0 + a, x0 + b] == 0:
                        good = False
            if not good:
                continue
            acc = 0.0
            for a in range(4):
                wy = wy0 if a == 0 else (wy1 if a == 1 else (wy2 if a == 2 else wy3))
                r = y0 - 1 + a
                acc += wy * (
                    wx0 * coef[r, x0 - 1] + wx1 * coef[r, x0] + wx2 * coef[r, x0 + 1]
                    + wx3 * coef[r, x0 + 2]
                )  # fmt: skip
            out[i, j] = acc
            ok[i, j] = 1.0
    return out, ok


@njit(parallel=True, cache=True)
def lk_planes(i1, i2w, ix, iy, wt, u, v):  # pragma: no cover - compiled
    """The 8 weighted planes whose window sums make the Folki system (Plyer et al. 2015):
    w Ix^2, w IxIy, w Iy^2, w Ix It, w Iy It, w, w u, w v with It = I2w - I1 - grad.u."""
    h, w = i1.shape
    out = np.empty((8, h, w), np.float32)
    for i in prange(h):
        for j in range(w):
            g = wt[i, j]
            gx = ix[i, j]
            gy = iy[i, j]
            it = i2w[i, j] - i1[i, j] - gx * u[i, j] - gy * v[i, j]
            out[0, i, j] = g * gx * gx
            out[1, i, j] = g * gx * gy
            out[2, i, j] = g * gy * gy
            out[3, i, j] = g * gx * it
            out[4, i, j] = g * gy * it
            out[5, i, j] = g
            out[6, i, j] = g * u[i, j]
            out[7, i, j] = g * v[i, j]
    return out


@njit(parallel=True, cache=True)
def lk_solve(sums, u, v, eps, step, nmin, support):  # pragma: no cover - compiled
    """Solve the regularised 2x2 Folki system at every pixel and update (u, v) in place.

    (A + eps I) u_new = -b + eps mean(u) (A, b normalised by the window's valid weight); the
    update is limited to ``step`` pixels; windows with less than ``nmin`` valid weight keep u.
    """
    _, h, w = sums.shape
    for i in prange(h):
        for j in range(w):
            n = sums[5, i, j]
            if n <= nmin:
                continue
            inv = 1.0 / n
            a11 = sums[0, i, j] * inv + eps
            a12 = sums[1, i, j] * inv
            a22 = sums[2, i, j] * inv + eps
            r1 = -sums[3, i, j] * inv + eps * sums[6, i, j] * inv
            r2 = -sums[4, i, j] * inv + eps * sums[7, i, j] * inv
            det = a11 * a22 - a12 * a12
            if not det > 0:
                continue
            du = (a22 * r1 - a12 * r2) / det - u[i, j]
            dv = (a11 * r2 - a12 * r1) / det - v[i, j]
            mag = np.sqrt(du * du + dv * dv)
            if mag > step:
                du *= step / mag
                dv *= step / mag
            u[i, j] += du
            v[i, j] += dv
            support[i, j] = 1.0


@njit(parallel=True, cache=True)
def mean_trace(sums, nmin):  # pragma: no cover - compiled
    """Mean over well-supported windows of the normalised structure-tensor trace."""
    _, h, w = sums.shape
    acc = np.zeros(h)
    cnt = np.zeros(h)
    for i in prange(h):
        for j in range(w):
            n = sums[5, i, j]
            if n > nmin:
                acc[i] += (sums[0, i, j] + sums[2, i, j]) / n
                cnt[i] += 1.0
    c = cnt.sum()
    return acc.sum() / c if c > 0 else 1.0
