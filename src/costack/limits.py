"""Where the stages switch from whole grids in memory to tiles or strips, and what that costs:
one home for the flow's, warp's, tie points' and QC's limits, read by those stages and by the
run plan's memory estimates (:func:`costack.plan.job_memory`). No numba here, so that parsing
the Snakefile imports none.
"""

#: Grids larger than this (pixels): the flow and warp go by tiles (:mod:`costack.tiled`).
TILED_ABOVE = 16_000_000

#: Grids larger than this (pixels): the tie points are matched by tiles of at most this size.
TIEPOINT_IN_MEMORY_PIXELS = 16_000_000
#: Measured peak bytes per grid pixel of the tie points in memory (4096 x 4096 pair: 1.41 GB).
TIEPOINT_BYTES_PER_PIXEL = 80

#: Grids larger than this (pixels): the QC re-matches by strips.
QC_IN_MEMORY_PIXELS = 16_000_000
#: Target memory of one strip of the QC (QC_BYTES_PER_PIXEL per strip pixel).
QC_STRIP_BYTES = 600_000_000
#: Measured peak bytes per grid pixel of the in-memory QC (4096 x 4096 pair: 1.15 GB).
QC_BYTES_PER_PIXEL = 60
#: Rows read above and below a strip: a multimodal patch's half (25) and its 2 px border,
#: the 3 px match tolerance, and the support of the blur, CFOG and B-spline filters.
QC_STRIP_MARGIN = 96
