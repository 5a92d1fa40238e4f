"""Known-answer evaluation: displace an image by a known field and score a flow against it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

Field = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def affine_sinusoid(
    shape: tuple[int, int],
    shift: tuple[float, float] = (2.3, -1.6),
    linear: tuple[float, float, float, float] = (0.002, -0.001, 0.0015, 0.001),
    amplitude: float = 1.5,
    wavelength: float = 200.0,
) -> Field:
    """e(col, row): an affine about the centre plus a smooth sinusoid of ``amplitude`` px."""
    cy, cx = shape[0] / 2.0, shape[1] / 2.0

    def e(col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = col - cx, row - cy
        ex = shift[0] + linear[0] * x + linear[1] * y
        ey = shift[1] + linear[2] * x + linear[3] * y
        ex = ex + amplitude * np.sin(2 * np.pi * (col + 0.5 * row) / wavelength)
        ey = ey + amplitude * np.cos(2 * np.pi * (row - 0.3 * col) / (1.3 * wavelength))
        return ex, ey

    return e


def displace(img: np.ndarray, e: Field, order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A secondary image showing ``img`` displaced by ``e``, and the true flow.

    The secondary is sec(q) = img(q - e(q)) (cubic spline, NaN outside), and the flow d with
    sec(p + d(p)) = img(p) solves d = e(p + d) (fixed-point iteration). Both (2, h, w).
    """
    h, w = img.shape
    row, col = np.mgrid[0:h, 0:w].astype(np.float64)
    ex, ey = e(col + 0.5, row + 0.5)
    sec = ndimage.map_coordinates(
        img.astype(np.float64), [row - ey, col - ex], order=order, mode="constant", cval=np.nan
    )
    dx = np.zeros((h, w))
    dy = np.zeros((h, w))
    for _ in range(100):
        nx, ny = e(col + 0.5 + dx, row + 0.5 + dy)
        delta = max(np.abs(nx - dx).max(), np.abs(ny - dy).max())
        dx, dy = nx, ny
        if delta < 1e-10:
            break
    return sec.astype(np.float32), np.stack([dx, dy]).astype(np.float32)


def epe(
    dx: np.ndarray, dy: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """End-point errors |d - d_true| on ``mask`` (NaN estimates count as missing)."""
    err = np.hypot(dx - truth[0], dy - truth[1])
    if mask is not None:
        err = err[mask]
    return err[np.isfinite(err)]


def interior(shape: tuple[int, int], margin: int) -> np.ndarray:
    """Mask of pixels at least ``margin`` from the border."""
    m = np.zeros(shape, bool)
    m[margin:-margin, margin:-margin] = True
    return m


def flow_metrics(flow: np.ndarray, truth: np.ndarray, margin: int = 8) -> dict:
    """EPE statistics of a flow (2, h, w) against its truth (2, h, w), pixels at least
    ``margin`` from the border (:func:`costack.io.rasters.read_flow_and_truth` reads both)."""
    err = np.hypot(flow[0] - truth[0], flow[1] - truth[1])
    e = err[interior(err.shape, margin) & np.isfinite(err)]
    return {
        "mean_epe": float(e.mean()),
        "median_epe": float(np.median(e)),
        "p90_epe": float(np.percentile(e, 90)),
        "n": int(e.size),
    }
