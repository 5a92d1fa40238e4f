"""The registration algorithms, on arrays, with no file I/O: the GeFolki family of optical flow
(:mod:`.folki`, Plyer et al. 2015, Brigot et al. 2016) and its compiled kernels
(:mod:`._kernels`), area-based matching, CFOG descriptors and least-squares matching
(:mod:`.matching`, Yan et al. 2016, Ye et al. 2019), the tie-point model (:mod:`.tiepoint_model`),
image primitives (:mod:`.imaging`), the valid overlap (:mod:`.overlap`) and the benchmarks'
displacement fields and errors (:mod:`.evaluation`).

It may import :mod:`costack.io` types (a :class:`~costack.io.grids.Grid`), :mod:`costack.errors`
and :mod:`costack.limits`, never a stage or the run; it opens no file (the stages read and
write, ``tests/test_layout.py`` holds it).
"""
