"""Spread, unequal-probability samples of a point lattice, and the statistics they estimate.

The QC re-matches a few hundred points of its regular grid instead of all of them: the points
are drawn by systematic sampling along a Hilbert curve through the lattice, with inclusion
probabilities proportional to a weight (more where the flow is less confident). Ordering the
population along a space-filling curve and sampling it systematically with a random start
spreads the sample over the area as stratification would (the idea of GRTS, Stevens and Olsen
2004, J. Am. Stat. Assoc. 99(465):262), and every point's inclusion probability pi_i is known
exactly, so that weighting each measured point by 1 / pi_i (Horvitz and Thompson 1952, J. Am.
Stat. Assoc. 47(260):663) estimates the figures of the whole lattice: its mean, and its
quantiles through the weighted distribution function.
"""

from __future__ import annotations

import numpy as np


def hilbert_index(rows: np.ndarray, cols: np.ndarray, order: int) -> np.ndarray:
    """Position of each (row, col) along the Hilbert curve filling a 2**order square (the
    classic xy-to-d conversion, vectorised)."""
    x = np.asarray(cols, dtype=np.int64).copy()
    y = np.asarray(rows, dtype=np.int64).copy()
    d = np.zeros(x.shape, np.int64)
    s = 1 << (order - 1) if order > 0 else 0
    n = 1 << order
    while s > 0:
        rx = ((x & s) > 0).astype(np.int64)
        ry = ((y & s) > 0).astype(np.int64)
        d += s * s * ((3 * rx) ^ ry)
        # rotate the quadrant
        flip = ry == 0
        swap_back = flip & (rx == 1)
        x = np.where(swap_back, n - 1 - x, x)
        y = np.where(swap_back, n - 1 - y, y)
        x, y = np.where(flip, y, x), np.where(flip, x, y)
        s >>= 1
    return d


def inclusion_probabilities(weights: np.ndarray, size: int) -> np.ndarray:
    """pi_i proportional to ``weights`` with sum ``size``, none above 1 (the points that would
    pass 1 are taken for sure and the rest share what remains)."""
    w = np.asarray(weights, dtype=np.float64)
    pi = np.zeros_like(w)
    if size <= 0 or w.size == 0:
        return pi
    if size >= w.size:
        return np.ones_like(w)
    sure = np.zeros(w.shape, bool)
    for _ in range(w.size):
        rest = size - sure.sum()
        pi = np.where(sure, 1.0, rest * w / w[~sure].sum())
        over = (pi > 1.0) & ~sure
        if not over.any():
            break
        sure |= over
    return np.minimum(pi, 1.0)


def spread_sample(
    rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, size: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A sample of about ``size`` of the lattice points (``rows``, ``cols``: integer lattice
    indices), drawn with probability proportional to ``weights`` and spread over the area.

    Systematic sampling along the Hilbert curve (see the module): the points are ordered along
    the curve, their inclusion probabilities laid end to end, and a point is taken where the
    interval it covers holds one of u, u + 1, u + 2, ... (u uniform in [0, 1), from ``seed``).
    Returns the taken points' indices (into the inputs, in curve order) and their inclusion
    probabilities."""
    n = len(rows)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    pi = inclusion_probabilities(weights, size)
    extent = int(max(np.max(rows), np.max(cols))) + 1
    order = max(1, int(np.ceil(np.log2(extent))))
    along = np.argsort(hilbert_index(rows, cols, order), kind="stable")
    cum = np.cumsum(pi[along])
    u = np.random.default_rng(seed).random()
    before = np.concatenate([[0.0], cum[:-1]])
    taken = np.floor(cum - u) > np.floor(before - u)
    idx = along[taken]
    return idx, pi[idx]


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The ``q`` quantile (0-1) of the distribution that puts mass ``weights`` on ``values``,
    interpolated linearly between the sorted values placed at (S_i - w_i) / (S_n - w_n), S_i
    the cumulated weights: with equal weights the positions i / (n - 1) of NumPy's default
    (linear) percentile, so that a sample holding the whole lattice gives its figures."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    if len(v) == 1:
        return float(v[0])
    cum = np.cumsum(w)
    pos = (cum - w) / (cum[-1] - w[-1])
    return float(np.interp(q, pos, v))
