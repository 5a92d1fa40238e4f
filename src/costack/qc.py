"""Registration quality: residual misregistration after co-registration, measured independently.

The co-registered secondary is re-matched to the reference on a regular grid of points by
least-squares matching (the tie-point step's LSM at full resolution, patch 35x35, starting at
zero displacement); the accepted matches measure what misregistration is left. This is
independent of the flow (different estimator, different support) and is the figure to quote:
mean, median and 90th percentile in pixels and metres.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from costack import _kernels as K
from costack.rasterio_io import atomic_path, read_float32
from costack.tiepoints import lsm


def _blur(img: np.ndarray, valid: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    from scipy import ndimage

    w = valid.astype(np.float32)
    num = ndimage.gaussian_filter(img * w, sigma)
    den = ndimage.gaussian_filter(w, sigma)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid, num / np.maximum(den, 1e-6), 0).astype(np.float32)


def residual_misregistration(
    ref: np.ndarray,
    sec: np.ndarray,
    spacing: int = 24,
    half: int = 17,
    multimodal: bool = False,
    min_similarity: float | None = None,
) -> np.ndarray:
    """Residual shifts (dx, dy) at grid points where LSM succeeds; shape (n, 2)."""
    v1, v2 = np.isfinite(ref), np.isfinite(sec)
    a = np.where(v1, ref, 0).astype(np.float32)
    b = np.where(v2, sec, 0).astype(np.float32)
    if multimodal:
        a = K.rank_transform(a, v1.astype(np.uint8), 4)
        b = K.rank_transform(b, v2.astype(np.uint8), 4)
        threshold = 0.5 if min_similarity is None else min_similarity
    else:
        lo = min(a[v1].min(), b[v2].min()) if v1.any() and v2.any() else 0.0
        if lo < 0:
            a, b = a - lo, b - lo
        threshold = 0.99 if min_similarity is None else min_similarity
    # a light low-pass on both sides keeps bilinear patch interpolation from favouring the
    # integer start position (pixel locking)
    a = _blur(a, v1)
    b = _blur(b, v2)
    out = []
    for r in range(half + 2, ref.shape[0] - half - 2, spacing):
        for c in range(half + 2, ref.shape[1] - half - 2, spacing):
            p = (r + 0.5, c + 0.5)
            m = lsm(a, v1, b, v2, p, p, half, multimodal, max_iterations=10)
            if m is None or m[1] < threshold:
                continue
            (mr, mc), _ = m
            if abs(mr - p[0]) < 3 and abs(mc - p[1]) < 3:
                out.append((mc - p[1], mr - p[0]))
    return np.array(out, dtype=float).reshape(-1, 2)


def summarise(shifts: np.ndarray, pixel_size: float) -> dict:
    """Mean, median and 90th percentile of the residual magnitudes, in pixels and metres."""
    if len(shifts) == 0:
        return {"points": 0}
    mag = np.hypot(shifts[:, 0], shifts[:, 1])
    px = {"mean": float(mag.mean()), "median": float(np.median(mag)),
          "p90": float(np.percentile(mag, 90))}  # fmt: skip
    return {
        "points": int(len(mag)),
        "pixels": {k: round(v, 4) for k, v in px.items()},
        "metres": {k: round(v * pixel_size, 3) for k, v in px.items()},
        "mean_dx": round(float(shifts[:, 0].mean()), 4),
        "mean_dy": round(float(shifts[:, 1].mean()), 4),
    }


def run_qc(
    ref_tif: str | Path,
    colocated_tif: str | Path,
    coregistered_tif: str | Path,
    out_json: str | Path,
    multimodal: bool = False,
) -> dict:
    """Residual misregistration before (colocated) and after co-registration, as JSON."""
    ref, grid, _ = read_float32(ref_tif)
    before, _, _ = read_float32(colocated_tif)
    after, _, _ = read_float32(coregistered_tif)
    size = abs(grid.transform.a)
    result = {
        "method": "LSM re-matching on a regular grid (35x35 patches, every 24 px); "
        + ("|NCC| of rank-transformed patches" if multimodal else "SAM >= 0.99"),
        "before": summarise(residual_misregistration(ref, before, multimodal=multimodal), size),
        "after": summarise(residual_misregistration(ref, after, multimodal=multimodal), size),
    }
    with atomic_path(out_json) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def merge_summaries(parts: dict[str, str | Path], out_json: str | Path) -> dict:
    """results/qc/summary.json from the per-dataset files."""
    summary = {n: json.loads(Path(p).read_text(encoding="utf-8")) for n, p in parts.items()}
    with atomic_path(out_json) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
