"""Figures of the tie-point and report stages: one way to draw and save a PNG.

Matplotlib runs on its Agg back end (no screen needed); a figure is written atomically and
always closed, so a failing plot leaves neither a half-written PNG nor a leaked figure. Text is
drawn as given (mathtext and LaTeX off): titles carry item text such as a platform name.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from costack.io.files import atomic_path


@contextmanager
def png_figure(png: str | Path, dpi: int = 90, **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """``with png_figure(path, nrows=..., figsize=...) as (fig, axes):`` draw, and on leaving
    the block the figure is saved to ``path`` (PNG, tight bounding box) and closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # text from items (a platform name in a title) is data: no mathtext, no LaTeX, so "$"
    # and backslashes are drawn as they are and cannot fail the plot
    with matplotlib.rc_context({"text.usetex": False, "text.parse_math": False}):
        fig, axes = plt.subplots(**subplots)
        try:
            yield fig, axes
            with atomic_path(png) as tmp:
                fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        finally:
            plt.close(fig)


def stretch(a: np.ndarray) -> np.ndarray:
    """``a`` scaled to 0-1 between its 2nd and 98th percentiles (NaN at the low end)."""
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros_like(a)
    lo, hi = np.percentile(finite, [2, 98])
    return np.clip((np.nan_to_num(a, nan=lo) - lo) / max(hi - lo, 1e-12), 0, 1)


#: Displacement scales (grid pixels) a figure picks from: the smallest at or above the 99th
#: percentile of the magnitudes shown, so the scale starts at 0 and ends at a round number.
DISPLACEMENT_SCALES = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def displacement_scale(magnitudes: list[np.ndarray]) -> float:
    """One fixed scale (grid pixels) for the displacement magnitudes given (DISPLACEMENT_SCALES:
    the smallest at or above their 99th percentile, the largest beyond)."""
    finite = [m[np.isfinite(m)] for m in magnitudes]
    top = max((float(np.percentile(m, 99)) for m in finite if m.size), default=0.0)
    return next((s for s in DISPLACEMENT_SCALES if s >= top), DISPLACEMENT_SCALES[-1])


def flow_colours(dx: np.ndarray, dy: np.ndarray, scale: float) -> np.ndarray:
    """RGB (0-1) of a displacement: hue the direction on the image (``dx`` to the right,
    ``dy`` down), saturation the magnitude, white at 0 and full colour from ``scale`` pixels on
    (the colour coding of optical-flow benchmarks, Baker et al. 2011, Fig. 6); NaN is grey."""
    from matplotlib.colors import hsv_to_rgb

    mag = np.hypot(dx, dy)
    hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
    sat = np.clip(mag / scale, 0, 1)
    rgb = hsv_to_rgb(np.dstack([np.nan_to_num(hue), np.nan_to_num(sat), np.ones_like(hue)]))
    rgb[~(np.isfinite(dx) & np.isfinite(dy))] = 0.6
    return rgb


def _block_means(a: np.ndarray, step: int, rr: np.ndarray, cc: np.ndarray) -> np.ndarray:
    """Means of the finite values of ``a`` over ``step``-wide blocks centred on (rr, cc); NaN
    where under half the block is finite."""
    from scipy import ndimage

    valid = np.isfinite(a)
    num = ndimage.uniform_filter(np.where(valid, a, 0.0), step)
    den = ndimage.uniform_filter(valid.astype(float), step)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0.5, num / den, np.nan)[rr, cc]


def displacement_png(
    dx: np.ndarray, dy: np.ndarray, confidence: np.ndarray, scale: float, title: str,
    dpi: int = 90,
) -> bytes:  # fmt: skip
    """A figure of a displacement field as PNG bytes, on a fixed scale of ``scale`` grid pixels:
    direction and magnitude (:func:`flow_colours`, with block-mean arrows and a colour key
    labelled in pixels), the magnitude on a 0-``scale`` colour bar, and the confidence (0-1).
    The same arrays give the same bytes (no software or date tag)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    h, w = dx.shape
    fig, axes = plt.subplots(1, 4, figsize=(16, 5.2), layout="constrained",
                             gridspec_kw={"width_ratios": [1, 0.32, 1.12, 1.12]})  # fmt: skip
    try:
        ax = axes[0]
        ax.imshow(flow_colours(dx, dy, scale), interpolation="nearest")
        step = max(1, max(h, w) // 14)
        rr, cc = np.mgrid[step // 2 : h : step, step // 2 : w : step]
        u, v = _block_means(dx, step, rr, cc), _block_means(dy, step, rr, cc)
        # an arrow of ``scale`` grid pixels spans 0.9 of the arrows' spacing
        q = ax.quiver(cc, rr, u, v, angles="xy", scale_units="xy", scale=scale / (0.9 * step),
                      color="black", width=0.004)  # fmt: skip
        ax.quiverkey(q, 0.75, -0.05, scale, f"arrow: {scale:g} px", labelpos="E",
                     coordinates="axes")  # fmt: skip
        ax.set_title("direction (hue) and magnitude (saturation)", fontsize=10)
        ax.set_axis_off()
        # the colour key: the same colouring over displacements of up to 1.25 x scale
        key = axes[1]
        g = np.linspace(-1.25 * scale, 1.25 * scale, 121)
        gx, gy = np.meshgrid(g, g)
        alpha = (np.hypot(gx, gy) <= 1.25 * scale).astype(float)
        key.imshow(np.dstack([flow_colours(gx, gy, scale), alpha]),
                   extent=(g[0], g[-1], g[-1], g[0]))  # fmt: skip
        for radius in (scale / 2, scale):
            key.add_patch(Circle((0, 0), radius, fill=False, lw=0.6, ls=":"))
        key.annotate("", (scale, 0), (0, 0), arrowprops={"arrowstyle": "->", "lw": 0.8})
        key.text(scale / 2, -0.08 * scale, f"{scale:g} px", ha="center", va="bottom", fontsize=8)
        key.text(0, 1.3 * scale, "+dy: down the rows", ha="center", va="top", fontsize=7)
        key.text(1.3 * scale, 0, "+dx:\ncolumns", ha="left", va="center", fontsize=7)
        key.set_xlim(-1.3 * scale, 1.7 * scale)
        key.set_ylim(1.45 * scale, -1.3 * scale)
        key.set_title("colour key", fontsize=10)
        key.set_axis_off()
        im = axes[2].imshow(np.hypot(dx, dy), cmap="viridis", vmin=0, vmax=scale,
                            interpolation="nearest")  # fmt: skip
        fig.colorbar(im, ax=axes[2], label="displacement magnitude (grid pixels)", shrink=0.8,
                     extend="max")  # fmt: skip
        axes[2].set_title(f"magnitude, fixed scale 0-{scale:g} px", fontsize=10)
        im = axes[3].imshow(confidence, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        fig.colorbar(im, ax=axes[3], label="confidence (0-1)", shrink=0.8)
        axes[3].set_title("confidence", fontsize=10)
        for a in axes[2:]:
            a.set_axis_off()
        fig.suptitle(title, fontsize=11)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
        return buf.getvalue()
    finally:
        plt.close(fig)
