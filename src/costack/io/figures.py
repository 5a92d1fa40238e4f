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
