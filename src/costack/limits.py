"""Where the stages switch from whole grids in memory to tiles or blocks, and what that costs:
one home for the flow's, warp's, tie points' and QC's limits, read by those stages and by the
run plan's memory estimates (:func:`costack.plan.job_memory`). No numba here, so that parsing
the Snakefile imports none.
"""

import math

#: Grids larger than this (pixels): the flow and warp go by tiles (:mod:`costack.stages._tiled`).
TILED_ABOVE = 16_000_000

#: Grids larger than this (pixels): the tie points are matched by tiles of at most this size.
TIEPOINT_IN_MEMORY_PIXELS = 16_000_000
#: Measured peak bytes per grid pixel of the tie points in memory (4096 x 4096 pair: 1.41 GB).
TIEPOINT_BYTES_PER_PIXEL = 80

#: Measured peak bytes per grid pixel of the in-memory QC on intensities (4096 x 4096 pair:
#: 1.15 GB) and on CFOG descriptors (SAR/optical, inverted contrast: 2000 x 2000 pair, 1.25 GB
#: with the process's 0.2 GB; eight channels and their derivatives).
QC_BYTES_PER_PIXEL = 60
QC_BYTES_PER_PIXEL_CFOG = 270
#: The QC re-matches a grid in memory while its estimate stays under this, else by blocks.
QC_IN_MEMORY_BYTES = 1_000_000_000
#: Target memory of one block of the QC (blocks of grid rows and columns with margins).
QC_BLOCK_BYTES = 600_000_000
#: Pixels read on every side of a block: a multimodal patch's half (25) and its 2 px border,
#: the 3 px match tolerance, and the support of the blur, CFOG and B-spline filters.
QC_BLOCK_MARGIN = 96


def qc_bytes_per_pixel(multimodal: bool) -> int:
    """Peak bytes per grid pixel of the QC's re-matching (CFOG descriptors or intensities)."""
    return QC_BYTES_PER_PIXEL_CFOG if multimodal else QC_BYTES_PER_PIXEL


def qc_in_memory_pixels(multimodal: bool) -> int:
    """Largest grid (pixels) the QC re-matches in memory: 16.7 Mpx on intensities, 3.7 Mpx on
    CFOG descriptors; larger grids go by blocks of QC_BLOCK_BYTES."""
    return QC_IN_MEMORY_BYTES // qc_bytes_per_pixel(multimodal)


def qc_block_side(multimodal: bool, budget: int = QC_BLOCK_BYTES) -> int:
    """Side (grid pixels) of the square blocks a large grid's QC re-matches one at a time:
    with its margins, a block holds about ``budget`` bytes (1300 px on CFOG descriptors, 2970
    on intensities), at least 256 px. Blocks rather than full-width strips, so that a wide
    grid's margins do not outweigh the budget (33,000 px wide: 4 GB per strip on CFOG)."""
    side = int(math.sqrt(budget / qc_bytes_per_pixel(multimodal))) - 2 * QC_BLOCK_MARGIN
    return max(256, side)


def qc_parallel(pixels: int, multimodal: bool) -> bool:
    """Whether the before and after re-matchings of an in-memory QC run side by side on two
    threads: while both together stay under QC_IN_MEMORY_BYTES (8 Mpx on intensities, 1.8 Mpx
    on CFOG descriptors; the demo's grid is 0.23 Mpx)."""
    return 2 * pixels * qc_bytes_per_pixel(multimodal) <= QC_IN_MEMORY_BYTES
