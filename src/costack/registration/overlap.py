"""The valid overlap of two co-located rasters, where matching steps do their work.

An AOI that overhangs the data, or a secondary that covers a corner of the grid, leaves most of
the grid empty; global searches, pyramids and point grids then answer to the empty part. The
flow and the tie points therefore run on the bounding box of the pixels valid in both images
(plus a margin) and place their results back on the grid.
"""

from __future__ import annotations

import numpy as np

#: Margin (grid px) kept around the valid overlap when the flow is cropped to it.
OVERLAP_MARGIN = 32


def overlap_window(
    ref: np.ndarray, sec: np.ndarray, margin: int = OVERLAP_MARGIN
) -> tuple[slice, slice] | None:
    """The bounding box of the pixels valid in both images, grown by ``margin``; None when
    it is (nearly) the whole grid, or when the images have no common valid pixel."""
    both = np.isfinite(ref) & np.isfinite(sec)
    rows = np.flatnonzero(both.any(axis=1))
    cols = np.flatnonzero(both.any(axis=0))
    if rows.size == 0:
        return None
    h, w = ref.shape
    r0, r1 = max(0, rows[0] - margin), min(h, rows[-1] + 1 + margin)
    c0, c1 = max(0, cols[0] - margin), min(w, cols[-1] + 1 + margin)
    if (r1 - r0) * (c1 - c0) > 0.9 * h * w:
        return None
    return slice(int(r0), int(r1)), slice(int(c0), int(c1))
